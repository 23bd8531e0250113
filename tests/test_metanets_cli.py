"""The `metanets` command line: bench outputs, train/predict, plugins, and clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from metanets.cli import main
from zoo.generate.synthetic import make_zoo

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_metanet.py"
FAST = ["--epochs", "3", "--batch-size", "16", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def zoos(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-zoos")
    return (make_zoo(root / "std", models=48, n_diverged=2, seed=5, mode="shift"),
            make_zoo(root / "wasym", models=48, wasym=True, seed=6, mode="shift"))


def _error(capsys, argv) -> str:
    """Run a command that must fail as a user error: exit 2, one line, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_bench_writes_every_result_file(zoos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", *map(str, zoos), "--metanets", "mlp,statnn,statnn-gbm", "--seeds", "2",
                 "--lr", "auto", "--out", str(out), *FAST]) == 0
    res = json.loads((out / "results.json").read_text())
    runs = pd.DataFrame(res["runs"])
    # 3 metanets x 2 zoos x 2 seeds test runs; 2 neural metanets x 2 zoos x 6 rates x 2 seeds tried
    assert len(runs) == 12 and len(res["sweeps"]) == 48
    for col in ("zoo", "metanet", "seed", "lr", "best_epoch", "val_r2", "test_r2", "val_tau", "test_tau",
                "train_time_s", "num_params"):
        assert col in runs
    assert res["zoos"][0]["diverged_excluded"] == 2
    # every seed of a (metanet, zoo) uses the rate whose seeds had the best mean validation R²,
    # and the scored runs are those seeds' runs at that rate
    for (m, z), g in runs[runs.metanet != "statnn-gbm"].groupby(["metanet", "zoo"]):
        sw = pd.DataFrame(res["sweeps"]).query("metanet == @m and zoo == @z")
        assert set(g.lr) == {sw.groupby("lr").val_r2.mean().idxmax()}
        tried = sw[sw.lr == g.lr.iloc[0]].sort_values("seed")
        assert list(tried.test_r2) == list(g.sort_values("seed").test_r2)
    assert len(pd.read_csv(out / "results.csv")) == 12
    md = (out / "results.md").read_text()
    assert "| metanet | std R² | std τ | wasym R² | wasym τ |" in md
    assert all(f"| {m} |" in md for m in ("mlp", "statnn", "statnn-gbm"))
    assert " ± " in md and "**learning-rate choice**" in md and "the chosen rate's seeds are scored" in md
    for png in ("pred_vs_true.png", "zoos_bar.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "std R²" in capsys.readouterr().out


def test_train_then_predict_reproduces_the_saved_metanets_predictions(zoos, tmp_path, capsys):
    model = tmp_path / "statnn.pt"
    assert main(["train", str(zoos[0]), "--metanet", "statnn", "--lr", "1e-3", "--out", str(model), *FAST[:4]]) == 0
    capsys.readouterr()
    csv = tmp_path / "pred.csv"
    assert main(["predict", str(model), str(zoos[0]), "--out", str(csv)]) == 0
    assert "R²" in capsys.readouterr().out

    from metanets import data, train

    ws = data.load(zoos[0])
    res = train.fit("statnn", ws, lr=1e-3, seed=0, epochs=3, batch_size=16)
    df = pd.read_csv(csv)
    assert list(df.model_id) == list(ws.ids("test"))
    torch.testing.assert_close(torch.tensor(df.prediction.to_numpy(), dtype=torch.float32),
                               torch.from_numpy(res.predictions["test"]), rtol=1e-5, atol=1e-6)


def test_a_plugin_metanet_is_benchmarked_without_editing_metazoo(zoos, tmp_path, capsys):
    assert main(["list", "--plugin", str(EXAMPLE)]) == 0
    assert "norms-mlp" in capsys.readouterr().out
    out = tmp_path / "plug"
    assert main(["bench", str(zoos[0]), "--metanets", "norms-mlp", "--plugin", str(EXAMPLE), "--seeds", "1",
                 "--lr", "1e-2", "--out", str(out), *FAST]) == 0
    assert "| norms-mlp |" in (out / "results.md").read_text()


def test_workers_give_the_one_process_results_plugins_included(zoos, tmp_path, capsys):
    """Two spawned processes share the (metanet, zoo) units, one thread each as here: every run,
    lr-choice run, prediction, n/a and summary equals the one-process benchmark's, in its order."""
    argv = [*map(str, zoos), "--metanets", "mlp,dmc,nfn-np,statnn-gbm,hparams,norms-mlp", "--plugin", str(EXAMPLE),
            "--seeds", "2", "--lr", "mlp=auto,dmc=1e-3,norms-mlp=1e-2", *FAST]
    got = {}
    for w in ("1", "2"):
        assert main(["bench", *argv, "--out", str(tmp_path / w), "--workers", w]) == 0
        got[w] = json.loads((tmp_path / w / "results.json").read_text())
    one, two = got["1"], got["2"]
    assert {r["metanet"] for r in one["runs"]} == {"mlp", "dmc", "statnn-gbm", "norms-mlp"}
    # n/a: NFN on ResNets; hparams on synthetic zoos (no sampled hyper-parameters); zoo by zoo
    assert [(s["zoo"], s["metanet"]) for s in one["skipped"]] == [
        ("std", "nfn-np"), ("std", "hparams"), ("wasym", "nfn-np"), ("wasym", "hparams")]
    for key in ("runs", "sweeps", "skipped", "summary", "comparisons"):
        a = [{k: v for k, v in r.items() if k not in ("train_time_s", "cpu_time_s")} for r in one[key]]
        b = [{k: v for k, v in r.items() if k not in ("train_time_s", "cpu_time_s")} for r in two[key]]
        assert a == b, key
    a, b = (pd.read_csv(tmp_path / w / "predictions.csv") for w in ("1", "2"))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert "norms-mlp" in capsys.readouterr().out


@pytest.mark.parametrize("extra,needle", [(["--workers", "0"], "--workers 0 is invalid; allowed: >= 1"),
                                          (["--workers", "2", "--device", "cuda"], "--workers 2 is for CPU runs")])
def test_bad_workers_are_one_line_errors(zoos, tmp_path, capsys, extra, needle):
    err = _error(capsys, ["bench", str(zoos[0]), "--metanets", "hparams", "--out", str(tmp_path / "o"), *extra])
    assert needle in err


def test_a_plugin_that_registers_nothing_is_a_clear_error(zoos, tmp_path, capsys):
    plug = tmp_path / "empty_plugin.py"
    plug.write_text("import torch\n\nclass Forgotten(torch.nn.Module):\n    view = 'vector'\n")
    err = _error(capsys, ["bench", str(zoos[0]), "--plugin", str(plug), "--out", str(tmp_path / "o")])
    assert "registered no metanet" in err and str(plug) in err


def test_a_plugin_whose_forward_has_the_wrong_shape_is_a_clear_error(zoos, tmp_path, capsys):
    plug = tmp_path / "wrong_shape.py"
    plug.write_text(
        "import torch\nfrom metanets import register\n\n"
        "@register('wrong-shape')\nclass W(torch.nn.Module):\n    view = 'vector'\n"
        "    def __init__(self, info):\n        super().__init__()\n"
        "        self.lin = torch.nn.Linear(info.num_inputs, 4)\n"
        "    def forward(self, x):\n        return self.lin(x)\n")
    err = _error(capsys, ["bench", str(zoos[0]), "--metanets", "wrong-shape", "--plugin", str(plug),
                          "--lr", "1e-3", "--seeds", "1", "--out", str(tmp_path / "o"), *FAST])
    assert "'wrong-shape'" in err and "(2, 4)" in err and "[2] or [2, 1]" in err


def test_a_path_that_is_not_a_zoo_is_a_clear_error(tmp_path, capsys):
    err = _error(capsys, ["bench", str(tmp_path), "--out", str(tmp_path / "o")])
    assert str(tmp_path) in err and "not a metazoo zoo" in err


def test_an_unknown_schema_version_is_a_clear_error(zoos, tmp_path, capsys):
    import shutil

    bad = tmp_path / "future"
    shutil.copytree(zoos[0], bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["schema_version"] = 99
    (bad / "manifest.json").write_text(json.dumps(m))
    err = _error(capsys, ["bench", str(bad), "--out", str(tmp_path / "o")])
    assert "schema version 99" in err


def test_two_zoos_with_different_targets_in_one_table_is_a_clear_error(zoos, tmp_path, capsys):
    import shutil

    other = tmp_path / "loss-zoo"
    shutil.copytree(zoos[1], other)
    m = json.loads((other / "manifest.json").read_text())
    m["target"] = "test_loss"
    (other / "manifest.json").write_text(json.dumps(m))
    err = _error(capsys, ["bench", str(zoos[0]), str(other), "--out", str(tmp_path / "o")])
    assert "different targets" in err and "'test_loss'" in err and "'test_acc'" in err


def test_a_zoo_too_small_for_the_split_says_how_many_models_are_needed(tmp_path, capsys):
    tiny = make_zoo(tmp_path / "tiny", models=6)
    err = _error(capsys, ["bench", str(tiny), "--metanets", "statnn", "--out", str(tmp_path / "o")])
    assert "too small" in err and "at least 8 models" in err


def test_an_unknown_metanet_name_lists_the_known_ones(zoos, tmp_path, capsys):
    err = _error(capsys, ["bench", str(zoos[0]), "--metanets", "mlp,transformer", "--out", str(tmp_path / "o")])
    assert "'transformer'" in err and "mlp, dmc, deepsets, statnn, statnn-gbm" in err


@pytest.mark.parametrize("argv, needle", [
    (["--seeds", "0"], "seeds=0"), (["--epochs", "0"], "epochs=0"), (["--lr", "fast"], "--lr 'fast'"),
    (["--lr", "-1"], "--lr '-1'"),
])
def test_bad_options_name_the_option_and_allowed_values(zoos, tmp_path, capsys, argv, needle):
    err = _error(capsys, ["bench", str(zoos[0]), "--metanets", "statnn", "--out", str(tmp_path / "o"), *argv])
    assert needle in err and "allowed" in err


def test_lr_accepts_one_rate_auto_or_per_metanet_rates():
    from metanets.bench import BenchConfig, parse_lr

    assert parse_lr("auto") == "auto" and parse_lr("5e-4") == 5e-4
    per = parse_lr("mlp=auto,dmc=1e-3")
    assert per == {"mlp": "auto", "dmc": 1e-3}
    cfg = BenchConfig(lr=per).check()
    assert cfg.lr_for("dmc") == 1e-3 and cfg.lr_for("mlp") == "auto" and cfg.lr_for("statnn") == "auto"


@pytest.mark.slow  # trains 24 real digits nets through zoo.generate
def test_demo_generates_the_two_digits_zoos_once_and_benchmarks_both(tmp_path, capsys):
    pytest.importorskip("zoo.generate")
    argv = ["demo", "--out", str(tmp_path), "--models", "12", "--metanets", "statnn,statnn-gbm", "--seeds", "1",
            "--epochs", "2", "--lr", "1e-3", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| statnn |" in out and "digits-wasym" in out
    res = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert [z["path"] for z in res["zoos"]] == [str(tmp_path / "digits-std"), str(tmp_path / "digits-wasym")]
    assert main(argv) == 0  # the second call reuses the complete zoos
    assert capsys.readouterr().out.count("reusing") == 2


def _strict_json(path):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


def _plugin(tmp_path, name, body):
    plug = tmp_path / f"{name.replace('-', '_')}.py"
    plug.write_text("import torch\nfrom metanets import register\n\n"
                    f"@register('{name}')\nclass P(torch.nn.Module):\n    view = 'vector'\n"
                    "    def __init__(self, info):\n        super().__init__()\n"
                    "        self.lin = torch.nn.Linear(info.num_inputs, 1)\n"
                    f"    def forward(self, x):\n        {body}\n")
    return plug


def test_a_plugin_returning_nan_is_reported_with_its_name_and_seed(zoos, tmp_path, capsys):
    plug = _plugin(tmp_path, "nan-net", "return self.lin(x).squeeze(-1) * float('nan') if not self.training "
                                        "else self.lin(x).squeeze(-1)")
    out = tmp_path / "o"
    assert main(["bench", str(zoos[0]), "--metanets", "nan-net,statnn-gbm", "--plugin", str(plug), "--seeds", "2",
                 "--lr", "1e-3", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "metanet 'nan-net' seed 0" in printed and "predictions not finite" in printed
    res = _strict_json(out / "results.json")  # strict JSON: null, never NaN
    runs = pd.DataFrame(res["runs"])
    assert set(runs[runs.metanet == "nan-net"].status) == {"nan_predictions"}
    md = (out / "results.md").read_text()
    assert "| nan-net | n/a | n/a |" in md and "nan-net on std: nan predictions: seed 0, 1" in md


def test_a_diverging_plugin_is_reported_diverged_and_its_seeds_not_counted(zoos, tmp_path, capsys):
    plug = _plugin(tmp_path, "boom", "return self.lin(x).squeeze(-1) * 1e30 * 1e30")
    out = tmp_path / "o"
    assert main(["bench", str(zoos[0]), "--metanets", "boom", "--plugin", str(plug), "--seeds", "2",
                 "--lr", "1e-3", "--out", str(out), *FAST]) == 0
    res = _strict_json(out / "results.json")
    assert {r["status"] for r in res["runs"]} == {"diverged"}
    assert res["summary"][0]["seeds_counted"] == 0 and "diverged: seed 0, 1" in res["summary"][0]["note"]


def test_a_plugin_reusing_a_builtin_name_is_refused_and_blamed(tmp_path, capsys):
    plug = _plugin(tmp_path, "mlp", "return self.lin(x).squeeze(-1)")
    err = _error(capsys, ["list", "--plugin", str(plug)])
    assert str(plug) in err and "'mlp'" in err and "already taken by the built-in metanets.models.mlp.MLP" in err


def test_out_that_is_a_file_is_refused_before_any_training(zoos, tmp_path, capsys, monkeypatch):
    from metanets import bench

    def no_training(*a, **k):
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr(bench, "run", no_training)
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    err = _error(capsys, ["bench", str(zoos[0]), "--out", str(target)])
    assert str(target) in err and "is a file" in err
    assert target.read_text() == "keep me"
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    err = _error(capsys, ["bench", str(zoos[0]), "--out", str(blocked / "sub")])
    assert str(blocked / "sub") in err and "not writable" in err


def test_match_accuracy_prints_the_matched_scores_beside_the_plain_ones(zoos, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["bench", *map(str, zoos), "--metanets", "statnn-gbm", "--seeds", "1", "--match-accuracy",
                 "--bootstrap", "100", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "common accuracy histogram" in printed and "above chance" in printed
    assert "ΔR² all | Δτ all | ΔR² matched" in printed
    summ = pd.read_csv(out / "summary.csv")
    assert set(summ.view) == {"all", "matched", "above_chance"}
    assert (summ.r2_lo <= summ.r2_hi).all() and len(pd.read_csv(out / "comparisons.csv")) == 3
