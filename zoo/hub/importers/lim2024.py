"""Importer for the zoos of Lim et al. (NeurIPS 2024), Zenodo record 13883507, as shipped.

Upstream (github cptq/asymmetric-networks): ``metanet_data/train_cifar.py`` saves one file
per net, ``torch.save((state_dict, test_acc_percent), "<root>/<model_type>/<i>.pt")``, of
one of four model types (``grid_runs/make_scripts.py``), each a CIFAR ResNet8 with
GroupNorm(1, C) (``metanet_data/models.py``):

* ``resnet8`` -- ``conv1``, ``ln1``, ``layer{k}.0.{conv1,ln1,conv2,ln2}``,
  ``layer{k}.0.shortcut.{0,1}`` (k = 2, 3), ``linear`` (78,042 parameters);
* ``smaller_resnet8`` -- the same at width 0.875 (channels 14/28/56, 59,944 parameters);
* ``sparse_resnet8`` (W-Asym) -- every conv and the linear also carry buffers ``mask``
  (1 = trained) and ``normal_mask``; the net computes with
  ``W*mask + (1-mask)*mask_constant*normal_mask`` (mask_constant 2, ``default_config.yaml``).
  The masks were frozen to ``masks/sparse_resnet8_{conv_f,linear,block{1,2,3}_{conv1,conv2,skip}}.pt``,
  each ``(mask, normal_mask)``; when present they must agree with the nets' buffers
  (``block1_skip`` belongs to no layer: layer 1 has no shortcut);
* ``sigma_asym_resnet8`` (FiGLU) -- ReLUs replaced by ``sigmoid(F x) * x`` with buffers
  ``nonlin.F_mat`` and ``layer{k}.0.nonlin{1,2}.F_mat``, seeded from Python's salted hash,
  so every net has its own F: they are kept per net (as buffers) and used by ``rebuild``.

``-o model_type=...`` picks one type; the other types' files are skipped by name before
anything is read. Without it, a source holding one type imports it, and a source holding
several names them and asks for the option. ``hparams.csv`` (``lr, weight_decay,
label_smoothing, epochs``; row i+1 <-> ``i.pt``, ``metanet/data_utils.py``) is joined when
found in the source (or given with ``-o hparams=FILE``). Accuracy becomes a fraction; nets
with NaN weights or accuracy are dropped and listed in ``source.dropped``, as upstream's
loader does. W-Asym zoos store the *effective* weights, so fixed entries equal the fixed
values exactly even where AdamW's decoupled weight decay nudged the raw tensor.
"""
from __future__ import annotations

import io
import math
import re
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch

from ...console import progress
from ...errors import ZooError
from ...layout import Layout
from ...nets import NetConfig, ResNet, WAsym
from ...store import ShardContent
from ..safety import Limits
from .common import SHARD_SIZE, ZooWriter, fingerprint_of
from .source import Source

MODEL_TYPES = ("resnet8", "sparse_resnet8", "smaller_resnet8", "sigma_asym_resnet8")
_CONFIGS = {"resnet8": NetConfig(), "sparse_resnet8": NetConfig(), "smaller_resnet8": NetConfig(width=0.875),
            "sigma_asym_resnet8": NetConfig(activation="figlu")}
HPARAMS = ("lr", "weight_decay", "label_smoothing", "epochs")

_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.(conv1|conv2|bn1|bn2|ln1|ln2|shortcut\.0|shortcut\.1|nonlin1|nonlin2)\.(\w+)$")
_STEM = re.compile(r"^(conv1|bn1|ln1|linear|nonlin)\.(\w+)$")
_OURS = {"conv1": "conv1", "conv2": "conv2", "bn1": "norm1", "ln1": "norm1", "bn2": "norm2", "ln2": "norm2",
         "shortcut.0": "shortcut_conv", "shortcut.1": "shortcut_norm", "linear": "fc", "nonlin": "act1",
         "nonlin1": "act1", "nonlin2": "act2"}
_MASK_FILE = re.compile(r"^sparse_resnet8_(conv_f|linear|block([123])_(conv1|conv2|skip))\.pt$")


def our_name(key: str) -> tuple[str, str] | None:
    """Upstream state_dict key -> (our module name, leaf), or None if it is no layer of a ResNet8."""
    m = _BLOCK.match(key)
    if m:
        stage, block, layer, leaf = m.groups()
        return f"layer{stage}.{block}.{_OURS[layer]}", leaf
    m = _STEM.match(key)
    if m:
        layer, leaf = m.groups()
        return _OURS[layer], leaf
    return None


