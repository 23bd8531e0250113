"""The reader families: for each, how its seed inputs are built, what a mutation plan looks
like (a hypothesis strategy of JSON-able plans), and how one plan is run and judged.

``FAMILIES[name].run(plan, case)`` raises :class:`~fuzz.core.Finding` when a reader breaks a
promise (docs/FORMAT.md, "Fuzzing"); anything else it returns is a pass.
"""
from __future__ import annotations

import atexit
import contextlib
import csv
import gzip
import io
import json
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from hypothesis import strategies as st

from . import core
from .core import BYTE_PLAN, JSON_PLAN, Finding, apply_bytes, apply_json, snapshot

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


@dataclass
class Family:
    name: str
    strategy: st.SearchStrategy
    run: Callable  # (plan, case) -> None


FAMILIES: dict[str, Family] = {}


def family(name, strategy):
    def deco(fn):
        FAMILIES[name] = Family(name, strategy, fn)
        return fn
    return deco


# ------------------------------------------------------------ seed inputs

_SEEDS: dict = {}
_SEED_ROOT = Path(tempfile.mkdtemp(prefix="metazoo-fuzz-seeds-"))
atexit.register(shutil.rmtree, _SEED_ROOT, True)


def seed(name, build):
    """Build a seed input once per process (deterministically: same bytes in every process
    that matter to a plan, so a kept finding replays)."""
    if name not in _SEEDS:
        _SEEDS[name] = build(_SEED_ROOT / name)
    return _SEEDS[name]


class Payload:
    """Unpickling this creates ``path``: a finding if it ever appears."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _zoo_seed(root: Path):
    from zoo.generate.synthetic import make_zoo

    import zoo

    make_zoo(root, models=6, shard_size=3, wasym=True, width=0.25, in_channels=1, seed=1, n_diverged=1)
    z = zoo.open(root)
    w = {c: z.weights(checkpoint=c) for c in z.checkpoints}
    table = z.table
    return {"root": root, "weights": w, "table": table, "manifest": json.loads((root / "manifest.json").read_text())}


def zoo_seed():
    return seed("zoo", _zoo_seed)


def copy_zoo(src: Path, dst: Path, link: bool = True):
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_file():
            (os.link if link else shutil.copy)(p, dst / p.name)


def read_all(z):
    """Everything a metanet reads of a zoo; returns what it read, checking internal consistency."""
    import zoo as _zoo

    t = z.table
    out = {"len": len(z), "table": t, "weights": {}}
    for c in z.checkpoints:
        w = z.weights(checkpoint=c)
        if w.dtype != np.float32:
            raise Finding(f"weights({c!r}) are {w.dtype}, not float32 as docs/FORMAT.md promises")
        if w.shape != (len(t), z.layout.num_params):
            raise Finding(f"weights({c!r}) shape {w.shape} but the table has {len(t)} rows "
                          f"and the layout {z.layout.num_params} parameters")
        z.weights(checkpoint=c, trainable_only=True)
        out["weights"][c] = w
    if len(t) != len(z):
        raise Finding(f"len(zoo) = {len(z)} but its table has {len(t)} rows")
    if len(t):
        first = int(t["model_id"].iloc[0])
        z.weights([first])
        z.layer_weights(first)
        if z.manifest.get("net"):
            try:
                z.rebuild(first)
            except _zoo.ZooError:
                raise
    z.close()
    return out


def same_as_seed(got, seed_):
    """A zoo whose shards were not changed must give back exactly the seed's models."""
    t, st_ = got["table"], seed_["table"].set_index("model_id")
    for c, w in got["weights"].items():
        if c not in seed_["weights"]:
            raise Finding(f"read a checkpoint {c!r} the shards do not hold")
        for row, mid in enumerate(t["model_id"]):
            ref = seed_["weights"][c][list(st_.index).index(int(mid))]
            if not np.array_equal(w[row], ref, equal_nan=True):
                raise Finding(f"model {mid}, checkpoint {c!r}: weights differ from the shard's")
    for col in st_.columns:
        if col == "split" or col not in t:
            continue
        a = t.set_index("model_id")[col]
        b = st_.loc[a.index, col]
        if not a.equals(b) and not (a.astype(str) == b.astype(str)).all():
            raise Finding(f"table column {col!r} differs from the shards'")


def open_and_verify(case, root, *, seed_=None, names=(), may_write=()):
    """zoo.open + every read, then zoo verify, each judged."""
    import zoo
    from zoo import store

    got, err = case.judge(lambda: read_all(zoo.open(root)), names=names, may_write=may_write)
    if got is not None and seed_ is not None:
        same_as_seed(got, seed_)
    problems, err2 = case.judge(lambda: store.verify(root), names=names, may_write=may_write)
    if problems is not None and not isinstance(problems, list):
        raise Finding(f"verify returned {type(problems).__name__}")
    return got, err, problems


# ------------------------------------------------------------ manifest

def _fixup(m):
    """Make the obvious counts agree again, so a lie reaches the deeper checks."""
    with contextlib.suppress(Exception):
        m["num_params"] = sum(int(np.prod(t["shape"])) for t in m["layout"]["tensors"])
    with contextlib.suppress(Exception):
        m["num_models"] = sum(s["num_models"] for s in m["shards"])
    with contextlib.suppress(Exception):
        m["num_trainable"] = min(m["num_trainable"], m["num_params"])
    return m


MANIFEST_PLAN = st.fixed_dictionaries({
    "ops": JSON_PLAN, "fixup": st.booleans(),
    "raw": st.one_of(st.none(), st.none(), st.none(), BYTE_PLAN, st.just("deep")),
})


@family("manifest", MANIFEST_PLAN)
def run_manifest(plan, case):
    s = zoo_seed()
    root = case.root / "z"
    copy_zoo(s["root"], root)
    m = apply_json(s["manifest"], plan["ops"])
    if plan["fixup"] and isinstance(m, dict):
        m = _fixup(m)
    text = json.dumps(m).encode()
    if plan["raw"] == "deep":
        text = core.deep_nesting()
    elif plan["raw"]:
        text = apply_bytes(text, plan["raw"])
    (root / "manifest.json").unlink()
    (root / "manifest.json").write_bytes(text)
    open_and_verify(case, root, seed_=s, names=("manifest.json", str(root)))


