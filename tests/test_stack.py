"""Stacked training (metanets.stack): the lr sweep and the seeds of a metanet trained as one
model give every run the result it gets trained alone with ``train.fit``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from metanets import bench, data, registry, stack, train
from metanets.models import _registry
from metanets.models.mlp import MLP
from zoo.generate.synthetic import make_zoo

pytestmark = pytest.mark.usefixtures("one_thread")

STACKED = ["mlp", "statnn", "statnn-std", "deepsets", "dmc"]
#: A rate at which every metanet's training loss overflows in the first epoch (Adam steps ~lr).
HUGE = 1e12


@pytest.fixture(scope="module")
def zoo_path(tmp_path_factory):
    return make_zoo(tmp_path_factory.mktemp("stack") / "shift", models=48, seed=1, mode="shift")


@pytest.fixture
def float64():
    """Both paths in float64, where their rounding differences (a GEMM over R concatenated
    weights, a grouped conv) stay near 1e-16 and any real difference (another replica's lr,
    batch or init, a missed mask) shows in the predictions' first digits."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _ws64(path):
    ws = data.load(path)
    ws.x = {s: x.double() for s, x in ws.x.items()}
    return ws


def assert_same_run(a: train.FitResult, b: train.FitResult, what: str):
    assert (a.lr, a.seed, a.best_epoch, a.diverged_epoch, a.status) == \
           (b.lr, b.seed, b.best_epoch, b.diverged_epoch, b.status), what
    np.testing.assert_allclose(a.val_r2_history, b.val_r2_history, rtol=1e-9, atol=1e-9, err_msg=what)
    for s in ("val", "test"):
        np.testing.assert_allclose(a.predictions[s], b.predictions[s], rtol=1e-9, atol=1e-9, err_msg=f"{what} {s}")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:  # the kept model itself, BatchNorm running statistics included
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-9, atol=1e-9, msg=f"{what}: {k}")


def test_per_replica_adamw_is_torch_adamw_for_each_rate_and_freezes_masked_replicas(float64):
    gen = torch.Generator().manual_seed(0)
    lrs = [1e-3, 3e-2, 0.5]
    start = torch.randn(3, 4, 5, generator=gen)
    grads = [torch.randn(3, 4, 5, generator=gen) for _ in range(6)]
    stacked = start.clone()
    opt = stack.StackedAdamW([stacked], lrs, weight_decay=1e-2)
    mask = torch.tensor([True, True, True])
    for i, g in enumerate(grads):
        if i == 4:  # replica 2 diverges: a nan gradient that must not land, nor any later step
            mask = torch.tensor([True, True, False])
            g = g.clone()
            g[2] = float("nan")
        opt.step([g], mask)
    for r, lr in enumerate(lrs):
        p = start[r].clone().requires_grad_()
        ref = torch.optim.AdamW([p], lr=lr, weight_decay=1e-2)
        for g in grads[:4 if r == 2 else None]:
            p.grad = g[r].clone()
            ref.step()
        torch.testing.assert_close(stacked[r], p.detach(), rtol=1e-12, atol=1e-14)
    assert not torch.allclose(stacked[0], stacked[1])  # the rates really act


@pytest.mark.parametrize("name", STACKED)
def test_stacked_lr_sweep_gives_every_rate_its_run_alone(zoo_path, float64, name):
    ws = _ws64(zoo_path)
    lrs = (1e-4, 2e-3, HUGE, 1e-2)
    kw = dict(epochs=3, batch_size=8, tag="sweep")
    assert stack.supports(name)
    stacked = stack.fit_stacked(name, ws, [(lr, 0) for lr in lrs], **kw)
    alone = [train.fit(name, ws, lr=lr, seed=0, **kw) for lr in lrs]
    for a, b in zip(stacked, alone):
        assert_same_run(a, b, f"{name} lr {b.lr}")
    assert [r.status for r in alone] == ["ok", "ok", "diverged", "ok"]
    # the rates' runs really differ, so a replica trained at another's rate would be caught
    tests = [r.predictions["test"] for r in alone if r.status == "ok"]
    assert all(np.abs(p - q).max() > 1e-4 for i, p in enumerate(tests) for q in tests[i + 1:])


@pytest.mark.parametrize("name", STACKED)
def test_stacked_seeds_read_their_own_batches_and_equal_each_seed_alone(zoo_path, float64, name):
    ws = _ws64(zoo_path)
    kw = dict(epochs=2, batch_size=8)
    stacked = stack.fit_stacked(name, ws, [(2e-3, s) for s in (0, 1, 2)], **kw)
    alone = [train.fit(name, ws, lr=2e-3, seed=s, **kw) for s in (0, 1, 2)]
    for a, b in zip(stacked, alone):
        assert_same_run(a, b, f"{name} seed {b.seed}")
    assert np.abs(alone[0].predictions["test"] - alone[1].predictions["test"]).max() > 1e-4


