"""Importer for the Small CNN Zoo of Unterthiner et al. (2020), "Predicting Neural Network
Accuracy from Weights" (four datasets: cifar10, mnist, fashion_mnist, svhn_cropped).

Upstream layout, one ``.tar.xz`` per dataset, holding (at any depth; the colab names them
``all_weights.npy`` / ``all_metrics.csv``, also accepted):

* ``weights.npy`` -- ``[rows, 4970]`` float32, one row per *checkpoint* of a run;
* ``metrics.csv.gz`` -- one row per ``weights.npy`` row: a first (index) column naming the
  checkpoint (``.../<run>/permanent_ckpt-<epoch>``), hyper-parameters (``config.*``),
  ``modeldir``, ``step`` (the epoch: 0, 1, 2, 3, 20, 40, 60, 80, 86), ``train_accuracy``,
  ``test_accuracy``, ``train_loss``, ``test_loss``;
* ``layout.csv`` -- one row per variable: name (e.g. ``sequential/conv2d/kernel:0``),
  start index, end index, shape (e.g. ``(3, 3, 1, 16)``).

Kernels are stored in TensorFlow order (conv ``[kh, kw, in, out]``, dense ``[in, out]``)
and become PyTorch order (``[out, in, kh, kw]``, ``[out, in]``) here; parameter names are
the layout's (``conv2d.weight``, ``conv2d.bias``, ..., ``dense.bias``), in its order. The
rows of one run become one model; ``epochs`` picks which checkpoints it keeps (the last
epoch by default). A run that hit NaN stopped early and has fewer rows: it is dropped and
listed in ``source.dropped``. Runs whose weights or accuracy are not finite at a kept
checkpoint are kept and marked ``diverged``.

Only the three files are read: from a ``.tar.xz`` they are extracted in one pass (a tar
has no index); ``weights.npy`` is then memory-mapped, a shard of runs at a time.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from ...console import progress
from ...errors import ZooError
from ...layout import Layout
from ...nets import NetConfig
from ...nets.config import IMAGE_SHAPES
from ...nets.smallcnn import LAYERS as SMALLCNN_LAYERS
from ...store import ShardContent, metric_column
from ..safety import ARCHIVE_ERRORS, Limits
from .common import RESERVED, SHARD_SIZE, ZooWriter, column_name, fingerprint_of
from .source import Source

DATASETS = ("cifar10", "mnist", "fashion_mnist", "svhn_cropped")
_METRICS = {"test_acc": ("test_accuracy", "test_acc"), "train_acc": ("train_accuracy", "train_acc"),
            "test_loss": ("test_loss",), "train_loss": ("train_loss",)}
_RUN_COLUMNS = ("modeldir", "model_dir", "run", "run_id")


def _parse_shape(text, where: str) -> tuple[int, ...]:
    nums = re.findall(r"-?\d+", str(text))
    if not nums or any(int(n) <= 0 for n in nums):
        raise ZooError(f"{where}: shape {text!r} is not a list of positive sizes")
    return tuple(int(n) for n in nums)


def read_csv(path: Path, label=None, **kw) -> pd.DataFrame:
    """A CSV table, or a ZooError naming ``label`` (the member as the user knows it)."""
    try:
        return pd.read_csv(path, **kw)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, *ARCHIVE_ERRORS) as e:
        raise ZooError(f"{label or path}: not a readable CSV table ({type(e).__name__}: "
                       f"{' '.join(str(e).split())[:200]})") from e


def read_layout(path: Path, label=None):
    """layout.csv -> [(our name, tf shape, start, end, role)], checked to tile [0, P) exactly."""
    df = read_csv(path, label)
    try:
        return _read_layout(df, label or path)
    except (ValueError, TypeError, OverflowError, IndexError) as e:  # a cell that is not what the column holds
        raise ZooError(f"{label or path}: malformed ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from e


def _read_layout(df: pd.DataFrame, path):
    cols = {c.lower(): c for c in df.columns}
    pick = lambda *opts: next((cols[o] for o in opts if o in cols), None)
    c_name, c_start = pick("varname", "name", "variable"), pick("start_idx", "start")
    c_end, c_shape = pick("end_idx", "end"), pick("shape")
    if None in (c_name, c_start, c_end, c_shape):
        raise ZooError(f"{path}: needs columns varname, start_idx, end_idx, shape; found {', '.join(df.columns)}")
    raw_names = [str(n).split(":")[0] for n in df[c_name]]
    parts = [n.split("/") for n in raw_names]
    common = parts[0][0] if parts and len(parts[0]) > 2 and all(p[0] == parts[0][0] and len(p) > 2 for p in parts) \
        else None
    rows, pos = [], 0
    for (_, r), p in sorted(zip(df.iterrows(), parts), key=lambda x: int(x[0][1][c_start])):
        where = f"{path} row {r[c_name]!r}"
        shape = _parse_shape(r[c_shape], where)
        start, end = int(r[c_start]), int(r[c_end])
        if start != pos:
            raise ZooError(f"{where}: starts at {start}, expected {pos} (variables must tile the weight vector)")
        if end - start != math.prod(shape):
            raise ZooError(f"{where}: spans {end - start} entries but shape {shape} has {math.prod(shape)}")
        leaf = p[-1]
        name = ".".join((p[1:] if common else p)[:-1] + ["weight" if leaf == "kernel" else leaf])
        role = "bias" if leaf == "bias" else {4: "conv_weight", 2: "linear_weight"}.get(len(shape), "other")
        rows.append((name, shape, start, end, role))
        pos = end
    if len({r[0] for r in rows}) != len(rows):
        raise ZooError(f"{path}: variable names are not unique after conversion")
    return rows, pos


def _numbers(metrics: pd.DataFrame, col: str, label) -> np.ndarray:
    """Column ``col`` as float64; empty cells and 'nan' are NaN, anything else not a number is
    refused naming the file, column and row."""
    v = pd.to_numeric(metrics[col], errors="coerce").to_numpy(np.float64)
    text = metrics[col].astype(str).str.strip().str.lower()
    bad = np.isnan(v) & metrics[col].notna().to_numpy() & ~text.isin(["nan", ""]).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ZooError(f"{label}: column {col!r} row {i + 1} = {str(metrics[col].iloc[i])[:60]!r} is not a number")
    return v


def _run_keys(metrics: pd.DataFrame, hp_cols: list[str]) -> tuple[pd.Series, str]:
    """Which run each row belongs to. Upstream's first (index) column names the checkpoint,
    ``.../<run>/permanent_ckpt-<epoch>`` (the colab's ``filter_checkpoints`` splits it the
    same way), so the run is that path's folder."""
    for c in metrics.columns:
        if c.lower() in _RUN_COLUMNS:
            return metrics[c].astype(str), c
    first = metrics.columns[0]
    if first.startswith("Unnamed") or first == "":
        paths = metrics[first].astype(str)
        if paths.str.contains("/").all():
            return paths.str.rsplit("/", n=1).str[0], "checkpoint path's folder"
        return paths, first
    if not hp_cols:
        raise ZooError("metrics.csv has neither a run column nor hyper-parameter columns to group checkpoints by")
    return metrics[hp_cols].astype(str).agg("|".join, axis=1), "hyper-parameters"