# ------------------------------------------------------------ shards: bytes

SHARD_PLAN = st.fixed_dictionaries({
    "shard": st.integers(0, 1), "bytes": BYTE_PLAN, "mode": st.sampled_from(["plain", "rehash", "noverify"])})


def _rehash(root: Path, shard: str):
    from zoo.store.integrity import sha256_file

    m = json.loads((root / "manifest.json").read_text())
    for e in m["shards"]:
        if e["file"] == shard:
            e["sha256"], e["bytes"] = sha256_file(root / shard), (root / shard).stat().st_size
    (root / "manifest.json").unlink()
    (root / "manifest.json").write_text(json.dumps(m))


def _shard_case(case, root, name, changed, mode):
    import zoo

    if mode == "rehash":
        _rehash(root, name)
    if mode == "noverify":
        got, err = case.judge(lambda: read_all(zoo.open(root, verify=False)), names=(str(root),))
        return
    got, err, problems = open_and_verify(case, root, names=(name, str(root)))
    if mode == "plain" and changed:
        if got is not None:
            raise Finding(f"a changed {name} was read as good (sha256 in the manifest not checked)")
        if problems == []:
            raise Finding(f"zoo verify passed a changed {name}")


@family("shard_bytes", SHARD_PLAN)
def run_shard_bytes(plan, case):
    s = zoo_seed()
    root = case.root / "z"
    copy_zoo(s["root"], root)
    name = f"shard-{plan['shard']:05d}.h5"
    data = (root / name).read_bytes()
    new = apply_bytes(data, plan["bytes"])
    (root / name).unlink()
    (root / name).write_bytes(new)
    _shard_case(case, root, name, new != data, plan["mode"])


# ------------------------------------------------------------ shards: HDF5 structure

H5_TARGETS = ["ids", "weights/final", "weights/epoch_0", "weights", "table/diverged", "table/test_acc", "table/lr",
              "table", "fixed/mask", "fixed/values", "fixed", "@format", "@schema_version", "@layout"]
H5_CHANGES = ["cols+1", "cols-1", "rows+1", "rows-1", "1d", "3d", "scalar", "empty", "float64", "float16", "int8",
              "bool", "bytes", "vlen", "compound", "complex", "gzip", "lzf", "shuffle", "fletcher32", "scaleoffset",
              "delete", "group", "softlink", "extlink", "nan", "reverse", "dup", "big", "negative"]
H5_ATTR = ["int", "str", "array", "bytes", "missing", "json", "float", "list-json"]

SHARD_H5_PLAN = st.fixed_dictionaries({
    "shard": st.integers(0, 1), "target": st.sampled_from(H5_TARGETS), "change": st.sampled_from(H5_CHANGES),
    "attr": st.sampled_from(H5_ATTR), "json": JSON_PLAN, "mode": st.sampled_from(["plain", "rehash", "rehash", "noverify"])})


def _variant(a: np.ndarray, how: str):
    """``a`` changed in shape or type as ``how`` says; returns (data, create_dataset kwargs)."""
    kw = {}
    a2 = a if a.ndim else a.reshape(1)
    if how == "cols+1":
        a = np.concatenate([a2.reshape(len(a2), -1), np.zeros((len(a2), 1), a.dtype)], 1)
    elif how == "cols-1":
        a = a2.reshape(len(a2), -1)[:, :-1]
    elif how == "rows+1":
        a = np.concatenate([a2, a2[:1]])
    elif how == "rows-1":
        a = a2[:-1]
    elif how == "1d":
        a = a.reshape(-1)
    elif how == "3d":
        a = a[..., None, None]
    elif how == "scalar":
        a = np.asarray(a.reshape(-1)[0] if a.size else 0)
    elif how == "empty":
        a = a[:0]
    elif how in ("float64", "float16", "int8", "bool", "complex"):
        a = a.astype({"complex": np.complex64}.get(how, how))
    elif how == "bytes":
        a = np.array([b"x" * 3] * max(1, len(a2)), dtype="S3")
    elif how == "vlen":
        import h5py

        a = np.array(["é" * 2] * max(1, len(a2)), dtype=h5py.string_dtype())
    elif how == "compound":
        a = np.zeros(max(1, len(a2)), dtype=[("a", "<i4"), ("b", "<f8")])
    elif how in ("gzip", "lzf"):
        kw = {"compression": how}
    elif how == "shuffle":
        kw = {"compression": "gzip", "shuffle": True}
    elif how == "fletcher32":
        kw = {"fletcher32": True}
    elif how == "scaleoffset":
        kw = {"scaleoffset": 2 if a.dtype.kind == "f" else 0}
    elif how == "nan":
        a = np.full(a.shape, np.nan) if a.dtype.kind == "f" else a
    elif how == "reverse":
        a = a[::-1].copy() if a.ndim else a
    elif how == "dup":
        a = np.concatenate([a2[:1], a2[:-1]]) if len(a2) > 1 else a
    elif how == "big":
        a = np.full(a.shape, 2**62, np.int64) if a.dtype.kind in "iub" else np.full(a.shape, 1e38, a.dtype)
    elif how == "negative":
        a = -np.abs(a.astype(np.int64)) - 1 if a.dtype.kind in "iub" else -a
    if kw and a.ndim == 0:
        kw = {}
    if kw and a.ndim:
        kw.setdefault("chunks", True)
    return a, kw


