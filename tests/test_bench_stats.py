"""Numbers a researcher can cite: CIs, matched accuracy, the hparams control, honest metrics,
diverged runs, the paper's protocol and StatNN."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from metanets import bench, data, registry, report, train, uncertainty
from metanets.errors import MetanetError
from zoo.fs import strict_json
from metanets.metrics import kendall_tau, r2, undefined_reason, weighted_r2, weighted_tau
from zoo.layout import Layout

pytestmark = pytest.mark.usefixtures("one_thread")


def _result(zoo_targets: dict, zoo_preds: dict, statuses=None) -> dict:
    """A benchmark result holding the given test predictions ({zoo: [S, n]}) of metanet 'm'."""
    runs, preds = [], []
    for z, p in zoo_preds.items():
        for s, row in enumerate(p):
            status = (statuses or {}).get((z, s), "ok")
            runs.append({"zoo": z, "metanet": "m", "seed": s, "lr": 1e-3, "status": status,
                         "note": "" if status == "ok" else f"metanet 'm' seed {s}: {status}"})
            if status == "ok":
                preds.append({"zoo": z, "metanet": "m", "seed": s, "model_id": np.arange(len(row)),
                              "target": zoo_targets[z], "prediction": row})
    zoos = [{"zoo": z, "target": "test_acc", "chance": 0.1, "n_train": 0, "n_val": 0, "n_test": len(t),
             "num_inputs": 1, "diverged_excluded": 0} for z, t in zoo_targets.items()]
    return {"zoos": zoos, "runs": runs, "predictions": preds, "sweeps": [],
            "config": {"lr": 1e-3, "params": "trainable", "seeds": 3, "epochs": 1, "batch_size": 2,
                       "lr_grid": [1e-3], "bootstrap": 400}}


# ------------------------------------------------------------------ weighted metrics

def test_weighted_scores_of_resample_counts_equal_the_scores_of_the_resampled_nets():
    rng = np.random.default_rng(0)
    y = rng.random(60)
    p = y + rng.normal(0, 0.2, (2, 60))
    idx = rng.integers(0, 60, (5, 60))
    w = np.stack([np.bincount(i, minlength=60) for i in idx]).astype(float)
    tau, rr = weighted_tau(y, p, w), weighted_r2(y, p, w)
    for b in range(5):
        for s in range(2):
            assert tau[b, s] == pytest.approx(kendall_tau(y[idx[b]], p[s][idx[b]]), abs=1e-12)
            assert rr[b, s] == pytest.approx(r2(y[idx[b]], p[s][idx[b]]), abs=1e-12)


def test_r2_and_tau_on_a_constant_target_are_undefined_with_the_reason():
    y, p = [0.5, 0.5, 0.5], [0.4, 0.5, 0.6]
    assert math.isnan(r2(y, p)) and math.isnan(kendall_tau(y, p))  # never sklearn's 1.0 or 0.0
    assert "target constant" in undefined_reason(y, p, "r2")
    assert undefined_reason([1, 2, 3], [1, 1, 1], "tau") == "predictions constant"
    assert undefined_reason([1, 2, 3], [1, 1, 1], "r2") is None  # R² of a constant prediction is defined
    res = _result({"z": np.full(20, 0.3)}, {"z": np.random.default_rng(1).random((2, 20))})
    rows, _ = uncertainty.summarize(res, B=50)
    assert rows[0]["r2_mean"] is None and "R² undefined: target constant" in rows[0]["note"]
    assert "undefined: target constant" in report.markdown({**res, "summary": rows, "comparisons": []})


# ------------------------------------------------------------------ CIs

def test_bootstrap_ci_is_seeded_covers_the_score_and_narrows_with_more_test_nets():
    rng = np.random.default_rng(3)

    def ci(n):
        y = rng.random(n)
        p = y + rng.normal(0, 0.15, (3, n))
        rows, _ = uncertainty.summarize(_result({"z": y}, {"z": p}), B=400, seed=7)
        return rows[0], y, p

    (small, y, p), (large, _, _) = ci(100), ci(1600)
    again, _ = uncertainty.summarize(_result({"z": y}, {"z": p}), B=400, seed=7)
    assert again[0] == small  # seeded: the same CI twice
    assert small["r2_lo"] < small["r2_mean"] < small["r2_hi"]
    assert small["tau_lo"] < small["tau_mean"] < small["tau_hi"]
    assert small["r2_mean"] == pytest.approx(np.mean([r2(y, q) for q in p]))
    # 16x the nets: about 4x narrower (the CI is over test nets)
    ratio = (small["tau_hi"] - small["tau_lo"]) / (large["tau_hi"] - large["tau_lo"])
    assert 2.5 < ratio < 6


def test_the_ci_covers_seeds_that_disagree_not_only_the_test_nets():
    """Two seeds, one good and one that learned nothing: a CI over test nets alone would be
    narrow around their mean; the reported one reaches both seeds' scores."""
    rng = np.random.default_rng(5)
    y = rng.random(400)
    good = y + rng.normal(0, 0.05, 400)
    bad = np.full(400, y.mean()) + rng.normal(0, 0.01, 400)
    rows, _ = uncertainty.summarize(_result({"z": y}, {"z": np.stack([good, bad])}), B=400)
    row = rows[0]
    scores = sorted([r2(y, good), r2(y, bad)])
    assert scores[1] > 0.9 and scores[0] < 0.05  # the seeds disagree
    assert row["r2_lo"] < scores[0] + 0.05 and row["r2_hi"] > scores[1] - 0.05
    # agreeing seeds: the CI stays about as narrow as the test nets make it
    rows, _ = uncertainty.summarize(_result({"z": y}, {"z": np.stack([good, good + 1e-3])}), B=400)
    assert rows[0]["r2_hi"] - rows[0]["r2_lo"] < 0.05


