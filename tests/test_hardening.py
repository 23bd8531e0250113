"""Hardening: no code from files, no damaged zoo read as good, nothing deleted that
is not ours, every write failure an error. Each test builds the fault the issue reports."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, kill_generate_after_first_part, write_toml

import zoo
from zoo import store
from zoo.errors import SpecError, ZooError
from zoo.generate.synthetic import make_zoo
from zoo.store import integrity
from zoo.store.lock import LockedError, lock_dir, lock_path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


class Payload:
    """Pickles to a call of os.system: what a hostile checkpoint carries."""

    def __init__(self, marker: Path):
        self.cmd = f"touch {marker}"

    def __reduce__(self):
        return (os.system, (self.cmd,))


def zoo_main(argv):
    from zoo.cli import main

    return main([str(a) for a in argv])


def metanets_main(argv):
    from metanets.cli import main

    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def good_zoo(tmp_path_factory):
    """24 synthetic ResNet8s in 3 shards of 8; splits 12/6/6."""
    return make_zoo(tmp_path_factory.mktemp("good") / "z", models=24, shard_size=8)


@pytest.fixture
def copy_zoo(good_zoo, tmp_path):
    dst = tmp_path / "z"
    shutil.copytree(good_zoo, dst)
    return dst


def edit_manifest(root: Path, fn):
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m))


def flip_weight_byte(shard: Path):
    """Flip one byte inside the first model's stored weights (not the HDF5 metadata)."""
    import h5py

    with h5py.File(shard, "r") as f:
        offset = f["weights/final"].id.get_offset()
        if offset is None:  # chunked: the first chunk's address
            offset = f["weights/final"].id.get_chunk_info(0).byte_offset
    data = bytearray(shard.read_bytes())
    data[offset + 3] ^= 0x40
    st = shard.stat()
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1))


# ------------------------------------------------------------ 1. no code from files

def test_pickled_metanet_files_are_refused_without_running(good_zoo, tmp_path, capsys):
    from metanets import persist
    from metanets.errors import MetanetError

    marker = tmp_path / "PWNED"
    evil = tmp_path / "EVIL.pt"
    torch.save({"format": "metazoo-metanet", "version": 1, "metanet": "mlp", "x": Payload(marker)}, evil)
    legacy = tmp_path / "EVIL-legacy.pt"
    torch.save({"format": "metazoo-metanet", "version": 1, "x": Payload(marker)}, legacy,
               _use_new_zipfile_serialization=False)
    for f in (evil, legacy):
        with pytest.raises(MetanetError, match=r"old pickle-based metanet file.*python -m metanets.persist convert"):
            persist.load(f)
        assert metanets_main(["predict", f, good_zoo]) == 2
        assert "Traceback" not in capsys.readouterr().err
    assert not marker.exists(), "the payload ran"


def test_a_pickle_hidden_in_the_estimator_slot_is_refused(tmp_path):
    import pickle

    from safetensors.torch import save_file

    from metanets import persist
    from metanets.errors import MetanetError

    marker = tmp_path / "PWNED"
    blob = np.frombuffer(pickle.dumps(Payload(marker)), np.uint8).copy()
    header = {"format": persist.FORMAT, "version": persist.VERSION, "metanet": "statnn-gbm", "kind": "sklearn",
              "info": {}, "target": "test_acc", "checkpoint": "final"}
    path = tmp_path / "gbm.pt"
    save_file({persist.SKLEARN_TENSOR: torch.from_numpy(blob)}, path, metadata={"metazoo": json.dumps(header)})
    with pytest.raises(MetanetError):
        persist.load(path)
    assert not marker.exists()


def test_a_pickle_in_place_of_a_shard_is_refused_without_running(copy_zoo, tmp_path):
    import pickle

    marker = tmp_path / "PWNED"
    (copy_zoo / "shard-00001.h5").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ZooError, match="shard-00001.h5"):
        zoo.open(copy_zoo).weights()
    assert store.verify(copy_zoo)
    assert not marker.exists()


