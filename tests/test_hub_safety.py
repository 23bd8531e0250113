"""Hub hardening: foreign folders are never replaced, archives are bounded,
leftovers are cleaned, folders are shareable, pickles never run, a killed import resumes."""
import io
import os
import signal
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_fixtures import (
    run_cli,
    tar_folder,
    write_lim_record,
    write_modelzoos,
    write_smallcnnzoo,
)

import zoo
from zoo.errors import ZooError
from zoo.hub.importers import run_import
from zoo.hub.safety import Limits, load_tensors

TESTS = Path(__file__).resolve().parent


# ------------------------------------------------------------- --force

def test_force_never_replaces_a_folder_that_holds_no_zoo(tmp_path, capsys):
    write_smallcnnzoo(tmp_path / "up", runs=2)
    thesis = tmp_path / "work" / "thesis.tex"
    thesis.parent.mkdir()
    thesis.write_text("\\chapter{Five years}")
    rc = run_cli(["import", "smallcnnzoo", str(tmp_path / "up"), "--out", str(thesis.parent), "--force"])
    err = capsys.readouterr().err
    assert rc == 2 and "holds no metazoo zoo" in err and "never replaced, even with --force" in err
    assert thesis.read_text() == "\\chapter{Five years}" and sorted(os.listdir(thesis.parent)) == ["thesis.tex"]


def test_force_replaces_a_zoo_and_an_empty_folder_is_used_as_is(tmp_path):
    write_smallcnnzoo(tmp_path / "up", runs=2)
    (tmp_path / "empty").mkdir()
    run_import("smallcnnzoo", tmp_path / "up", tmp_path / "empty")
    write_smallcnnzoo(tmp_path / "up3", runs=3)
    with pytest.raises(ZooError, match="is already a zoo; choose a new folder or pass --force"):
        run_import("smallcnnzoo", tmp_path / "up3", tmp_path / "empty")
    run_import("smallcnnzoo", tmp_path / "up3", tmp_path / "empty", force=True)
    assert len(zoo.open(tmp_path / "empty")) == 3


# ------------------------------------------------------- bounded archives

def _zip_bomb(path: Path, member: str, mb: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, b"\0" * (mb << 20))
    return path


def test_a_zip_bomb_is_refused_as_expanding_beyond_the_limit_not_as_corrupt(tmp_path, capsys):
    bomb = _zip_bomb(tmp_path / "record.zip", "resnet8/0.pt", 20)
    assert bomb.stat().st_size < 100_000
    rc = run_cli(["import", "lim2024", str(bomb), "--out", str(tmp_path / "zoo"), "--max-unpack-gb", "0.01"])
    err = capsys.readouterr().err
    assert rc == 2 and "archive expands beyond 0.01 GB" in err and "corrupt" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.zip"]


def test_a_tar_bomb_is_refused_while_extracting_the_members_an_importer_needs(tmp_path, monkeypatch):
    write_smallcnnzoo(tmp_path / "up", runs=2)
    np.save(tmp_path / "up" / "weights.npy", np.zeros((20000, 238), np.float32))  # 19 MB of zeros
    tar_folder(tmp_path / "up", tmp_path / "mnist.tar.xz")
    monkeypatch.setenv("METAZOO_MAX_UNPACK_GB", "0.005")
    with pytest.raises(ZooError, match=r"mnist.tar.xz: archive expands beyond 0.005 GB; refused"):
        run_import("smallcnnzoo", tmp_path / "mnist.tar.xz", tmp_path / "zoo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist.tar.xz", "up"]


def test_the_compression_ratio_is_bounded_too(tmp_path):
    bomb = _zip_bomb(tmp_path / "record.zip", "resnet8/0.pt", 4)
    with pytest.raises(ZooError, match=r"expands more than 10 times its size .* as a decompression bomb does"):
        run_import("lim2024", bomb, tmp_path / "zoo", limits=Limits(max_gb=1, max_ratio=10, ratio_floor_bytes=1000))


