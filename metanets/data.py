"""Weight-space inputs: a zoo on disk -> tensors a metanet can read.

Two sources give the same batches:

* :func:`load` — the fast path: reads a whole zoo once (shard by shard, not row by
  row), keeps the usable models' vectors in memory (on the training device), and
  precomputes per-tensor statistics. Used whenever the zoo fits.
* :class:`ZooDataset` — a ``torch.utils.data.Dataset`` reading one net per item from
  HDF5, for zoos that do not fit; each DataLoader worker opens its own file handles
  (``zoo.store.reader.Zoo`` drops open handles when pickled).

Views (what a metanet's ``view`` attribute asks for):

* ``vector``: the flat parameter vector ``[B, D]`` — all parameters, or only the
  trainable ones (``params="trainable"``, the default: a W-Asym net's fixed entries are
  dropped, norms and biases kept, as the paper feeds them);
* ``layers``: dict tensor name -> ``[B, *shape]`` (views of the flat vector);
* ``stats``: ``[B, T, 7]`` statistics per parameter tensor (:data:`STATS`);
* ``full``: the flat vector ``[B, P]`` of *all* parameters as the net uses them (a W-Asym
  net's fixed entries put back, whatever ``params`` says), laid out by
  ``InputInfo.full_layout`` — for metanets that rebuild the net's structure (NFN, graph).

The target is one column of the zoo table (``test_acc`` in [0, 1] by default).
Diverged models (and models whose target is not finite) are excluded and counted.
The zoo's own stored split is used, so every metanet and run sees the same nets.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import zoo
from zoo.layout import Layout
from zoo.store import metric_column

from .errors import MetanetError

SPLITS = ("train", "val", "test")
PARAMS = ("trainable", "all")
#: Per-tensor statistics of StatNN (Unterthiner et al. 2020), in feature order.
STATS = ("mean", "var", "min", "max", "q25", "q50", "q75")
#: R² and Kendall tau need at least two nets; training needs at least two.
MIN_PER_SPLIT = 2


@dataclass(frozen=True)
class InputInfo:
    """What a metanet is built for: the layout of the vector it reads.

    ``layout`` is the zoo's layout, or its trainable-only layout (``params="trainable"``)."""

    layout: Layout
    params: str = "trainable"
    #: the zoo's own layout (fixed mask included) and fixed values, for the ``full`` view
    full: Layout | None = None
    fixed_values: np.ndarray | None = field(default=None, compare=False)

    @property
    def full_layout(self) -> Layout:
        return self.full if self.full is not None else self.layout

    def to_full(self, x: torch.Tensor) -> torch.Tensor:
        """Stored vectors ``[N, D]`` (trainable or all entries) -> ``[N, P]`` in ``full_layout``."""
        full = self.full_layout
        if x.shape[-1] == full.num_params:
            return x
        if full.fixed_mask is None or self.fixed_values is None:
            raise MetanetError(f"vectors have {x.shape[-1]} entries; the full layout has {full.num_params} "
                               "and no fixed values to fill the rest")
        out = torch.as_tensor(self.fixed_values, dtype=x.dtype, device=x.device).expand(len(x), -1).clone()
        out[:, torch.as_tensor(full.trainable_index, device=x.device)] = x
        return out

    @property
    def num_inputs(self) -> int:
        return self.layout.num_params

    @property
    def num_tensors(self) -> int:
        return len(self.layout)

    @property
    def num_stats(self) -> int:
        return len(STATS)

    def to_dict(self) -> dict:
        d = {"layout": self.layout.to_dict(), "params": self.params}
        if self.full is not None:
            d["full"] = self.full.to_dict()
            d["fixed_mask"] = None if self.full.fixed_mask is None else self.full.fixed_mask.tolist()
            d["fixed_values"] = None if self.fixed_values is None else self.fixed_values.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "InputInfo":
        full = Layout.from_dict(d["full"], d.get("fixed_mask")) if d.get("full") else None
        fv = np.asarray(d["fixed_values"], np.float32) if d.get("fixed_values") is not None else None
        return cls(Layout.from_dict(d["layout"]), d["params"], full, fv)


def input_layout(z: zoo.store.reader.Zoo, params: str) -> Layout:
    _check_params(params)
    return z.layout.trainable_layout() if params == "trainable" else Layout(z.layout.tensors)


def zoo_info(z: zoo.store.reader.Zoo, params: str) -> InputInfo:
    """What a metanet reading ``z`` with ``params`` is built for."""
    fv = None if z.fixed_values is None else np.asarray(z.fixed_values, np.float32)
    return InputInfo(input_layout(z, params), params, z.layout, fv)


def _check_params(params):
    if params not in PARAMS:
        raise MetanetError(f"params={params!r} is invalid; allowed: {', '.join(PARAMS)}")


# ------------------------------------------------------------------ statistics