@pytest.mark.parametrize("metanet", ["mlp", "statnn-gbm"])
def test_saved_metanets_load_as_data_and_predict_the_same(good_zoo, tmp_path, metanet):
    from metanets import persist

    out = tmp_path / f"{metanet}.pt"
    assert metanets_main(["train", good_zoo, "--metanet", metanet, "--out", out, "--epochs", "2"]) == 0
    assert zipfile_free(out)
    name, model, info, rec = persist.load(out)
    assert name == metanet and rec["target"] == "test_acc" and rec["meta"]["seed"] == 0
    csv1, csv2 = tmp_path / "a.csv", tmp_path / "b.csv"
    assert metanets_main(["predict", out, good_zoo, "--out", csv1]) == 0
    assert metanets_main(["predict", out, good_zoo, "--out", csv2]) == 0
    assert csv1.read_text() == csv2.read_text()


def zipfile_free(path: Path) -> bool:
    """Not a torch.save zip (whose pickle would run code on load)."""
    return path.read_bytes()[:4] != b"PK\x03\x04"


def test_a_trusted_legacy_file_converts_and_predicts_like_the_original(good_zoo, tmp_path):
    from metanets import data, persist, registry

    ws = data.load(good_zoo)
    model = registry.get("mlp")(ws.info)
    legacy = tmp_path / "old.pt"
    torch.save({"format": "metazoo-metanet", "version": 1, "metanet": "mlp", "info": ws.info.to_dict(),
                "target": "test_acc", "checkpoint": "final", "plugin": None, "meta": {},
                "state": {k: v.detach() for k, v in model.state_dict().items()}}, legacy)
    assert persist.main(["convert", str(legacy), str(tmp_path / "new.pt")]) == 0
    _, loaded, _, _ = persist.load(tmp_path / "new.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.parametrize("name, module", [("statnn-gbm", "metanets.gbm"), ("hparams", "metanets.hparams")])
def test_a_legacy_sklearn_metanet_naming_its_0_1_module_converts(good_zoo, tmp_path, monkeypatch, name, module):
    """0.1 pickled scikit-learn metanets whole, so the file names the class by its 0.1 module
    path (metanets.gbm.StatGBM, metanets.hparams.HParamsGBM); convert still finds it."""
    import types

    from test_bench_stats import _hparam_zoo

    from metanets import data, persist, registry, train

    ws = data.load(good_zoo if name != "hparams" else _hparam_zoo(tmp_path / "hp"))  # the control needs hparams
    cls = registry.get(name)
    model = train.fit(name, ws, lr=None, seed=0).model
    legacy = tmp_path / "old.pt"
    with monkeypatch.context() as m:  # pickle the class under its 0.1 module path
        m.setattr(cls, "__module__", module)
        m.setitem(sys.modules, module, types.SimpleNamespace(**{cls.__qualname__: cls}))
        torch.save({"format": "metazoo-metanet", "version": 1, "metanet": name, "info": ws.info.to_dict(),
                    "target": "test_acc", "checkpoint": "final", "plugin": None, "meta": {}, "state": model}, legacy)
    assert module.encode() in legacy.read_bytes(), "the file names the old module"
    assert module not in sys.modules
    assert persist.main(["convert", str(legacy), str(tmp_path / "new.pt")]) == 0
    _, loaded, _, _ = persist.load(tmp_path / "new.pt")
    x = train.features(ws, "test", cls.view)
    assert np.array_equal(train.predict(loaded, x, cls.view, ws.info), train.predict(model, x, cls.view, ws.info))


# ------------------------------------------------------------ 2. a zoo is checked before use

MANIFEST_FAULTS = {
    "no shards key": (lambda m: m.pop("shards"), r"key 'shards' is missing"),
    "no layout key": (lambda m: m.pop("layout"), r"key 'layout' is missing"),
    "layout without shapes": (lambda m: [t.pop("shape") for t in m["layout"]["tensors"]], r"key 'layout' is malformed"),
    "shards a string": (lambda m: m.update(shards="shard-00000.h5"), r"key 'shards' must be list, not str"),
    "dropped shard": (lambda m: m["shards"].pop(1), r"key 'num_models' = 24 but the shards hold 16"),
    "dropped shard, counts fixed": (lambda m: (m["shards"].pop(1), m.update(num_models=16)),
                                    r"key 'splits\.\w+' lists model \d+, which no shard holds"),
    "duplicated shard": (lambda m: m["shards"].append(dict(m["shards"][1])), r"shards\[3\]\.file.*listed twice"),
    "duplicated ids": (lambda m: (m["shards"].append({**m["shards"][1], "file": "shard-00003.h5"}),
                                  m.update(num_models=32)), r"id ranges overlap"),
    "absolute path": (lambda m: m["shards"][0].update(file="/etc/passwd.h5"), r"shards\[0\]\.file.*plain"),
    "parent path": (lambda m: m["shards"][0].update(file="../x.h5"), r"shards\[0\]\.file.*plain"),
    "sha not hex": (lambda m: m["shards"][0].update(sha256="x"), r"shards\[0\]\.sha256"),
    "split twice": (lambda m: m["splits"]["val"].append(m["splits"]["train"][0]), r"splits\.val.*twice"),
}


@pytest.mark.parametrize("fault", sorted(MANIFEST_FAULTS))
def test_each_manifest_fault_is_one_line_naming_file_and_key(copy_zoo, fault, capsys):
    change, message = MANIFEST_FAULTS[fault]
    edit_manifest(copy_zoo, change)
    with pytest.raises(ZooError, match=message) as e:
        zoo.open(copy_zoo)
    assert str(copy_zoo / "manifest.json") in str(e.value) and "\n" not in str(e.value)
    for cmd in (["info", copy_zoo], ["verify", copy_zoo]):
        assert zoo_main(cmd) != 0
        err = capsys.readouterr().err
        assert "Traceback" not in err and "manifest.json" in err
    assert metanets_main(["bench", copy_zoo, "--out", copy_zoo.parent / "res", "--metanets", "statnn-gbm",
                          "--seeds", "1"]) == 2


def test_a_stray_unlisted_shard_is_named(copy_zoo):
    shutil.copy(copy_zoo / "shard-00002.h5", copy_zoo / "shard-00003.h5")
    with pytest.raises(ZooError, match=r"does not list shard-00003.h5"):
        zoo.open(copy_zoo)


def test_a_shard_linking_outside_the_zoo_is_refused(copy_zoo, tmp_path):
    outside = tmp_path / "elsewhere.h5"
    shutil.move(copy_zoo / "shard-00000.h5", outside)
    (copy_zoo / "shard-00000.h5").symlink_to(outside)
    with pytest.raises(ZooError, match=r"key 'shards' file 'shard-00000.h5' links outside the zoo folder"):
        zoo.open(copy_zoo)


def test_a_missing_shard_is_reported_missing_not_corrupt(copy_zoo):
    (copy_zoo / "shard-00001.h5").unlink()
    with pytest.raises(ZooError, match=r"shard-00001.h5: missing"):
        zoo.open(copy_zoo).weights()


def test_a_flipped_weight_byte_is_refused_by_open_and_bench_and_readable_with_no_verify(copy_zoo, capsys):
    flip_weight_byte(copy_zoo / "shard-00000.h5")
    with pytest.raises(ZooError, match=r"shard-00000.h5: sha256 .* does not match"):
        zoo.open(copy_zoo).weights()
    assert any("sha256" in p for p in store.verify(copy_zoo))
    assert metanets_main(["bench", copy_zoo, "--out", copy_zoo.parent / "res", "--metanets", "statnn-gbm",
                          "--seeds", "1", "--no-progress"]) == 2
    assert "shard-00000.h5: sha256" in capsys.readouterr().err
    w = zoo.open(copy_zoo, verify=False).weights()
    assert w.shape == (24, zoo.open(copy_zoo, verify=False).layout.num_params)
    assert zoo_main(["info", copy_zoo, "--no-verify"]) == 0
    assert "not verified (--no-verify)" in capsys.readouterr().out
    assert metanets_main(["bench", copy_zoo, "--out", copy_zoo.parent / "res2", "--metanets", "statnn-gbm",
                          "--seeds", "1", "--no-progress", "--no-verify"]) == 0
    assert capsys.readouterr().err.count("checksums were not verified (--no-verify)") == 1  # said once, at the end


def test_verified_shards_are_not_hashed_again_until_they_change(copy_zoo, monkeypatch):
    calls = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda p: calls.append(Path(p).name) or real(p))
    zoo.open(copy_zoo).weights()
    assert sorted(calls) == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    calls.clear()
    z = zoo.open(copy_zoo)
    z.weights()
    z.weights([3])
    assert calls == [], "a second open reads the remembered verification"
    os.utime(copy_zoo / "shard-00001.h5", ns=(0, 10**18))  # touched: verified afresh
    zoo.open(copy_zoo).weights()
    assert calls == ["shard-00001.h5"]


