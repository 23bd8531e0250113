"""arch = "smallcnn": the Small CNN Zoo's CNN, its hyper-parameters, trainer and presets."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import zoo
from zoo import data as image_data
from zoo.errors import SpecError
from zoo.generate import _fixed_arrays
from zoo.importers.smallcnnzoo import _torch_shape, read_layout
from zoo.layout import Layout
from zoo.nets import NetConfig, WAsym, build_net
from zoo.smallcnn import SmallCNNGroup, _opt_state, _step, build_smallcnn, train_smallcnn_group
from zoo.spec import load_spec, presets, spec_from_dict
from zoo.store import metric_column
from zoo.train import Job

CFG = NetConfig(arch="smallcnn", in_channels=1, num_classes=10, padding="same")


def _upstream_layout(tmp_path) -> Layout:
    """The layout an imported Small CNN Zoo gets, from a layout.csv in upstream's naming."""
    rows, pos = [], 0
    for name, shape in [("conv2d/kernel:0", (3, 3, 1, 16)), ("conv2d/bias:0", (16,)),
                        ("conv2d_1/kernel:0", (3, 3, 16, 16)), ("conv2d_1/bias:0", (16,)),
                        ("conv2d_2/kernel:0", (3, 3, 16, 16)), ("conv2d_2/bias:0", (16,)),
                        ("dense/kernel:0", (16, 10)), ("dense/bias:0", (10,))]:
        n = math.prod(shape)
        rows.append({"varname": f"sequential/{name}", "start_idx": pos, "end_idx": pos + n, "shape": str(shape)})
        pos += n
    pd.DataFrame(rows).to_csv(tmp_path / "layout.csv", index=False)
    tensors, _ = read_layout(tmp_path / "layout.csv")
    return Layout.from_shapes([(n, _torch_shape(s), role) for n, s, _, _, role in tensors])


def test_smallcnn_has_4970_parameters_and_the_imported_zoos_layout(tmp_path):
    net = build_net(CFG, 0)
    lay = Layout.from_module(net)
    assert lay.num_params == 4970 == sum(p.numel() for p in net.parameters())
    assert lay.same_tensors(_upstream_layout(tmp_path))
    # valid padding (upstream) on 28x28: 28 -> 13 -> 6 -> 2 pixels, same parameters
    valid = build_net(NetConfig(arch="smallcnn", in_channels=1, num_classes=10), 0)
    assert valid(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    # grayscale (CIFAR-10-GS / SVHN-GS): three input channels averaged, still 4,970 parameters
    gray = build_net(NetConfig(arch="smallcnn", in_channels=3, num_classes=10, grayscale=True), 0)
    assert Layout.from_module(gray).num_params == 4970


@pytest.mark.parametrize("kind,expected_std", [("he_normal", math.sqrt(2 / 144)),
                                                ("glorot_uniform", math.sqrt(2 / (144 + 144))),
                                                ("random_normal", 0.3), ("truncated_normal", 0.3)])
def test_initialisers_draw_keras_scales(kind, expected_std):
    net = build_smallcnn(CFG, 7, {"w_init": kind, "init_std": 0.3})
    w = net.conv2d_1.weight.detach()  # fan_in = fan_out = 16 * 9 = 144
    assert abs(w.std().item() / expected_std - 1) < 0.1 if kind != "truncated_normal" else \
        (w.abs().max() <= 0.6 + 1e-6 and 0.7 < w.std().item() / 0.3 < 0.95)  # cut at 2 std
    assert torch.count_nonzero(net.conv2d_1.bias) == 0
    orth = build_smallcnn(CFG, 7, {"w_init": "orthogonal"}).conv2d_1.weight.detach().reshape(16, -1)
    torch.testing.assert_close(orth @ orth.T, torch.eye(16), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind,reference", [
    ("sgd", lambda p: torch.optim.SGD(p, lr=0.05)),
    ("rmsprop", lambda p: torch.optim.RMSprop(p, lr=0.05, alpha=0.9, eps=1e-7)),
])
def test_grouped_optimizers_match_torch(kind, reference):
    nets = [build_smallcnn(CFG, s) for s in (1, 2)]
    group = SmallCNNGroup(CFG, nets, "cpu")
    st = _opt_state(group, kind)
    ref_net = build_smallcnn(CFG, 2)
    opt = reference(list(ref_net.parameters()))
    x = torch.randn(2, 4, 1, 8, 8)
    for t in (1, 2, 3):
        group.forward(x).sum().backward()
        _step(group, st, kind, torch.tensor([0.01, 0.05]), torch.zeros(2), t)
        opt.zero_grad()
        ref_net(x[1]).sum().backward()
        opt.step()
    torch.testing.assert_close(group.params["conv2d_1.weight"][1], ref_net.conv2d_1.weight.detach(),
                               atol=1e-6, rtol=1e-5)


