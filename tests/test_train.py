"""The group trainer: a model trained in a group equals the same model trained alone."""
import math

import numpy as np
import pytest
import torch

from zoo.data import augment
from zoo.nets import NetConfig, WAsym
from zoo.spec import HPARAM_DEFAULTS
from zoo.train import SCHEDULES, GroupTrainer, Job, _schedule_tensors, lr_factor, train_alone

CFG = NetConfig(width=0.25, in_channels=1, num_classes=10)


def jobs(**over):
    """Four models with different lr, weight decay, label smoothing, epochs, warm-up and schedule."""
    settings = [dict(lr=1e-2, weight_decay=1e-3, label_smoothing=0.1, epochs=3, schedule="lim2024"),
                dict(lr=3e-3, weight_decay=1e-2, label_smoothing=0.0, epochs=2, schedule="cosine"),
                dict(lr=2e-2, weight_decay=0.0, label_smoothing=0.2, epochs=3, schedule="constant"),
                dict(lr=1e-3, weight_decay=1e-4, label_smoothing=0.05, epochs=1, schedule="lim2024")]
    base = dict(HPARAM_DEFAULTS, batch_size=64, translate=1, cutout=2, warmup_epochs=1, train_fraction=0.5)
    return [Job(i, 100 + i, {**base, **s, **over}) for i, s in enumerate(settings)]


def assert_same(group, alone, atol=2e-5, rel=1e-6):
    """Same weights at every checkpoint (fp32, tight), same accuracies, same losses."""
    for g, a in zip(group, alone):
        assert g.weights.keys() == a.weights.keys()
        for ck in a.weights:
            w_a, w_g = a.weights[ck], g.weights[ck]
            assert np.abs(w_a - w_g).max() < atol, f"model {a.model_id} at {ck}"
            assert np.linalg.norm(w_a - w_g) / np.linalg.norm(w_a) < rel
        for k in a.metrics:
            if k.startswith(("test_acc", "train_acc")):
                assert g.metrics[k] == a.metrics[k], f"model {a.model_id} {k}"
            else:
                assert g.metrics[k] == pytest.approx(a.metrics[k], rel=1e-4, abs=1e-5)


ARCHS = {
    "wasym": (NetConfig(width=0.25, in_channels=1, num_classes=10, wasym=WAsym(n_fix=2, n_fix_linear=2)), {}),
    "standard": (CFG, {}),
    "figlu": (NetConfig(width=0.25, in_channels=1, num_classes=10, activation="figlu"), {}),
    # BatchNorm couples every image of a step: at a high constant learning rate a last-bit
    # rounding difference grows chaotically (seen: 0.1 after 3 epochs), in a group or not.
    "batchnorm": (NetConfig(width=0.25, in_channels=1, num_classes=10, norm="batchnorm"), {"lr": 2e-3}),
}