def read_only(folder: Path):
    """Make ``folder`` read-only even for root (who ignores permission bits): a read-only
    bind mount of it onto itself; mode 0555 for other users. Returns the undo function."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        return lambda: os.chmod(folder, 0o755)
    ok = subprocess.run(["mount", "--bind", str(folder), str(folder)]).returncode == 0
    if ok and subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)]).returncode == 0:
        return lambda: subprocess.run(["umount", str(folder)])
    if ok:
        subprocess.run(["umount", str(folder)])
    pytest.skip("running as root, where permission bits do not stop writes, and no read-only mount allowed")


def test_a_zoo_on_a_read_only_folder_opens_verified(copy_zoo, monkeypatch, tmp_path):
    # The verification cache is the user's, not the zoo's: make even it unwritable.
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("METAZOO_CACHE_DIR", str(tmp_path / "afile" / "cache"))
    undo = read_only(copy_zoo)
    try:
        with pytest.raises(OSError):
            (copy_zoo / "probe").write_text("x")
        assert zoo.open(copy_zoo).weights().shape[0] == 24
        flip = copy_zoo.parent / "flipped"
    finally:
        undo()
    shutil.copytree(copy_zoo, flip)
    flip_weight_byte(flip / "shard-00002.h5")
    undo = read_only(flip)
    try:
        with pytest.raises(ZooError, match="shard-00002.h5: sha256"):
            zoo.open(flip).weights()
    finally:
        undo()


def test_non_finite_weights_of_a_model_not_marked_diverged_are_refused_with_its_id(tmp_path, capsys):
    root = make_zoo(tmp_path / "nan", models=8, shard_size=8, n_diverged=1)
    c = store.read_shard(root / "shard-00000.h5")
    diverged = int(np.flatnonzero(c.table["diverged"].to_numpy())[0])
    victim = 5 if diverged != 5 else 6
    c.weights["final"][victim, 7] = np.nan
    c.table = c.table.drop(columns="model_id")
    store.write_zoo(root, [c], name="nan")
    z = zoo.open(root)
    with pytest.raises(ZooError, match=rf"model {victim} has non-finite weights .* not marked diverged"):
        z.weights()
    with pytest.raises(ZooError, match=rf"model {victim} "):
        z.weights([victim])
    assert np.isnan(z.weights([diverged])).any(), "a diverged model's NaNs are data"
    assert metanets_main(["bench", root, "--out", tmp_path / "res", "--metanets", "statnn-gbm", "--seeds", "1",
                          "--no-progress"]) == 2
    assert f"model {victim} has non-finite weights" in capsys.readouterr().err
    assert any(f"model {victim} has non-finite" in p for p in store.verify(root))


# ------------------------------------------------------------ generate: resume and sealing

@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    from zoo.generate import generate
    from zoo.generate.spec import spec_from_dict

    out = tmp_path_factory.mktemp("ref") / "zoo"
    generate(spec_from_dict(TINY), out, group_size=2, progress=False)
    return out


def same_weights(a: Path, b: Path) -> bool:
    za, zb = zoo.open(a), zoo.open(b)
    return all(np.array_equal(za.weights(checkpoint=c), zb.weights(checkpoint=c)) for c in za.checkpoints)


def killed_after_first_part(out: Path, tmp_path: Path) -> Path:
    """`kill -9` a `zoo generate` of TINY once its first part appears (as the issue did; one
    thread, like the reference zoo, so the models come out identical)."""
    return kill_generate_after_first_part(write_toml(tmp_path / "spec.toml", TINY), out, threads=1)


def test_a_part_damaged_while_stopped_is_retrained_not_sealed(reference, tmp_path, one_thread):
    from zoo.generate import generate
    from zoo.generate.spec import spec_from_dict

    out = tmp_path / "z"
    part = killed_after_first_part(out, tmp_path)
    flip_weight_byte(part)
    generate(spec_from_dict(TINY), out, progress=False)
    assert store.verify(out) == []
    assert same_weights(reference, out), "the damaged part's models were trained again, exactly"


def test_a_finished_zoo_with_a_damaged_shard_is_not_complete_and_regenerates(reference, tmp_path, one_thread):
    from zoo.generate import generate
    from zoo.generate.spec import spec_from_dict

    out = tmp_path / "z"
    shutil.copytree(reference, out)
    flip_weight_byte(out / "shard-00001.h5")
    with pytest.raises(ZooError, match=r"damaged: .*shard-00001.h5: sha256 .* Delete shard-00001.h5 and rerun"):
        generate(spec_from_dict(TINY), out, progress=False)
    (out / "shard-00001.h5").unlink()
    generate(spec_from_dict(TINY), out, progress=False)
    assert store.verify(out) == [] and same_weights(reference, out)


def test_a_sealed_shard_damaged_before_the_zoo_is_finished_is_named(tmp_path, one_thread):
    from zoo.generate import generate
    from zoo.generate.spec import spec_from_dict

    out = tmp_path / "z"
    generate(spec_from_dict(TINY), out, shard=0, num_shards=2, group_size=2, progress=False)
    flip_weight_byte(out / "shard-00000.h5")
    with pytest.raises(ZooError, match=r"shard-00000.h5 is corrupt or truncated: it no longer matches the sha256 recorded"):
        generate(spec_from_dict(TINY), out, progress=False)
    assert not (out / "manifest.json").exists()


# ------------------------------------------------------------ 3. nothing deleted that isn't ours

def test_force_never_deletes_a_foreign_folder(tmp_path, capsys):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.tex").write_text("three years")
    spec = write_toml(tmp_path / "s.toml", {**TINY, "models": 2})
    assert zoo_main(["generate", spec, "--out", out, "--force", "--quiet"]) == 2
    assert "not a metazoo zoo (e.g. thesis.tex)" in capsys.readouterr().err
    assert (out / "thesis.tex").read_text() == "three years"
    # A zoo folder with a foreign file in it: still nothing deleted.
    (out / "manifest.json").write_text(json.dumps({"format": "metazoo-zoo"}))
    assert zoo_main(["generate", spec, "--out", out, "--force", "--quiet"]) == 2
    assert "did not write (e.g. thesis.tex)" in capsys.readouterr().err
    assert (out / "thesis.tex").exists() and (out / "manifest.json").exists()


def test_force_replaces_a_zoo_of_another_spec(tmp_path, one_thread):
    from zoo.generate import generate
    from zoo.generate.spec import spec_from_dict

    out = tmp_path / "z"
    generate(spec_from_dict({**TINY, "models": 2, "seed": 5}), out, group_size=2, progress=False)
    with pytest.raises(ZooError, match="already holds a different zoo"):
        generate(spec_from_dict({**TINY, "models": 2}), out, group_size=2, progress=False)
    generate(spec_from_dict({**TINY, "models": 2}), out, group_size=2, progress=False, force=True)
    assert zoo.open(out).manifest["spec"]["seed"] == TINY["seed"]
    with pytest.raises(ZooError, match="--force cannot be combined with --shard"):
        generate(spec_from_dict({**TINY, "models": 2}), out, shard=0, num_shards=2, force=True)


@contextlib.contextmanager
def lock_held_by_child(path: Path, key=None):
    """A process that holds ``path``'s lock (as `zoo generate`) until it is killed (-9) on
    leaving the block."""
    code = ("import sys, time; from zoo.store.lock import lock_dir\n"
            f"with lock_dir({str(path)!r}, 'zoo generate', key={key!r}):\n"
            "    print('locked', flush=True); time.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        yield p
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()


def test_a_second_writer_gets_the_lock_message_and_a_killed_writers_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "z"
    with lock_held_by_child(out) as child:
        spec = write_toml(tmp_path / "s.toml", {**TINY, "models": 2})
        assert zoo_main(["generate", spec, "--out", out, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{out} is being written by process {child.pid} (zoo generate) since " in err
        with pytest.raises(LockedError):
            with lock_dir(out):
                pass
    assert lock_path(out).exists(), "a killed holder leaves its lock file behind"
    with lock_dir(out, "test"):  # stale: the kernel released the dead process's lock
        info = json.loads(lock_path(out).read_text())
        assert info["pid"] == os.getpid() and info["what"] == "test"
    assert not lock_path(out).exists(), "released locks are removed"


def test_shard_jobs_share_a_folder_but_not_a_shard(tmp_path):
    out = tmp_path / "z"
    with lock_held_by_child(out, key="shard-0-of-2") as child:
        with lock_dir(out, key="shard-1-of-2"):
            pass
        with pytest.raises(LockedError, match=f"process {child.pid}"):
            with lock_dir(out, key="shard-0-of-2"):
                pass
        with pytest.raises(LockedError):
            with lock_dir(out):
                pass


def test_temp_files_of_killed_writers_are_removed_and_never_counted(reference, tmp_path, capsys, one_thread):
    from zoo.cli.zoos import _size
    from zoo.generate import generate
    from zoo.generate.spec import spec_from_dict

    out = tmp_path / "z"
    shutil.copytree(reference, out)
    size = _size(out)
    junk = [out / ".shard-00000.h5.abcd1234.tmp", out / ".manifest.json.zz_x9y8w.tmp"]
    for j in junk:
        j.write_bytes(b"\0" * 100_000)
    mine = out / "notes.tmp"
    mine.write_text("a user's file that merely ends in .tmp")
    assert _size(out) == size + mine.stat().st_size
    (out / ".parts" / "shard-00000").mkdir(parents=True)  # a kill right after sealing the manifest
    generate(spec_from_dict(TINY), out, progress=False)
    assert not any(j.exists() for j in junk) and mine.exists() and not (out / ".parts").exists()


# ------------------------------------------------------------ 4. write failures are errors

def run_cli(args, limit_bytes=None, **kw):
    def limit():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an EFBIG error instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", *map(str, args)], env=ENV, capture_output=True, text=True,
                          preexec_fn=limit if limit_bytes else None, timeout=600, **kw)


def test_a_full_disk_while_generating_is_an_error_naming_the_file(tmp_path):
    spec = write_toml(tmp_path / "s.toml", {**TINY, "models": 4})
    out = tmp_path / "z"
    r = run_cli(["zoo.cli", "generate", spec, "--out", out, "--group-size", "2", "--quiet"], limit_bytes=60_000)
    assert r.returncode == 2, r.stderr
    assert "could not write" in r.stderr and "File too large" in r.stderr and "Traceback" not in r.stderr
    assert not [p for p in out.rglob("*") if store.is_temp(p)], "nothing half-written is left"


SHARD_WRITER = """
import sys, numpy as np, pandas as pd, torch
from pathlib import Path
from zoo import store
from zoo.errors import ZooError
from zoo.layout import Layout
lay = Layout.from_module(torch.nn.Linear(100, 100))
c = store.ShardContent(ids=np.arange(64), weights={"final": np.ones((64, lay.num_params), np.float32)},
                       table=pd.DataFrame({"diverged": np.zeros(64, bool)}), layout=lay)