def _jobs(spec, ids, epochs=2):
    return [Job(i, spec.model_seed(i), {**spec.sample_hparams(i), "epochs": epochs}) for i in ids]


def test_a_model_trains_the_same_alone_or_in_a_group():
    spec = load_spec("smallcnnzoo-digits")
    data = image_data.load(spec.data)
    cfg = NetConfig(**{**CFG.__dict__})
    # three models that share the group keys (optimizer, batch, fraction, activation), with dropout
    hps = {i: spec.sample_hparams(i) for i in range(200)}
    key = lambda i: (hps[i]["optimizer"], hps[i]["train_fraction"], hps[i]["activation"])  # noqa: E731
    k0 = next(key(i) for i in hps if hps[i]["train_fraction"] <= 0.25)
    ids = [i for i in hps if key(i) == k0][:3]
    assert len(ids) == 3 and any(hps[i]["dropout"] > 0.1 for i in ids)
    group = train_smallcnn_group(_jobs(spec, ids), cfg, data, [0, 1, "final"])
    for r in group:
        alone = train_smallcnn_group(_jobs(spec, [r.model_id]), cfg, data, [0, 1, "final"])[0]
        for ck in ("epoch_0", "epoch_1", "final"):
            np.testing.assert_allclose(r.weights[ck], alone.weights[ck], rtol=1e-4, atol=1e-6)
        col = metric_column("test_acc", "final")
        assert r.metrics[col] == pytest.approx(alone.metrics[col], abs=1e-3)
    assert not np.allclose(group[0].weights["epoch_0"], group[0].weights["final"])


def test_generated_smallcnn_zoo_rebuilds_and_is_read_by_every_applicable_metanet(tmp_path):
    from metanets import data, registry, train
    from zoo.generate import generate

    spec = spec_from_dict({**load_spec("smallcnnzoo-digits").to_dict(), "models": 8, "checkpoints": [0, 2, "final"],
                           "hparams": {**load_spec("smallcnnzoo-digits").to_dict()["hparams"], "epochs": 2}})
    out = generate(spec, tmp_path / "z", progress=False)
    z = zoo.open(out)
    assert z.layout.num_params == 4970 and z.checkpoints == ["epoch_0", "epoch_2", "final"]
    plan = json.loads((out / "zoo-plan.json").read_text())
    assert plan["refill"] is False, "smallcnn zoos train in fixed groups (zoo/smallcnn.py has no slot refill)"
    assert {"optimizer", "dropout", "w_init", "init_std", "activation", "train_fraction"} <= set(z.table.columns)
    d = image_data.load({"source": "digits"})
    row = z.table.iloc[3]
    net = z.rebuild(int(row["model_id"]))
    assert net.activation == row["activation"]
    with torch.no_grad():
        acc = (net(d.normalize(d.x_test)).argmax(1) == d.y_test).double().mean().item()
    assert acc == pytest.approx(row["test_acc"], abs=1e-6)
    ws = data.load(out)
    for name in registry.names():
        assert registry.unsupported(name, ws.info) is None, name
    for name in ("nfn-np", "nfn-hnp", "graph"):
        res = train.fit(name, ws, lr=1e-3, epochs=1, batch_size=2)
        assert len(res.predictions["test"]) == len(ws.ids("test")) and np.isfinite(res.predictions["test"]).all()
    # The weight-blind control reads every hyper-parameter this zoo sampled, not only the
    # ResNet recipe's: one feature per varying column (one-hot per value for text columns).
    from metanets.hparams import hparam_table

    names, _ = hparam_table(ws)
    sampled = [k for k, v in spec.to_dict()["hparams"].items() if isinstance(v, dict)]
    varying = [k for k in sampled if z.table[k].nunique() > 1]
    assert {"activation", "dropout", "w_init", "init_std", "optimizer", "lr"} <= set(varying)
    for k in varying:
        text = not pd.api.types.is_numeric_dtype(z.table[k]) and not pd.api.types.is_bool_dtype(z.table[k])
        want = [f"{k}={v}" for v in sorted(z.table[k].astype(str).unique())] if text else [k]
        assert set(want) <= set(names), f"the control ignores sampled column {k!r}"
    assert not {n.split("=")[0] for n in names} - set(varying), "it reads only sampled hyper-parameters"