def tensor_stats(x: torch.Tensor, layout: Layout, chunk: int = 512) -> torch.Tensor:
    """``[N, D]`` flat vectors -> ``[N, T, 7]`` statistics of each of the T tensors.

    Quantiles interpolate linearly between order statistics (numpy's default), computed
    from a sort so they work on any device and any tensor size (``torch.quantile`` has a
    size limit)."""
    if x.shape[-1] != layout.num_params:
        raise ValueError(f"vectors have {x.shape[-1]} entries, layout has {layout.num_params}")
    n = x.shape[0]
    out = torch.empty(n, len(layout), len(STATS), dtype=torch.float32, device=x.device)
    for ti, t in enumerate(layout.tensors):
        for a in range(0, n, chunk):
            # a fresh row-major copy: reductions round differently on strided inputs, and the
            # statistics must not depend on how the rows were read
            v = x[a:a + chunk, t.slice].float().contiguous()
            s = v.sort(dim=1).values
            cols = [v.mean(1), v.var(1, unbiased=False), s[:, 0], s[:, -1]]
            for q in (0.25, 0.5, 0.75):
                pos = q * (t.size - 1)
                lo, hi = math.floor(pos), math.ceil(pos)
                cols.append(s[:, lo] + (pos - lo) * (s[:, hi] - s[:, lo]))
            out[a:a + chunk, ti] = torch.stack(cols, dim=1)
    return out


def as_view(x, view: str, layout: Layout):
    """A batch of stored features -> the metanet's view (``layers`` splits the vector)."""
    return layout.unflatten(x) if view == "layers" else x


# ------------------------------------------------------------------ selecting nets

@dataclass
class Selection:
    """Which nets of a zoo enter the benchmark, per split, and their targets."""

    ids: dict
    y: dict
    n_diverged: int
    n_nonfinite: int
    target: str


def zoo_target(z: zoo.store.reader.Zoo, target: str | None) -> str:
    """The metric a zoo is read for: ``target`` if given, else the zoo's declared target."""
    name = target or z.manifest.get("target", "test_acc")
    return name


def select(z: zoo.store.reader.Zoo, target: str | None = None, checkpoint: str = "final") -> Selection:
    """Usable nets per split: not diverged, finite target. Errors if a split is too small."""
    name = zoo_target(z, target)
    col = metric_column(name, checkpoint)
    table = z.table
    if col not in table:
        metrics = [c for c in table.columns if c.split("@")[0] in ("train_loss", "train_acc", "test_loss", "test_acc")]
        raise MetanetError(f"{z.path}: target {col!r} is not a column of the zoo table; "
                           f"available metrics: {', '.join(metrics) or 'none'}")
    diverged = table["diverged"].astype(bool).to_numpy() if "diverged" in table else np.zeros(len(table), bool)
    y = table[col].to_numpy(np.float64)
    finite = np.isfinite(y)
    keep = ~diverged & finite
    ids, ys = {}, {}
    for s in SPLITS:
        m = keep & (table["split"].to_numpy() == s)
        ids[s] = table["model_id"].to_numpy()[m].astype(np.int64)
        ys[s] = y[m].astype(np.float32)
    small = {s: len(ids[s]) for s in SPLITS if len(ids[s]) < MIN_PER_SPLIT}
    if small:
        fr = z.manifest.get("splits", {}).get("fractions") or [0.5, 0.25, 0.25]
        need = math.ceil(MIN_PER_SPLIT / min(fr)) + int((~keep).sum())
        have = ", ".join(f"{s}={len(ids[s])}" for s in SPLITS)
        raise MetanetError(
            f"zoo {z.path} is too small for its train/val/test split: usable models per split {have} "
            f"({int(diverged.sum())} diverged excluded); the benchmark needs at least {MIN_PER_SPLIT} per split, "
            f"i.e. a zoo of at least {need} models at split fractions {'/'.join(str(f) for f in fr)}")
    return Selection(ids, ys, int(diverged.sum()), int((~finite & ~diverged).sum()), name)


# ------------------------------------------------------------------ in-memory zoo

@dataclass
class WeightSet:
    """One zoo's usable nets, in memory: flat vectors, statistics and targets per split."""

    path: Path
    name: str
    info: InputInfo
    selection: Selection
    x: dict  # split -> [n, D] float32 tensor, or StreamedRows
    stats: dict = field(default_factory=dict)  # split -> [n, T, 7], filled on first use
    full: dict = field(default_factory=dict)  # split -> [n, P] ("full" view), filled on first use

    @property
    def target(self) -> str:
        return self.selection.target

    @property
    def n_excluded(self) -> int:
        return self.selection.n_diverged + self.selection.n_nonfinite

    def y(self, split: str) -> torch.Tensor:
        return torch.as_tensor(self.selection.y[split], device=self.x[split].device)

    def ids(self, split: str) -> np.ndarray:
        return self.selection.ids[split]

    def features(self, split: str, view: str) -> torch.Tensor:
        """Stored features of a split: vectors (``vector``/``layers``), statistics (``stats``) or
        all parameters (``full``)."""
        if view == "full":
            if split not in self.full:
                x = self.x[split]
                x = x[slice(None)] if isinstance(x, StreamedRows) else x
                self.full[split] = self.info.to_full(x)
            return self.full[split]
        if view == "stats":
            if split not in self.stats:
                x = self.x[split]
                self.stats[split] = x.stats(self.info.layout) if isinstance(x, StreamedRows) \
                    else tensor_stats(x, self.info.layout)
            return self.stats[split]
        return self.x[split]