try:
    store.write_shard(Path(sys.argv[1]) / "shard-00000.h5", c)
except ZooError as e:
    print(e)
"""


def test_a_shard_write_on_a_full_tmpfs_is_an_error_not_a_segfault(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the RLIMIT_FSIZE test covers a full disk without it)")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("this machine does not let the test mount a tmpfs")
    try:
        r = subprocess.run([sys.executable, "-c", SHARD_WRITER, str(mnt)], env=ENV, capture_output=True, text=True)
        assert r.returncode == 0, f"exit {r.returncode} (139 = the segfault): {r.stderr[-500:]}"
        assert "could not write" in r.stdout and "No space left on device" in r.stdout
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)])


def read_only_folder(tmp_path):
    """A folder no one can write into: a read-only tmpfs for root (who ignores permission
    bits), mode 0555 otherwise. Returns (path, cleanup)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)]).returncode:
            pytest.skip("running as root, where permission bits do not stop writes, and no mount allowed")
        return ro, lambda: subprocess.run(["umount", str(ro)])
    os.chmod(ro, 0o555)
    return ro, lambda: os.chmod(ro, 0o755)


def test_a_read_only_output_folder_is_refused_before_any_training(tmp_path, capsys, monkeypatch):
    from zoo.generate.train import GroupTrainer

    ro, cleanup = read_only_folder(tmp_path)
    monkeypatch.setattr(GroupTrainer, "train", lambda *a: pytest.fail("trained before checking --out"))
    try:
        spec = write_toml(tmp_path / "s.toml", {**TINY, "models": 2})
        assert zoo_main(["generate", spec, "--out", ro / "z", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert str(ro) in err and ("Read-only file system" in err or "Permission denied" in err)
        assert metanets_main(["train", tmp_path, "--metanet", "mlp", "--out", ro / "m.pt"]) == 2
        err = capsys.readouterr().err
        assert "--out" in err and "not writable" in err
    finally:
        cleanup()


def test_too_little_free_space_is_refused_before_training(tmp_path, monkeypatch):
    from zoo.generate import generate
    from zoo.generate.spec import spec_from_dict
    from zoo.generate.train import GroupTrainer

    monkeypatch.setattr(GroupTrainer, "train", lambda *a: pytest.fail("trained before checking the space"))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 20, 10 << 20, 1000))
    with pytest.raises(ZooError, match=r"MiB free, about .* MiB needed \(No space left on device\)"):
        generate(spec_from_dict(TINY), tmp_path / "z", group_size=2, progress=False)