def test_spec_errors_name_the_field():
    base = load_spec("smallcnnzoo-digits").to_dict()
    with pytest.raises(SpecError, match=r"hparams\.optimizer.*'adamw'.*'sgd', 'adam' or 'rmsprop' \(allowed for arch = 'smallcnn'\)"):
        spec_from_dict({**base, "hparams": {**base["hparams"], "optimizer": "adamw"}})
    resnet = load_spec("digits-resnet8").to_dict()
    with pytest.raises(SpecError, match=r"hparams\.dropout.*unknown hyper-parameter for arch = 'resnet'"):
        spec_from_dict({**resnet, "hparams": {**resnet["hparams"], "dropout": 0.1}})
    with pytest.raises(SpecError, match=r"hparams\.optimizer.*'rmsprop'.*'adamw' or 'sgd' \(allowed for arch = 'resnet'\)"):
        spec_from_dict({**resnet, "hparams": {**resnet["hparams"], "optimizer": "rmsprop"}})
    with pytest.raises(SpecError, match=r"net\.padding.*only for arch = 'smallcnn'"):
        spec_from_dict({**resnet, "net": {**resnet["net"], "padding": "same"}})
    with pytest.raises(SpecError, match=r"net\.padding.*'full'.*allowed: valid, same"):
        spec_from_dict({**base, "net": {**base["net"], "padding": "full"}})
    with pytest.raises(SpecError, match=r"hparams\.dropout.*must be in \[0, 1\)"):
        spec_from_dict({**base, "hparams": {**base["hparams"], "dropout": 1.0}})


def test_valid_padding_on_8x8_digits_is_refused_before_training(tmp_path):
    from zoo.generate import generate

    base = load_spec("smallcnnzoo-digits").to_dict()
    spec = spec_from_dict({**base, "models": 4, "net": {**base["net"], "padding": "valid"}})
    with pytest.raises(SpecError, match=r"net\.padding.*8x8 images are too small.*padding = 'same'"):
        generate(spec, tmp_path / "z", progress=False)
    assert not (tmp_path / "z" / "manifest.json").exists()


def test_presets_and_resnet_fingerprints():
    names = [n for n in presets() if n.startswith("smallcnnzoo-")]
    assert sorted(names) == ["smallcnnzoo-cifar10", "smallcnnzoo-digits", "smallcnnzoo-digits-wasym",
                             "smallcnnzoo-fashion_mnist", "smallcnnzoo-mnist", "smallcnnzoo-svhn"]
    for n in names:
        s = load_spec(n)
        assert s.net.arch == "smallcnn" and len(s.checkpoints) >= 6
        C = 1 if s.net.grayscale else image_data.SHAPES[s.data["source"]][0]
        cfg = NetConfig(**{**s.net.__dict__, "in_channels": image_data.SHAPES[s.data["source"]][0]})
        assert Layout.from_module(build_net(cfg, 0)).num_params == 4970 and C == 1
        hp = s.sample_hparams(0)
        assert hp["optimizer"] in ("sgd", "adam", "rmsprop") and hp["train_fraction"] in (0.1, 0.25, 0.5, 1.0)
    up = load_spec("smallcnnzoo-cifar10")
    assert up.checkpoints == (0, 1, 2, 3, 20, 40, 60, 80, "final") and up.sample_hparams(5)["epochs"] == 86
    # ResNet specs serialise as before smallcnn existed (no arch-only keys in the net config)
    assert set(load_spec("digits-resnet8").net.to_dict()) == {"depth", "width", "norm", "activation", "in_channels",
                                                             "num_classes", "wasym", "figlu_scale", "asym_seed"}