def test_a_metazoo_archive_bomb_is_refused_before_anything_is_written(tmp_path):
    data = b"\0" * (12 << 20)
    with tarfile.open(tmp_path / "z.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("z/shard-00000.h5")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(ZooError, match="archive expands beyond 0.01 GB"):
        run_import("metazoo", tmp_path / "z.tar.gz", tmp_path / "zoo", limits=Limits().with_max_gb(0.01))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.tar.gz"]


def test_a_bad_limit_value_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("METAZOO_MAX_UNPACK_GB", "lots")
    assert run_cli(["import", "lim2024", str(tmp_path), "--out", str(tmp_path / "z")]) == 2
    assert "METAZOO_MAX_UNPACK_GB = 'lots': expected a number of GB" in capsys.readouterr().err


# --------------------------------------------------- leftovers and modes

def test_orphan_partial_folders_of_an_output_are_removed_on_the_next_run(tmp_path):
    write_smallcnnzoo(tmp_path / "up", runs=2)
    for orphan in (".imp.zoo.partial", ".zoo.k3j9x.partial", ".imp.zoo.source"):
        (tmp_path / orphan).mkdir()
        (tmp_path / orphan / "shard-00000.h5").write_bytes(b"left by a kill")
    run_import("smallcnnzoo", tmp_path / "up", tmp_path / "zoo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["up", "zoo"]


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_an_imported_zoo_folder_follows_the_umask_like_a_plain_folder(tmp_path, umask):
    write_smallcnnzoo(tmp_path / "up", runs=2)
    old = os.umask(umask)
    try:
        run_import("smallcnnzoo", tmp_path / "up", tmp_path / "zoo")
    finally:
        os.umask(old)
    assert (tmp_path / "zoo").stat().st_mode & 0o777 == 0o777 & ~umask


# ---------------------------------------------------------------- pickles

class _Touch:
    """Unpickling this would create ``path``: the file must never appear."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_payload_is_refused_by_every_importer_loader(tmp_path):
    marker = tmp_path / "PWNED"
    # lim2024: a net file, then a mask file
    write_lim_record(tmp_path / "lim", {"sparse_resnet8": 2})
    torch.save(({"conv1.weight": _Touch(marker)}, 50.0), tmp_path / "lim" / "sparse_resnet8" / "1.pt")
    with pytest.raises(ZooError, match="1.pt: refused to load: it carries a pickled object"):
        run_import("lim2024", tmp_path / "lim", tmp_path / "z1")
    (tmp_path / "lim" / "sparse_resnet8" / "1.pt").unlink()
    torch.save((_Touch(marker), 0), tmp_path / "lim" / "masks" / "sparse_resnet8_linear.pt")
    with pytest.raises(ZooError, match="sparse_resnet8_linear.pt: refused to load"):
        run_import("lim2024", tmp_path / "lim", tmp_path / "z2")
    # modelzoos: a checkpoint inside the zip
    write_modelzoos(tmp_path / "mz.zip", nets=2)
    buf = io.BytesIO()
    torch.save({"module_list.0.weight": _Touch(marker)}, buf)
    with zipfile.ZipFile(tmp_path / "mz.zip", "a") as zf:
        zf.writestr("tune/NN_tune_trainable_9_seed=9/checkpoint_000002/checkpoints", buf.getvalue())
        zf.writestr("tune/NN_tune_trainable_9_seed=9/result.json", '{"training_iteration": 2}\n')
        zf.writestr("tune/NN_tune_trainable_9_seed=9/params.json", "{}")
    with pytest.raises(ZooError, match="checkpoints: refused to load"):
        run_import("modelzoos", tmp_path / "mz.zip", tmp_path / "z3", options={"epochs": "2"})
    # smallcnnzoo: an object array in weights.npy
    write_smallcnnzoo(tmp_path / "scz", runs=2)
    np.save(tmp_path / "scz" / "weights.npy", np.array([_Touch(marker)] * 4, dtype=object), allow_pickle=True)
    with pytest.raises(ZooError, match="weights.npy: refused: .*pickle"):
        run_import("smallcnnzoo", tmp_path / "scz", tmp_path / "z4")
    assert not marker.exists()
    assert not any(p.name.startswith("z") for p in tmp_path.iterdir())


def test_a_zip_entry_without_a_name_is_refused_naming_the_archive(tmp_path):
    """An entry whose name is empty (fuzz finding import_modelzoos-ae96d42ac9: zipfile's
    `is_dir` raised IndexError on it) is refused before anything is read or written."""
    archive = tmp_path / "zoo.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "x")
        zf.writestr(zipfile.ZipInfo("placeholder"), "y")
    data = archive.read_bytes().replace(b"placeholder", b"\0" * 11)  # same length: offsets stay valid
    archive.write_bytes(data)
    with zipfile.ZipFile(archive) as zf:  # zipfile reads the name as empty (cut at the NUL)
        assert "" in [i.filename for i in zf.infolist()]
    for fmt in ("modelzoos", "smallcnnzoo"):
        with pytest.raises(ZooError, match=r"zoo.zip.*empty name; refused"):
            run_import(fmt, archive, tmp_path / f"out-{fmt}")
        assert not (tmp_path / f"out-{fmt}").exists()


def test_a_missing_file_is_reported_as_missing_not_as_corrupt(tmp_path):
    with pytest.raises(ZooError, match=r"gone.pt: file is missing") as e:
        load_tensors(tmp_path / "gone.pt")
    assert "corrupt" not in str(e.value)


# ------------------------------------------------------- kill -9 and resume

_KILLER = """
import os, signal, sys
from zoo.hub.importers import common, run_import
done = []
add = common.ZooWriter.add
def add_then_die(self, *a, **k):
    add(self, *a, **k)
    done.append(1)
    if len(done) == int(sys.argv[4]):
        os.kill(os.getpid(), signal.SIGKILL)
common.ZooWriter.add = add_then_die
run_import(sys.argv[1], sys.argv[2], sys.argv[3], options={"model_type": "sparse_resnet8"})
"""


@pytest.mark.exactness
def test_an_import_killed_with_sigkill_resumes_and_gives_the_same_zoo(tmp_path):
    write_lim_record(tmp_path / "rec", {"sparse_resnet8": 7}, nan_ids=(2,))
    with zipfile.ZipFile(tmp_path / "rec.zip", "w") as zf:
        for p in sorted((tmp_path / "rec").rglob("*")):
            zf.write(p, p.relative_to(tmp_path / "rec"))
    env = {**os.environ, "METAZOO_IMPORT_SHARD_SIZE": "2", "PYTHONPATH": str(TESTS.parent)}
    out = tmp_path / "killed"
    r = subprocess.run([sys.executable, "-c", _KILLER, "lim2024", str(tmp_path / "rec.zip"), str(out), "2"],
                       env=env, capture_output=True, timeout=300, check=False)
    assert r.returncode == -signal.SIGKILL
    partial = tmp_path / ".imp.killed.partial"
    assert sorted(p.name for p in partial.glob("shard-*.h5")) == ["shard-00000.h5", "shard-00001.h5"]
    first = (partial / "shard-00000.h5").stat().st_mtime_ns
    r = subprocess.run([sys.executable, "-m", "zoo.cli", "import", "lim2024", str(tmp_path / "rec.zip"),
                        "--out", str(out), "-o", "model_type=sparse_resnet8"], env=env, capture_output=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr.decode()
    assert (out / "shard-00000.h5").stat().st_mtime_ns == first  # resumed: the finished shard was kept
    r = subprocess.run([sys.executable, "-m", "zoo.cli", "import", "lim2024", str(tmp_path / "rec.zip"),
                        "--out", str(tmp_path / "straight"), "-o", "model_type=sparse_resnet8"], env=env,
                       capture_output=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr.decode()
    a, b = zoo.open(out), zoo.open(tmp_path / "straight")
    assert len(a) == 6 and np.array_equal(a.weights(), b.weights()) and a.table.equals(b.table)
    assert a.manifest["source"]["dropped"] == b.manifest["source"]["dropped"] == ["sparse_resnet8/2.pt"]
    assert a.manifest["splits"] == b.manifest["splits"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed", "rec", "rec.zip", "straight"]


@pytest.mark.exactness
def test_importing_a_folder_that_holds_a_zoo_copies_it_and_leaves_the_source_in_place(tmp_path):
    write_smallcnnzoo(tmp_path / "up", runs=2)
    run_import("smallcnnzoo", tmp_path / "up", tmp_path / "shared" / "zoo")
    run_import("metazoo", tmp_path / "shared", tmp_path / "mine")
    assert (tmp_path / "shared" / "zoo" / "manifest.json").is_file()
    assert np.array_equal(zoo.open(tmp_path / "mine").weights(), zoo.open(tmp_path / "shared" / "zoo").weights())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "shared", "up"]


def test_an_interrupted_import_is_not_resumed_on_a_changed_source(tmp_path, monkeypatch):
    import zoo.hub.importers.lim2024 as lim
    from zoo.hub.importers import common

    write_lim_record(tmp_path / "rec", {"resnet8": 4}, mask_files=False)
    monkeypatch.setattr(lim, "SHARD_SIZE", 2)
    add = common.ZooWriter.add

    def add_then_stop(self, *a, **k):
        add(self, *a, **k)
        raise KeyboardInterrupt  # Ctrl-C after the first shard: the partial import is kept

    monkeypatch.setattr(common.ZooWriter, "add", add_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_import("lim2024", tmp_path / "rec", tmp_path / "zoo")
    assert (tmp_path / ".imp.zoo.partial" / "shard-00000.h5").is_file()
    monkeypatch.setattr(common.ZooWriter, "add", add)
    torch.save(torch.load(tmp_path / "rec" / "resnet8" / "0.pt", weights_only=True), tmp_path / "rec" / "resnet8" / "4.pt")
    (tmp_path / "rec" / "hparams.csv").write_text("lr,weight_decay,label_smoothing,epochs\n" + "0.1,0,0,5\n" * 5)
    m = run_import("lim2024", tmp_path / "rec", tmp_path / "zoo")
    assert m["num_models"] == 5 and list(zoo.open(tmp_path / "zoo").table["epochs"]) == [5] * 5


def test_a_second_import_into_the_same_out_gets_the_lock_message(tmp_path):
    """Two imports into one --out would share one partial folder: the second is refused,
    naming the process that writes, and the first goes on untouched."""
    from zoo.errors import ZooError
    from zoo.hub.importers.common import ZooWriter

    out = tmp_path / "zoo"
    with ZooWriter(out, fingerprint={"a": 1}) as first:
        with pytest.raises(ZooError, match=r"is being written by process \d+"):
            ZooWriter(out, fingerprint={"a": 1})
        assert first.tmp.is_dir()
    with ZooWriter(out, fingerprint={"a": 1}):  # released when the first one ends
        pass


def test_a_metazoo_import_holds_the_output_lock_and_a_refused_import_leaves_no_folders(tmp_path, capsys):
    """`zoo import metazoo` writes its --out like every importer: a second writer of the same
    folder is refused while the first holds it. And a refused import into a folder whose
    parents did not exist (`--out a/b/zoo`, or a URL taken for a path) leaves none of them
    behind, while a parent that existed before stays."""
    from zoo.cli import main
    from zoo.store.lock import lock_dir

    out = tmp_path / "a" / "b" / "zoo"
    with lock_dir(out, what="zoo import"):
        with pytest.raises(ZooError, match=r"is being written by process \d+"):
            run_import("metazoo", tmp_path / "missing.tar", out)
    assert not (tmp_path / "a").exists()  # the lock made a/b for its file, and took them away again
    (tmp_path / "notes.txt").write_text("x")
    for fmt in ("metazoo", "lim2024", "smallcnnzoo", "modelzoos"):
        assert main(["import", fmt, str(tmp_path / "notes.txt"), "--out", str(out)]) == 2
        assert "notes.txt" in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"], fmt
    (tmp_path / "a").mkdir()
    assert main(["import", "metazoo", str(tmp_path / "notes.txt"), "--out", str(out)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "notes.txt"] and not any((tmp_path / "a").iterdir())


def test_a_folder_with_archives_and_a_symbolic_link_is_refused_naming_the_link(tmp_path):
    """A download folder holding archives is copied for the import (the archives extracted, the
    loose files beside them copied: `zoo import metazoo`). A symbolic link in it would be followed out of the folder
    (the kept fuzz finding import_metazoo-7b7bd01170: a link to /etc was copied until a dangling
    link inside raised shutil.Error): it is refused, named, before anything is copied."""
    src = tmp_path / "download"
    src.mkdir()
    with tarfile.open(src / "zoo.tar", "w") as tf:
        info = tarfile.TarInfo("z/readme.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    os.symlink("/etc", src / "etc-link")
    with pytest.raises(ZooError, match=r"etc-link is a symbolic link"):
        run_import("metazoo", src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["download"]  # no out, no scratch copy