def _rewrite_h5(path: Path, plan, outside: Path):
    import h5py

    target, how = plan["target"], plan["change"]
    with h5py.File(path, "r+") as f:
        if target.startswith("@"):
            key = target[1:]
            old = f.attrs.get(key)
            kind = plan["attr"]
            if kind == "missing":
                f.attrs.pop(key, None) if key in f.attrs else None
                return
            new = {"int": 7, "str": "x", "array": np.arange(3), "bytes": np.bytes_(b"\xff\xfe"), "float": 1.5,
                   "list-json": "[1, 2]"}.get(kind)
            if kind == "json":
                try:
                    doc = json.loads(old) if isinstance(old, (str, bytes)) else old
                    new = json.dumps(apply_json(doc, plan["json"]))
                except (TypeError, ValueError):
                    new = "{"
            f.attrs[key] = new
            return
        if target not in f:
            return
        obj = f[target]
        if isinstance(obj, h5py.Group):
            if how == "delete":
                del f[target]
            elif how == "softlink":
                del f[target]
                f[target] = h5py.SoftLink("/ids")
            elif how == "extlink":
                del f[target]
                f[target] = h5py.ExternalLink(str(outside), "/x")
            else:
                del f[target]
                f.create_dataset(target, data=np.arange(3))
            return
        data = obj[()]
        del f[target]
        if how == "delete":
            return
        if how == "group":
            f.create_group(target)
        elif how == "softlink":
            f[target] = h5py.SoftLink("/ids" if target != "ids" else "/table/lr")
        elif how == "extlink":
            f[target] = h5py.ExternalLink(str(outside), "/x")
        else:
            a, kw = _variant(np.asarray(data), how)
            try:
                f.create_dataset(target, data=a, **kw)
            except (ValueError, TypeError):
                f.create_dataset(target, data=a)


@family("shard_h5", SHARD_H5_PLAN)
def run_shard_h5(plan, case):
    import h5py

    s = zoo_seed()
    root = case.root / "z"
    copy_zoo(s["root"], root)
    name = f"shard-{plan['shard']:05d}.h5"
    outside = case.root / "outside.h5"
    with h5py.File(outside, "w") as f:
        f["x"] = np.zeros((3, 3), np.float32)
    data = (root / name).read_bytes()
    (root / name).unlink()
    (root / name).write_bytes(data)  # a copy of its own: the seed's is hard-linked
    _rewrite_h5(root / name, plan, outside)
    _shard_case(case, root, name, (root / name).read_bytes() != data, plan["mode"])


# ------------------------------------------------------------ the verification cache

CACHE_PLAN = st.fixed_dictionaries({"ops": JSON_PLAN, "raw": st.one_of(st.none(), BYTE_PLAN, st.just("deep")),
                                    "damage": st.booleans()})


