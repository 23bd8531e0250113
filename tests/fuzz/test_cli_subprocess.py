"""The fuzz oracle's promise, end to end: a damaged input given to the real commands (a
subprocess each) is one line on stderr naming the input, exit 2, no traceback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import core
from fuzz.families import copy_zoo, metanet_seeds, zoo_seed

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def deep_manifest(tmp):
    z = tmp / "z"
    copy_zoo(zoo_seed()["root"], z)
    (z / "manifest.json").unlink()
    (z / "manifest.json").write_bytes(core.deep_nesting())
    return ["zoo.cli", "info", z], z / "manifest.json"


def forged_shard(tmp):
    """A shard with one weight column more, and a manifest rehashed to match."""
    import h5py
    import numpy as np

    from fuzz.families import _rehash

    z = tmp / "z"
    copy_zoo(zoo_seed()["root"], z, link=False)
    with h5py.File(z / "shard-00000.h5", "r+") as f:
        w = f["weights/final"][()]
        del f["weights/final"]
        f["weights/final"] = np.concatenate([w, np.zeros((len(w), 1), np.float32)], 1)
    _rehash(z, "shard-00000.h5")
    return ["zoo.cli", "info", z], z / "shard-00000.h5"


def broken_tar(tmp):
    src = tmp / "up.tar.gz"
    src.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4)
    return ["zoo.cli", "import", "smallcnnzoo", src, "--out", tmp / "out"], src


def bad_spec(tmp):
    spec = tmp / "s.toml"
    spec.write_text('name = "x"\ndata = ["digits"]\n')
    return ["zoo.cli", "generate", spec, "--out", tmp / "out", "--quiet"], "data"


def garbage_metanet(tmp):
    m = tmp / "m.safetensors"
    m.write_bytes(core.apply_bytes(metanet_seeds()["mlp"], [["int", "head", 0, 8, 2**40]]))
    return ["metanets.cli", "predict", m, zoo_seed()["root"]], m


@pytest.mark.parametrize("make", [deep_manifest, forged_shard, broken_tar, bad_spec, garbage_metanet],
                         ids=lambda f: f.__name__)
def test_a_damaged_input_is_one_line_naming_it_and_exit_2(make, tmp_path):
    argv, named = make(tmp_path)
    r = subprocess.run([sys.executable, "-m", *map(str, argv)], env=ENV, capture_output=True, text=True,
                       timeout=300)
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, err)
    lines = [line for line in err.splitlines() if not line.startswith("note:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(named) in lines[0] or Path(str(named)).name in lines[0], err