# ------------------------------------------------------------------ W-Asym smallcnn

WCFG = NetConfig(arch="smallcnn", in_channels=1, num_classes=10, padding="same",
                 wasym=WAsym(n_fix=2, n_fix_linear=2, kappa=0.5, mode="filters"))


def _wasym_spec(models, epochs=2, checkpoints=(0, 2, "final")):
    base = load_spec("smallcnnzoo-digits-wasym").to_dict()
    return spec_from_dict({**base, "models": models, "checkpoints": list(checkpoints),
                           "hparams": {**base["hparams"], "epochs": epochs}})


def test_wasym_preset_is_smallcnnzoo_digits_with_the_digits_resnets_wasym():
    std, wa = load_spec("smallcnnzoo-digits").to_dict(), load_spec("smallcnnzoo-digits-wasym").to_dict()
    assert wa["net"].pop("wasym") == load_spec("digits-wasym-resnet8").to_dict()["net"]["wasym"]
    assert {k: v for k, v in wa.items() if k not in ("name", "description")} == \
        {k: v for k, v in std.items() if k not in ("name", "description")}
    s = load_spec("smallcnnzoo-digits-wasym")
    assert [s.sample_hparams(i) for i in range(20)] == [load_spec("smallcnnzoo-digits").sample_hparams(i)
                                                        for i in range(20)]


def test_wasym_smallcnn_layout_flags_fixed_entries_per_unit_and_keeps_the_imported_tensors(tmp_path):
    lay = Layout.from_module(build_net(WCFG, 0))
    assert lay.same_tensors(_upstream_layout(tmp_path)) and lay.num_params == 4970
    assert Layout.from_module(build_net(CFG, 0)).fixed_mask is None  # a standard smallcnn is unchanged
    m = lay.unflatten(torch.from_numpy(lay.fixed_mask))
    assert bool(m["conv2d.weight"].all())  # one input channel, n_fix = 2: the first conv is fully fixed
    per_filter = m["conv2d_1.weight"].flatten(2)
    assert bool((per_filter.all(2) | ~per_filter.any(2)).all())  # whole 3x3 filters
    for name in ("conv2d_1.weight", "conv2d_2.weight"):
        assert m[name].flatten(2).all(2).sum(1).tolist() == [2] * 16
    assert m["dense.weight"].sum(1).tolist() == [2] * 10
    assert not any(bool(m[n].any()) for n in m if n.endswith(".bias"))
    assert lay.num_fixed == 144 + 2 * 16 * 2 * 9 + 2 * 10
    # the same constants for every seed (from asym_seed), other constants for another asym_seed
    a, b = build_net(WCFG, 0).conv2d_1, build_net(WCFG, 5).conv2d_1
    assert torch.equal(a.fixed_values, b.fixed_values) and torch.equal(a.fixed_mask, b.fixed_mask)
    c = build_net(NetConfig(**{**WCFG.__dict__, "asym_seed": 1}), 0).conv2d_1
    assert not torch.equal(a.fixed_mask, c.fixed_mask)


def test_wasym_fixed_entries_do_not_move_in_grouped_training_for_any_optimizer():
    spec = _wasym_spec(40)
    data = image_data.load(spec.data)
    cfg = NetConfig(**{**spec.net.__dict__, "in_channels": 1})
    template = build_net(cfg)
    lay = Layout.from_module(template)
    mask = torch.from_numpy(lay.fixed_mask)
    values = torch.from_numpy(_fixed_arrays(template, lay)[0])  # what the store writes as fixed/values
    hps = {i: spec.sample_hparams(i) for i in range(40)}
    for opt in ("sgd", "adam", "rmsprop"):
        first = next(i for i in hps if hps[i]["optimizer"] == opt)
        same = [i for i in hps if all(hps[i][k] == hps[first][k] for k in ("optimizer", "train_fraction",
                                                                             "activation"))][:2]
        for r in train_smallcnn_group(_jobs(spec, same), cfg, data, [0, 2, "final"]):
            for ck in ("epoch_0", "epoch_2", "final"):
                w = torch.from_numpy(r.weights[ck])
                assert torch.equal(w[mask], values[mask]), (opt, ck)
            moved = torch.from_numpy(r.weights["final"] - r.weights["epoch_0"])
            assert moved[~mask].abs().max() > 1e-3 and bool((moved[mask] == 0).all())


