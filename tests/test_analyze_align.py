"""Weight matching: a permutation found for a net is a symmetry of it (same function), a
permuted copy is matched back exactly, and asymmetric nets are refused with the reason."""
import pytest
import torch

from zoo import ZooError
from zoo.analyze.align import align, apply_permutation, check_alignable, fold_fixed, perm_spec, weight_matching
from zoo.nets import NetConfig, WAsym, build_net

CONFIGS = {
    "resnet8-groupnorm": NetConfig(width=0.5, in_channels=1),
    "resnet8-batchnorm": NetConfig(width=0.5, in_channels=1, norm="batchnorm"),
    "resnet14": NetConfig(depth=14, width=0.25, in_channels=1),
    "smallcnn": NetConfig(arch="smallcnn", in_channels=1, padding="same"),
}


def _random_bn_stats(net, seed):
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net


def _x():
    return torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_aligning_two_nets_preserves_b_and_brings_it_closer(name):
    cfg = CONFIGS[name]
    a, b = _random_bn_stats(build_net(cfg, 1), 1), _random_bn_stats(build_net(cfg, 2), 2)
    pb, rep = align(a, b, _x(), restarts=2)
    assert rep["max_abs_dlogits"] < 1e-4
    net = build_net(cfg, 2)
    net.load_state_dict(pb)
    with torch.no_grad():
        assert torch.allclose(net.eval()(_x()), b.eval()(_x()), atol=1e-4)
    assert rep["distance_after"] < rep["distance_before"]
    assert rep["objective"] >= rep["objective_before"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_permuted_copy_is_matched_back_to_distance_zero(name):
    cfg = CONFIGS[name]
    a = _random_bn_stats(build_net(cfg, 1), 1)
    spec = perm_spec(a)
    g = torch.Generator().manual_seed(5)
    perms = {p: torch.randperm(n, generator=g) for p, n in spec.sizes.items()}
    b = build_net(cfg, 1)
    b.load_state_dict(apply_permutation(spec, perms, a.state_dict()))
    assert any((perms[p] != torch.arange(n)).any() for p, n in spec.sizes.items())
    pb, rep = align(a, b, _x())
    assert rep["distance_before"] > 1
    assert rep["distance_after"] == pytest.approx(0, abs=1e-6)
    for k, v in a.state_dict().items():  # BatchNorm statistics travel with their channels too
        assert torch.equal(pb[k], v), k


def test_the_resnet_spec_shares_the_residual_stream_across_a_stage():
    spec = perm_spec(build_net(NetConfig(depth=14, width=0.25, in_channels=1), 0))
    ax = spec.axes
    # stem, both stage-1 blocks' outputs and inputs: one permutation (the additions tie them)
    stream = ax["conv1.weight"][0]
    assert ax["layer1.0.conv2.weight"][0] == ax["layer1.1.conv2.weight"][0] == ax["layer1.1.conv1.weight"][1] == stream
    # a shortcut conv starts the next stage's stream, read by the rest of the stage and the head
    s2 = ax["layer2.0.shortcut_conv.weight"][0]
    assert s2 != stream and ax["layer2.0.shortcut_conv.weight"][1] == stream
    assert ax["layer2.0.conv2.weight"][0] == ax["layer2.1.conv2.weight"][0] == s2
    assert ax["fc.weight"] == (None, ax["layer3.1.conv2.weight"][0])
    assert ax["layer1.0.conv1.weight"][0] != ax["layer1.1.conv1.weight"][0]  # inner channels: their own


def test_restarts_keep_the_best_objective_and_are_seeded():
    cfg = CONFIGS["resnet8-groupnorm"]
    a, b = build_net(cfg, 1).state_dict(), build_net(cfg, 2).state_dict()
    spec = perm_spec(build_net(cfg, 1))
    r1 = weight_matching(spec, a, b, seed=3, restarts=3)
    r2 = weight_matching(spec, a, b, seed=3, restarts=3)
    assert r1.objective == max(o for o, _ in r1.restarts) == r2.objective
    assert all(torch.equal(r1.perms[p], r2.perms[p]) for p in r1.perms)


def test_asymmetric_nets_are_refused_with_the_reason():
    wasym = build_net(NetConfig(width=0.5, in_channels=1, wasym=WAsym(n_fix=2, n_fix_linear=2, kappa=0.5)), 1)
    with pytest.raises(ZooError, match="moves them"):
        check_alignable(wasym)
    with pytest.raises(ZooError, match="P F P\\^T"):
        perm_spec(build_net(NetConfig(width=0.5, in_channels=1, activation="figlu"), 1))
    # fold-then-align: a standard net with the same function, which can be aligned
    x = _x()
    with torch.no_grad():
        before = wasym.eval()(x)
        folded = fold_fixed(wasym)
        assert torch.equal(folded(x), before)
    check_alignable(folded)
    other = fold_fixed(build_net(NetConfig(width=0.5, in_channels=1, wasym=WAsym(n_fix=2, n_fix_linear=2,
                                                                                  kappa=0.5)), 2))
    _, rep = align(folded, other, x)
    assert rep["max_abs_dlogits"] < 1e-4
