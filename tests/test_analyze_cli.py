"""Pair zoos ([pairs] size = k) and `zoo analyze lmc | align | mli` end to end on tiny zoos,
with their one-line errors."""
import copy
import json

import pytest

from conftest import TINY
from zoo import SpecError
from zoo.cli import main
from zoo.generate.spec import spec_from_dict


def pair_dict(wasym: bool = False, pairs: int | None = 2, checkpoints=(0, "final")) -> dict:
    d = copy.deepcopy(TINY)
    d.update(models=4, models_per_shard=4, checkpoints=list(checkpoints))
    if pairs:
        d["pairs"] = {"size": pairs}
    if not wasym:
        del d["net"]["wasym"]
    return d


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def zoos(tmp_path_factory, one_thread):
    from zoo.generate import generate

    root = tmp_path_factory.mktemp("analyze")
    made = {}
    for name, d in (("std", pair_dict()), ("wasym", pair_dict(wasym=True)),
                    ("plain", pair_dict(pairs=None, checkpoints=("final",)))):
        made[name] = generate(spec_from_dict(d), root / name, group_size=2, progress=False)
    return made


def test_a_tuple_shares_its_hyper_parameters_and_differs_in_seed():
    spec = spec_from_dict({**pair_dict(), "models": 6, "pairs": {"size": 3}})
    hp = [spec.sample_hparams(i) for i in range(6)]
    assert hp[0] == hp[1] == hp[2] and hp[3] == hp[4] == hp[5] and hp[0] != hp[3]
    assert len({spec.model_seed(i) for i in range(6)}) == 6
    assert [spec.pair_of(i) for i in range(6)] == [0, 0, 0, 1, 1, 1]
    assert spec.to_dict()["pairs"] == {"size": 3}
    # a spec without pairs keeps its fingerprint and draws
    plain = spec_from_dict(pair_dict(pairs=None))
    assert "pairs" not in plain.to_dict()
    assert spec_from_dict({**pair_dict(pairs=None), "pairs": {"size": 1}}).fingerprint() == plain.fingerprint()


@pytest.mark.parametrize("patch,needle", [({"pairs": {"size": 0}}, "pairs.size"),
                                          ({"pairs": {"size": 3}}, "multiple of pairs.size"),
                                          ({"pairs": {"k": 2}}, "'pairs'"),
                                          ({"pairs": 2}, "'pairs'")])
def test_bad_pairs_fail_naming_the_field(patch, needle):
    with pytest.raises(SpecError, match=needle):
        spec_from_dict({**pair_dict(pairs=None), **patch})


def test_a_pair_zoo_records_its_pairs(zoos):
    import zoo

    t = zoo.open(zoos["std"]).table
    assert t["pair"].tolist() == [0, 0, 1, 1]
    assert t.loc[0, "lr"] == t.loc[1, "lr"] != t.loc[2, "lr"]
    assert t.loc[0, "seed"] != t.loc[1, "seed"]
    # asymmetry constants: one set per zoo, so both nets of a pair hold them
    z = zoo.open(zoos["wasym"])
    a, b = z.rebuild(0), z.rebuild(1)
    assert a.conv1.fixed_values is not None and a.conv1.fixed_values.equal(b.conv1.fixed_values)


def test_lmc_with_alignment_writes_tables_curves_and_plots(capsys, zoos, tmp_path, one_thread):
    out = tmp_path / "lmc"
    code, text, err = run(capsys, "analyze", "lmc", zoos["std"], zoos["wasym"], "--align", "weight-matching",
                          "--alphas", "5", "--out", out, "--quiet")
    assert code == 0, err
    assert "| tiny-digits | standard | weight-matching | 2 |" in text
    assert "| tiny-digits | W-Asym | naive | 2 |" in text
    assert "not aligned (W-Asym)" in text and "moves them" in text  # the reason, in the notes
    for f in ("results.md", "results.json", "summary.csv", "pairs.csv", "curves.csv", "comparisons.csv",
              "curves.png", "barriers.png"):
        assert (out / f).stat().st_size > 0, f
    res = json.loads((out / "results.json").read_text())
    rows = {(r["variant"], r["method"]): r for r in res["summary"]}
    assert set(rows) == {("standard", "naive"), ("standard", "weight-matching"), ("W-Asym", "naive")}
    assert rows[("standard", "weight-matching")]["max_abs_dlogits_mean"] < 1e-4
    # the two tiny zoos share seed and recipe: their pairs match, so the comparison is paired
    assert all(c["paired"] for c in res["comparisons"])
    import pandas as pd

    curves = pd.read_csv(out / "curves.csv")
    assert len(curves) == 3 * 2 * 5  # (zoo, method) x pairs x alphas


def test_align_and_mli_commands(capsys, zoos, tmp_path, one_thread):
    code, text, err = run(capsys, "analyze", "align", zoos["std"], "--out", tmp_path / "al", "--quiet", "--no-verify")
    assert code == 0, err
    assert "| tiny-digits | 0 | 0 | 1 |" in text and (tmp_path / "al" / "align.csv").exists()
    code, text, err = run(capsys, "analyze", "mli", zoos["std"], zoos["wasym"], "--alphas", "5", "--out",
                          tmp_path / "mli", "--quiet")
    assert code == 0, err
    assert "| tiny-digits | W-Asym | 4 |" in text and "chord from (0, L(0)) to (1, L(1))" in text
    for f in ("results.md", "nets.csv", "curves.csv", "curves.png", "mli.png"):
        assert (tmp_path / "mli" / f).exists(), f
    code, text, _ = run(capsys, "analyze", "mli", zoos["std"], "--alphas", "5", "--upstream-compat", "--quiet")
    assert code == 0 and "through the first two points" in text


