"""Permuting hidden channels of a net (function-preserving) leaves NFN's and the graph
metanet's predictions unchanged and changes the plain MLP's; on a W-Asym net only NFN
stays invariant."""
import pytest
import torch

from metanets import train
from metanets.data import InputInfo
from zoo.generate import fixed_arrays
from zoo.layout import Layout
from zoo.nets import NetConfig, WAsym, build_net

EQUIVARIANT = ("nfn-np", "nfn-hnp", "graph")


def _flat(net):
    lay = Layout.from_module(net)
    return lay, torch.from_numpy(lay.flatten(dict(net.named_parameters())))


def _load(net, lay, vec):
    with torch.no_grad():
        for name, t in lay.unflatten(vec).items():
            dict(net.named_parameters())[name].copy_(t)
    return net.eval()


def _permute(vec, lay, axes_of, sizes, seed):
    """Apply one random permutation per channel group: ``axes_of[tensor] = [(axis, group), ...]``."""
    g = torch.Generator().manual_seed(seed)
    perms = {k: torch.randperm(n, generator=g) for k, n in sizes.items()}
    for k, p in perms.items():
        assert not torch.equal(p, torch.arange(len(p))), "draw a permutation that moves something"
    out = {}
    for name, t in lay.unflatten(vec).items():
        for axis, grp in axes_of.get(name, []):
            t = t.index_select(axis, perms[grp])
        out[name] = t
    return torch.from_numpy(lay.flatten(out))


def _smallcnn_case(seed=0):
    cfg = NetConfig(arch="smallcnn", in_channels=1, num_classes=10, padding="same", activation="tanh")
    net = build_net(cfg, seed, {"w_init": "glorot_uniform"})
    lay, vec = _flat(net)
    with torch.no_grad():  # non-zero biases, so a wrong bias permutation would show
        vec[lay["conv2d.bias"].slice] = torch.randn(16, generator=torch.Generator().manual_seed(1))
    axes = {"conv2d.weight": [(0, "a")], "conv2d.bias": [(0, "a")],
            "conv2d_1.weight": [(0, "b"), (1, "a")], "conv2d_1.bias": [(0, "b")],
            "conv2d_2.weight": [(0, "c"), (1, "b")], "conv2d_2.bias": [(0, "c")],
            "dense.weight": [(1, "c")]}
    return cfg, net, lay, vec, axes, {"a": 16, "b": 16, "c": 16}, torch.randn(5, 1, 8, 8)


def _resnet_case(seed=0):
    cfg = NetConfig(width=0.5, in_channels=1, num_classes=10)
    net = build_net(cfg, seed)
    lay, vec = _flat(net)
    vec = vec + 0.1 * torch.randn(vec.shape, generator=torch.Generator().manual_seed(2))  # non-trivial norms
    out_in = lambda o, i: [(0, o), (1, i)]  # noqa: E731
    axes = {"conv1.weight": [(0, "s1")], "norm1.weight": [(0, "s1")], "norm1.bias": [(0, "s1")]}
    # s1/s2/s3: residual streams of the stages (tied by the skip connections); m*: block-internal
    for s, (c_in, c) in enumerate((("s1", "s1"), ("s1", "s2"), ("s2", "s3")), start=1):
        p = f"layer{s}.0"
        axes[f"{p}.conv1.weight"] = out_in(f"m{s}", c_in)
        axes[f"{p}.norm1.weight"] = axes[f"{p}.norm1.bias"] = [(0, f"m{s}")]
        axes[f"{p}.conv2.weight"] = out_in(c, f"m{s}")
        axes[f"{p}.norm2.weight"] = axes[f"{p}.norm2.bias"] = [(0, c)]
        if f"{p}.shortcut_conv.weight" in lay.names:
            axes[f"{p}.shortcut_conv.weight"] = out_in(c, c_in)
            axes[f"{p}.shortcut_norm.weight"] = axes[f"{p}.shortcut_norm.bias"] = [(0, c)]
    axes["fc.weight"] = [(1, "s3")]
    sizes = {"s1": 8, "m1": 8, "s2": 16, "m2": 16, "s3": 32, "m3": 32}
    return cfg, net, lay, vec, axes, sizes, torch.randn(5, 1, 8, 8)