@pytest.fixture
def float64():
    """Run the trainer (group and reference) in float64: the exactness reference."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _group_and_alone(cfg, data, over):
    js = jobs(**over)
    ckpts = [0, 1, "final"]
    group = GroupTrainer(cfg, data, ckpts).train(js)
    alone = [train_alone(j, cfg, data, ckpts) for j in js]
    accs = [a.metrics["test_acc"] for a in alone]
    assert len(set(accs)) == 4, "the four models really differ"
    return group, alone


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_model_in_a_group_of_four_equals_it_trained_alone(digits, float64, arch, optimizer):
    """Same arithmetic, checked where rounding cannot hide a difference: in float64 the two
    paths' rounding differences start near 1e-16 and stay far below what any real difference
    (a wrong lr, schedule, augmentation, mask or update rule) would leave, even through Adam
    (which turns rounding-level gradients into +-lr steps in fp32) and BatchNorm (which makes
    fp32 rounding grow chaotically). Stored weights are float32, so "equal" is to ~1 ulp."""
    cfg, over = ARCHS[arch]
    group, alone = _group_and_alone(cfg, digits, {**over, "optimizer": optimizer, "momentum": 0.9})
    assert_same(group, alone, atol=1e-6, rel=1e-7)
    if cfg.norm == "batchnorm":
        for g, a in zip(group, alone):
            np.testing.assert_allclose(g.buffers["final"], a.buffers["final"], atol=1e-6)


@pytest.mark.parametrize("arch", ["standard", "wasym", "figlu"])
def test_fp32_group_equals_alone_with_sgd(digits, arch):
    """The fp32 path zoos are made with: with SGD the GroupNorm nets agree to 2e-5 after three
    epochs (rounding differences of grouped vs plain convolutions, not amplified)."""
    cfg, over = ARCHS[arch]
    group, alone = _group_and_alone(cfg, digits, {**over, "optimizer": "sgd", "momentum": 0.9})
    assert_same(group, alone)


@pytest.mark.exactness
def test_fixed_entries_are_bit_identical_after_training(digits):
    cfg = NetConfig(width=0.25, in_channels=1, num_classes=10, wasym=WAsym(n_fix=2, n_fix_linear=2, kappa=2.0))
    from zoo.generate import _fixed_arrays
    from zoo.layout import Layout
    from zoo.nets import build_net

    net = build_net(cfg)
    lay = Layout.from_module(net)
    fixed, _ = _fixed_arrays(net, lay)  # what the store writes as fixed/values
    res = GroupTrainer(cfg, digits, [0, "final"]).train(jobs(lr=5e-2))
    mask = lay.fixed_mask
    for r in res:
        assert np.array_equal(r.weights["final"][mask], fixed[mask]), "fixed entries never move"
        assert np.array_equal(r.weights["epoch_0"][mask], fixed[mask])
        assert not np.array_equal(r.weights["final"][~mask], r.weights["epoch_0"][~mask]), "the rest trains"


def test_a_diverging_model_is_recorded_and_does_not_disturb_its_group(digits):
    js = jobs(optimizer="sgd", momentum=0.9)
    js[2].hp.update(lr=1e6)  # explodes in the first epoch
    group = GroupTrainer(CFG, digits, ["final"]).train(js)
    assert group[2].diverged and group[2].diverged_epoch == 1
    assert "test_acc" in group[2].metrics and group[2].weights["final"].shape == group[0].weights["final"].shape
    others = [0, 1, 3]
    alone = [train_alone(js[i], CFG, digits, ["final"]) for i in others]
    assert not any(group[i].diverged for i in others)
    assert_same([group[i] for i in others], alone)
    alone_bad = train_alone(js[2], CFG, digits, ["final"])
    assert alone_bad.diverged and alone_bad.diverged_epoch == 1


def test_lim2024_schedule_warms_up_linearly_then_decays_to_zero():
    total, warm = 100, 20
    T, W, K = _schedule_tensors([{"epochs": 10, "warmup_epochs": 2, "schedule": "lim2024"}], 10, "cpu")
    f = [float(lr_factor(s, T, W, K)[0]) for s in range(total)]
    assert f[0] == pytest.approx(1 / warm) and f[warm - 1] == pytest.approx(1.0)
    assert f[warm] == pytest.approx(1.0) and f[-1] == pytest.approx(1 / (total - warm))
    assert all(b <= a for a, b in zip(f[warm:], f[warm + 1:])), "monotone decay"
    assert np.allclose(np.diff(f[warm:]), -1 / (total - warm))
    T, W, K = _schedule_tensors([{"epochs": 10, "warmup_epochs": 0, "schedule": "cosine"}], 10, "cpu")
    c = [float(lr_factor(s, T, W, K)[0]) for s in range(total)]
    assert c[0] == pytest.approx(1.0) and c[50] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert SCHEDULES == ("lim2024", "cosine", "constant")


def test_augmentation_translates_flips_and_cuts_out_per_image():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5) + 1
    out = augment(x, flip=torch.tensor([False, True]), shift=torch.tensor([[1, 0], [0, 0]]),
                  center=torch.tensor([[0, 0], [2, 2]]), translate=1, cutout=torch.tensor([0, 2]))
    # image 0: shifted down one row, zero row on top, no flip, no cutout
    assert torch.equal(out[0, 0, 1:], x[0, 0, :-1]) and torch.equal(out[0, 0, 0], torch.zeros(5))
    # image 1: flipped left-right, then a 2x2 hole starting at (1, 1)
    flipped = x[1, 0].flip(-1)
    hole = torch.zeros(5, 5, dtype=torch.bool)
    hole[1:3, 1:3] = True
    assert torch.equal(out[1, 0][~hole], flipped[~hole]) and bool((out[1, 0][hole] == 0).all())


def _reference_input(data, idx, flip, shift, center, translate, cutout, dtype, channels_last):
    """The group's input the long way: normalise, augment image by image, transpose, cast."""
    from zoo.grouped import GroupState

    M, b = idx.shape
    x = data.normalize(data.x_train[idx])
    if flip is not None:
        cut = cutout if isinstance(cutout, int) else cutout.repeat_interleave(b)
        x = augment(x.reshape(M * b, *x.shape[2:]), flip.reshape(-1), shift.reshape(-1, 2), center.reshape(-1, 2),
                    translate, cut).view(x.shape)
    return GroupState.layout_input(x, channels_last, dtype)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_fused_input_equals_normalise_augment_and_layout_bit_for_bit(channels_last, dtype):
    """GPU_PLAN Z3: grouped_batch computes each input pixel once, from the uint8 source pixel
    its flip and translation point at, straight into the group's layout. Every value and the
    memory layout (strides) must be those of the long way, for translations 0-3, flips,
    cutout off / shared / one side per model (0 = off for that model), and without
    augmentation (evaluation)."""
    from zoo.data import ImageData, grouped_batch

    g = torch.Generator().manual_seed(0)
    N, C, H, W, M, b = 40, 3, 8, 9, 4, 7  # H != W: rows and columns cannot be swapped unnoticed
    X = torch.randint(0, 256, (N, C, H, W), generator=g, dtype=torch.uint8)
    y = torch.zeros(N, dtype=torch.long)
    data = ImageData("t", X, y, X, y, torch.tensor([0.3, 0.5, 0.4]), torch.tensor([0.2, 0.25, 0.3]))
    seen_pad = seen_hole = 0
    for trial in range(24):
        T = trial % 4
        idx = torch.randint(0, N, (M, b), generator=g)
        flip = torch.rand(M, b, generator=g) < 0.5
        shift = torch.randint(-T, T + 1, (M, b, 2), generator=g)
        center = torch.stack([torch.randint(0, H, (M, b), generator=g), torch.randint(0, W, (M, b), generator=g)], -1)
        cutout = [0, 3, torch.tensor([0, 2, 4, 5])][trial % 3]
        for aug in (True, False):
            args = (idx, flip, shift, center) if aug else (idx, None, None, None)
            want = _reference_input(data, *args, T, cutout, dtype, channels_last)
            got = grouped_batch(data, X, *args, translate=T, cutout=cutout, dtype=dtype, channels_last=channels_last)
            assert got.shape == want.shape == (b, M * C, H, W)
            assert got.dtype == dtype and got.stride() == want.stride()
            assert torch.equal(got, want), f"trial {trial}, augmentation {aug}"
            zeros = int((want == 0).sum())
            seen_pad += aug and T > 0 and zeros > 0
            seen_hole += aug and not isinstance(cutout, int) and zeros > 0
    assert seen_pad and seen_hole, "the trials reach the padding and the per-model cutout"