def mask_file_layer(file_name: str) -> str | None:
    """``sparse_resnet8_block2_conv1.pt`` -> ``layer2.0.conv1``; None for other names."""
    m = _MASK_FILE.match(file_name)
    if not m:
        return None
    part, stage, layer = m.groups()
    if part in ("conv_f", "linear"):
        return "conv1" if part == "conv_f" else "fc"
    return f"layer{stage}.0.{'shortcut_conv' if layer == 'skip' else layer}"


def type_from_path(name: str) -> str | None:
    """The model type a member's folder names (the innermost one), else None."""
    found = [p for p in PurePosixPath(name).parts[:-1] if p in MODEL_TYPES]
    return found[-1] if found else None


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _net_index(name: str) -> int | None:
    m = re.search(r"(\d+)$", PurePosixPath(name).stem)  # as upstream's _idx_to_orig
    return int(m.group(1)) if m else None


def layout_for(cfg: NetConfig) -> Layout:
    """Our ResNet8's weights; for FiGLU nets also each F matrix, stored per net as a buffer."""
    net = ResNet(cfg)
    base = Layout.from_module(net)
    figlu = [(f"{n}.mix", tuple(m.mix.shape), "other") for n, m in net.named_modules() if hasattr(m, "mix")]
    return Layout.from_shapes([(t.name, t.shape, t.role) for t in base.tensors], buffers=figlu)


def _read_net(label: str, obj):
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[0], dict)):
        raise ZooError(f"{label}: expected (state_dict, test_acc_percent), found {type(obj).__name__}"
                       f"{' of length ' + str(len(obj)) if isinstance(obj, (tuple, list)) else ''}")
    sd, acc = obj
    try:
        acc = float(acc.item() if isinstance(acc, torch.Tensor) else acc)
    except (TypeError, ValueError, RuntimeError) as e:  # a string, a list, a tensor of several values
        raise ZooError(f"{label}: test accuracy {str(acc)[:40]!r} is not a number") from e
    if not (0.0 <= acc <= 100.0) and not np.isnan(acc):
        raise ZooError(f"{label}: test accuracy {acc!r} is not a percentage in [0, 100]")
    return sd, acc


def _content_type(sd: dict) -> str:
    if any(k.endswith(".F_mat") for k in sd):
        return "sigma_asym_resnet8"
    if any(k.endswith(".mask") for k in sd):
        return "sparse_resnet8"
    stem = sd.get("conv1.weight")
    # (a 0-d tensor has no first axis: it is not the smaller stem, and the shape checks refuse it)
    return "smaller_resnet8" if isinstance(stem, torch.Tensor) and stem.dim() and stem.shape[0] == 14 else "resnet8"


def _split_state(label: str, sd: dict, layout: Layout, model_type: str):
    """-> (weights by our name, buffers by our name, masks by our module name {(mask, normal)})."""
    weights, buffers, masks = {}, {}, {}
    for key, t in sd.items():
        mapped = our_name(key)
        if mapped is None:
            raise ZooError(f"{label}: unexpected tensor {key!r} for a {model_type} of Lim et al. "
                           f"(expected conv1, ln1, layer{{1,2,3}}.0.*, linear, and nonlin*.F_mat for FiGLU nets)")
        mod, leaf = mapped
        if not isinstance(t, torch.Tensor):
            raise ZooError(f"{label}: entry {key!r} is a {type(t).__name__}, not a tensor")
        if leaf in ("mask", "normal_mask"):
            masks.setdefault(mod, {})[leaf] = t
        elif leaf == "F_mat":
            buffers[f"{mod}.mix"] = t
        elif leaf in ("weight", "bias"):
            weights[f"{mod}.{leaf}"] = t
        else:
            raise ZooError(f"{label}: unexpected tensor {key!r} (leaf {leaf!r}; allowed weight, bias, mask, "
                           f"normal_mask, F_mat)")
    for spec in list(layout.tensors) + list(layout.buffers):
        got = weights.get(spec.name, buffers.get(spec.name))
        if got is None:
            raise ZooError(f"{label}: missing tensor for {spec.name} (shape {spec.shape}) of a {model_type}")
        if tuple(got.shape) != spec.shape:
            raise ZooError(f"{label}: tensor for {spec.name} has shape {tuple(got.shape)}, "
                           f"a {model_type} has {spec.shape}")
    extra = (set(weights) - set(layout.names)) | (set(buffers) - {b.name for b in layout.buffers})
    if extra:
        raise ZooError(f"{label}: tensors with no place in a {model_type}: {', '.join(sorted(extra))}")
    return weights, buffers, masks