def test_wasym_smallcnn_group_computes_what_the_single_net_computes():
    nets = [build_smallcnn(WCFG, s, {"w_init": "glorot_uniform"}) for s in (1, 2)]
    group = SmallCNNGroup(WCFG, nets, "cpu")
    x = torch.randn(2, 4, 1, 8, 8)
    with torch.no_grad():
        out = group.forward(x)
        for k, net in enumerate(nets):
            torch.testing.assert_close(out[k], net.eval()(x[k]), atol=1e-5, rtol=1e-5)
    # rows are what the net uses: the fixed constants, not the (unused) trained parameters
    lay = Layout.from_module(nets[0])
    rows = group.rows()
    assert torch.equal(rows[1, lay["conv2d.weight"].slice], nets[0].conv2d.fixed_values.reshape(-1))


def test_wasym_smallcnn_spec_errors_name_the_field():
    base = load_spec("smallcnnzoo-digits-wasym").to_dict()
    with pytest.raises(SpecError, match=r"net\.wasym\.n_fix.*16.*fan-in 16 of layer 'conv2d_1'.*1\.\.15"):
        spec_from_dict({**base, "net": {**base["net"], "wasym": {**base["net"]["wasym"], "n_fix": 16}}})
    with pytest.raises(SpecError, match=r"net\.wasym\.n_fix_linear.*fan-in 16 of layer 'dense'"):
        spec_from_dict({**base, "net": {**base["net"], "wasym": {**base["net"]["wasym"], "n_fix_linear": 20}}})
    with pytest.raises(SpecError, match=r"net\.wasym\.kappa.*must be > 0"):
        spec_from_dict({**base, "net": {**base["net"], "wasym": {**base["net"]["wasym"], "kappa": 0.0}}})


@pytest.mark.exactness
def test_generated_wasym_smallcnn_zoo_stores_flags_and_is_benchmarked_by_every_metanet(tmp_path):
    from metanets import bench, data
    from metanets.graph import EDGE_FLAGS, graph_for
    from zoo.generate import generate

    out = generate(_wasym_spec(16), tmp_path / "z", progress=False)
    z = zoo.open(out)
    assert z.layout.num_fixed == 740 and z.layout.num_trainable == 4230
    mask = z.layout.fixed_mask
    for ck in z.checkpoints:  # stored as the nets use them: the constants at the fixed entries
        w = z.weights(checkpoint=ck)
        assert np.array_equal(w[:, mask], np.broadcast_to(z.fixed_values[mask], w[:, mask].shape))
    d = image_data.load({"source": "digits"})
    row = z.table.iloc[5]
    net = z.rebuild(int(row["model_id"]))
    with torch.no_grad():
        acc = (net(d.normalize(d.x_test)).argmax(1) == d.y_test).double().mean().item()
    assert acc == pytest.approx(row["test_acc"], abs=1e-6)
    ws = data.load(out)
    assert ws.info.num_inputs == 4230  # the default trainable view drops the fixed entries
    assert torch.equal(ws.features("train", "full")[:, torch.from_numpy(mask)],
                       torch.from_numpy(z.fixed_values[mask]).expand(len(ws.ids("train")), -1))
    g = graph_for(ws.info.full_layout)
    assert int(g.edge_static[:, EDGE_FLAGS:].sum()) == 740
    names = ("mlp", "statnn", "nfn-np", "nfn-hnp", "graph")
    cfg = bench.BenchConfig(metanets=names, seeds=1, epochs=2, lr=1e-3, batch_size=4)
    result = bench.run([out], cfg, progress=False, log=lambda s: None)
    assert result["skipped"] == []
    assert sorted(r["metanet"] for r in result["runs"]) == sorted(names)
    assert all(r["status"] == "ok" and np.isfinite(r["test_r2"]) for r in result["runs"])