def test_bad_paths_and_devices_are_one_line_errors(tmp_path, capsys):
    spec = write_toml(tmp_path / "s.toml", {**TINY, "models": 2})
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        (["generate", spec, "--out", afile, "--quiet"], "is a file, not a folder"),
        (["generate", tmp_path, "--out", tmp_path / "z", "--quiet"], "is a folder, not a TOML spec file"),
        (["generate", spec, "--out", tmp_path / "z", "--device", "tpu", "--quiet"], "--device 'tpu': unknown device"),
    ]
    for argv, msg in cases:
        assert zoo_main(argv) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert afile.read_text() == "x"
    assert metanets_main(["train", tmp_path, "--metanet", "mlp", "--out", tmp_path]) == 2
    assert "is a folder" in capsys.readouterr().err


# ------------------------------------------------------------ 5. bounded spec inputs

@pytest.mark.parametrize("change, field", [
    ({"net": {**TINY["net"], "width": "wide"}}, "net.width"),
    ({"hparams": {**TINY["hparams"], "lr": float("inf")}}, "hparams.lr"),
    ({"hparams": {**TINY["hparams"], "lr": {"dist": "loguniform", "low": 1e-3, "high": float("inf")}}}, "hparams.lr"),
    ({"hparams": {**TINY["hparams"], "epochs": 5000}}, "hparams.epochs"),
    ({"hparams": {**TINY["hparams"], "batch_size": 10**6}}, "hparams.batch_size"),
    ({"hparams": {**TINY["hparams"], "weight_decay": float("nan")}}, "hparams.weight_decay"),
])
def test_out_of_bounds_spec_values_name_the_field(tmp_path, change, field, capsys):
    from zoo.generate.spec import LIMITS, spec_from_dict

    with pytest.raises(SpecError, match=rf"spec field '{field}'") as e:
        spec_from_dict({**TINY, **change})
    if field in ("hparams.epochs", "hparams.batch_size"):
        assert f"<= {LIMITS[field.split('.')[1]]}" in str(e.value) and "allow_large" in str(e.value)
    spec = write_toml(tmp_path / "s.toml", {**TINY, **change})
    assert zoo_main(["generate", spec, "--out", tmp_path / "z", "--quiet"]) == 2
    assert field in capsys.readouterr().err
    assert not (tmp_path / "z").exists() or not any((tmp_path / "z").iterdir())


