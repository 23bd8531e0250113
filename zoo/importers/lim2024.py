"""Importer for the zoos of Lim et al. (NeurIPS 2024), Zenodo record 13883507.

Upstream layout: one file per net, ``torch.save((state_dict, test_acc_percent))``, of a
CIFAR ResNet8 with GroupNorm(1, C). The paper's code names layers ``conv1``, ``bn1`` (or
``ln1``), ``layer{k}.0.conv1/bn1/conv2/bn2``, ``layer{k}.0.shortcut.0`` (1x1 conv) and
``.shortcut.1`` (its norm), ``linear``. W-Asymmetric nets carry, per conv/linear layer,
``<layer>.mask`` (1 = trained, 0 = fixed) and ``<layer>.normal_mask`` (N(0, 1) draws);
the weight the net computes with is ``W * mask + (1 - mask) * kappa * normal_mask`` with
kappa = 2. The masks were also frozen to files holding ``(mask, normal_mask)``; when the
state dicts lack them, put those files in a ``masks/`` folder named ``<layer>.pt``
(e.g. ``masks/layer1.0.conv1.pt``) and import with ``variant=wasym`` (without masks in
the state dict a net cannot tell which kind it is).

We store the *effective* weights (so fixed entries equal the stored fixed values exactly,
even where AdamW's decoupled weight decay nudged the raw upstream tensor), map names to
:class:`zoo.nets.ResNet`'s, and record the net as a :class:`~zoo.nets.NetConfig` so
``zoo.open(path).rebuild(i)`` returns a working module. Nets with NaN weights are dropped,
as in the paper; their files are listed in the manifest's ``source.dropped``.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import ZooError
from ..layout import Layout
from ..nets import NetConfig, ResNet, WAsym
from ..safety import load_tensors, unpacked
from ..store import ShardContent
from .common import SHARD_SIZE, ZooWriter

KAPPA = 2.0
VARIANTS = ("auto", "standard", "wasym")

_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.(conv1|conv2|bn1|bn2|ln1|ln2|shortcut\.0|shortcut\.1)\.(\w+)$")
_STEM = re.compile(r"^(conv1|bn1|ln1|linear)\.(\w+)$")
_OURS = {"conv1": "conv1", "conv2": "conv2", "bn1": "norm1", "ln1": "norm1", "bn2": "norm2", "ln2": "norm2",
         "shortcut.0": "shortcut_conv", "shortcut.1": "shortcut_norm", "linear": "fc"}


def our_name(key: str) -> tuple[str, str] | None:
    """Upstream state_dict key -> (our module name, leaf) or None if it is not a layer of ResNet8."""
    m = _BLOCK.match(key)
    if m:
        stage, block, layer, leaf = m.groups()
        return f"layer{stage}.{block}.{_OURS[layer]}", leaf
    m = _STEM.match(key)
    if m:
        layer, leaf = m.groups()
        return ("norm1" if layer in ("bn1", "ln1") else _OURS.get(layer, layer)), leaf
    return None


def _net_files(root: Path) -> list[Path]:
    files = [p for p in root.rglob("*.pt") if "masks" not in p.relative_to(root).parts]
    files += [p for p in root.rglob("*.pth") if "masks" not in p.relative_to(root).parts]
    return sorted(files, key=lambda p: _natural_key(str(p.relative_to(root))))


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _read_net(path: Path):
    obj = load_tensors(path)
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[0], dict)):
        raise ZooError(f"{path}: expected (state_dict, test_acc_percent), found {type(obj).__name__}"
                       f"{' of length ' + str(len(obj)) if isinstance(obj, (tuple, list)) else ''}")
    sd, acc = obj
    acc = float(acc.item() if isinstance(acc, torch.Tensor) else acc)
    if not (0.0 <= acc <= 100.0) and not np.isnan(acc):
        raise ZooError(f"{path}: test accuracy {acc!r} is not a percentage in [0, 100]")
    return sd, acc


def _split_state(path: Path, sd: dict, layout: Layout):
    """-> (weights by our name, masks by our module name {(mask, normal)})."""
    weights, masks = {}, {}
    for key, t in sd.items():
        mapped = our_name(key)
        if mapped is None:
            raise ZooError(f"{path}: unexpected tensor {key!r} for a ResNet8 of Lim et al. "
                           f"(expected conv1, bn1/ln1, layer{{1,2,3}}.0.*, linear)")
        mod, leaf = mapped
        if not isinstance(t, torch.Tensor):
            raise ZooError(f"{path}: entry {key!r} is a {type(t).__name__}, not a tensor")
        if leaf in ("mask", "normal_mask"):
            masks.setdefault(mod, {})[leaf] = t
        elif leaf in ("weight", "bias"):
            weights[f"{mod}.{leaf}"] = t
        else:
            raise ZooError(f"{path}: unexpected tensor {key!r} (leaf {leaf!r}; allowed weight, bias, mask, normal_mask)")
    for spec in layout.tensors:
        if spec.name not in weights:
            raise ZooError(f"{path}: missing tensor for {spec.name} (shape {spec.shape})")
        got = tuple(weights[spec.name].shape)
        if got != spec.shape:
            raise ZooError(f"{path}: tensor for {spec.name} has shape {got}, ResNet8 expects {spec.shape}")
    extra = set(weights) - set(layout.names)
    if extra:
        raise ZooError(f"{path}: tensors with no place in ResNet8: {', '.join(sorted(extra))}")
    return weights, masks


def _mask_files(root: Path, layout: Layout) -> dict:
    """Frozen mask files ``masks/<upstream layer>.pt`` holding ``(mask, normal_mask)``."""
    out = {}
    for p in sorted(root.rglob("masks/*.pt")):
        mapped = our_name(p.stem + ".weight")
        if mapped is None:
            raise ZooError(f"{p}: mask file name does not name a ResNet8 layer (e.g. layer1.0.conv1.pt)")
        obj = load_tensors(p)
        if not (isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj)):
            raise ZooError(f"{p}: expected a (mask, normal_mask) pair of tensors")
        out[mapped[0]] = {"mask": obj[0], "normal_mask": obj[1]}
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


def _infer_wasym(layout: Layout, fixed: np.ndarray) -> WAsym:
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
    return WAsym(n_fix=max(n_conv, 1), n_fix_linear=max(n_lin, 1), kappa=KAPPA,
                 mode="filters" if whole_filters else "entries")


def import_lim2024(src, out, *, variant: str = "auto", name: str | None = None, force: bool = False,
                   source: dict | None = None) -> dict:
    """Convert a folder or archive of upstream ``.pt`` files into a metazoo zoo at ``out``.

    ``variant``: ``standard`` keeps only nets without masks, ``wasym`` only W-Asym nets,
    ``auto`` (default) requires all nets to be of one kind."""
    if variant not in VARIANTS:
        raise ZooError(f"lim2024 option variant = {variant!r}; allowed: {', '.join(VARIANTS)}")
    with ZooWriter(out, force=force) as writer, unpacked(src, workdir=writer.out.parent) as root:
        files = _net_files(root)
        if not files:
            raise ZooError(f"{src}: no .pt files found (lim2024 expects one torch.save((state_dict, "
                           f"test_acc_percent)) file per net)")
        base = Layout.from_module(ResNet(NetConfig()))
        frozen = _mask_files(root, base)
        kinds, dropped = {}, []
        fixed_ref = first_fixed = layout = None
        pending: list[tuple[str, np.ndarray, float]] = []
        next_id = 0

        def flush():
            nonlocal next_id, pending
            if not pending:
                return
            ids = np.arange(next_id, next_id + len(pending))
            table = pd.DataFrame({
                "test_acc": np.array([a for _, _, a in pending], np.float64),
                "diverged": np.zeros(len(pending), bool),
                "source_file": np.array([r for r, _, _ in pending], dtype=object),
            })
            writer.add(ShardContent(ids=ids, weights={"final": np.stack([w for _, w, _ in pending])},
                                    table=table, layout=layout,
                                    fixed_values=fixed_ref[1] if fixed_ref is not None else None))
            next_id += len(pending)
            pending = []

        # Streamed: each file is read once and at most one shard of nets is held in memory.
        for f in files:
            sd, acc = _read_net(f)
            weights, masks = _split_state(f, sd, base)
            masks = masks or (frozen if variant == "wasym" else {})
            kind = "wasym" if masks else "standard"
            kinds.setdefault(kind, f)
            if variant != "auto" and kind != variant:
                continue
            if variant == "auto" and len(kinds) > 1:
                raise ZooError(f"{src}: holds both standard nets (e.g. {kinds['standard'].name}) and W-Asym nets "
                               f"(e.g. {kinds['wasym'].name}); pass variant=standard or variant=wasym")
            flat = base.flatten(weights)
            if masks:
                fixed, values = _fixed_from_masks(str(f), masks, base, KAPPA)
                if fixed_ref is None:
                    fixed_ref, first_fixed = (fixed, values), f
                elif not (np.array_equal(fixed, fixed_ref[0]) and np.array_equal(values, fixed_ref[1])):
                    raise ZooError(f"{f}: its W-Asym masks differ from those of {first_fixed.name}; "
                                   f"a zoo shares one set of fixed entries")
                flat = np.where(fixed, values, flat)
            rel = str(f.relative_to(root))
            if not np.isfinite(flat).all() or np.isnan(acc):
                dropped.append(rel)
                continue
            if layout is None:
                layout = Layout.from_shapes([(t.name, t.shape, t.role) for t in base.tensors],
                                            fixed_mask=fixed_ref[0] if fixed_ref is not None else None)
            pending.append((rel, flat, acc / 100.0))
            if len(pending) >= SHARD_SIZE:
                flush()
        flush()
        if layout is None:
            wanted = "" if variant == "auto" else f"{variant} "
            raise ZooError(f"{src}: no {wanted}nets with finite weights found among {len(files)} files")
        wasym_kind = fixed_ref is not None
        cfg = NetConfig(wasym=_infer_wasym(layout, fixed_ref[0]) if wasym_kind else None)
        return writer.finish(
            name=name or ("lim2024-wasym-resnet8" if wasym_kind else "lim2024-resnet8"),
            net=cfg.to_dict(), data={"name": "cifar10"},
            source={"kind": "import", "format": "lim2024", "path": str(src), "variant": variant,
                    "kappa": KAPPA if wasym_kind else None, "num_files": len(files),
                    "dropped": dropped, "dropped_reason": "non-finite weights or accuracy (as in the paper)",
                    **(source or {})})