def _pair(n=600, seed=0):
    """Two zoos whose metanet is equally good at each accuracy (exact on untrained nets, noisy
    on trained ones); zoo 'b' holds far more untrained nets: they differ only in accuracy
    distribution."""
    rng = np.random.default_rng(seed)
    ya = rng.uniform(0.1, 0.9, n)
    yb = np.where(rng.random(n) < 0.7, rng.uniform(0.1, 0.3, n), rng.uniform(0.3, 0.9, n))

    def predict(y):
        return y + rng.normal(0, 1, (3, len(y))) * np.where(y < 0.3, 0.01, 0.15)

    return {"a": ya, "b": yb}, {"a": predict(ya), "b": predict(yb)}


def test_matched_accuracy_removes_a_gap_that_comes_only_from_the_accuracy_distribution():
    targets, preds = _pair()
    res = _result(targets, preds)
    rows, comps = uncertainty.summarize(res, B=400, match=True)
    gap = {c["view"]: c for c in comps}
    # plain: zoo b looks far easier (it holds more nets the metanet recognises exactly)
    assert gap["all"]["tau_lo"] > 0.05 and gap["all"]["r2_lo"] > 0.05
    # matched to the common histogram the metanets are equally good: the CI holds 0
    for k in ("r2", "tau"):
        assert gap["matched"][f"{k}_lo"] < 0 < gap["matched"][f"{k}_hi"]
        assert abs(gap["matched"][f"{k}_diff"]) < abs(gap["all"][f"{k}_diff"]) / 3
    assert 0.3 < res["match"]["overlap"] < 0.8
    above = {r["zoo"]: r for r in rows if r["view"] == "above_chance"}
    assert above["a"]["n_eff"] == pytest.approx((targets["a"] > 0.1).sum())


def test_matched_weights_reshape_each_zoo_to_the_common_histogram():
    rng = np.random.default_rng(2)
    t = {"a": rng.uniform(0, 1, 1000), "b": rng.uniform(0, 0.5, 1000)}
    w, overlap = uncertainty.matched_weights(t, bins=10)
    assert overlap == pytest.approx(0.5, abs=0.05)
    assert w["a"][t["a"] > 0.55].sum() == 0  # outside the overlap: never drawn
    hist = {z: np.histogram(t[z], bins=10, range=(0, 1), weights=w[z])[0] / w[z].sum() for z in t}
    np.testing.assert_allclose(hist["a"], hist["b"], atol=0.02)