def test_allow_large_lifts_the_bounds_and_keeps_other_fingerprints(tmp_path):
    from zoo.generate.spec import spec_from_dict

    big = spec_from_dict({**TINY, "allow_large": True, "hparams": {**TINY["hparams"], "epochs": 5000}})
    assert big.sample_hparams(0)["epochs"] == 5000 and spec_from_dict(big.to_dict()) == big
    assert "allow_large" not in spec_from_dict(TINY).to_dict(), "existing zoos keep their fingerprint"


def test_a_folder_in_a_read_only_parent_is_locked_inside_itself(tmp_path):
    parent = tmp_path / "admin"
    (parent / "mine").mkdir(parents=True)
    undo = read_only(parent)
    try:
        # a writable folder inside the read-only parent: bind-mount a writable one over it
        if os.geteuid() == 0:
            rw = tmp_path / "rw"
            rw.mkdir()
            assert subprocess.run(["mount", "--bind", str(rw), str(parent / "mine")]).returncode == 0
        else:
            os.chmod(parent / "mine", 0o755)
        try:
            out = parent / "mine"
            assert lock_path(out) == out / ".metazoo.lock"
            with lock_dir(out):
                with pytest.raises(LockedError, match=f"process {os.getpid()}"):
                    with lock_dir(out):
                        pass
        finally:
            if os.geteuid() == 0:
                subprocess.run(["umount", str(parent / "mine")])
    finally:
        undo()


