"""The interpolation engine: batched curves equal nets evaluated one at a time, constants are
never interpolated (and must match), BatchNorm statistics are re-estimated per point."""
import numpy as np
import pytest
import torch

from zoo import ZooError
from zoo.analyze.interp import (Evaluator, check_constants, constant_keys, curve, lerp_states, reestimate_bn,
                                stat_keys)
from zoo.nets import NetConfig, WAsym, build_net

W = WAsym(n_fix=2, n_fix_linear=2, kappa=0.5)
CONFIGS = {
    "standard": NetConfig(width=0.25, in_channels=1),
    "wasym": NetConfig(width=0.25, in_channels=1, wasym=W),
    "sigma": NetConfig(width=0.25, in_channels=1, activation="figlu"),
    "batchnorm": NetConfig(width=0.25, in_channels=1, norm="batchnorm"),
    "smallcnn": NetConfig(arch="smallcnn", in_channels=1, padding="same", wasym=W),
}


@pytest.fixture(scope="module")
def ev(digits):
    return Evaluator(digits.x_test[:200], digits.y_test[:200], digits.normalize, batch=64, max_nets=4)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batched_curve_equals_nets_built_and_evaluated_one_at_a_time(ev, name, one_thread):
    cfg = CONFIGS[name]
    a, b = build_net(cfg, 1), build_net(cfg, 2)
    alphas = np.linspace(0, 1, 7)
    c = curve(ev, a, a.state_dict(), b.state_dict(), alphas)
    for j, al in enumerate(alphas):
        net = build_net(cfg, 1)
        with torch.no_grad():
            for (k, pa), pb in zip(a.named_parameters(), b.parameters()):
                net.get_parameter(k).copy_((1 - al) * pa + al * pb)
        loss, acc = ev.one(net)
        assert c["loss"][j] == pytest.approx(loss, abs=1e-5)
        assert c["acc"][j] == pytest.approx(acc, abs=1e-9)


def test_fixed_constants_are_not_interpolated_and_must_match():
    cfg = CONFIGS["wasym"]
    a, b = build_net(cfg, 1), build_net(cfg, 2)
    keys = constant_keys(a)
    assert "conv1.fixed_mask" in keys and "fc.fixed_values" in keys
    assert not set(keys) & set(lerp_states(a, a.state_dict(), b.state_dict(), [0, 0.5, 1]))
    check_constants(a, a.state_dict(), b.state_dict())  # one zoo: the same constants
    other = build_net(NetConfig(**{**cfg.__dict__, "asym_seed": 7}), 2)
    with pytest.raises(ZooError, match="fixed constant '.*fixed_(mask|values)' differs"):
        check_constants(a, a.state_dict(), other.state_dict())
    sig = CONFIGS["sigma"]
    s1, s2 = build_net(sig, 1), build_net(NetConfig(**{**sig.__dict__, "asym_seed": 7}), 2)
    with pytest.raises(ZooError, match="act1.mix"):
        curve(None, s1, s1.state_dict(), s2.state_dict(), [0, 0.5, 1])


def test_batchnorm_statistics_are_re_estimated_at_every_point(digits):
    cfg = CONFIGS["batchnorm"]
    a, b = build_net(cfg, 1), build_net(cfg, 2)
    stacked = lerp_states(a, a.state_dict(), b.state_dict(), [0.0, 0.5, 1.0])
    assert "norm1.running_mean" in stat_keys(a)
    # without a reset, the midpoint holds the average of the endpoints' statistics (fresh: 0 and 1)
    assert torch.equal(stacked["norm1.running_var"][1], torch.ones(4))
    X = digits.x_train[:128]
    new = reestimate_bn(a, stacked, {}, X, digits.normalize, batch=128)
    for j in range(3):
        net = build_net(cfg, 1)
        net.load_state_dict({k: v[j] for k, v in stacked.items()}, strict=False)
        with torch.no_grad():
            h = net.conv1(digits.normalize(X))  # what the first BatchNorm sees
        assert torch.allclose(new["norm1.running_mean"][j], h.mean(dim=(0, 2, 3)), atol=1e-5)
        assert torch.allclose(new["norm1.running_var"][j], h.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4)
    assert not torch.equal(new["norm1.running_var"][1], stacked["norm1.running_var"][1])