def test_seeds_counted_are_shown_and_a_diverged_seed_is_not_averaged():
    rng = np.random.default_rng(4)
    y = rng.random(50)
    p = y + rng.normal(0, 0.1, (3, 50))
    res = _result({"z": y}, {"z": p}, statuses={("z", 1): "diverged"})
    rows, _ = uncertainty.summarize(res, B=50)
    assert rows[0]["seeds_counted"] == 2 and rows[0]["seeds_total"] == 3
    assert rows[0]["r2_mean"] == pytest.approx(np.mean([r2(y, p[0]), r2(y, p[2])]))
    md = report.markdown({**res, "summary": rows, "comparisons": []})
    assert "(2/3 seeds)" in md and "diverged: seed 1" in md


# ------------------------------------------------------------------ runs, sweep, protocol

def _fake(lr, val_r2, diverged=False):
    return train.FitResult("m", None, 0, lr, 1, val_r2, 0, 0, 0, 0, 0,
                           {"test": np.zeros(2, np.float32)}, [], 3 if diverged else None)


def test_the_sweep_never_selects_a_diverged_run():
    assert bench.best_lr([_fake(1e-3, 0.5), _fake(1e-2, 0.9, diverged=True)]) == 1e-3
    assert bench.best_lr([_fake(1e-2, 0.9, diverged=True)]) is None
    assert _fake(1, 0.9, diverged=True).status == "diverged"
    assert "epoch 3" in _fake(1, 0.9, diverged=True).note and "seed 0" in _fake(1, 0.9, diverged=True).note


def test_protocol_lim2024_is_the_papers_and_refuses_other_settings():
    cfg = bench.BenchConfig(protocol="lim2024").check()
    assert (cfg.batch_size, cfg.epochs, cfg.seeds, tuple(cfg.lr_grid), cfg.lr) == \
        (128, 50, 5, (1e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2), "auto")
    assert train.WEIGHT_DECAY == 1e-2
    with pytest.raises(MetanetError, match="lim2024 fixes epochs = 50"):
        bench.BenchConfig(protocol="lim2024", epochs=20).check()
    with pytest.raises(MetanetError, match="lim2024 fixes lr = auto"):
        bench.BenchConfig(protocol="lim2024", lr=1e-3).check()
    assert bench.BenchConfig(protocol="lim2024", lr="paper").check().lr_for("mlp", True) == 1e-4  # final_*.sh
    assert cfg.lr_select == "sweep" and bench.BenchConfig().check().lr_select == "seeds"
    with pytest.raises(MetanetError, match="lim2024 fixes lr-select = sweep"):
        bench.BenchConfig(protocol="lim2024", lr_select="seeds").check()


def test_lr_paper_gives_the_final_rates_of_the_paper_per_zoo():
    cfg = bench.BenchConfig(lr=bench.parse_lr("paper")).check()
    # final_*.sh: resnet8 (standard) vs sparse_resnet8 (W-Asym)
    assert [cfg.lr_for(m, False) for m in ("mlp", "dmc", "deepsets", "statnn")] == [1e-2, 1e-3, 1e-2, 1e-3]
    assert [cfg.lr_for(m, True) for m in ("mlp", "dmc", "deepsets", "statnn")] == [1e-4, 5e-3, 5e-3, 1e-2]
    assert cfg.lr_for("statnn-std", True) == "auto"


def test_statnn_reads_the_raw_statistics_with_unbiased_variance_like_the_paper():
    layout = Layout.from_shapes([("a", (6,), "bias"), ("b", (2, 5), "linear_weight")])
    x = torch.randn(4, layout.num_params, generator=torch.Generator().manual_seed(0))
    model = registry.get("statnn")(data.InputInfo(layout))
    assert not hasattr(model, "prepare")  # no standardisation
    got = model.inputs(data.tensor_stats(x, layout)).reshape(4, 2, 7)
    for i, t in enumerate(layout.tensors):
        v = x[:, t.slice]
        torch.testing.assert_close(got[:, i, 1], v.var(1))  # torch's default: unbiased, as train.py:54
        torch.testing.assert_close(got[:, i, 3], v.max(1).values)
    std = registry.get("statnn-std")(data.InputInfo(layout))
    std.prepare(data.tensor_stats(x, layout))
    torch.testing.assert_close(std.inputs(data.tensor_stats(x, layout)).mean(0), torch.zeros(14), atol=1e-5, rtol=0)


# ------------------------------------------------------------------ hparams control