@pytest.mark.parametrize("case", [_smallcnn_case, _resnet_case], ids=["smallcnn", "resnet8"])
def test_channel_permutation_preserves_function_and_equivariant_predictions(case):
    cfg, net, lay, vec, axes, sizes, x = case()
    perm = _permute(vec, lay, axes, sizes, seed=3)
    assert not torch.allclose(perm, vec)
    with torch.no_grad():
        y0 = _load(net, lay, vec)(x)
        y1 = _load(build_net(cfg, 0), lay, perm)(x)
    torch.testing.assert_close(y1, y0, atol=1e-5, rtol=1e-5)  # the permuted net computes the same function

    info = InputInfo(lay, "all", lay)
    batch = torch.stack([vec, perm])
    train_like = vec + 0.05 * torch.randn(8, len(vec), generator=torch.Generator().manual_seed(4))
    checked = []
    for name in EQUIVARIANT + ("mlp",):
        cls = train.registry.get(name)
        if getattr(cls, "unsupported", None) and cls.unsupported(info):
            assert name.startswith("nfn") and isinstance(net, torch.nn.Module) and cfg.arch == "resnet"
            continue
        model = train.build(name, info, seed=0)
        if hasattr(model, "prepare"):
            model.prepare(train_like)
        model.eval()
        with torch.no_grad():
            out = model(batch)
        if name == "mlp":
            assert (out[0] - out[1]).abs() > 1e-4, "the plain MLP is not invariant"
        else:
            assert out[0].abs() > 0
            torch.testing.assert_close(out[1], out[0], atol=1e-5, rtol=0)
            checked.append(name)
    assert checked == (list(EQUIVARIANT) if cfg.arch == "smallcnn" else ["graph"])


def test_on_a_wasym_smallcnn_nfn_reads_the_net_it_computes_and_only_the_graph_sees_the_fixed_entries():
    """A W-Asym net's hidden permutations are no symmetries of its zoo (they move the fixed
    constants), but they still preserve its function: NFN, reading the ``full`` view, stays
    invariant to them; the graph metanet, which flags the fixed entries, does not."""
    cfg = NetConfig(arch="smallcnn", in_channels=1, num_classes=10, padding="same", activation="tanh",
                    wasym=WAsym(n_fix=2, n_fix_linear=2, kappa=0.5))
    net = build_net(cfg, 0, {"w_init": "glorot_uniform"})
    lay = Layout.from_module(net)
    mask = torch.from_numpy(lay.fixed_mask)
    fixed = torch.from_numpy(fixed_arrays(net, lay)[0])  # what the store writes as fixed/values
    _, raw = _flat(net)
    raw[lay["conv2d.bias"].slice] = torch.randn(16, generator=torch.Generator().manual_seed(1))
    full = torch.where(mask, fixed, raw)  # what the net computes with: the stored vector
    x = torch.randn(5, 1, 8, 8)
    plain = NetConfig(**{**cfg.__dict__, "wasym": None})
    with torch.no_grad():
        y0 = _load(net, lay, raw)(x)
        torch.testing.assert_close(_load(build_net(plain, 0), lay, full)(x), y0, atol=1e-6, rtol=1e-6)

    # the full view is one vector whatever --params says: trainable entries + the zoo's constants
    infos = [InputInfo(lay.trainable_layout(), "trainable", lay, fixed.numpy()),
             InputInfo(Layout(lay.tensors), "all", lay, fixed.numpy())]
    assert torch.equal(infos[0].to_full(full[None, ~mask]), full[None])
    assert torch.equal(infos[1].to_full(full[None]), full[None])

    _, _, _, _, axes, sizes, _ = _smallcnn_case()
    perm = _permute(full, lay, axes, sizes, seed=3)
    assert not torch.equal(perm[mask], full[mask])  # no longer a net of this W-Asym zoo ...
    with torch.no_grad():  # ... but the same function
        torch.testing.assert_close(_load(build_net(plain, 0), lay, perm)(x), y0, atol=1e-5, rtol=1e-5)
    batch = torch.stack([full, perm])
    train_like = full + 0.05 * torch.randn(8, len(full), generator=torch.Generator().manual_seed(4))
    for name in EQUIVARIANT + ("mlp",):
        info = infos[0]
        model = train.build(name, info if name != "mlp" else infos[1], seed=0)
        if hasattr(model, "prepare"):
            model.prepare(train_like)
        with torch.no_grad():
            out = model.eval()(batch)
        assert out[0].abs() > 0
        if name.startswith("nfn"):
            torch.testing.assert_close(out[1], out[0], atol=1e-5, rtol=0)
        else:
            assert (out[0] - out[1]).abs() > 1e-4, f"{name} tells the permuted net apart"