def test_two_real_generate_runs_then_kill_9_and_resume(tmp_path, capsys):
    """The issue's case: a second `zoo generate` on the same --out while the first runs."""
    spec = write_toml(tmp_path / "s.toml", {**TINY, "models": 4})
    out = tmp_path / "z"
    first = subprocess.Popen([sys.executable, "-m", "zoo.cli", "generate", str(spec), "--out", str(out),
                              "--group-size", "2", "--quiet"], env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (out / "zoo-plan.json").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the test could race it"
        assert zoo_main(["generate", spec, "--out", out, "--group-size", "2", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"is being written by process {first.pid} (zoo generate) since" in err, err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert zoo_main(["generate", spec, "--out", out, "--quiet"]) == 0  # the dead run's lock is free
    assert store.verify(out) == []


@pytest.mark.parametrize("key,value,needle", [
    ("group_size", "16", "'group_size'"), ("group_size", 0, "'group_size'"), ("spec", "tiny", "'spec'"),
    ("num_shards", None, "'num_shards'"), ("refill", "yes", "'refill'"), ("format", "other", "'format'"),
    ("cpu_threads", 1.5, "'cpu_threads'")])
def test_a_plan_edited_by_hand_is_refused_naming_its_key(tmp_path, key, value, needle):
    """zoo-plan.json is read by generate (resume), merge and info: a field of the wrong type or
    range is a ZooError naming the file and the key, not a TypeError deep in the generation."""
    from zoo.generate.run import PLAN_FORMAT, read_plan

    plan = {"format": PLAN_FORMAT, "fingerprint": "f" * 16, "spec": {"name": "tiny", "models": 4},
            "group_size": 2, "refill": False, "num_shards": 1, "data": {}, "cpu_threads": 1}
    assert read_plan(_write(tmp_path, plan)) == plan
    plan[key] = value
    with pytest.raises(ZooError, match=needle) as e:
        read_plan(_write(tmp_path, plan))
    assert "zoo-plan.json" in str(e.value)


def _write(root, plan):
    (root / "zoo-plan.json").write_text(json.dumps(plan))
    return root / "zoo-plan.json"


def test_an_error_quoting_a_name_with_a_line_break_character_stays_one_line():
    """A spec key or file name may hold characters that end a line for str.splitlines and for
    terminals (\\x1e, \\x85, U+2028, ...; the kept fuzz finding plan_parts-44463c8b64 had a plan key
    with \\x1e\\x1d): ZooError shows them escaped, so the CLIs' error stays one line and still names
    the key; a quoted multi-line message is joined by spaces as before."""
    for c in "\v\f\x1c\x1d\x1e\x85\u2028\u2029":
        e = SpecError(f"hparams.a{c}b", [], "unknown hyper-parameter")
        assert len(str(e).splitlines()) == 1, repr(str(e))
        assert f"hparams.a{c.encode('unicode_escape').decode()}b" in str(e)
    assert str(ZooError("line one\nline two\r\n")) == "line one line two"