@family("verify_cache", CACHE_PLAN)
def run_verify_cache(plan, case):
    import zoo
    from zoo.store import integrity

    s = zoo_seed()
    root = case.root / "z"
    copy_zoo(s["root"], root)
    read_all(zoo.open(root))  # fills the cache
    real = os.path.realpath(root)
    cache, = (p for p in (integrity.cache_dir() / "verified").glob("*.json") if real in p.read_text())
    doc = json.loads(cache.read_text())
    text = json.dumps(apply_json(doc, plan["ops"])).encode()
    text = core.deep_nesting() if plan["raw"] == "deep" else apply_bytes(text, plan["raw"]) if plan["raw"] else text
    cache.write_bytes(text)
    if plan["damage"]:
        p = root / "shard-00001.h5"
        d = bytearray(p.read_bytes())
        d[len(d) // 2] ^= 1
        p.unlink()  # hard-linked to the seed
        p.write_bytes(bytes(d))  # same size, a new mtime: the cache must not vouch for it
    got, err = case.judge(lambda: read_all(zoo.open(root)), names=("shard-00001.h5", str(root)))
    if plan["damage"] and got is not None and "shard-00001.h5" in {e["file"] for e in s["manifest"]["shards"]}:
        raise Finding("a shard changed since it was cached was read as good")
    if got is not None:
        same_as_seed(got, s)


# ------------------------------------------------------------ lock files

LOCK_PLAN = st.fixed_dictionaries({"ops": JSON_PLAN, "raw": st.one_of(st.none(), BYTE_PLAN, st.just("deep")),
                                   "key": st.sampled_from([None, "shard-0-of-2"])})


@family("lock", LOCK_PLAN)
def run_lock(plan, case):
    import fcntl

    from zoo.store import lock

    out = case.root / "z"
    out.mkdir()
    doc = {"pid": 4242, "host": "elsewhere", "process_start": "boot:123", "what": "zoo generate",
           "since": "2026-11-27 04:51:07 UTC"}
    text = json.dumps(apply_json(doc, plan["ops"])).encode()
    text = core.deep_nesting() if plan["raw"] == "deep" else apply_bytes(text, plan["raw"]) if plan["raw"] else text
    path = lock.lock_path(out, plan["key"])
    path.write_bytes(text)
    rel = path.relative_to(case.root).as_posix()
    folder_lock = lock.lock_path(out).relative_to(case.root).as_posix()
    case.judge(lambda: lock.holder(out, plan["key"]))
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another holder, as far as lock_dir can tell

        def second():
            with lock.lock_dir(out, "fuzz", key=plan["key"]):
                raise Finding("took a lock another open file holds")

        _, err = case.judge(second, names=(str(out),), may_write=(folder_lock,))
        if err is None:
            raise Finding("lock_dir neither took nor refused the lock")
    finally:
        os.close(fd)

    def take():
        with lock.lock_dir(out, "fuzz", key=plan["key"]):
            return True

    case.judge(take, may_write=(rel, folder_lock), may_delete=(rel,))


# ------------------------------------------------------------ generation state: plan and parts

def _gen_seed(root: Path):
    """A generation interrupted after shard 0 and one part of shard 1 (4 models, shards of 2,
    groups of 2), and the zoo it finishes as."""
    import tomli_w

    import zoo
    from zoo.generate import generate
    from zoo.generate.spec import spec_from_dict

    from conftest import TINY

    spec = {**TINY, "models": 4, "models_per_shard": 2}
    root.mkdir(parents=True)
    (root / "spec.toml").write_text(tomli_w.dumps(spec))
    full = root / "full"
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generate(spec_from_dict(spec), full, group_size=2, progress=False)
    finally:
        torch.set_num_threads(n)
    z = zoo.open(full)
    golden = {c: z.weights(checkpoint=c) for c in z.checkpoints}
    state = root / "state"
    state.mkdir()
    shutil.copy(full / "zoo-plan.json", state / "zoo-plan.json") if (full / "zoo-plan.json").exists() else None
    shutil.copy(full / "shard-00000.h5", state / "shard-00000.h5")
    parts = state / ".parts" / "shard-00001"
    parts.mkdir(parents=True)
    shutil.copy(full / "shard-00001.h5", parts / "group-00000.h5")
    from zoo.store.integrity import sha256_file

    (parts / "group-00000.h5.sha256").write_text(sha256_file(parts / "group-00000.h5"))
    return {"spec": root / "spec.toml", "state": state, "golden": golden, "full": full}


def gen_seed():
    return seed("gen", _gen_seed)


GEN_FILES = ["zoo-plan.json", "shard-00000.h5", ".parts/shard-00001/group-00000.h5",
             ".parts/shard-00001/group-00000.h5.sha256"]
GEN_PLAN = st.fixed_dictionaries({
    "file": st.sampled_from(GEN_FILES), "ops": JSON_PLAN, "raw": st.one_of(st.none(), BYTE_PLAN, st.just("deep")),
    "rehash": st.booleans(), "command": st.sampled_from(["generate", "generate", "info"])})


class Trained(BaseException):
    """What the stubbed trainer raises: the run decided to (re)train models."""


@family("plan_parts", GEN_PLAN)
def run_plan_parts(plan, case):
    import zoo
    from zoo import store
    from zoo.cli import main
    from zoo.generate.train import GroupTrainer

    g = gen_seed()
    out = case.root / "z"
    shutil.copytree(g["state"], out)
    spec = case.root / "spec.toml"
    shutil.copy(g["spec"], spec)
    target = out / plan["file"]
    data = target.read_bytes()
    if plan["file"].endswith(".json"):
        new = json.dumps(apply_json(json.loads(data), plan["ops"])).encode()
    else:
        new = data
    new = core.deep_nesting() if plan["raw"] == "deep" else apply_bytes(new, plan["raw"]) if plan["raw"] else new
    target.write_bytes(new)
    if plan["rehash"] and plan["file"].endswith(".h5"):
        from zoo.store.integrity import sha256_file

        Path(str(target) + ".sha256").write_text(sha256_file(target))
    real = GroupTrainer.train

    def stub(*a, **k):
        raise Trained()

    GroupTrainer.train = stub
    err_buf = io.StringIO()
    try:
        def run():
            with contextlib.redirect_stderr(err_buf), contextlib.redirect_stdout(io.StringIO()):
                try:
                    if plan["command"] == "info":
                        return main(["info", str(out)])
                    return main(["generate", str(spec), "--out", str(out), "--quiet"])
                except Trained:
                    return "trained"

        rc, _ = case.judge(run, may_write=("z", ".z.lock"))
    finally:
        GroupTrainer.train = real
    err = err_buf.getvalue()
    if "Traceback" in err:
        raise Finding(f"traceback on stderr: {err[-300:]}")
    if rc == 2 and len(err.strip().splitlines()) != 1:
        raise Finding(f"exit 2 without a one-line error: {err[-300:]!r}")
    if rc not in (0, 1, 2, "trained"):
        raise Finding(f"exit status {rc!r}")
    if plan["command"] == "generate" and rc == 0:
        z = zoo.open(out)
        for c, w in g["golden"].items():
            if not np.array_equal(z.weights(checkpoint=c), w, equal_nan=True):
                raise Finding(f"generate finished a zoo whose {c!r} weights differ from the uninterrupted run's")
        if store.verify(out):
            raise Finding("generate finished a zoo that zoo verify refuses")


# ------------------------------------------------------------ importers

def _members(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _import_seeds(root: Path):
    import hub_fixtures as hf

    seeds = {}
    hf.write_lim_record(root / "lim", {"resnet8": 2}, mask_files=False)
    seeds["lim2024"] = (_members(root / "lim"), {})
    hf.write_smallcnnzoo(root / "scz", runs=2)
    seeds["smallcnnzoo"] = (_members(root / "scz"), {})
    hf.write_modelzoos(root / "mz.zip", nets=2, epochs=(0, 1))
    with zipfile.ZipFile(root / "mz.zip") as zf:
        seeds["modelzoos"] = ({i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}, {})
    from zoo.generate.synthetic import make_zoo

    make_zoo(root / "mzoo" / "zoo", models=4, shard_size=2, width=0.25, in_channels=1)
    seeds["metazoo"] = (_members(root / "mzoo"), {})
    return seeds


def import_seeds():
    return seed("imports", _import_seeds)


CONTAINERS = ["folder", "zip", "tar", "tar.gz", "tar.xz", "zip-in-folder", "zip-in-zip"]
NAMES = ["../escape.pt", "/abs.pt", "a/../../b.pt", "", ".", "x" * 300, "dir/", "é.pt", "0.pt", "resnet8/9.pt",
         "metrics.csv", "weights.npy", "manifest.json", "shard-00000.h5", "a\\b.pt", "link.zip", "in.tar.gz"]
MEMBER_EDIT = st.one_of(
    st.tuples(st.just("bytes"), core._U32, BYTE_PLAN),
    st.tuples(st.just("struct"), core._U32, JSON_PLAN),
    st.tuples(st.just("tensor"), core._U32, core._U32, st.sampled_from(
        ["drop", "rename", "reshape", "float64", "int", "bool", "half", "scalar", "str", "none", "list", "nan",
         "empty", "sparse", "big", "acc-str", "acc-nan", "acc-neg", "whole-tensor", "whole-str", "dict"])),
    st.tuples(st.just("npy"), core._U32, st.sampled_from(
        ["reshape", "transpose", "float64", "int32", "bool", "complex", "str", "fortran", "scalar", "empty", "nan",
         "structured", "3d"])),
    st.tuples(st.just("drop"), core._U32),
    st.tuples(st.just("rename"), core._U32, st.sampled_from(NAMES)),
    st.tuples(st.just("pickle"), core._U32),
    st.tuples(st.just("add"), st.sampled_from(NAMES), st.binary(max_size=32).map(bytes.hex)),
).map(list)
ARCHIVE_EDIT = st.one_of(
    st.tuples(st.just("bytes"), BYTE_PLAN),
    st.tuples(st.just("member"), st.sampled_from(["symlink", "hardlink", "fifo", "abs", "dotdot", "dup", "bomb",
                                                  "dir-as-file", "lying-size"])),
).map(list)
IMPORT_PLAN = st.fixed_dictionaries({
    "container": st.sampled_from(CONTAINERS), "edits": st.lists(MEMBER_EDIT, min_size=0, max_size=3),
    "archive": st.one_of(st.none(), ARCHIVE_EDIT)})


def _edit_tensors(obj, sel, how):
    import torch

    sd, rest = (obj[0], obj[1:]) if isinstance(obj, tuple) and obj and isinstance(obj[0], dict) else (obj, None)
    if how == "whole-tensor":
        return torch.zeros(3)
    if how == "whole-str":
        return "not a state dict"
    if how == "dict":
        return {"a": {"b": torch.zeros(2)}}
    if how.startswith("acc-") and rest is not None:
        return (sd, {"acc-str": "high", "acc-nan": float("nan"), "acc-neg": -5.0}[how]) + tuple(rest[1:])
    if not isinstance(sd, dict) or not sd:
        return obj
    sd = dict(sd)
    k = sorted(sd)[sel % len(sd)]
    v = sd[k]
    if how == "drop":
        del sd[k]
    elif how == "rename":
        sd[k + ".x"] = sd.pop(k)
    elif isinstance(v, torch.Tensor):
        sd[k] = {"reshape": lambda: v.reshape(-1)[:-1] if v.numel() > 1 else v.reshape(1, 1),
                 "float64": lambda: v.double(), "int": lambda: v.long(), "bool": lambda: v.bool(),
                 "half": lambda: v.half(), "scalar": lambda: torch.tensor(1.0), "str": lambda: "x",
                 "none": lambda: None, "list": lambda: v.tolist(), "nan": lambda: torch.full_like(v.float(), float("nan")),
                 "empty": lambda: v[:0], "sparse": lambda: v.reshape(-1).to_sparse(),
                 "big": lambda: torch.full(v.shape, 1e38)}.get(how, lambda: v)()
    return (sd, *rest) if rest is not None else sd


def _edit_npy(data: bytes, how: str) -> bytes:
    a = np.load(io.BytesIO(data), allow_pickle=False)
    if how == "reshape":
        a = a.reshape(-1)[: max(0, a.size - 1)]
    elif how == "transpose":
        a = a.T.copy()
    elif how in ("float64", "int32", "bool", "complex"):
        a = a.astype({"complex": np.complex64}.get(how, how))
    elif how == "str":
        a = a.astype(str)[:2]
    elif how == "fortran":
        a = np.asfortranarray(a)
    elif how == "scalar":
        a = np.asarray(1.0)
    elif how == "empty":
        a = a[:0]
    elif how == "nan":
        a = np.full(a.shape, np.nan, np.float32)
    elif how == "structured":
        a = np.zeros(len(a) if a.ndim else 1, dtype=[("a", "<f4"), ("b", "<i8")])
    elif how == "3d":
        a = a[..., None]
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _edit_struct(name: str, data: bytes, ops) -> bytes:
    try:
        return _edit_struct_inner(name, data, ops)
    except (ValueError, OSError, EOFError, csv.Error, zlib.error):  # an earlier edit left it unparseable
        return data


def _edit_struct_inner(name: str, data: bytes, ops) -> bytes:
    if name.endswith((".csv", ".csv.gz")):
        text = gzip.decompress(data).decode() if name.endswith(".gz") else data.decode()
        rows = [r for r in csv.reader(io.StringIO(text))]
        rows = apply_json(rows, ops)
        buf = io.StringIO()
        w = csv.writer(buf)
        for r in rows if isinstance(rows, list) else [[rows]]:
            w.writerow([json.dumps(x) if isinstance(x, (dict, list)) else x for x in (r if isinstance(r, list) else [r])])
        out = buf.getvalue().encode()
        return gzip.compress(out, mtime=0) if name.endswith(".gz") else out
    if name.endswith(".json"):
        try:
            docs = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        except ValueError:
            return data
        docs = apply_json(docs, ops)
        return ("\n".join(json.dumps(d) for d in (docs if isinstance(docs, list) else [docs])) + "\n").encode()
    return data


def _pack(members: dict, container: str, dest_dir: Path, archive_edit, marker: Path) -> Path:
    """Write ``members`` as ``container`` under ``dest_dir``; return the path an importer gets."""
    def zip_bytes(mem):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for n, d in mem.items():
                zi = zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0))
                zi.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(zi, d)
            _zip_member_edit(zf, archive_edit)
        return buf.getvalue()

    if container == "folder":
        src = dest_dir / "src"
        for n, d in members.items():
            p = src / n
            if src.resolve() not in (src / n).resolve().parents:
                continue  # '/abs.pt', '..', '.': a folder cannot hold the name (an archive can, and does)
            with contextlib.suppress(OSError):
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(d)
        src.mkdir(exist_ok=True)
        if archive_edit and archive_edit[0] == "member" and archive_edit[1] in ("symlink", "abs", "dotdot"):
            os.symlink("/etc", src / "etc-link")
            os.symlink(str(marker.parent), src / "up-link.pt")
        return src
    if container in ("zip", "zip-in-folder", "zip-in-zip"):
        data = zip_bytes(members)
        if container == "zip-in-zip":
            data = zip_bytes({"inner.zip": data})
        if archive_edit and archive_edit[0] == "bytes":
            data = apply_bytes(data, archive_edit[1])
        if container == "zip-in-folder":
            (dest_dir / "src").mkdir()
            (dest_dir / "src" / "inner.zip").write_bytes(data)
            return dest_dir / "src"
        (dest_dir / "src.zip").write_bytes(data)
        return dest_dir / "src.zip"
    mode = {"tar": "w", "tar.gz": "w:gz", "tar.xz": "w:xz"}[container]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for n, d in members.items():
            ti = tarfile.TarInfo(n)
            ti.size, ti.mtime = len(d), 0
            tf.addfile(ti, io.BytesIO(d))
        _tar_member_edit(tf, archive_edit)
    data = buf.getvalue()
    if archive_edit and archive_edit[0] == "bytes":
        data = apply_bytes(data, archive_edit[1])
    path = dest_dir / f"src.{container}"
    path.write_bytes(data)
    return path