def _mask_files(tree: Source, names: list[str], layout: Layout) -> dict:
    """Upstream's frozen mask files: our module name -> {"mask", "normal_mask"}."""
    out = {}
    for n in names:
        mod = mask_file_layer(PurePosixPath(n).name)
        if mod is None or f"{mod}.weight" not in layout.names:
            continue  # block1_skip: layer 1 has no shortcut, upstream never uses it
        obj = tree.tensors(n)
        if not (isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj)):
            raise ZooError(f"{tree.label(n)}: expected a (mask, normal_mask) pair of tensors")
        out[mod] = {"mask": obj[0], "normal_mask": obj[1]}
    return out


def _fixed_from_masks(where: str, masks: dict, layout: Layout, kappa: float):
    """Flat fixed mask and fixed values from per-layer (mask, normal_mask)."""
    fixed = np.zeros(layout.num_params, bool)
    values = np.zeros(layout.num_params, np.float32)
    for mod, pair in masks.items():
        if set(pair) != {"mask", "normal_mask"}:
            raise ZooError(f"{where}: layer {mod} has {sorted(pair)} but needs both mask and normal_mask")
        name = f"{mod}.weight"
        spec = layout[name] if name in layout.names else None
        if spec is None or spec.role not in ("conv_weight", "linear_weight"):
            raise ZooError(f"{where}: masks given for {mod}, which is not a conv or linear layer")
        m, n = pair["mask"].detach().cpu().numpy(), pair["normal_mask"].detach().cpu().numpy()
        for what, arr in (("mask", m), ("normal_mask", n)):
            if tuple(arr.shape) != spec.shape:
                raise ZooError(f"{where}: {mod}.{what} has shape {tuple(arr.shape)}, expected {spec.shape}")
        if not np.isin(m, (0, 1)).all():
            raise ZooError(f"{where}: {mod}.mask has values other than 0 and 1")
        fixed[spec.slice] = (m == 0).reshape(-1)
        values[spec.slice] = np.where(m == 0, kappa * n, 0).reshape(-1).astype(np.float32)
    return fixed, values


def _infer_wasym(layout: Layout, fixed: np.ndarray, kappa: float) -> WAsym:
    """n_fix per output unit, read off the masks (the paper: 8 filters and 8 linear entries)."""
    n_conv, n_lin, whole_filters = 0, 0, True
    for t in layout.tensors:
        m = fixed[t.slice].reshape(t.shape)
        if t.role == "conv_weight":
            per_filter = m.reshape(t.shape[0], t.shape[1], -1)
            whole_filters &= bool((per_filter.all(-1) | ~per_filter.any(-1)).all())
            if t.name != "conv1":  # the 3-channel stem is fully fixed, it says nothing about n_fix
                counts = per_filter.all(-1).sum(1) if whole_filters else m.reshape(t.shape[0], -1).sum(1)
                n_conv = max(n_conv, int(counts.max()))
        elif t.role == "linear_weight":
            n_lin = max(n_lin, int(m.sum(1).max()))
    return WAsym(n_fix=max(n_conv, 1), n_fix_linear=max(n_lin, 1), kappa=kappa,
                 mode="filters" if whole_filters else "entries")


def _hparams(tree: Source, names: list[str], option: str | None) -> tuple[pd.DataFrame | None, str | None]:
    if option:
        path = Path(option)
        if not path.is_file():
            raise ZooError(f"lim2024 option hparams = {option!r}: no such file")
        label, text = str(path), path.read_text()
    else:
        found = sorted((n for n in names if PurePosixPath(n).name == "hparams.csv"), key=lambda n: (n.count("/"), n))
        if not found:
            return None, None
        label, text = tree.label(found[0]), tree.read_bytes(found[0]).decode("utf-8", "replace")

    try:
        df = pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ZooError(f"{label}: not a readable csv ({e})") from e
    if list(df.columns[:4]) != list(HPARAMS):
        raise ZooError(f"{label}: expected columns {', '.join(HPARAMS)} (upstream's grid_runs/hparams.csv); "
                       f"found {', '.join(map(str, df.columns))}")
    for c in HPARAMS:  # the zoo's table stores them as numbers: a cell that is not one is the file's fault
        try:
            v = pd.to_numeric(df[c], errors="raise").to_numpy(np.float64)
        except (ValueError, TypeError) as e:
            raise ZooError(f"{label}: column {c!r} holds a value that is not a number ({e})") from e
        if c == "epochs" and not (np.isfinite(v) & (v == np.round(v)) & (np.abs(v) < 2**62)).all():
            raise ZooError(f"{label}: column 'epochs' holds a value that is not a whole number")
        df[c] = v.astype(np.int64) if c == "epochs" else v
    return df, label


