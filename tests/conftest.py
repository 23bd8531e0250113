"""Shared fixtures: small, fast specs on scikit-learn's bundled digits (no downloads)."""
import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Reproducible CPU timings are not asserted anywhere, but fewer threads keep two test
# processes from fighting over a 2-core CI machine.
torch.set_num_threads(min(2, torch.get_num_threads()))

TINY = {
    "name": "tiny-digits",
    "models": 8,
    "seed": 3,
    "models_per_shard": 4,
    "checkpoints": [0, "final"],
    "data": {"source": "digits"},
    "net": {"arch": "resnet", "depth": 8, "width": 0.25, "asym_seed": 1,
            "wasym": {"n_fix": 2, "n_fix_linear": 2, "kappa": 2.0, "mode": "filters"}},
    "hparams": {
        "lr": {"dist": "loguniform", "low": 1e-3, "high": 3e-2},
        "weight_decay": {"dist": "loguniform", "low": 1e-5, "high": 1e-2},
        "label_smoothing": {"dist": "uniform", "low": 0.0, "high": 0.2},
        "epochs": {"dist": "randint", "low": 1, "high": 2},
        "batch_size": 64, "warmup_epochs": 0.5, "translate": 1, "cutout": 2, "train_fraction": 0.3,
    },
}


@pytest.fixture(autouse=True, scope="session")
def _verify_cache(tmp_path_factory):
    """Shard checksums verified by zoo.open are remembered in a per-user cache folder: keep
    the tests' out of the user's home (subprocesses inherit the variable)."""
    import os

    os.environ["METAZOO_CACHE_DIR"] = str(tmp_path_factory.mktemp("metazoo-cache"))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: on a loaded 2-core box, OpenMP barriers made tiny
    trainings 10x slower with two threads (measured); results do not depend on it."""
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="openmp"):
        yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_dict():
    return copy.deepcopy(TINY)


@pytest.fixture(scope="session")
def digits():
    from zoo.generate import images as data

    return data.load({"source": "digits"})


def write_toml(path: Path, d: dict) -> Path:
    import tomli_w

    path.write_text(tomli_w.dumps(d))
    return path


def kill_generate_after_first_part(spec_file: Path, out: Path, threads: int) -> Path:
    """`kill -9` a `zoo generate` (groups of 2, ``threads`` CPU threads: the reference zoo's
    count, as CPU rounding depends on it) once its first part of finished models appears under
    .parts/; return that part."""
    import os
    import signal
    import subprocess
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "zoo.cli", "generate", str(spec_file), "--out", str(out),
                             "--group-size", "2", "--quiet"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    part = out / ".parts" / "shard-00000" / "group-00000.h5"  # the CPU default: fixed groups
    deadline = time.monotonic() + 300
    while not part.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert part.exists() and not (out / "manifest.json").exists()
    return part