def _pick(names: list[str], wanted) -> str | None:
    for w in wanted:
        hits = sorted((n for n in names if PurePosixPath(n).name == w), key=lambda n: (n.count("/"), n))
        if hits:
            return hits[0]
    return None


def _parse_epochs(text: str, available: list[int]) -> list[int]:
    if text == "all":
        return list(available)
    if text == "final":
        return [available[-1]]
    try:
        wanted = sorted({int(e) for e in text.split(",")})
    except ValueError:
        raise ZooError(f"smallcnnzoo option epochs = {text!r}: expected 'final', 'all' or epochs like 0,20,86 "
                       f"(available: {', '.join(map(str, available))})") from None
    bad = [e for e in wanted if e not in available]
    if bad:
        raise ZooError(f"smallcnnzoo option epochs = {text!r}: epoch {bad[0]} is not a checkpoint of this zoo "
                       f"(available: {', '.join(map(str, available))})")
    return wanted


def import_smallcnnzoo(src, out, *, dataset: str | None = None, epochs: str = "final", name: str | None = None,
                       force: bool = False, source: dict | None = None, limits: Limits | None = None) -> dict:
    """Convert an upstream ``.tar.xz`` (or its extracted folder) into a metazoo zoo at ``out``.

    ``epochs``: which checkpoints become the zoo's (``final``, the default; ``all``; or a
    list such as ``0,20,86``). The last chosen one is checkpoint ``final``, the others
    ``epoch_<e>``."""
    if dataset is not None and dataset not in DATASETS:
        raise ZooError(f"smallcnnzoo option dataset = {dataset!r}; allowed: {', '.join(DATASETS)}")
    options = {"dataset": dataset, "epochs": epochs}
    with ZooWriter(out, force=force, fingerprint=fingerprint_of("smallcnnzoo", src, options, name)) as writer, \
            Source(src, writer.scratch, limits) as tree:
        w_name = _pick(tree.names, ["weights.npy", "all_weights.npy"])
        m_name = _pick(tree.names, ["metrics.csv.gz", "metrics.csv", "all_metrics.csv"])
        l_name = _pick(tree.names, ["layout.csv"])
        missing = [n for n, p in (("weights.npy", w_name), ("metrics.csv(.gz)", m_name), ("layout.csv", l_name))
                   if p is None]
        if missing:
            raise ZooError(f"{src}: missing {', '.join(missing)} (a Small CNN Zoo archive holds weights.npy, "
                           f"metrics.csv(.gz) and layout.csv)")
        tree.prepare([w_name, m_name, l_name])  # a tar.xz: these three only, in one pass
        l_path, m_path = tree.local_path(l_name), tree.local_path(m_name)
        tensors, P = read_layout(l_path, tree.label(l_name))
        weights = tree.npy(w_name)
        w_label = tree.label(w_name)
        if weights.ndim != 2 or weights.shape[1] != P:
            raise ZooError(f"{w_label}: shape {weights.shape}, but layout.csv describes {P} parameters per row")
        metrics = read_csv(m_path, tree.label(m_name), compression="gzip" if m_name.endswith(".gz") else None)
        m_label = tree.label(m_name)
        if len(metrics) != weights.shape[0]:
            raise ZooError(f"{m_label}: {len(metrics)} rows, but weights.npy has {weights.shape[0]} "
                           f"(one per checkpoint)")
        if "step" not in metrics.columns:
            raise ZooError(f"{m_label}: column 'step' missing (the checkpoint's epoch)")
        metric_src = {}
        for ours, names in _METRICS.items():
            found = next((n for n in names if n in metrics.columns), None)
            if found is None:
                raise ZooError(f"{m_label}: column {names[0]!r} missing")
            metric_src[ours] = found
        hp_cols = [c for c in metrics.columns if c.startswith("config.")]
        keys, key_kind = _run_keys(metrics, hp_cols)

        # Group rows into runs (in order of first appearance). A run that hit NaN stopped early
        # and lacks the later checkpoints: it is dropped and listed, whatever epochs are chosen.
        steps = _numbers(metrics, "step", m_label)
        not_epoch = ~np.isfinite(steps) | (steps != np.round(steps)) | (steps < 0)
        if not_epoch.any():
            i = int(np.flatnonzero(not_epoch)[0])
            raise ZooError(f"{m_label}: column 'step' row {i + 1} = {metrics['step'].iloc[i]!r} is not a whole "
                           "number of epochs >= 0")
        steps = steps.astype(np.int64)
        groups: dict[str, dict[int, int]] = {}
        for i, k in enumerate(keys):
            groups.setdefault(k, {})[int(steps[i])] = i
        full = sorted(Counter(tuple(sorted(g)) for g in groups.values()).most_common(1)[0][0])
        chosen = _parse_epochs(str(epochs), full)
        runs, dropped = [], []
        for k, by_epoch in groups.items():
            if set(by_epoch) != set(full):
                last = max(by_epoch) if by_epoch else None
                dropped.append(f"{k} (stops after epoch {last}: {len(by_epoch)} of {len(full)} checkpoints)")
                continue
            runs.append([by_epoch[e] for e in chosen])
        ckpts = [f"epoch_{e}" for e in chosen[:-1]] + ["final"]
        layout = Layout.from_shapes([(n, _torch_shape(s), role) for n, s, _, _, role in tensors])
        hp_names = {c: column_name(c[len("config."):], RESERVED) for c in hp_cols}
        metric_values = {ours: _numbers(metrics, up, m_label) for ours, up in metric_src.items()}

        state = writer.resumed or {"next_block": 0}
        bar = progress(total=len(runs), initial=state["next_block"], desc="importing runs", unit="run")
        for b in range(state["next_block"], len(runs), SHARD_SIZE):
            block = np.array(runs[b:b + SHARD_SIZE])  # [n, len(chosen)] row indices
            ids = np.arange(b, b + len(block))
            per_ckpt = {ck: _to_torch_order(np.asarray(weights[np.sort(block[:, j])])[
                np.argsort(np.argsort(block[:, j]))], tensors) for j, ck in enumerate(ckpts)}
            last = block[:, -1]
            cols = {hp_names[c]: metrics[c].to_numpy()[last] for c in hp_cols}
            for j, ck in enumerate(ckpts):
                rows = block[:, j]
                cols[metric_column("epoch", ck)] = steps[rows].astype(np.int64)
                for ours, values in metric_values.items():
                    cols[metric_column(ours, ck)] = values[rows]
            cols["run"] = np.asarray(keys.to_numpy()[last], dtype=object)
            finite = np.stack([np.isfinite(w).all(1) for w in per_ckpt.values()], 1).all(1)
            cols["diverged"] = ~finite | ~np.isfinite(cols["test_acc"])
            table = _storable(pd.DataFrame(cols))
            for ours in ("test_acc", "train_acc"):
                bad = table[ours][(table[ours] < 0) | (table[ours] > 1)]
                if len(bad):
                    raise ZooError(f"{m_label}: {metric_src[ours]} = {bad.iloc[0]!r} is not an accuracy in [0, 1]")
            writer.add(ShardContent(ids=ids, weights=per_ckpt, table=table, layout=layout),
                       state={"next_block": b + len(block)})
            bar.update(len(block))
        bar.close()
        ds = dataset or _guess_dataset(Path(src))
        return writer.finish(
            name=name or f"smallcnnzoo-{ds or 'unknown'}", net=net_config(layout, ds),
            data={"name": ds} if ds else None,
            source={"kind": "import", "format": "smallcnnzoo", "path": str(src), "runs_grouped_by": key_kind,
                    "epochs": chosen, "checkpoints_per_run": len(full), "dropped": dropped,
                    "dropped_reason": "run cut short (NaN): fewer checkpoints than the others",
                    "hparam_columns": list(hp_names.values()),
                    "kernel_order": "converted from TensorFlow [kh, kw, in, out] to PyTorch [out, in, kh, kw]",
                    **(source or {})})