def _hparam_zoo(root, n=120, seed=0):
    """A zoo whose accuracy is a function of its nets' lr and epochs; the weights are noise."""
    from zoo.store import ShardContent, write_zoo

    rng = np.random.default_rng(seed)
    layout = Layout.from_shapes([("w", (16,), "linear_weight")])
    lr = 10 ** rng.uniform(-4, -1, n)
    epochs = rng.integers(1, 10, n)
    opt = rng.choice(["adamw", "sgd"], n)
    acc = np.clip(0.1 + 0.08 * epochs - 0.05 * (np.log10(lr) + 2.5) ** 2 + 0.1 * (opt == "sgd"), 0, 1)
    table = pd.DataFrame({"lr": lr, "epochs": epochs, "optimizer": opt, "weight_decay": 1e-4,
                          "test_acc": acc.astype(np.float32), "diverged": False})
    content = ShardContent(ids=np.arange(n), weights={"final": rng.normal(size=(n, 16)).astype(np.float32)},
                           table=table, layout=layout)
    write_zoo(root, [content], name="hp", split_seed=seed)
    return root


@pytest.mark.exactness
def test_hparams_control_reads_the_zoo_table_not_the_weights(tmp_path):
    ws = data.load(_hparam_zoo(tmp_path / "hp"))
    from metanets.models.hparams import hparam_table

    names, x = hparam_table(ws)
    # no spec, no recorded columns (written before importers recorded them): every column that
    # is neither a metric nor bookkeeping; the constant weight_decay is dropped
    assert sorted(names) == ["epochs", "lr", "optimizer=adamw", "optimizer=sgd"]
    res = train.fit("hparams", ws, lr=None, seed=0)
    assert res.test_r2 > 0.8 and res.status == "ok"
    # the same nets with shuffled weights give the same predictions: it reads no weights
    ws.x = {s: v[torch.randperm(len(v), generator=torch.Generator().manual_seed(1))] for s, v in ws.x.items()}
    np.testing.assert_array_equal(train.fit("hparams", ws, lr=None, seed=0).predictions["test"],
                                  res.predictions["test"])


def test_hparams_on_a_zoo_without_hyperparameter_columns_is_reported_na(tmp_path):
    from zoo.generate.synthetic import make_zoo

    z = make_zoo(tmp_path / "syn", models=24)
    res = bench.run([z], bench.BenchConfig(metanets=("hparams", "statnn-gbm"), seeds=2, bootstrap=50),
                    progress=False, log=lambda *a: None)
    assert not [r for r in res["runs"] if r["metanet"] == "hparams"]
    assert [(k["metanet"], "no hyper-parameter columns" in k["reason"]) for k in res["skipped"]] == [("hparams", True)]
    md = report.markdown(res)
    assert "| hparams | n/a | n/a |" in md and "n/a: hparams on syn: " in md


# ------------------------------------------------------------------ fresh seeds, strict JSON