def _zip_member_edit(zf, edit):
    if not edit or edit[0] != "member":
        return
    how = edit[1]
    if how == "symlink":
        zi = zipfile.ZipInfo("resnet8/link.pt")
        zi.external_attr = (0o120777 << 16)
        zf.writestr(zi, "/etc/passwd")
    elif how in ("abs", "dotdot"):
        zi = zipfile.ZipInfo("x")
        zi.filename = "/tmp/evil.pt" if how == "abs" else "../../evil.pt"
        zf.writestr(zi, b"x")
    elif how == "dup":
        first = zf.infolist()[0] if zf.infolist() else None
        if first is not None:
            with contextlib.suppress(Exception):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    zf.writestr(first.filename, b"a second, different member of the same name")
    elif how == "bomb":
        zf.writestr("bomb.pt", b"\0" * (8 << 20))
    elif how == "dir-as-file":
        zf.writestr("resnet8/", b"")


def _tar_member_edit(tf, edit):
    if not edit or edit[0] != "member":
        return
    how = edit[1]
    ti = tarfile.TarInfo({"abs": "/tmp/evil.pt", "dotdot": "../evil.pt"}.get(how, "resnet8/evil.pt"))
    if how == "symlink":
        ti.type, ti.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif how == "hardlink":
        ti.type, ti.linkname = tarfile.LNKTYPE, "/etc/passwd"
    elif how == "fifo":
        ti.type = tarfile.FIFOTYPE
    elif how == "bomb":
        ti.size = 8 << 20
        tf.addfile(ti, io.BytesIO(b"\0" * ti.size))
        return
    elif how == "dup":
        names = tf.getnames()
        if names:
            ti = tarfile.TarInfo(names[0])
            d = b"a second, different member of the same name"
            ti.size = len(d)
            tf.addfile(ti, io.BytesIO(d))
        return
    elif how == "lying-size":
        ti.size = 10
        tf.addfile(ti, io.BytesIO(b"0123456789"))
        return
    elif how == "dir-as-file":
        ti.type = tarfile.DIRTYPE
    else:
        ti.size = 1
        tf.addfile(ti, io.BytesIO(b"x"))
        return
    tf.addfile(ti)