def net_config(layout: Layout, dataset: str | None) -> dict | None:
    """The smallcnn config that rebuilds these nets (``zoo.open(...).rebuild``), or None when
    the layout is not upstream's CNN: three 3x3 stride-2 convs of one width (Keras' default
    'valid' padding, as upstream's ``build_cnn``), global average pooling, a dense layer. On
    CIFAR-10 and SVHN upstream trained on one grayscale channel: the net averages the colour
    channels first (``grayscale``), so it takes the torchvision images as they come. The net
    computes what upstream's did on the same input; the input is metazoo's (standardised per
    channel, a plain channel mean for grayscale), not upstream's own preprocessing, so losses
    on it are close to upstream's, not equal."""
    shapes = {t.name: tuple(t.shape) for t in layout.tensors}
    names = [f"{n}.{p}" for n in SMALLCNN_LAYERS for p in ("weight", "bias")] + ["dense.weight", "dense.bias"]
    if list(shapes) != names or len(shapes["conv2d.weight"]) != 4 or len(shapes["dense.weight"]) != 2:
        return None
    c, c_in = shapes["conv2d.weight"][:2]
    classes = shapes["dense.weight"][0]
    if not all(shapes[f"{n}.weight"] == (c, c_in if n == "conv2d" else c, 3, 3) and shapes[f"{n}.bias"] == (c,)
               for n in SMALLCNN_LAYERS) or shapes["dense.weight"] != (classes, c) or shapes["dense.bias"] != (classes,):
        return None
    source = {"svhn_cropped": "svhn"}.get(dataset, dataset)
    channels = IMAGE_SHAPES[source][0] if source in IMAGE_SHAPES else c_in
    if channels != c_in and c_in != 1:
        return None
    return NetConfig(arch="smallcnn", width=c / 16, in_channels=channels, num_classes=classes, padding="valid",
                     grayscale=channels != c_in).to_dict()