def test_with_the_papers_sweep_the_final_seeds_are_fresh_runs_not_the_sweep_winner(tmp_path):
    from zoo.generate.synthetic import make_zoo

    z = make_zoo(tmp_path / "s", models=48, mode="shift")
    res = bench.run([z], bench.BenchConfig(metanets=("statnn",), seeds=1, epochs=2, batch_size=16,
                                           lr_grid=(1e-3, 1e-2), bootstrap=50, lr_select="sweep"),
                    progress=False, log=lambda *a: None)
    run = res["runs"][0]
    won = next(s for s in res["sweeps"] if s["lr"] == run["lr"])
    assert run["test_r2"] != won["test_r2"]
    body = json.loads(json.dumps(strict_json(res | {"x": float("nan")})),
                      parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert body["x"] is None


def _fit(lr, seed, val, status="ok"):
    """What best_lr / best_mean_lr read of a train.FitResult."""
    from types import SimpleNamespace
    return SimpleNamespace(lr=lr, seed=seed, val_r2=val, status=status)


def test_the_rate_is_chosen_by_the_mean_of_its_seeds_not_by_one_lucky_run():
    # 5e-3 holds the single best run (0.70), 5e-4 the best mean (0.67 against 0.55)
    runs = [_fit(5e-4, 0, 0.67), _fit(5e-4, 1, 0.68), _fit(5e-4, 2, 0.66),
            _fit(5e-3, 0, 0.70), _fit(5e-3, 1, 0.45), _fit(5e-3, 2, 0.50)]
    assert bench.best_lr(runs) == 5e-3 and bench.best_mean_lr(runs) == 5e-4
    # a rate where one seed diverged is never chosen, however good its other seeds
    runs += [_fit(1e-2, 0, 0.9), _fit(1e-2, 1, float("nan"), "diverged"), _fit(1e-2, 2, 0.9)]
    assert bench.best_mean_lr(runs) == 5e-4
    assert bench.best_mean_lr([_fit(1e-3, 0, float("nan"))]) is None


def test_lr_select_seeds_scores_the_chosen_rates_seeds_and_shows_the_choice(tmp_path):
    from zoo.generate.synthetic import make_zoo

    z = make_zoo(tmp_path / "s", models=48, mode="shift")
    cfg = dict(metanets=("statnn",), seeds=2, epochs=2, batch_size=16, lr_grid=(1e-4, 1e-2), bootstrap=20)
    res = bench.run([z], bench.BenchConfig(**cfg), progress=False, log=lambda *a: None)
    assert res["config"]["lr_select"] == "seeds" and len(res["sweeps"]) == 4 and len(res["runs"]) == 2
    sw = pd.DataFrame(res["sweeps"])
    chosen = sw.groupby("lr").val_r2.mean().idxmax()
    assert {r["lr"] for r in res["runs"]} == {chosen}
    # the same runs a fixed rate trains: seeds 0..N-1 at that rate, no separate seed stream
    fixed = bench.run([z], bench.BenchConfig(**{**cfg, "lr": chosen}), progress=False, log=lambda *a: None)
    assert [r["test_r2"] for r in res["runs"]] == pytest.approx([r["test_r2"] for r in fixed["runs"]], rel=1e-5)
    md = report.markdown(res)
    means = sw.groupby("lr").val_r2.mean()
    assert f"**{means[chosen]:.3f} ± " in md and "| statnn | s |" in md
    with pytest.raises(MetanetError, match="lr_select='best' is invalid; allowed: seeds, sweep"):
        bench.BenchConfig(lr_select="best").check()


def test_epochs_and_seeds_take_per_metanet_overrides(tmp_path):
    assert bench.parse_per_metanet("20", "--epochs") == 20
    assert bench.parse_per_metanet("20,dmc=5", "--epochs") == {"*": 20, "dmc": 5}
    with pytest.raises(MetanetError, match="--epochs '20,dmc=x' is invalid"):
        bench.parse_per_metanet("20,dmc=x", "--epochs")
    with pytest.raises(MetanetError, match="seeds=0 for mlp is invalid"):
        bench.BenchConfig(seeds={"*": 2, "mlp": 0}).check()
    from zoo.generate.synthetic import make_zoo

    z = make_zoo(tmp_path / "s", models=40, mode="shift")
    res = bench.run([z], bench.BenchConfig(metanets=("statnn", "statnn-gbm"), seeds={"*": 1, "statnn": 2},
                                           epochs={"*": 3, "statnn": 2}, lr=1e-3, bootstrap=20),
                    progress=False, log=lambda *a: None)
    runs = pd.DataFrame(res["runs"])
    assert runs.groupby("metanet").size().to_dict() == {"statnn": 2, "statnn-gbm": 1}
    assert set(runs[runs.metanet == "statnn"].epochs) == {2}
    assert "seeds 1 (statnn 2), epochs 3 (statnn 2)" in report.markdown(res)


def test_lr_paper_picks_the_rate_by_whether_the_zoo_is_wasym(tmp_path):
    from zoo.generate.synthetic import make_zoo

    std, wasym = make_zoo(tmp_path / "std", models=24), make_zoo(tmp_path / "wasym", models=24, wasym=True)
    res = bench.run([std, wasym], bench.BenchConfig(metanets=("mlp",), seeds=1, epochs=1, batch_size=8,
                                                    lr="paper", bootstrap=20), progress=False, log=lambda *a: None)
    assert {r["zoo"]: r["lr"] for r in res["runs"]} == {"std": 1e-2, "wasym": 1e-4}
    assert not res["sweeps"]
