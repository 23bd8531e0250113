"""One zoo, three ways: one process, shard jobs + `zoo merge`, Ray tasks (with a task that fails).

The same spec and seed must give the same zoo, model by model and bit for bit, however
the work was spread; and a rerun must redo only what is missing. Ray runs a local
two-CPU instance, started and shut down here.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, write_toml

import zoo
from zoo import store
from zoo.cli import main as zoo_main
from zoo.distributed import FAIL_ONCE_ENV, generate_ray
from zoo.errors import ZooError
from zoo.generate import generate, progress_of
from zoo.spec import spec_from_dict

# 8 models in 4 shards of 2, trained in groups of 2: several tasks, each a real group.
SPEC = {**TINY, "models_per_shard": 2}
GROUP = 2


@pytest.fixture(scope="module")
def one_thread():
    # Every way of making the zoo plans with one CPU thread (a Ray task holds one CPU),
    # and CPU reductions round by thread count; one thread also keeps Ray's two workers
    # from fighting over a 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_process_zoo(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("one-process") / "zoo"
    generate(spec_from_dict(SPEC), out, group_size=GROUP, progress=False)
    return out


@pytest.fixture(scope="module")
def ray_cluster(one_thread):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_zoo(tmp_path_factory, ray_cluster):
    """The zoo made by Ray tasks, the first of which fails once and is retried."""
    root = tmp_path_factory.mktemp("ray")
    marker = root / "failed-once"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(FAIL_ONCE_ENV, str(marker))
        generate_ray(spec_from_dict(SPEC), root / "zoo", group_size=GROUP, progress=False)
    return root / "zoo", marker


def assert_same_zoo(expected: Path, actual: Path):
    a, b = zoo.open(expected), zoo.open(actual)
    assert store.verify(actual) == []
    pd.testing.assert_frame_equal(a.table, b.table)
    assert a.checkpoints == b.checkpoints and a.splits == b.splits
    np.testing.assert_array_equal(a.fixed_values, b.fixed_values)
    for ck in a.checkpoints:
        for i in a.ids:
            assert np.array_equal(a.weights([i], ck), b.weights([i], ck)), f"model {i} differs at {ck}"
    # Nothing in a shard depends on who wrote it or when: the files, and so the manifests
    # with their sha256s, are identical too.
    assert a.manifest == b.manifest


def snapshot(root: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.iterdir()) if p.is_file()}


@pytest.mark.exactness
def test_ray_zoo_with_a_failed_and_retried_task_equals_the_one_process_zoo(one_process_zoo, ray_zoo):
    out, marker = ray_zoo
    assert marker.exists(), "the test hook did not make a task fail"
    assert sorted(p.name for p in out.glob("shard-*.h5")) == [store.shard_name(s) for s in range(4)]
    assert not (out / ".parts").exists()
    assert_same_zoo(one_process_zoo, out)


@pytest.mark.exactness
def test_shard_jobs_run_at_once_then_zoo_merge_equal_the_one_process_zoo(one_process_zoo, tmp_path):
    # Two jobs of an array started together, as Slurm would (docs/SCALE.md): they race to
    # write the plan, which is harmless when they are given the same group size and threads.
    spec = write_toml(tmp_path / "spec.toml", SPEC)
    out = tmp_path / "zoo"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    jobs = [subprocess.Popen([sys.executable, "-m", "zoo.cli", "generate", str(spec), "--out", str(out),
                              "--shard", str(i), "--num-shards", "2", "--group-size", str(GROUP), "--quiet"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(2)]
    for job in jobs:
        log, _ = job.communicate(timeout=300)
        assert job.returncode == 0, log
    assert zoo_main(["merge", str(out)]) == 0
    assert_same_zoo(one_process_zoo, out)


def test_ray_rerun_of_a_complete_zoo_changes_no_file(ray_zoo, tmp_path, capsys):
    out, _ = ray_zoo
    before = snapshot(out)
    spec = write_toml(tmp_path / "spec.toml", SPEC)
    assert zoo_main(["generate", str(spec), "--out", str(out), "--ray", "--group-size", str(GROUP)]) == 0
    assert "already complete" in capsys.readouterr().out
    assert snapshot(out) == before


@pytest.mark.exactness
def test_ray_rerun_after_a_killed_driver_redoes_only_the_missing_shard(one_process_zoo, ray_zoo, tmp_path):
    out = tmp_path / "zoo"
    shutil.copytree(ray_zoo[0], out)
    # What a driver killed while shard 2 was training leaves: no manifest, no shard 2.
    (out / store.MANIFEST).unlink()
    (out / store.shard_name(2)).unlink()
    p = progress_of(out)  # what `zoo info` shows of the interrupted zoo
    assert (p["done"], p["models"], p["shards_done"], p["shards_total"]) == (6, 8, 3, 4)
    kept = {k: v for k, v in snapshot(out).items() if k.startswith("shard-")}

    generate_ray(spec_from_dict(SPEC), out, progress=False)

    after = snapshot(out)
    assert {k: after[k] for k in kept} == kept, "a shard that was already written was rewritten"
    assert store.shard_name(2) in after
    assert_same_zoo(one_process_zoo, out)


def test_ray_refuses_a_directory_holding_another_zoo_before_starting_any_task(ray_zoo):
    other = {**SPEC, "seed": SPEC["seed"] + 1}
    with pytest.raises(ZooError, match="already holds a different zoo"):
        generate_ray(spec_from_dict(other), ray_zoo[0], progress=False)


def test_without_ray_installed_the_error_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail as if absent
    with pytest.raises(ZooError, match=r"pip install 'metazoo\[ray\]'"):
        generate_ray(spec_from_dict(SPEC), tmp_path / "zoo", progress=False)


@pytest.fixture
def two_threads(one_thread):
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(1)


@pytest.mark.exactness
def test_zoo_generate_with_ray_equals_the_plain_command_at_its_thread_count(ray_cluster, two_threads, tmp_path):
    # Issue 13 item 7: a Ray task used to compute with the one CPU Ray assigned it while a plain
    # run used all the process's threads, so weights differed by up to 0.02. Both now plan and
    # compute with the driver's thread count (here 2, not the module's 1).
    spec = write_toml(tmp_path / "spec.toml", SPEC)
    plain, ray_out = tmp_path / "plain", tmp_path / "ray"
    assert zoo_main(["generate", str(spec), "--out", str(plain), "--group-size", str(GROUP), "--quiet"]) == 0
    assert zoo_main(["generate", str(spec), "--out", str(ray_out), "--group-size", str(GROUP), "--quiet",
                     "--ray"]) == 0
    for out in (plain, ray_out):
        assert json.loads((out / store.PLAN).read_text())["cpu_threads"] == 2
    assert_same_zoo(plain, ray_out)


def test_ray_refuses_a_thread_count_no_node_can_hold(ray_cluster, one_thread, tmp_path):
    torch.set_num_threads(3)  # the local cluster has 2 CPUs
    try:
        with pytest.raises(ZooError, match=r"3 threads.*largest Ray node has 2 CPUs.*OMP_NUM_THREADS=2"):
            generate_ray(spec_from_dict(SPEC), tmp_path / "zoo", group_size=GROUP, progress=False)
    finally:
        torch.set_num_threads(1)
    assert not (tmp_path / "zoo" / store.PLAN).exists()