def test_fit_runs_stacks_what_it_can_and_trains_the_rest_run_by_run(zoo_path, monkeypatch):
    ws = data.load(zoo_path)
    calls = []
    real = stack.fit_stacked
    monkeypatch.setattr(stack, "fit_stacked", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    seen = []
    res = bench.fit_runs("statnn", ws, [(1e-3, 0), (1e-2, 0)], epochs=1, batch_size=8, on_result=seen.append)
    assert calls == ["statnn"] and [r.lr for r in res] == [1e-3, 1e-2] and seen == res
    bench.fit_runs("statnn", ws, [(1e-3, 0), (1e-2, 0)], epochs=1, batch_size=8, stack=False)
    bench.fit_runs("statnn-gbm", ws, [(None, 0), (None, 1)])  # sklearn: nothing to stack
    assert calls == ["statnn"]


def test_more_runs_than_one_stack_holds_train_in_groups_in_order(zoo_path, float64, monkeypatch):
    ws = _ws64(zoo_path)
    sizes = []
    real = stack.fit_stacked
    monkeypatch.setattr(stack, "MAX_REPLICAS", 2)
    monkeypatch.setattr(stack, "fit_stacked", lambda n, w, runs, **k: sizes.append(len(runs)) or real(n, w, runs, **k))
    runs = [(1e-3, 0), (1e-2, 0), (3e-3, 1)]
    seen, ticks = [], []
    res = bench.fit_runs("statnn", ws, runs, epochs=2, batch_size=8, on_result=seen.append,
                         progress=lambda e, scores: ticks.append((e, len(scores))))
    assert sizes == [2, 1] and [(r.lr, r.seed) for r in res] == runs and seen == res
    assert ticks == [(1, 2), (2, 2), (1, 1), (2, 1)]  # every epoch of every group, one score per run
    for r in res:
        assert_same_run(r, train.fit("statnn", ws, lr=r.lr, seed=r.seed, epochs=2, batch_size=8), f"lr {r.lr}")


@pytest.mark.exactness
def test_a_plugin_subclassing_a_builtin_is_never_stacked(zoo_path, monkeypatch):
    monkeypatch.setattr(_registry, "REGISTRY", dict(_registry.REGISTRY))  # the plugin leaves with the test

    @registry.register("test-stack-mlp-plugin")
    class Doubled(MLP):
        def forward(self, x):  # a different function: stacking MLP's would be wrong
            return 2 * super().forward(x)

    assert not stack.supports("test-stack-mlp-plugin") and stack.supports("mlp")
    ws = data.load(zoo_path)
    a = bench.fit_runs("test-stack-mlp-plugin", ws, [(1e-3, 0), (1e-2, 0)], epochs=1, batch_size=8)[0]
    b = train.fit("test-stack-mlp-plugin", ws, lr=1e-3, seed=0, epochs=1, batch_size=8)
    np.testing.assert_array_equal(a.predictions["test"], b.predictions["test"])


def test_bench_gives_the_same_tables_stacked_or_not(zoo_path):
    """Scores, best epochs and statuses equal (fp32: to rounding), only timing fields differ."""
    cfg = dict(metanets=("mlp", "statnn", "statnn-gbm"), seeds=2, epochs=2, batch_size=8, lr_grid=(1e-3, 1e-2),
               bootstrap=10)
    on = bench.run([zoo_path], bench.BenchConfig(**cfg), progress=False, log=lambda *a: None)
    off = bench.run([zoo_path], bench.BenchConfig(**cfg, stack=False), progress=False, log=lambda *a: None)
    for key in ("runs", "sweeps"):
        assert len(on[key]) == len(off[key]) == (6 if key == "runs" else 8)  # 2 rates x 2 seeds tried
        for a, b in zip(on[key], off[key]):
            for k in a:
                if k in ("train_time_s", "cpu_time_s"):
                    continue
                if isinstance(a[k], float):
                    assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5, nan_ok=True), (key, a["metanet"], k)
                else:
                    assert a[k] == b[k], (key, a["metanet"], k)
    assert on["config"]["stack"] is True and off["config"]["stack"] is False


@pytest.mark.exactness
def test_a_streamed_zoo_trains_stacked_exactly_like_the_in_memory_one(tmp_path):
    path = make_zoo(tmp_path / "z", models=24, seed=2, mode="shift", shard_size=8)
    mem, streamed = data.load(path), data.load(path, in_memory=False)
    assert isinstance(streamed.x["train"], data.StreamedRows)
    for runs in ([(1e-3, 0), (1e-2, 0)], [(1e-3, 0), (1e-3, 1)]):  # shared batches, then own batches
        a = stack.fit_stacked("mlp", mem, runs, epochs=2, batch_size=4)
        b = stack.fit_stacked("mlp", streamed, runs, epochs=2, batch_size=4)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.predictions["test"], y.predictions["test"])


def test_bench_metanets_times_stacked_beside_run_by_run(capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from scripts import bench_metanets

    assert bench_metanets.main(["--models", "24", "--width", "0.25", "--in-channels", "1", "--no-read",
                                "--stack-only", "--metanets", "statnn,statnn-gbm", "--epochs", "1", "--seeds", "2",
                                "--windows", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| statnn |")]
    assert [r.split("|")[2].strip() for r in rows] == ["sweep (6)", "seeds (2)"]
    assert all(r.split("|")[5].strip().endswith("x") for r in rows)  # the speed-up column
    assert "statnn-gbm" not in "".join(rows)  # nothing to stack: not timed here


def test_metanets_bench_no_stack_is_recorded_and_documented(zoo_path, tmp_path, capsys):
    import json

    from metanets import cli

    assert cli.main(["bench", str(zoo_path), "--metanets", "statnn", "--seeds", "2", "--epochs", "1", "--lr", "1e-3",
                     "--bootstrap", "10", "--no-progress", "--no-stack", "--out", str(tmp_path / "o")]) == 0
    result = json.loads((tmp_path / "o" / "results.json").read_text())
    assert result["config"]["stack"] is False and len(result["runs"]) == 2
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    assert "--no-stack" in capsys.readouterr().out


def test_metanets_train_refuses_no_stack_without_a_sweep_naming_the_options(zoo_path, tmp_path, capsys):
    from metanets import cli

    assert cli.main(["train", str(zoo_path), "--metanet", "mlp", "--lr", "1e-3", "--no-stack",
                     "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert "--no-stack applies to --lr auto" in err and "Traceback" not in err
    assert not (tmp_path / "m.pt").exists()
