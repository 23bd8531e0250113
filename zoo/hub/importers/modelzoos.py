"""Importer for the Model Zoos of Schürholt et al. (NeurIPS 2022 Datasets & Benchmarks).

Upstream layout: a zip (one per zoo, on Zenodo) of per-net training folders, each holding

* ``params.json`` -- the net's configuration (hyper-parameters, seed, ...); when it is
  absent, the ``config`` that Ray Tune writes into every ``result.json`` line;
* ``result.json`` -- JSON lines, one per epoch, with ``training_iteration`` (the epoch) and
  metrics such as ``test_acc``, ``train_acc``, ``test_loss``, ``train_loss``;
* ``checkpoint_<epoch>/checkpoints`` (also ``checkpoint_<epoch:06d>``) -- a torch state dict.

Every epoch that all nets share becomes a checkpoint: ``epoch_<e>``, and ``final`` for the
last one. Nets missing one of those epochs are dropped and listed in ``source.dropped``.
The layout is the first net's state dict; every other net must match it tensor by
tensor. BatchNorm running statistics are stored as buffers; ``num_batches_tracked`` is
skipped. Nets with non-finite weights are kept and marked ``diverged``.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch

from ...console import progress
from ...errors import ZooError
from ...layout import Layout, role_of
from ...store import ShardContent, metric_column
from ..safety import Limits
from .common import RESERVED, SHARD_SIZE, ZooWriter, check_fraction, column_name, fingerprint_of, table_frame
from .source import Source

_CKPT = re.compile(r"^checkpoint_0*(\d+)$")
_ALIASES = {"test_acc": ("test_acc", "test_accuracy", "acc_test"),
            "train_acc": ("train_acc", "train_accuracy", "acc_train"),
            "test_loss": ("test_loss", "loss_test"), "train_loss": ("train_loss", "loss_train")}


def _net_dirs(names: list[str]) -> list[str]:
    dirs = {str(PurePosixPath(n).parent) for n in names if PurePosixPath(n).name == "result.json"}
    return sorted(dirs)


def _epochs(names: list[str]) -> dict[str, dict[int, str]]:
    """net folder -> {epoch: member name of its ``checkpoint_<epoch>/checkpoints``}."""
    out: dict[str, dict[int, str]] = {}
    for n in names:
        p = PurePosixPath(n)
        if p.name == "checkpoints" and len(p.parts) >= 2:
            m = _CKPT.match(p.parent.name)
            if m:
                out.setdefault(str(p.parent.parent), {})[int(m.group(1))] = n
    return out


def _is_epoch(v) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return math.isfinite(v) and 0 <= v < 2**53 and v == int(v)


def _results(tree: Source, net: str) -> dict[int, dict]:
    name = f"{net}/result.json" if net != "." else "result.json"
    label = tree.label(name)
    out = {}
    for n, line in enumerate(tree.read_bytes(name).decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ZooError(f"{label} line {n}: not valid JSON ({getattr(e, 'msg', type(e).__name__)})") from e
        if not isinstance(row, dict) or "training_iteration" not in row:
            raise ZooError(f"{label} line {n}: no 'training_iteration' (the epoch of the row)")
        epoch = row["training_iteration"]
        if not _is_epoch(epoch):
            raise ZooError(f"{label} line {n}: 'training_iteration' = {epoch!r} is not an epoch number")
        out[int(epoch)] = row
    return out


def _params(tree: Source, net: str, results: dict[int, dict]) -> dict:
    """``params.json``, else the ``config`` Ray Tune writes into every ``result.json`` line."""
    name = f"{net}/params.json" if net != "." else "params.json"
    if name in tree.names:
        try:
            params = json.loads(tree.read_bytes(name))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ZooError(f"{tree.label(name)}: not valid JSON ({type(e).__name__}: {e})") from e
        if not isinstance(params, dict):
            raise ZooError(f"{tree.label(name)}: holds a JSON {type(params).__name__}, not an object of settings")
        return _flatten(params)
    config = next((r["config"] for r in results.values() if isinstance(r.get("config"), dict)), None)
    if config is None:
        raise ZooError(f"{tree.label(name)}: missing, and result.json has no 'config' either "
                       f"(each Model Zoos net folder has params.json or a result.json with config)")
    return _flatten(config)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _state_layout(path: Path, sd: dict) -> tuple[Layout, list[str]]:
    """Layout of a state dict in stored order: float tensors are parameters, except BatchNorm
    running statistics (buffers); integer counters are skipped."""
    if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        raise ZooError(f"{path}: expected a state dict (names -> tensors), found {type(sd).__name__}")
    norm_mods = {k.rsplit(".", 1)[0] for k in sd if k.endswith(".running_mean")}
    items, buffers, skipped = [], [], []
    for k, t in sd.items():
        if not isinstance(t, torch.Tensor):
            raise ZooError(f"{path}: entry {k!r} is a {type(t).__name__}, not a tensor")
        if not t.is_floating_point():
            skipped.append(k)
            continue
        mod, leaf = k.rsplit(".", 1) if "." in k else ("", k)
        shape = tuple(t.shape)
        if leaf in ("running_mean", "running_var"):
            buffers.append((k, shape, "other"))
        else:
            items.append((k, shape, role_of(k, shape, "norm" if mod in norm_mods else None)))
    if not items:
        raise ZooError(f"{path}: no floating-point tensors in this state dict")
    return Layout.from_shapes(items, buffers=buffers), skipped


def _metrics(row: dict | None, where: str) -> dict:
    out = {}
    for ours, names in _ALIASES.items():
        v = next((row[n] for n in names if row and n in row), None)
        bad = ZooError(f"{where}: {ours} = {str(v)[:40]!r} is not a number")
        if v is None:
            v = math.nan
        elif isinstance(v, bool) or not isinstance(v, (int, float, str)):  # any JSON value may stand here
            raise bad
        else:
            try:
                v = float(v)
            except (ValueError, OverflowError):
                raise bad from None
        out[ours] = check_fraction(v, f"{where}: {ours}") if ours.endswith("acc") else v
    return out


def import_modelzoos(src, out, *, epochs: str | None = None, name: str | None = None, force: bool = False,
                     source: dict | None = None, limits: Limits | None = None) -> dict:
    """Convert a Model Zoos zip (or its extracted folder) into a metazoo zoo at ``out``.

    ``epochs``: comma-separated epochs to keep (default: every epoch all nets share)."""
    options = {"epochs": epochs}
    with ZooWriter(out, force=force, fingerprint=fingerprint_of("modelzoos", src, options, name)) as writer, \
            Source(src, writer.scratch, limits) as tree:
        nets = _net_dirs(tree.names)
        if not nets:
            raise ZooError(f"{src}: no net folders found (Model Zoos folders hold params.json, result.json "
                           f"and checkpoint_<epoch>/checkpoints)")
        all_epochs = _epochs(tree.names)
        found = {n: all_epochs.get(n, {}) for n in nets}
        counts = Counter(e for eps in found.values() for e in eps)
        if epochs:
            try:
                wanted = sorted({int(e) for e in str(epochs).split(",") if e.strip()})
            except ValueError as e:
                raise ZooError(f"modelzoos option epochs = {epochs!r}: expected comma-separated integers") from e
            absent = [e for e in wanted if e not in counts]
            if absent:
                raise ZooError(f"modelzoos option epochs = {epochs!r}: no net has a checkpoint for epoch {absent[0]} "
                               f"(available: {', '.join(map(str, sorted(counts)))})")
        else:
            majority = len(nets) / 2
            wanted = sorted(e for e, c in counts.items() if c > majority)
        if not wanted:
            raise ZooError(f"{src}: no checkpoint epoch is shared by most nets")
        ckpts = {e: ("final" if e == wanted[-1] else f"epoch_{e}") for e in wanted}
        dropped, kept = [], []
        for n in nets:
            miss = [e for e in wanted if e not in found[n]]
            if miss:
                dropped.append(f"{n} (no checkpoint for epoch {miss[0]})")
            else:
                kept.append(n)
        if not kept:
            raise ZooError(f"{src}: no net has checkpoints for every epoch in {wanted}")

        first = found[kept[0]][wanted[-1]]
        layout, skipped = _state_layout(tree.label(first), tree.tensors(first))
        # Hyper-parameters of all nets at once, so every shard gets the same columns and types.
        results_of = {n: _results(tree, n) for n in kept}
        results_label = {n: tree.label(f"{n}/result.json" if n != "." else "result.json") for n in kept}
        params = table_frame([{column_name(k, RESERVED): v for k, v in _params(tree, n, results_of[n]).items()}
                              for n in kept])
        params["source_dir"] = np.asarray(kept, dtype=object)
        state = writer.resumed or {"next_block": 0}
        bar = progress(total=len(kept), initial=state["next_block"], desc="importing nets", unit="net")
        for b in range(state["next_block"], len(kept), SHARD_SIZE):
            block = kept[b:b + SHARD_SIZE]
            w = {ck: np.empty((len(block), layout.num_params), np.float32) for ck in ckpts.values()}
            buf = {ck: np.empty((len(block), layout.num_buffers), np.float32) for ck in ckpts.values()} \
                if layout.buffers else None
            rows = []
            for i, net in enumerate(block):
                results = results_of[net]
                row = {}
                finite = True
                for e, ck in ckpts.items():
                    member = found[net][e]
                    label = tree.label(member)
                    sd = tree.tensors(member)
                    if not isinstance(sd, dict):
                        raise ZooError(f"{label}: expected a state dict, found {type(sd).__name__}")
                    lay, _ = _state_layout(label, sd)
                    if not lay.same_tensors(layout):
                        raise ZooError(f"{label}: tensors differ from the zoo's layout (taken from "
                                       f"{tree.label(first)}): {_first_difference(lay, layout)}")
                    w[ck][i] = layout.flatten(sd)
                    if buf is not None:
                        buf[ck][i] = layout.flatten_buffers(sd)
                    finite &= bool(np.isfinite(w[ck][i]).all())
                    for k, v in _metrics(results.get(e), f"{results_label[net]} epoch {e}").items():
                        row[metric_column(k, ck)] = v
                row["diverged"] = not finite or math.isnan(row["test_acc"])
                rows.append(row)
                bar.update(1)
            ids = np.arange(b, b + len(block))
            metrics = pd.DataFrame(rows)
            table = pd.concat([params.iloc[b:b + len(block)].reset_index(drop=True), metrics], axis=1)
            table["diverged"] = table["diverged"].astype(bool)
            writer.add(ShardContent(ids=ids, weights=w, buffers=buf, table=table, layout=layout),
                       state={"next_block": b + len(block)})
        bar.close()
        return writer.finish(
            name=name or f"modelzoos-{Path(src).name.split('.')[0]}", net=None,
            source={"kind": "import", "format": "modelzoos", "path": str(src),
                    "epochs": wanted, "dropped": dropped, "skipped_tensors": skipped,
                    "hparam_columns": [],  # the zips hold weights and per-epoch metrics only
                    **(source or {})})


def _first_difference(a: Layout, b: Layout) -> str:
    for x, y in zip(a.tensors + a.buffers, b.tensors + b.buffers):
        if (x.name, x.shape) != (y.name, y.shape):
            return f"{x.name} {x.shape} where the zoo has {y.name} {y.shape}"
    return f"{len(a) + len(a.buffers)} tensors where the zoo has {len(b) + len(b.buffers)}"