def _apply_member_edits(members: dict, edits, marker: Path) -> dict:
    import torch

    members = dict(members)
    for e in edits:
        names = sorted(members)
        if not names and e[0] != "add":
            continue
        n = names[e[1] % len(names)] if e[0] != "add" else None
        if e[0] == "bytes":
            members[n] = apply_bytes(members[n], e[2])
        elif e[0] == "struct":
            members[n] = _edit_struct(n, members[n], e[2])
        elif e[0] == "tensor":
            pts = [m for m in names if m.endswith(".pt") or m.endswith("/checkpoints")]
            if pts:
                n = pts[e[1] % len(pts)]
                with contextlib.suppress(Exception):
                    obj = torch.load(io.BytesIO(members[n]), weights_only=True)
                    buf = io.BytesIO()
                    torch.save(_edit_tensors(obj, e[2], e[3]), buf)
                    members[n] = buf.getvalue()
        elif e[0] == "npy":
            npys = [m for m in names if m.endswith(".npy")]
            if npys:
                n = npys[e[1] % len(npys)]
                with contextlib.suppress(Exception):  # an earlier edit left it no .npy
                    members[n] = _edit_npy(members[n], e[2])
        elif e[0] == "drop":
            del members[n]
        elif e[0] == "rename":
            members[e[2] or "x"] = members.pop(n)
        elif e[0] == "pickle":
            buf = io.BytesIO()
            if n.endswith(".npy"):
                np.save(buf, np.array([Payload(marker)], dtype=object), allow_pickle=True)
            elif n.endswith((".pt", "/checkpoints")):
                torch.save({"w": Payload(marker)}, buf)
            else:
                pickle.dump(Payload(marker), buf)
            members[n] = buf.getvalue()
        elif e[0] == "add":
            members[e[1] or "x"] = bytes.fromhex(e[2])
    return members


def _import_family(fmt):
    def run(plan, case):
        from zoo.hub.importers import run_import
        from zoo.hub.safety import Limits

        members, options = import_seeds()[fmt]
        members = _apply_member_edits(members, plan["edits"], case.marker)
        src = _pack(members, plan["container"], case.root, plan["archive"], case.marker)
        out = case.root / "out"
        limits = Limits(max_gb=0.02, max_ratio=50, ratio_floor_bytes=1 << 20)
        manifest, err = case.judge(lambda: run_import(fmt, src, out, options=options, limits=limits),
                                   may_write=("out",), names=(str(src), src.name, str(out)))
        if manifest is not None:
            got, err, problems = open_and_verify(case, out)
            if err is not None or problems:
                raise Finding(f"the import succeeded but its zoo is refused: {err or problems[0]}")
    return run


for _fmt in ("lim2024", "smallcnnzoo", "modelzoos", "metazoo"):
    family(f"import_{_fmt}", IMPORT_PLAN)(_import_family(_fmt))


# ------------------------------------------------------------ metanet files

def _metanet_seeds(root: Path):
    from metanets.cli import main
    from zoo.generate.synthetic import make_zoo

    z = make_zoo(root / "zoo", models=12, shard_size=12, width=0.25, in_channels=1)
    out = {}
    for name in ("mlp", "statnn-gbm"):
        path = root / f"{name}.safetensors"
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            rc = main(["train", str(z), "--metanet", name, "--out", str(path), "--epochs", "1"])
        assert rc == 0, (name, err.getvalue()[-500:])
        out[name] = path.read_bytes()
    return out


def metanet_seeds():
    return seed("metanets", _metanet_seeds)


METANET_PLAN = st.fixed_dictionaries({
    "file": st.sampled_from(["mlp", "statnn-gbm"]),
    "kind": st.sampled_from(["bytes", "header", "meta", "meta", "skops-bytes", "skops-schema", "pickle", "length"]),
    "bytes": BYTE_PLAN, "ops": JSON_PLAN})


def _split_safetensors(data: bytes):
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join_safetensors(header: dict, body: bytes) -> bytes:
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return len(h).to_bytes(8, "little") + h + body