def test_workers_give_the_serial_results_in_the_serial_order(zoos, one_thread):
    """Pairs (nets) shared by two spawned processes, each with one thread as here: every record
    and curve equals the one this process computes, in the same order."""
    from dataclasses import replace

    from zoo.analyze.study import Options, run_align, run_lmc, run_mli

    base = Options(alphas=5, align="weight-matching", restarts=1)
    for fn, path in ((run_lmc, zoos["std"]), (run_mli, zoos["wasym"]), (run_align, zoos["std"])):
        one, two = fn(path, base, quiet=True), fn(path, replace(base, workers=2), quiet=True)
        assert len(one["records"]) >= 2
        assert one["records"] == two["records"], fn.__name__
        assert one.get("curves") == two.get("curves") and one["notes"] == two["notes"]


@pytest.mark.parametrize("argv,needle", [
    (["lmc", "{tmp}/nothing"], "not a zoo (no manifest.json)"),
    (["lmc", "{plain}"], "no 'pair' column"),
    (["mli", "{plain}"], "no epoch_0 checkpoint"),
    (["lmc", "{std}", "--alphas", "2"], "--alphas 2: need at least 3 points"),
    (["lmc", "{std}", "--batch", "0"], "--batch 0: must be >= 1"),
    (["align", "{wasym}"], "W-Asym net's fixed entries"),
    (["lmc", "{std}", "--device", "tpu"], "--device 'tpu'"),
    (["mli", "{std}", "--workers", "0"], "--workers 0: must be >= 1"),
])
def test_errors_are_one_line_and_name_the_input(capsys, zoos, tmp_path, argv, needle):
    argv = [a.format(tmp=tmp_path, **{k: str(v) for k, v in zoos.items()}) for a in argv]
    code, out, err = run(capsys, "analyze", *argv, "--quiet")
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_the_bench_script_checks_and_times_both_variants(capsys, one_thread):
    from scripts import bench_analyze

    assert bench_analyze.main(["--arch", "smallcnn", "--images", "64", "--alphas", "5", "--windows", "1"]) == 0
    out = capsys.readouterr().out
    assert "batched" in out and "one-at-a-time" in out and "max |dloss| between the variants" in out


def test_mli_runs_on_an_imported_small_cnn_zoo_and_lmc_says_it_has_no_pairs(tmp_path, capsys, one_thread):
    """A published zoo as imported (Small CNN Zoo: runs with epoch-0 and final weights, no pairs):
    `mli` rebuilds every run at both checkpoints, on the zoo's own dataset or `--data` (here an
    npz of 28x28 images, as MNIST), and each curve's ends are those nets' own losses on the
    subset; `lmc` refuses it, naming the missing pair column."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from hub_fixtures import SMALL_TF_CNN, write_smallcnnzoo

    import zoo
    from zoo.analyze.pairs import data_of, subset
    from zoo.hub.importers import run_import

    write_smallcnnzoo(tmp_path / "up", runs=3, layout=SMALL_TF_CNN)
    run_import("smallcnnzoo", tmp_path / "up", tmp_path / "zoo", options={"epochs": "0,86", "dataset": "mnist"})
    rng = np.random.default_rng(0)
    npz = tmp_path / "mnist-like.npz"
    np.savez(npz, x_train=rng.random((96, 28, 28), dtype=np.float32), y_train=rng.integers(0, 10, 96),
             x_test=rng.random((32, 28, 28), dtype=np.float32), y_test=rng.integers(0, 10, 32))
    code, text, err = run(capsys, "analyze", "mli", tmp_path / "zoo", "--data", f"npz:{npz}", "--alphas", "5",
                          "--subset", "64", "--out", tmp_path / "mli", "--quiet")
    assert code == 0, err
    (res,) = json.loads((tmp_path / "mli" / "results.json").read_text())["results"]
    rows = {int(r["model_id"]): r for r in res["records"]}
    z = zoo.open(tmp_path / "zoo")
    assert sorted(rows) == [int(i) for i in z.ids] and len(rows) == 3
    data = data_of(z, f"npz:{npz}")
    idx = subset(len(data.y_train), 64)
    x, y = data.normalize(data.x_train[idx]), data.y_train[idx]
    for mid, row in rows.items():
        with torch.no_grad():
            init = F.cross_entropy(z.rebuild(mid, "epoch_0")(x), y).item()
            final = F.cross_entropy(z.rebuild(mid, "final")(x), y).item()
        assert row["loss_init"] == pytest.approx(init, rel=1e-5)
        assert row["loss_final"] == pytest.approx(final, rel=1e-5)
    code, _, err = run(capsys, "analyze", "lmc", tmp_path / "zoo", "--data", f"npz:{npz}", "--quiet")
    assert code == 2 and "no 'pair' column" in err and len(err.strip().splitlines()) == 1
