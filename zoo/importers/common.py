"""What every importer shares: writing a zoo shard by shard, then moving it into place whole.

An importer converts upstream files into :class:`~zoo.store.ShardContent` blocks and hands
them to :class:`ZooWriter`. The writer puts shards and manifest into a temporary sibling
of the output folder, runs :func:`zoo.store.verify` on the result, and only then renames
it to the requested name: a failed import (bad file, full disk, Ctrl-C) leaves nothing.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ZooError
from ..layout import Layout
from ..store import MANIFEST, ShardContent, build_manifest, make_splits, shard_entry, shard_name, \
    verify, write_json, write_shard

#: Models per shard: keeps memory bounded for 10,000-net zoos (ResNet8: ~300 MB per shard).
SHARD_SIZE = 1000


def claim_output(out, force: bool = False) -> Path:
    """Check that ``out`` may be written (new, empty, or replaced with ``force``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ZooError(f"--out {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        what = "a zoo" if (out / MANIFEST).exists() else "a non-empty folder"
        raise ZooError(f"--out {out} is already {what}; choose a new folder or pass --force to replace it")
    return out


class ZooWriter:
    """Collects shards into a temporary folder; :meth:`finish` verifies and moves it to ``out``."""

    def __init__(self, out, *, force: bool = False):
        self.out = claim_output(out, force)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".partial", dir=self.out.parent))
        self.entries: list[dict] = []
        self.ids: list[np.ndarray] = []
        self.layout: Layout | None = None
        self.checkpoints: list[str] | None = None
        self.columns: list[str] | None = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None or self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def add(self, content: ShardContent) -> None:
        if self.layout is None:
            self.layout, self.checkpoints = content.layout, list(content.weights)
            self.columns = list(content.table.columns)
        elif not content.layout.same_tensors(self.layout) or list(content.weights) != self.checkpoints:
            raise ZooError("importer bug: shards of one zoo differ in layout or checkpoints")
        content.table = content.table[self.columns]
        path = self.tmp / shard_name(len(self.entries))
        self.entries.append(shard_entry(path, content.ids, write_shard(path, content)))
        self.ids.append(content.ids)

    def finish(self, *, name: str, source: dict, net: dict | None = None, data: dict | None = None,
               split_seed: int = 0) -> dict:
        if not self.entries:
            raise ZooError(f"nothing to import into {self.out}: no usable nets were found")
        manifest = build_manifest(
            name=name, layout=self.layout, shards=self.entries, checkpoints=self.checkpoints,
            splits=make_splits(np.concatenate(self.ids), seed=split_seed), net=net, source=source, data=data)
        write_json(self.tmp / MANIFEST, manifest)
        problems = verify(self.tmp)
        if problems:
            raise ZooError("the imported zoo failed verification (nothing was kept): " + "; ".join(problems[:5]))
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self.tmp, self.out)
        return manifest


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
    """An upstream key as a table column: no '/' (it would nest HDF5 groups), no clash with ours."""
    col = str(key).replace("/", ".").strip() or "unnamed"
    return f"hp.{col}" if col in reserved else col


#: Columns the zoo format itself defines; upstream hyper-parameters must not shadow them.
RESERVED = {"model_id", "diverged", "split", "test_acc", "train_acc", "test_loss", "train_loss"}


def check_fraction(value, what: str) -> float:
    """An accuracy that must be a fraction in [0, 1] (NaN passes: the net is then marked diverged)."""
    v = float(value)
    if not math.isnan(v) and not (0.0 <= v <= 1.0):
        raise ZooError(f"{what} = {v!r} is not an accuracy in [0, 1]")
    return v
