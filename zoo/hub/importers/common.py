"""What every importer shares: writing a zoo shard by shard, then moving it into place whole.

An importer converts upstream files into :class:`~zoo.store.ShardContent` blocks and hands
them to :class:`ZooWriter`. The writer puts shards and manifest into a temporary sibling
of the output folder, runs :func:`zoo.store.verify` on the result, and only then renames
it to the requested name: a failed import (bad file, full disk, Ctrl-C) leaves nothing.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import ZooError
from ...fs import write_json
from ...layout import Layout
from ...store import (MANIFEST, ShardContent, build_manifest, make_splits, owned_by_metazoo, read_shard,
                      sha256_file, shard_entry, shard_name, verify, write_shard)
from ...store.lock import lock_dir

#: Models per shard: keeps memory bounded for 10,000-net zoos (ResNet8: ~300 MB per shard), and
#: is the step an interrupted import resumes from. METAZOO_IMPORT_SHARD_SIZE overrides it.
SHARD_SIZE = int(os.environ.get("METAZOO_IMPORT_SHARD_SIZE", "1000"))


def claim_output(out, force: bool = False) -> Path:
    """Check that ``out`` may be written: new, empty, or, with ``force``, a metazoo zoo
    (:func:`zoo.store.owned_by_metazoo`). A non-empty folder of anything else is never replaced."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ZooError(f"--out {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not owned_by_metazoo(out):
            raise ZooError(f"--out {out} is a non-empty folder that holds no metazoo zoo (no metazoo {MANIFEST}); "
                           f"it is never replaced, even with --force: choose a new or empty folder")
        if not force:
            raise ZooError(f"--out {out} is already a zoo; choose a new folder or pass --force to replace it")
    return out


class ZooWriter:
    """Collects shards in ``.imp.<out>.partial`` beside ``out``; :meth:`finish` verifies and
    moves it to ``out``.

    Resumable: after each shard the importer's progress (``state``, a JSON-able dict) is
    recorded with a fingerprint of the source and options. A rerun after a crash or
    ``kill -9`` with the same fingerprint finds :attr:`resumed` set and continues after
    the last finished shard; any other leftover partial folder is removed first."""

    def __init__(self, out, *, force: bool = False, fingerprint: dict | None = None):
        # The output folder is ours for the whole import: a second writer gets a message naming
        # this process instead of sharing (and spoiling) the partial folder.
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(lock_dir(Path(out), what="zoo import"))
        try:
            self._open(out, force, fingerprint)
        except BaseException:
            self._lock.close()
            raise

    def _open(self, out, force, fingerprint) -> None:
        self.out = claim_output(out, force)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.parent / f".imp.{self.out.name}.partial"
        self.scratch = self.out.parent / f".imp.{self.out.name}.source"
        self.fingerprint = json.loads(json.dumps(fingerprint or {}, default=str))
        self.entries: list[dict] = []
        self.ids: list[np.ndarray] = []
        self.layout: Layout | None = None
        self.checkpoints: list[str] | None = None
        self.columns: list[str] | None = None
        self.resumed: dict | None = None
        self._remove_orphans()
        shutil.rmtree(self.scratch, ignore_errors=True)
        if self.resumed is None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir()  # a plain mkdir: the umask decides, as for any folder (zoos are shared)
        self.scratch.mkdir()

    def _remove_orphans(self) -> None:
        """Partial folders a killed run left: resume ours if it matches, drop the rest."""
        for p in self.out.parent.glob(f".{self.out.name}.*.partial"):  # older, random-named ones
            shutil.rmtree(p, ignore_errors=True)
        state_file = self.tmp / _RESUME
        if not state_file.is_file():
            return
        try:
            saved = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError):
            return
        if saved.get("fingerprint") != self.fingerprint:
            return
        entries = saved.get("entries", [])
        if not all((self.tmp / e.get("file", "")).is_file() and sha256_file(self.tmp / e["file"]) == e.get("sha256")
                   for e in entries):
            return  # a damaged part is never carried over: start again
        self.resumed = saved["state"]
        self.entries = entries
        for e in entries:
            self.ids.append(np.arange(e["id_start"], e["id_stop"]))
        if entries:
            self.checkpoints, self.columns = saved["checkpoints"], saved["columns"]
            self.layout = read_shard(self.tmp / entries[0]["file"], checkpoints=self.checkpoints[:1]).layout

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            shutil.rmtree(self.scratch, ignore_errors=True)
            if exc_type is not None and not issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
                shutil.rmtree(self.tmp, ignore_errors=True)  # a refused source: nothing to resume
        finally:
            self._lock.close()

    def add(self, content: ShardContent, state: dict | None = None) -> None:
        """Write one shard; ``state`` is what the importer needs to continue after it."""
        if self.layout is None:
            self.layout, self.checkpoints = content.layout, list(content.weights)
            self.columns = list(content.table.columns)
        elif not content.layout.same_tensors(self.layout) or list(content.weights) != self.checkpoints:
            raise ZooError("importer bug: shards of one zoo differ in layout or checkpoints")
        content.table = content.table[self.columns]
        path = self.tmp / shard_name(len(self.entries))
        self.entries.append(shard_entry(path, content.ids, write_shard(path, content)))
        self.ids.append(content.ids)
        write_json(self.tmp / _RESUME, {"fingerprint": self.fingerprint, "entries": self.entries,
                                        "checkpoints": self.checkpoints, "columns": self.columns,
                                        "state": state or {}})

    def finish(self, *, name: str, source: dict, net: dict | None = None, data: dict | None = None,
               split_seed: int = 0) -> dict:
        if not self.entries:
            raise ZooError(f"nothing to import into {self.out}: no usable nets were found")
        manifest = build_manifest(
            name=name, layout=self.layout, shards=self.entries, checkpoints=self.checkpoints,
            splits=make_splits(np.concatenate(self.ids), seed=split_seed), net=net, source=source, data=data)
        (self.tmp / _RESUME).unlink(missing_ok=True)
        write_json(self.tmp / MANIFEST, manifest)
        problems = verify(self.tmp)
        if problems:
            raise ZooError("the imported zoo failed verification (nothing was kept): " + "; ".join(problems[:5]))
        if self.out.exists():
            claim_output(self.out, force=True)  # still ours to replace (checked again just before)
            shutil.rmtree(self.out)
        os.replace(self.tmp, self.out)
        return manifest