def _skops_edit(data: bytes, plan) -> bytes:
    header, body = _split_safetensors(data)
    key = "__sklearn_skops__"
    if key not in header:
        return data
    a, b = header[key]["data_offsets"]
    blob = body[a:b]
    if plan["kind"] == "skops-bytes":
        new = apply_bytes(blob, plan["bytes"])
    else:
        zin = zipfile.ZipFile(io.BytesIO(blob))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zout:
            for info in zin.infolist():
                d = zin.read(info)
                if info.filename == "schema.json":
                    d = json.dumps(apply_json(json.loads(d), plan["ops"])).encode()
                zout.writestr(info.filename, d)
        new = buf.getvalue()
    body = body[:a] + new + body[b:]
    header[key]["data_offsets"] = [a, a + len(new)]
    header[key]["shape"] = [len(new)]
    delta = len(new) - (b - a)
    for k, v in header.items():
        if k != key and isinstance(v, dict) and "data_offsets" in v and v["data_offsets"][0] >= b:
            v["data_offsets"] = [v["data_offsets"][0] + delta, v["data_offsets"][1] + delta]
    return _join_safetensors(header, body)


@family("metanet", METANET_PLAN)
def run_metanet(plan, case):
    import torch

    from metanets import persist

    data = metanet_seeds()[plan["file"]]
    kind = plan["kind"]
    if kind == "bytes":
        new = apply_bytes(data, plan["bytes"])
    elif kind == "length":
        new = apply_bytes(data, [["int", "head", 0, 8, op[-1] if op[0] == "int" else 2**40] for op in plan["bytes"][:1]])
    elif kind == "header":
        h, body = _split_safetensors(data)
        new = _join_safetensors(apply_json(h, plan["ops"]), body)
    elif kind == "meta":
        h, body = _split_safetensors(data)
        meta = h.get("__metadata__", {})
        with contextlib.suppress(ValueError, TypeError):
            meta["metazoo"] = json.dumps(apply_json(json.loads(meta["metazoo"]), plan["ops"]))
        new = _join_safetensors(h, body)
    elif kind.startswith("skops"):
        new = _skops_edit(data, plan)
    else:
        buf = io.BytesIO()
        torch.save({"format": "metazoo-metanet", "x": Payload(case.marker)}, buf,
                   _use_new_zipfile_serialization=bool(plan["bytes"][0][0] == "flip"))
        new = buf.getvalue()
    path = case.root / "m.safetensors"
    path.write_bytes(new)
    case.judge(lambda: persist.load(path), names=(str(path),))


# ------------------------------------------------------------ specs, presets, cards (TOML)

SPEC_PLAN = st.fixed_dictionaries({
    "base": core._U32, "ops": st.lists(core.json_op(core.TOML_VALUE), min_size=1, max_size=4),
    "raw": st.one_of(st.none(), st.none(), BYTE_PLAN)})


def _spec_bases():
    def build(_):
        import tomllib

        from zoo.generate.spec import presets

        from conftest import TINY

        return [TINY] + [tomllib.loads(p.read_text()) for _, p in sorted(presets().items())]
    return seed("spec-bases", build)


def _card_bases():
    def build(_):
        import tomllib

        from zoo.hub.catalogue import catalogue_dirs

        return [tomllib.loads(p.read_text()) for d in catalogue_dirs() for p in sorted(Path(d).glob("*.toml"))]
    return seed("card-bases", build)


def _toml_text(doc, plan) -> bytes:
    import tomli_w

    doc = apply_json(doc, plan["ops"], toml=True)
    doc = core.revive_toml(doc)
    if not isinstance(doc, dict):
        doc = {"value": doc}
    try:
        text = tomli_w.dumps(doc).encode()
    except (TypeError, ValueError):
        text = json.dumps(doc, default=str).encode()  # not TOML: a refusal is due
    return apply_bytes(text, plan["raw"]) if plan["raw"] else text


@family("spec", SPEC_PLAN)
def run_spec(plan, case):
    from zoo.generate.spec import load_spec, spec_from_dict

    bases = _spec_bases()
    path = case.root / "s.toml"
    path.write_bytes(_toml_text(bases[plan["base"] % len(bases)], plan))

    def run():
        s = load_spec(path)
        again = spec_from_dict(s.to_dict())
        if again != s or again.fingerprint() != s.fingerprint():
            raise Finding("an accepted spec does not round-trip through to_dict")
        for i in range(min(3, s.models)):
            s.sample_hparams(i)  # validated at the edge: inner code must be able to trust it
        s.checkpoint_names
        s.shard_ids(0)
        return s

    case.judge(run, names=(str(path), "spec field"))


@family("card", SPEC_PLAN)
def run_card(plan, case):
    from zoo.hub.catalogue import load_card, write_card

    bases = _card_bases()
    path = case.root / "c.toml"
    path.write_bytes(_toml_text(bases[plan["base"] % len(bases)], plan))

    def run():
        c = load_card(path)
        c.num_nets
        write_card(case.root / "out" / "again.toml", c)
        if load_card(case.root / "out" / "again.toml") != c:
            raise Finding("an accepted card does not round-trip through write_card")
        return c

    case.judge(run, names=(str(path),), may_write=("out",))


# ------------------------------------------------------------ --plugin

PLUGIN_OK = b'''import torch
import metanets

@metanets.register("fuzz-plugin-net")
class FuzzNet(torch.nn.Module):
    view = "flat"

    def __init__(self, info):
        super().__init__()
        self.lin = torch.nn.Linear(1, 1)
'''
PLUGIN_PATHS = ["file", "file", "file", "missing", "folder", "not-py", "py-folder", "dev-null", "symlink-loop",
                "dangling", "odd-name", "empty"]
PLUGIN_PLAN = st.fixed_dictionaries({
    "path": st.sampled_from(PLUGIN_PATHS), "bytes": st.one_of(st.none(), BYTE_PLAN),
    "body": st.sampled_from(["ok", "raise", "exit", "register-builtin", "nothing", "recursion", "keyboard"])})


