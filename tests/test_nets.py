"""The nets: parameter counts of the paper, W-Asymmetric fixed entries, FiGLU."""
import numpy as np
import pytest
import torch

from zoo.errors import SpecError
from zoo.layout import Layout
from zoo.nets import NetConfig, WAsym, build_net, validate_net

PAPER_WASYM = WAsym(n_fix=8, n_fix_linear=8, kappa=2.0, mode="filters")


def test_resnet8_has_the_papers_78042_parameters():
    assert Layout.from_module(build_net(NetConfig())).num_params == 78_042


def test_wasym_resnet8_has_the_papers_60634_trainable_parameters():
    lay = Layout.from_module(build_net(NetConfig(wasym=PAPER_WASYM)))
    assert lay.num_params == 78_042
    assert lay.num_trainable == 60_634


def test_resnet20_has_three_blocks_per_stage_and_the_usual_size():
    net = build_net(NetConfig(depth=20))
    assert len(net.layer1) == len(net.layer2) == len(net.layer3) == 3
    # He et al.'s CIFAR ResNet20 has ~0.27M parameters.
    assert Layout.from_module(net).num_params == 272_474


def test_filters_mode_fixes_whole_input_filters_and_the_3_channel_stem_entirely():
    net = build_net(NetConfig(wasym=PAPER_WASYM))
    stem = net.conv1.fixed_mask  # [16, 3, 3, 3]: 3 inputs <= 8, so all fixed, as in the paper
    assert bool(stem.all())
    m = net.layer2[0].conv2.fixed_mask  # [32, 32, 3, 3]
    per_filter = m.all(dim=(2, 3))
    assert bool((m.any(dim=(2, 3)) == per_filter).all()), "a filter is either fully fixed or free"
    assert per_filter.sum(dim=1).tolist() == [8] * 32
    fc = net.fc.fixed_mask
    assert fc.sum(dim=1).tolist() == [8] * 10


def test_entries_mode_fixes_single_entries_per_output_channel():
    net = build_net(NetConfig(wasym=WAsym(n_fix=5, n_fix_linear=3, mode="entries")))
    m = net.layer1[0].conv1.fixed_mask
    assert m.reshape(m.shape[0], -1).sum(dim=1).tolist() == [5] * m.shape[0]


def test_masks_and_fixed_values_come_from_the_asymmetry_seed_only():
    a = build_net(NetConfig(wasym=PAPER_WASYM, asym_seed=7), seed=1)
    b = build_net(NetConfig(wasym=PAPER_WASYM, asym_seed=7), seed=2)
    c = build_net(NetConfig(wasym=PAPER_WASYM, asym_seed=8), seed=1)
    assert torch.equal(a.layer1[0].conv1.fixed_mask, b.layer1[0].conv1.fixed_mask)
    assert torch.equal(a.layer1[0].conv1.fixed_values, b.layer1[0].conv1.fixed_values)
    assert not torch.equal(a.layer1[0].conv1.fixed_mask, c.layer1[0].conv1.fixed_mask)
    assert not torch.equal(a.layer1[0].conv1.weight, b.layer1[0].conv1.weight), "init follows the model seed"
    fv = a.layer1[0].conv1.fixed_values[a.layer1[0].conv1.fixed_mask]
    assert abs(float(fv.std()) - 2.0) < 0.2, "fixed values are kappa * N(0, 1) with kappa = 2"


def test_fixed_entries_get_zero_gradient_and_biases_norms_are_free():
    net = build_net(NetConfig(wasym=PAPER_WASYM), seed=0)
    net(torch.randn(4, 3, 32, 32)).sum().backward()
    conv = net.layer2[0].conv1
    assert bool((conv.weight.grad[conv.fixed_mask] == 0).all())
    assert bool((conv.weight.grad[~conv.fixed_mask] != 0).any())
    assert net.norm1.weight.grad.abs().sum() > 0 and net.fc.bias.grad.abs().sum() > 0
    eff = net.effective_state()["layer2.0.conv1.weight"]
    assert torch.equal(eff[conv.fixed_mask], conv.fixed_values[conv.fixed_mask])


def test_figlu_is_sigmoid_of_a_fixed_channel_mix_times_x():
    net = build_net(NetConfig(activation="figlu", asym_seed=3), seed=0)
    act = net.layer1[0].act1
    x = torch.randn(2, 16, 5, 5)
    mix = act.mix[:, :, 0, 0]
    expected = torch.sigmoid(torch.einsum("oc,bchw->bohw", mix, x)) * x
    torch.testing.assert_close(act(x), expected)
    assert abs(float(mix.std()) * 16 ** 0.5 - 1.0) < 0.2, "mix entries have std scale/sqrt(C)"
    again = build_net(NetConfig(activation="figlu", asym_seed=3), seed=5)
    assert torch.equal(again.layer1[0].act1.mix, act.mix), "F is fixed by the asymmetry seed"
    assert not list(act.parameters()), "F is not trained"


@pytest.mark.parametrize("wasym,field", [
    (WAsym(n_fix=16), "net.wasym.n_fix"),          # fan-in of layer1 convs is 16 filters
    (WAsym(n_fix_linear=64), "net.wasym.n_fix_linear"),
    (WAsym(kappa=0.0), "net.wasym.kappa"),
    (WAsym(kappa=-1.0), "net.wasym.kappa"),
    (WAsym(mode="rows"), "net.wasym.mode"),
])
def test_bad_asymmetry_options_name_the_field(wasym, field):
    with pytest.raises(SpecError) as e:
        validate_net(NetConfig(wasym=wasym))
    assert e.value.field == field


def test_n_fix_error_names_the_layer_and_allowed_range():
    with pytest.raises(SpecError, match=r"fan-in 16 of layer 'layer1.0.conv1' \(allowed 1..15\)"):
        validate_net(NetConfig(wasym=WAsym(n_fix=16)))


@pytest.mark.exactness
def test_layout_round_trips_a_state_dict():
    net = build_net(NetConfig(norm="batchnorm"), seed=0)
    lay = Layout.from_module(net)
    vec = lay.flatten(net.effective_state())
    back = lay.unflatten(torch.from_numpy(vec))
    for k, v in net.effective_state().items():
        assert torch.equal(back[k], v)
    assert lay.num_buffers == sum(b.numel() for b in net.buffer_state().values())
    assert Layout.from_json(lay.to_json()).same_tensors(lay)
    assert np.array_equal(lay.trainable_index, np.arange(lay.num_params))
