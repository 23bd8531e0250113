"""Facts about the metanetwork side: inputs, metrics, metanets, training, invariances."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metanets import data, registry, train
from metanets.errors import MetanetError
from metanets.metrics import kendall_tau, mean_std, r2
from metanets.synthetic import make_zoo, net_vector
from zoo.layout import Layout
from zoo.nets import NetConfig, build_net

BUILTINS = ["mlp", "dmc", "deepsets", "statnn", "statnn-gbm"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def zoos(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoos")
    return {
        "std": make_zoo(root / "std", models=40, n_diverged=3, seed=3),
        "wasym": make_zoo(root / "wasym", models=40, wasym=True, seed=4),
        "shift": make_zoo(root / "shift", models=128, seed=1, mode="shift"),
    }


# ------------------------------------------------------------------ metrics

def test_r2_matches_hand_computation():
    # SS_res = 1, SS_tot = 5 (mean 2.5): R² = 1 - 1/5
    assert r2([1, 2, 3, 4], [1, 2, 3, 5]) == pytest.approx(0.8)
    # predicting the mean everywhere explains nothing
    assert r2([1, 2, 3, 4], [2.5] * 4) == pytest.approx(0.0)
    assert math.isnan(r2([1, 2, 3], [1, np.nan, 3]))


def test_kendall_tau_matches_hand_computation():
    # 6 pairs, one swapped: (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # one tie among predictions, 5 concordant pairs: tau-b = 5 / sqrt(6 * 5)
    assert kendall_tau([1, 2, 3, 4], [1, 1, 2, 3]) == pytest.approx(5 / math.sqrt(30))
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1, 2, 3], [0.5, 0.5, 0.5]))


def test_mean_std_is_population_std_over_finite_runs():
    assert mean_std([0.5, 0.7, np.nan]) == (pytest.approx(0.6), pytest.approx(0.1))


# ------------------------------------------------------------------ registry

def test_registry_knows_the_five_builtins_in_paper_order():
    assert registry.names()[:5] == BUILTINS


def test_unknown_metanet_error_lists_known_ones():
    with pytest.raises(MetanetError, match=r"unknown metanet 'resnet'.*mlp, dmc, deepsets, statnn, statnn-gbm"):
        registry.parse_names("mlp,resnet")


# ------------------------------------------------------------------ inputs

def test_diverged_models_are_excluded_and_counted_and_stored_split_is_used(zoos):
    import zoo

    z = zoo.open(zoos["std"])
    ws = data.load(zoos["std"])
    assert ws.selection.n_diverged == 3
    bad = set(z.table.loc[z.table.diverged, "model_id"])
    for s in data.SPLITS:
        assert set(ws.ids(s)) == set(z.splits[s]) - bad
        assert torch.isfinite(ws.x[s]).all()
        np.testing.assert_allclose(ws.selection.y[s], z.metric("test_acc")[ws.ids(s)].to_numpy(), rtol=0)
        assert ((ws.selection.y[s] >= 0) & (ws.selection.y[s] <= 1)).all()


@pytest.mark.exactness
def test_trainable_view_drops_exactly_the_fixed_entries_of_a_wasym_zoo(zoos):
    import zoo

    z = zoo.open(zoos["wasym"])
    assert z.layout.num_fixed > 0
    tr, full = data.load(zoos["wasym"]), data.load(zoos["wasym"], params="all")
    assert tr.info.num_inputs == z.layout.num_trainable
    assert full.info.num_inputs == z.layout.num_params
    ids = tr.ids("val")
    np.testing.assert_array_equal(tr.x["val"].numpy(), z.weights(ids, trainable_only=True))
    np.testing.assert_array_equal(full.x["val"].numpy(), z.weights(ids))
    # norms and biases are never fixed, so they are all kept
    norm_names = [t.name for t in z.layout.tensors if t.role.startswith("norm")]
    assert norm_names and all(n in tr.info.layout.names for n in norm_names)


def test_tensor_stats_match_numpy():
    lay = Layout.from_shapes([("a", (3, 5), "linear_weight"), ("b", (4,), "bias"), ("c", (1,), "bias")])
    x = torch.randn(6, lay.num_params, generator=torch.Generator().manual_seed(0))
    st = data.tensor_stats(x, lay, chunk=4)
    assert st.shape == (6, 3, 7)
    for ti, t in enumerate(lay.tensors):
        v = x[:, t.slice].numpy().astype(np.float64)
        want = np.stack([v.mean(1), v.var(1), v.min(1), v.max(1), *np.percentile(v, [25, 50, 75], axis=1)], 1)
        np.testing.assert_allclose(st[:, ti].numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("view", ["vector", "stats", "layers"])
def test_hdf5_dataset_gives_the_same_inputs_as_the_in_memory_fast_path(zoos, view):
    ws = data.load(zoos["wasym"])
    ds = data.ZooDataset(zoos["wasym"], "test", view=view)
    assert len(ds) == len(ws.ids("test"))
    feats = ws.features("test", view)
    for i in (0, len(ds) - 1):
        x, y = ds[i]
        want = data.as_view(feats[i], view, ws.info.layout)
        if view == "layers":
            assert x.keys() == want.keys()
            for k in x:
                torch.testing.assert_close(x[k], want[k])
        else:
            torch.testing.assert_close(x, want)
        assert float(y) == pytest.approx(float(ws.selection.y["test"][i]))


def test_dataloader_workers_each_open_their_own_file(zoos):
    ds = data.ZooDataset(zoos["std"], "train")
    ws = data.load(zoos["std"])
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, shuffle=False)
    xs = torch.cat([x for x, _ in loader])
    torch.testing.assert_close(xs, ws.x["train"])


def test_a_zoo_too_small_for_its_split_names_the_needed_size(tmp_path):
    path = make_zoo(tmp_path / "tiny", models=5)
    with pytest.raises(MetanetError, match=r"too small.*at least 8 models"):
        data.load(path)


def test_a_path_that_is_not_a_zoo_is_a_clear_error(tmp_path):
    from zoo.errors import ZooError

    with pytest.raises(ZooError, match="not a metazoo zoo"):
        data.load(tmp_path)


# ------------------------------------------------------------------ metanets

@pytest.mark.parametrize("name", BUILTINS)
def test_each_metanet_gives_one_prediction_per_net(zoos, name):
    ws = data.load(zoos["wasym"])
    cls = registry.get(name)
    model = train.build(name, ws.info, seed=0)
    feats = ws.features("train", cls.view)
    if cls.kind == "sklearn":
        model.fit(feats, ws.selection.y["train"])
        out = model.predict(feats[:7])
        assert out.shape == (7,)
    else:
        out = model.eval()(data.as_view(feats[:7], cls.view, ws.info.layout))
        assert out.shape == (7,)
        assert torch.isfinite(out).all()


def test_metanets_match_the_paper_architectures():
    lay = Layout.from_shapes([("w", (5000,), "linear_weight")])
    info = data.InputInfo(lay)
    mlp = registry.get("mlp")(info)
    assert [type(m).__name__ for m in mlp.net] == ["Linear", "ReLU", "LayerNorm", "Linear"]
    assert mlp.net[0].in_features == 5000 and mlp.net[0].out_features == 64
    dmc = registry.get("dmc")(info)
    convs = [m for m in dmc.convs if isinstance(m, torch.nn.Conv1d)]
    assert [c.out_channels for c in convs] == [2, 4, 8, 16, 32, 64, 64, 64, 64, 64]
    assert all(c.kernel_size == (5,) and c.padding == (0,) for c in convs)
    assert sum(isinstance(m, torch.nn.MaxPool1d) for m in dmc.convs) == 8
    st = registry.get("statnn")(data.InputInfo(Layout.from_shapes([("a", (3,), "bias"), ("b", (4,), "bias")])))
    assert st.net[0].in_features == 2 * 7 and st.net[0].out_features == 256


def test_dmc_rejects_a_vector_shorter_than_its_receptive_field():
    from metanets.dmc import min_length, output_length

    assert output_length(min_length()) == 1 and output_length(min_length() - 1) == 0
    with pytest.raises(MetanetError, match=f"at least {min_length()} entries"):
        registry.get("dmc")(data.InputInfo(Layout.from_shapes([("w", (100,), "bias")])))


def _permute_hidden_units(net, seed=0):
    """Permute the output channels of layer1.0.conv1, its norm's affine parameters and the
    input channels of layer1.0.conv2: the same function, different weights."""
    blk = net.layer1[0]
    perm = torch.randperm(blk.conv1.out_channels, generator=torch.Generator().manual_seed(seed))
    assert not torch.equal(perm, torch.arange(len(perm)))
    with torch.no_grad():
        blk.conv1.weight.copy_(blk.conv1.weight[perm])
        blk.norm1.weight.copy_(blk.norm1.weight[perm])
        blk.norm1.bias.copy_(blk.norm1.bias[perm])
        blk.conv2.weight.copy_(blk.conv2.weight[:, perm])


def test_deepsets_statnn_and_gbm_are_invariant_to_permuting_hidden_units_of_a_resnet():
    cfg = NetConfig(depth=8, width=0.5, in_channels=1, num_classes=10)
    net = build_net(cfg, seed=7).eval()
    with torch.no_grad():  # non-trivial norm affines, so the permutation moves them too
        for m in net.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    layout = Layout.from_module(net)
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before_out = net(x)
        before = torch.from_numpy(net_vector(net, layout))[None]
        _permute_hidden_units(net)
        after_out = net(x)
        after = torch.from_numpy(net_vector(net, layout))[None]
    torch.testing.assert_close(after_out, before_out, rtol=1e-5, atol=1e-5)  # same function
    assert not torch.equal(before, after)  # different weights
    info = data.InputInfo(layout, "all")
    for name in ("deepsets", "statnn", "statnn-std"):
        model = train.build(name, info, seed=0).eval()
        with torch.no_grad():
            if name.startswith("statnn"):
                if hasattr(model, "prepare"):
                    model.prepare(data.tensor_stats(torch.cat([before, before * 2]), layout))
                a, b = model(data.tensor_stats(before, layout)), model(data.tensor_stats(after, layout))
            else:
                a, b = model(before), model(after)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{name} changed under a hidden-unit permutation")
    gbm = train.build("statnn-gbm", info, seed=0)
    gen = torch.Generator().manual_seed(2)
    fleet = torch.cat([before * (1 + 0.1 * torch.randn(1, generator=gen)) for _ in range(16)])
    gbm.fit(data.tensor_stats(fleet, layout), np.linspace(0.1, 0.9, 16), seed=0)
    assert gbm.predict(data.tensor_stats(before, layout)) == gbm.predict(data.tensor_stats(after, layout))
    mlp = train.build("mlp", info, seed=0).eval()
    with torch.no_grad():
        assert not torch.allclose(mlp(before), mlp(after)), "the MLP claims no invariance: it should notice"


# ------------------------------------------------------------------ training

LEARN = {"mlp": (1e-3, 20), "dmc": (5e-3, 8), "deepsets": (5e-3, 10), "statnn": (1e-3, 20), "statnn-gbm": (None, 1)}


@pytest.mark.parametrize("name", BUILTINS)
def test_each_metanet_learns_a_simple_synthetic_target(zoos, name):
    ws = data.load(zoos["shift"])
    lr, epochs = LEARN[name]
    res = train.fit(name, ws, lr=lr, seed=0, epochs=epochs, batch_size=16)
    assert res.test_r2 > 0.6, f"{name}: test R² {res.test_r2:.3f}"
    assert res.test_tau > 0.5, f"{name}: test tau {res.test_tau:.3f}"


@pytest.mark.exactness
def test_training_is_seeded_and_keeps_the_best_validation_epoch(zoos):
    ws = data.load(zoos["shift"])
    a = train.fit("statnn", ws, lr=1e-3, seed=1, epochs=6, batch_size=16)
    b = train.fit("statnn", ws, lr=1e-3, seed=1, epochs=6, batch_size=16)
    c = train.fit("statnn", ws, lr=1e-3, seed=2, epochs=6, batch_size=16)
    np.testing.assert_array_equal(a.predictions["test"], b.predictions["test"])
    assert not np.array_equal(a.predictions["test"], c.predictions["test"])
    assert a.best_epoch == int(np.nanargmax(a.val_r2_history)) + 1
    assert a.val_r2 == pytest.approx(max(a.val_r2_history), abs=1e-6)


def test_lr_sweep_picks_the_best_validation_r2(zoos):
    ws = data.load(zoos["shift"])
    lr, results = train.sweep_lr("statnn", ws, (1e-5, 1e-3), epochs=4, batch_size=16)
    assert lr == max(results, key=lambda r: r.val_r2).lr


def test_a_forward_returning_the_wrong_shape_is_rejected(zoos):
    ws = data.load(zoos["std"])

    class Bad(torch.nn.Module):
        view = "vector"

        def __init__(self, info):
            super().__init__()
            self.lin = torch.nn.Linear(info.num_inputs, 3)

        def forward(self, x):
            return self.lin(x)

    with pytest.raises(MetanetError, match=r"returned \(2, 3\).*shape \[2\] or \[2, 1\]"):
        train.check_output("bad", Bad(ws.info), ws.x["train"][:2])


def test_deepsets_closed_form_phi_equals_linear_layernorm_relu():
    from metanets.deepsets import DeepSets

    info = data.InputInfo(Layout.from_shapes([("w", (300,), "linear_weight")]))
    model = train.build("deepsets", info, seed=3)
    with torch.no_grad():  # non-default affine parameters, so every term of the closed form matters
        model.phi[1].weight.uniform_(0.5, 1.5)
        model.phi[1].bias.uniform_(-0.5, 0.5)
    x = torch.randn(5, 300, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(model._pool_sum(x), model.phi_reference(x), rtol=1e-4, atol=1e-3)
    # chunked (checkpointed) pooling gives the same prediction and the same gradients
    small = DeepSets(info, max_elements=5 * 64 * 70)
    small.load_state_dict(model.state_dict())
    x.requires_grad_(True)
    g1 = torch.autograd.grad(model(x).sum(), x)[0]
    g2 = torch.autograd.grad(small(x).sum(), x)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


@pytest.mark.exactness
@pytest.mark.parametrize("name", ["mlp", "statnn"])
def test_streaming_from_hdf5_trains_exactly_like_the_in_memory_fast_path(zoos, name):
    mem = data.load(zoos["wasym"])
    streamed = data.load(zoos["wasym"], in_memory=False)
    assert isinstance(streamed.x["train"], data.StreamedRows)
    a = train.fit(name, mem, lr=1e-3, seed=0, epochs=3, batch_size=8)
    b = train.fit(name, streamed, lr=1e-3, seed=0, epochs=3, batch_size=8)
    np.testing.assert_array_equal(a.predictions["test"], b.predictions["test"])


@pytest.mark.exactness
def test_another_table_metric_can_be_the_target(zoos):
    import zoo

    ws = data.load(zoos["std"], target="train_loss")
    assert ws.target == "train_loss"
    want = zoo.open(zoos["std"]).metric("train_loss")[ws.ids("val")].to_numpy(np.float32)
    np.testing.assert_array_equal(ws.selection.y["val"], want)
    with pytest.raises(MetanetError, match=r"target 'val_acc' is not a column.*test_acc"):
        data.load(zoos["std"], target="val_acc")


def _materialised_pool_sum(model, x):
    """DeepSets' pooled sum as it was computed before the chunked autograd function: the
    whole ``[b, d, h]`` product materialised, ReLU, sum (kept here as the reference)."""
    lin, norm = model.phi[0], model.phi[1]
    a, b = lin.weight[:, 0], lin.bias
    A, B = a - a.mean(), b - b.mean()
    var = (A * A).mean() * x * x + 2 * (A * B).mean() * x + (B * B).mean()
    r = torch.rsqrt(var + norm.eps)
    coords = torch.stack([x * r, r, torch.ones_like(r)], dim=-1)
    mix = torch.stack([norm.weight * A, norm.weight * B, norm.bias])
    return torch.relu(coords @ mix).sum(1)


@pytest.mark.parametrize("chunk", [300, 64, 7])
def test_deepsets_chunked_pooled_sum_equals_the_materialised_one_with_its_gradients(chunk):
    """Same forward and same gradients (inputs and every parameter) as materialising the
    [b, d, h] tensor, on the same weights, whatever the chunk. Compared in float64, where the
    two summation orders agree to ~1e-12: in float32 a parameter's gradient, a sum of 1,500
    terms that mostly cancel, differs in the 4th digit with the thread count."""
    info = data.InputInfo(Layout.from_shapes([("w", (300,), "linear_weight")]))
    model = train.build("deepsets", info, seed=3)
    with torch.no_grad():
        model.phi[1].weight.uniform_(0.5, 1.5)
        model.phi[1].bias.uniform_(-0.5, 0.5)
    x = torch.randn(5, 300, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(model._pool_sum(x, chunk), _materialised_pool_sum(model, x), rtol=1e-5, atol=1e-4)
    model = model.double()
    x = x.double().requires_grad_(True)
    params = [x, *model.phi.parameters()]
    new = model._pool_sum(x, chunk)
    old = _materialised_pool_sum(model, x)
    torch.testing.assert_close(new, old, rtol=1e-10, atol=1e-9)
    w = torch.randn(new.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # an upstream gradient
    g_new = torch.autograd.grad((new * w).sum(), params)
    g_old = torch.autograd.grad((old * w).sum(), params)
    for a, b in zip(g_new, g_old):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    from metanets.deepsets import _PooledReLU

    # the hand-written backward against finite differences, in float64
    inputs = (x.detach().double()[:2, :20].requires_grad_(True),
              torch.rand(2, 20, dtype=torch.float64).add(0.5).requires_grad_(True),
              torch.randn(3, 4, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(lambda xr, r, mix: _PooledReLU.apply(xr, r, mix, chunk), inputs)