def memory_budget() -> int:
    """Bytes the in-memory fast path may use: half of the machine's physical memory."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def fits_in_memory(z: zoo.store.reader.Zoo, budget: int | None = None) -> bool:
    # The whole zoo is read once, then the trainable columns are copied: count both.
    return 2 * len(z) * z.layout.num_params * 4 <= (budget or memory_budget())


def open_zoo(path) -> zoo.store.reader.Zoo:
    """``zoo.open`` with the errors a benchmark user needs (a path that is not a zoo)."""
    p = Path(path)
    if p.is_file():
        raise MetanetError(f"{p} is a file, not a zoo directory (a zoo is a folder holding manifest.json)")
    return zoo.open(p)


class StreamedRows:
    """Rows of one split read from HDF5 on indexing: a stand-in for the ``[n, D]`` tensor
    of :class:`WeightSet` when a zoo does not fit in memory (slower: one row read per net)."""

    def __init__(self, path, ids, checkpoint: str, trainable_only: bool, num_inputs: int, device="cpu"):
        self.zoo = zoo.open(path)
        self.ids, self.checkpoint, self.trainable_only = np.asarray(ids), checkpoint, trainable_only
        self.shape = (len(self.ids), num_inputs)
        self.device = torch.device(device)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, idx):
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        w = self.zoo.weights(np.atleast_1d(self.ids[idx]), self.checkpoint, trainable_only=self.trainable_only)
        # row-major (numpy's column fancy-indexing can return column-major arrays, and CPU
        # matmuls round differently on them): streaming must train exactly like the fast path
        return torch.from_numpy(np.ascontiguousarray(w)).to(self.device)

    def to(self, device):
        self.device = torch.device(device)
        return self

    def stats(self, layout: Layout, chunk: int = 256) -> torch.Tensor:
        return torch.cat([tensor_stats(self[slice(a, a + chunk)], layout) for a in range(0, len(self), chunk)]) \
            if len(self) else torch.zeros(0, len(layout), len(STATS), device=self.device)


def load(path, *, params: str = "trainable", target: str | None = None, checkpoint: str = "final",
         device="cpu", in_memory: bool | None = None) -> WeightSet:
    """A zoo's usable nets: read into memory (the fast path) when ``in_memory`` is True,
    or None and the zoo fits (:func:`fits_in_memory`); otherwise streamed from HDF5 per
    batch (:class:`StreamedRows`; statistics are still computed once and kept)."""
    _check_params(params)
    z = open_zoo(path)
    try:
        sel = select(z, target, checkpoint)
        if checkpoint not in z.checkpoints:
            raise MetanetError(f"{z.path}: no checkpoint {checkpoint!r}; stored: {', '.join(z.checkpoints)}")
        info = zoo_info(z, params)
        if in_memory is False or (in_memory is None and not fits_in_memory(z)):
            x = {s: StreamedRows(z.path, sel.ids[s], checkpoint, params == "trainable", info.num_inputs, device)
                 for s in SPLITS}
            return WeightSet(z.path, z.name, info, sel, x)
        all_w = z.weights(None, checkpoint)  # whole shards at once: far faster than row reads
        row_of = {int(i): r for r, i in enumerate(z.ids)}
        cols = z.layout.trainable_index if params == "trainable" else None
        x = {}
        for s in SPLITS:
            rows = np.fromiter((row_of[int(i)] for i in sel.ids[s]), np.int64, len(sel.ids[s]))
            w = all_w[rows]
            x[s] = torch.from_numpy(np.ascontiguousarray(w[:, cols] if cols is not None else w)).to(device)
        del all_w
        return WeightSet(z.path, z.name, info, sel, x)
    finally:
        z.close()


# ------------------------------------------------------------------ on-disk dataset

class ZooDataset(torch.utils.data.Dataset):
    """One net per item read from HDF5: ``(features, target)`` in a metanet's view.

    For zoos too large for :func:`load`. Safe with DataLoader workers: the zoo object
    is pickled into each worker without open file handles, and each worker opens its own."""

    def __init__(self, path, split: str, *, view: str = "vector", params: str = "trainable",
                 target: str | None = None, checkpoint: str = "final"):
        _check_params(params)
        self.zoo = open_zoo(path)
        self.selection = select(self.zoo, target, checkpoint)
        self.split, self.view, self.params, self.checkpoint = split, view, params, checkpoint
        self.info = zoo_info(self.zoo, params)
        self.zoo.close()

    def __len__(self):
        return len(self.selection.ids[self.split])

    def __getitem__(self, i):
        mid = int(self.selection.ids[self.split][i])
        vec = torch.from_numpy(self.zoo.weights([mid], self.checkpoint, trainable_only=self.params == "trainable"))
        if self.view == "stats":
            x = tensor_stats(vec, self.info.layout)[0]
        elif self.view == "full":
            x = self.info.to_full(vec)[0]
        else:
            x = as_view(vec[0], self.view, self.info.layout)
        return x, torch.tensor(self.selection.y[self.split][i])