def _choose_files(src, names: list[str], model_type: str | None) -> tuple[list[str], str | None]:
    """The net files to read, and the model type their folders name (None: decide by content)."""
    nets = [n for n in names if n.endswith((".pt", ".pth")) and "masks" not in PurePosixPath(n).parts[:-1]
            and mask_file_layer(PurePosixPath(n).name) is None]
    typed: dict[str, list[str]] = {}
    for n in nets:
        typed.setdefault(type_from_path(n) or "", []).append(n)
    if model_type is not None:
        chosen = typed.get(model_type, []) + typed.get("", [])
        if not chosen:
            found = ", ".join(f"{t} ({len(v)} files)" for t, v in sorted(typed.items()) if t) or "none"
            raise ZooError(f"{src}: no {model_type} nets found; model types here: {found}")
        return sorted(chosen, key=_natural_key), model_type
    kinds = sorted(t for t in typed if t)
    if len(kinds) > 1:
        found = ", ".join(f"{t} ({len(typed[t])} files)" for t in kinds)
        raise ZooError(f"{src} holds several model types: {found}; import one with -o model_type=TYPE "
                       f"(one of {', '.join(MODEL_TYPES)})")
    if not nets:
        raise ZooError(f"{src}: no .pt files found (lim2024 expects one torch.save((state_dict, "
                       f"test_acc_percent)) file per net, e.g. sparse_resnet8/0.pt)")
    return sorted(nets, key=_natural_key), (kinds[0] if kinds else None)