_RESUME = "import-progress.json"


def fingerprint_of(fmt: str, src, options: dict, name) -> dict:
    """What must not change for an interrupted import to be resumed: the format, options,
    name, and the source's files (path, size, modification time)."""
    src = Path(src).resolve()
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    stats = [(str(p.relative_to(src)) if p != src else p.name, p.stat().st_size, p.stat().st_mtime_ns)
             for p in files]
    digest = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    return {"format": fmt, "source": str(src), "files": digest, "options": options, "name": name}


def batched(items, size: int = SHARD_SIZE):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def table_frame(rows: list[dict]) -> pd.DataFrame:
    """A table with storable columns: numbers and bools stay typed, anything mixed becomes text."""
    df = pd.DataFrame(rows)
    for col in df.columns:
        s = df[col]
        kinds = {_kind(v) for v in s}
        if kinds <= {"bool"}:
            df[col] = s.astype(bool)
        elif kinds <= {"int"}:
            df[col] = s.astype(np.int64)
        elif kinds <= {"int", "float", "none"}:
            df[col] = pd.to_numeric(s, errors="coerce").astype(np.float64)
        else:
            df[col] = np.asarray(["" if v is None else (json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                                  for v in s], dtype=object)
    return df


def _kind(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "none"
    if isinstance(v, (bool, np.bool_)):
        return "bool"
    if isinstance(v, (int, np.integer)):
        return "int"
    if isinstance(v, (float, np.floating)):
        return "float"
    return "other"


def column_name(key: str, reserved=()) -> str:
    """An upstream key as a table column, a valid HDF5 dataset name: no '/' (it would nest HDF5
    groups), no control characters (HDF5 ends a name at NUL), not empty nor only dots ('.' is the
    group itself), no clash with ours."""
    col = "".join(ch for ch in str(key).replace("/", ".") if ch.isprintable()).strip()
    if not col.strip("."):
        col = "unnamed"
    return f"hp.{col}" if col in reserved else col


#: Columns the zoo format itself defines; upstream hyper-parameters must not shadow them.
RESERVED = {"model_id", "diverged", "split", "test_acc", "train_acc", "test_loss", "train_loss"}


def check_fraction(value, what: str) -> float:
    """An accuracy that must be a fraction in [0, 1] (NaN passes: the net is then marked diverged)."""
    v = float(value)
    if not math.isnan(v) and not (0.0 <= v <= 1.0):
        raise ZooError(f"{what} = {v!r} is not an accuracy in [0, 1]")
    return v