@pytest.mark.exactness
def test_fused_and_unfused_input_train_the_same_models(digits):
    """The trainer with the fused input (the default) and with the old path: fp32 weights,
    losses and accuracies at every checkpoint bit for bit equal (translation, flips and
    cutout on)."""
    import dataclasses

    from zoo.train import TrainOptions

    js = jobs(optimizer="adamw")
    ckpts = [1, "final"]
    fused = GroupTrainer(CFG, digits, ckpts, TrainOptions()).train(js)
    old = GroupTrainer(CFG, digits, ckpts, dataclasses.replace(TrainOptions(), fused_input=False)).train(js)
    for a, b in zip(fused, old):
        assert a.weights.keys() == b.weights.keys()
        for ck in a.weights:
            assert np.array_equal(a.weights[ck], b.weights[ck]), f"model {a.model_id} at {ck}"
        assert a.metrics == b.metrics


@pytest.mark.exactness
def test_fused_input_keeps_the_layout_of_a_one_model_grayscale_group(digits):
    """One grayscale model (M*C = 1: a shrunk group, or `zoo generate` with one model per
    group on CUDA, where channels-last is on): its contiguous input already counts as
    channels-last, and the long way keeps its strides. The conv kernels follow the strides,
    so the fused input must keep them too, or training with it is no longer bit for bit the
    same as without it."""
    import dataclasses

    from zoo.data import grouped_batch
    from zoo.grouped import GroupState
    from zoo.train import TrainOptions

    idx = torch.arange(5)[None]
    for dtype in (torch.float32, torch.bfloat16):
        want = GroupState.layout_input(digits.normalize(digits.x_train[idx]), True, dtype)
        got = grouped_batch(digits, digits.x_train, idx, dtype=dtype, channels_last=True)
        assert got.stride() == want.stride() and torch.equal(got, want)
    js = jobs(optimizer="adamw")[:1]
    opts = TrainOptions(channels_last=True)
    fused = GroupTrainer(CFG, digits, ["final"], opts).train(js)[0]
    old = GroupTrainer(CFG, digits, ["final"], dataclasses.replace(opts, fused_input=False)).train(js)[0]
    assert np.array_equal(fused.weights["final"], old.weights["final"]) and fused.metrics == old.metrics