def _torch_shape(tf_shape):
    if len(tf_shape) == 4:
        return (tf_shape[3], tf_shape[2], tf_shape[0], tf_shape[1])
    if len(tf_shape) == 2:
        return (tf_shape[1], tf_shape[0])
    return tf_shape


def _to_torch_order(rows: np.ndarray, tensors) -> np.ndarray:
    """``[n, P]`` rows in TensorFlow layout -> ``[n, P]`` float32 in our (PyTorch) layout."""
    n = rows.shape[0]
    parts = []
    for _, shape, start, end, _ in tensors:
        t = rows[:, start:end].reshape((n,) + shape)
        if len(shape) == 4:
            t = np.transpose(t, (0, 4, 3, 1, 2))
        elif len(shape) == 2:
            t = np.transpose(t, (0, 2, 1))
        parts.append(t.reshape(n, -1))
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)


def _storable(df: pd.DataFrame) -> pd.DataFrame:
    for c in df.columns:
        if df[c].dtype == object or str(df[c].dtype) in ("string", "str"):
            df[c] = np.asarray(["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
                                for v in df[c]], dtype=object)
    return df


def _guess_dataset(src: Path) -> str | None:
    name = src.name.lower()
    return next((d for d in sorted(DATASETS, key=len, reverse=True) if name.startswith(d)), None)