@family("plugin", PLUGIN_PLAN)
def run_plugin(plan, case):
    from metanets import registry
    from metanets.models import _registry
    from metanets.plugins import load_plugin

    body = {"ok": PLUGIN_OK, "raise": b"raise RuntimeError('boom')\n", "exit": b"import sys\nsys.exit(3)\n",
            "register-builtin": PLUGIN_OK.replace(b"fuzz-plugin-net", b"mlp"), "nothing": b"x = 1\n",
            "recursion": b"def f():\n    return f()\nf()\n",
            "keyboard": b"raise ValueError('\\n'.join(['two', 'lines']))\n"}[plan["body"]]
    if plan["bytes"]:
        body = apply_bytes(body, plan["bytes"])
    kind = plan["path"]
    path = case.root / "plug.py"
    if kind in ("file", "empty", "odd-name"):
        if kind == "odd-name":
            path = case.root / "my plug-in (1).py"
        path.write_bytes(b"" if kind == "empty" else body)
    elif kind == "folder":
        path = case.root
    elif kind == "not-py":
        path = case.root / "plug.txt"
        path.write_bytes(body)
    elif kind == "py-folder":
        path.mkdir()
    elif kind == "dev-null":
        path = Path("/dev/null")
    elif kind == "symlink-loop":
        os.symlink(case.root / "loop.py", case.root / "loop.py")
        path = case.root / "loop.py"
    elif kind == "dangling":
        os.symlink(case.root / "nowhere.py", path)
    registry.names()  # the built-ins first: only what the plugin adds is removed afterwards
    before = set(_registry.REGISTRY)
    try:
        case.judge(lambda: load_plugin(path), names=(str(path),), may_write=("__pycache__",))
    finally:
        for n in set(_registry.REGISTRY) - before:
            _registry.REGISTRY.pop(n, None)


# ------------------------------------------------------------ CLI arguments

ZOO_CMDS = ["presets", "info", "verify", "hparams", "merge", "catalogue", "import", "pack", "generate", "download", ""]
MN_CMDS = ["list", "predict", ""]
OPTIONS = ["--out", "--models", "--device", "--group-size", "--refill", "--no-refill", "--shard", "--num-shards",
           "--precision", "--channels-last", "--force", "--quiet", "--no-verify", "--against", "--root", "--check",
           "--card", "--url", "--sha256", "--format", "--to", "--name", "--option", "-o", "--max-unpack-gb",
           "--plugin", "--target", "--batch-size", "--params", "--help", "-h", "--", "--ray", "--mirror"]
VALUES = ["@zoo", "@missing", "@file", "@dir", "@spec", "@out", "@metanet", "@card", "0", "1", "-1", "2", "999999999999",
          "nan", "inf", "-inf", "1e999", "", " ", "x", "é", "\x7f", "digits-resnet8", "lim2024", "smallcnnzoo",
          "modelzoos", "metazoo", "cpu", "cuda", "tpu", "auto", "fp32", "on", "k=v", "=", "model_type=x", "mlp",
          "http://127.0.0.1:9/x.zip", "unknown", "0" * 64]
CLI_PLAN = st.fixed_dictionaries({
    "prog": st.sampled_from(["zoo", "zoo", "metanets"]), "cmd": st.integers(0, 100),
    "args": st.lists(st.one_of(st.sampled_from(OPTIONS), st.sampled_from(VALUES)), max_size=6)})


@family("cli", CLI_PLAN)
def run_cli(plan, case):
    from zoo.generate.train import GroupTrainer

    s = zoo_seed()
    zoo_dir = case.root / "zoo"
    copy_zoo(s["root"], zoo_dir)
    (case.root / "afile").write_text("x")
    (case.root / "adir").mkdir()
    from conftest import TINY, write_toml

    write_toml(case.root / "spec.toml", {**TINY, "models": 2})
    (case.root / "m.safetensors").write_bytes(metanet_seeds()["mlp"])
    shutil.copy(sorted(Path(_card_dir()).glob("*.toml"))[0], case.root / "card.toml")
    subs = {"@zoo": zoo_dir, "@missing": case.root / "missing", "@file": case.root / "afile",
            "@dir": case.root / "adir", "@spec": case.root / "spec.toml", "@out": case.root / "out" / "o",
            "@metanet": case.root / "m.safetensors", "@card": case.root / "card.toml"}
    cmds = ZOO_CMDS if plan["prog"] == "zoo" else MN_CMDS
    cmd = cmds[plan["cmd"] % len(cmds)]
    if cmd == "download" or (cmd in ("catalogue",) and "--check" in plan["args"]):
        return  # reaches the network: the hub tests serve these from 127.0.0.1 instead
    argv = ([cmd] if cmd else []) + [str(subs.get(a, a)) for a in plan["args"]]
    if plan["prog"] == "zoo":
        from zoo.cli import main
    else:
        from metanets.cli import main
    real = GroupTrainer.train

    def stub(*a, **k):
        raise Trained()

    GroupTrainer.train = stub
    err = io.StringIO()
    cwd = case.root / "cwd"  # relative paths (`--out x`, `http://...`) land here, not in the checkout
    cwd.mkdir()
    home = os.getcwd()
    before = snapshot(case.root)

    def run():
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                return main(argv)
            except SystemExit as e:  # argparse: usage errors and --help
                if e.code not in (0, 2):
                    raise Finding(f"argparse exit {e.code!r}") from None
                return ("argparse", e.code)
            except Trained:
                return "trained"
    try:
        os.chdir(cwd)
        rc, _ = case.judge(run, may_write=("out", "zoo", "adir", ".out.lock", ".zoo.lock", ".adir.lock", "afile",
                                           "missing", ".missing.lock", "card.toml", "cwd"),
                           may_delete=())
    finally:
        os.chdir(home)
        GroupTrainer.train = real
    if rc in (1, 2) or (isinstance(rc, tuple) and rc[0] == "argparse" and rc[1] == 2):
        after = snapshot(case.root)
        left = sorted(r for r in after if r not in before and after[r][2] and not any((case.root / r).iterdir()))
        if left:
            raise Finding(f"{plan['prog']} {argv}: refused (exit {rc!r}) and left the empty folder(s) {left[:3]}")
    text = err.getvalue()
    if "Traceback" in text:
        raise Finding(f"traceback: {text[-300:]}")
    if rc not in (0, 1, 2, "trained") and not (isinstance(rc, tuple) and rc[0] == "argparse"):
        raise Finding(f"{plan['prog']} {argv}: exit {rc!r}")
    if rc == 2 and text.strip() and len(text.strip().splitlines()) != 1:
        raise Finding(f"{plan['prog']} {argv}: exit 2 without a one-line error: {text[-300:]!r}")


def _card_dir():
    from zoo.hub.catalogue import catalogue_dirs

    return catalogue_dirs()[0]