def import_lim2024(src, out, *, model_type: str | None = None, hparams: str | None = None,
                   mask_constant: str = "2", name: str | None = None, force: bool = False,
                   source: dict | None = None, limits: Limits | None = None) -> dict:
    """Convert the record (zip or folder), or one model-type folder, into a zoo at ``out``."""
    if model_type is not None and model_type not in MODEL_TYPES:
        raise ZooError(f"lim2024 option model_type = {model_type!r}; allowed: {', '.join(MODEL_TYPES)}")
    try:
        kappa = float(mask_constant)
    except ValueError:
        kappa = float("nan")
    if not (math.isfinite(kappa) and kappa > 0):
        raise ZooError(f"lim2024 option mask_constant = {mask_constant!r}: expected a positive number (upstream: 2)")
    options = {"model_type": model_type, "hparams": hparams, "mask_constant": kappa}
    with ZooWriter(out, force=force, fingerprint=fingerprint_of("lim2024", src, options, name)) as writer, \
            Source(src, writer.scratch, limits) as tree:
        files, typed = _choose_files(src, tree.names, model_type)
        hp, hp_label = _hparams(tree, tree.names, hparams)
        state = writer.resumed or {"next": 0, "next_id": 0, "dropped": [], "type": None, "mask_ref": None}
        kind = model_type or typed or state["type"]
        if kind is None:  # nothing in the names says which: the first net's content does
            kind = _content_type(_read_net(tree.label(files[0]), tree.tensors(files[0]))[0])
        cfg = _CONFIGS[kind]
        base = layout_for(cfg)
        frozen = _mask_files(tree, tree.names, base) if kind == "sparse_resnet8" else {}
        frozen_fixed = _fixed_from_masks("upstream mask files", frozen, base, kappa) if frozen else None
        fixed_ref = None
        if kind == "sparse_resnet8" and state["mask_ref"] is not None:  # resumed: the masks the shards used
            ref = state["mask_ref"]
            ref_masks = _split_state(ref, _read_net(ref, tree.tensors(ref))[0], base, kind)[2] or frozen
            fixed_ref = _fixed_from_masks(ref, ref_masks, base, kappa)
        layout = None if fixed_ref is None and kind == "sparse_resnet8" else \
            Layout.from_shapes([(t.name, t.shape, t.role) for t in base.tensors],
                               fixed_mask=fixed_ref[0] if fixed_ref is not None else None, buffers=[
                                   (b.name, b.shape, b.role) for b in base.buffers])
        pending: list[tuple] = []

        def flush(upto: int):
            if not pending:
                return
            ids = np.arange(state["next_id"], state["next_id"] + len(pending))
            cols = {"test_acc": np.array([p[2] for p in pending], np.float64),
                    "diverged": np.zeros(len(pending), bool),
                    "source_file": np.array([p[0] for p in pending], dtype=object),
                    "upstream_index": np.array([-1 if p[3] is None else p[3] for p in pending], np.int64)}
            if hp is not None:
                rows = hp.iloc[[p[3] for p in pending]]
                for c in HPARAMS:
                    cols[c] = rows[c].to_numpy(np.int64 if c == "epochs" else np.float64)
            buf = {"final": np.stack([p[4] for p in pending])} if base.buffers else None
            state["next_id"] += len(pending)
            state["next"] = upto
            writer.add(ShardContent(ids=ids, weights={"final": np.stack([p[1] for p in pending])}, buffers=buf,
                                    table=pd.DataFrame(cols), layout=layout,
                                    fixed_values=fixed_ref[1] if fixed_ref is not None else None), state=dict(state))
            pending.clear()

        # Streamed: each file is read once and at most one shard of nets is held in memory.
        bar = progress(total=len(files), initial=state["next"], desc=f"importing {kind}", unit="net")
        for pos in range(state["next"], len(files)):
            f = files[pos]
            label = tree.label(f)
            sd, acc = _read_net(label, tree.tensors(f))
            found = _content_type(sd)
            if found != kind:
                raise ZooError(f"{label}: holds a {found} net, but this import is of {kind} nets "
                               f"(from {'-o model_type' if model_type else 'the folder names' if typed else files[0]})")
            weights, buffers, masks = _split_state(label, sd, base, kind)
            index = _net_index(f)
            if hp is not None and (index is None or index >= len(hp)):
                raise ZooError(f"{label}: no row for net {index} in {hp_label} ({len(hp)} rows; row i+1 is net i.pt)")
            flat = base.flatten(weights)
            if kind == "sparse_resnet8":
                masks = masks or frozen
                if not masks:
                    raise ZooError(f"{label}: a sparse_resnet8 net without mask buffers, and no upstream mask files "
                                   f"(masks/sparse_resnet8_*.pt) in {src}")
                fixed, values = _fixed_from_masks(label, masks, base, kappa)
                if frozen_fixed is not None and masks is not frozen:
                    if not (np.array_equal(fixed, frozen_fixed[0]) and np.array_equal(values, frozen_fixed[1])):
                        raise ZooError(f"{label}: its mask buffers disagree with upstream's mask files "
                                       f"(masks/sparse_resnet8_*.pt) in {src}")
                if fixed_ref is None:
                    fixed_ref, state["mask_ref"] = (fixed, values), f
                    layout = Layout.from_shapes([(t.name, t.shape, t.role) for t in base.tensors], fixed_mask=fixed)
                elif not (np.array_equal(fixed, fixed_ref[0]) and np.array_equal(values, fixed_ref[1])):
                    raise ZooError(f"{label}: its W-Asym masks differ from those of {state['mask_ref']}; "
                                   f"a zoo shares one set of fixed entries")
                flat = np.where(fixed, values, flat)
            buf = base.flatten_buffers(buffers) if base.buffers else None
            raw_nan = any(t.is_floating_point() and bool(t.isnan().any()) for t in sd.values())  # upstream's test
            if raw_nan or not np.isfinite(flat).all() or np.isnan(acc) or (buf is not None and not np.isfinite(buf).all()):
                state["dropped"].append(f)
            else:
                pending.append((f, flat, acc / 100.0, index, buf))
            bar.update(1)
            if len(pending) >= SHARD_SIZE:
                flush(pos + 1)
        flush(len(files))
        bar.close()
        if not writer.entries:
            raise ZooError(f"{src}: no {kind} nets with finite weights found among {len(files)} files")
        if kind == "sparse_resnet8":
            cfg = NetConfig(wasym=_infer_wasym(layout, fixed_ref[0], kappa))
        return writer.finish(
            name=name or f"lim2024-{kind.replace('_', '-')}", net=cfg.to_dict(), data={"name": "cifar10"},
            source={"kind": "import", "format": "lim2024", "path": str(src), "model_type": kind,
                    "mask_constant": kappa if kind == "sparse_resnet8" else None, "num_files": len(files),
                    "hparams": hp_label, "hparam_columns": list(HPARAMS) if hp is not None else [],
                    "dropped": state["dropped"],
                    "dropped_reason": "NaN weights or accuracy (as upstream's metanet/data_utils.py)",
                    **(source or {})})
