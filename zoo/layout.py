"""The layout of a weight space: one source of truth for flattening and views.

A :class:`Layout` is the ordered list of an architecture's parameter tensors
(name, shape, offset in the flat vector, role) plus, for W-Asymmetric nets, the
mask of entries that are fixed. Everything that turns a net into a vector and
back (store, reader, importers, metanets) goes through it, so the order of the
flat vector is defined in exactly one place.
"""
from __future__ import annotations

import json
import math
import numbers
import sys
from dataclasses import asdict, dataclass, field

import numpy as np

#: Roles a tensor can play. Metanet featurizers and W-Asym masks key on these.
ROLES = ("conv_weight", "linear_weight", "bias", "norm_weight", "norm_bias", "other")


@dataclass(frozen=True)
class TensorSpec:
    """One parameter tensor: where it lives in the flat vector and what it is."""

    name: str
    shape: tuple[int, ...]
    offset: int
    role: str

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def stop(self) -> int:
        return self.offset + self.size

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.stop)


def role_of(name: str, shape: tuple[int, ...], module_kind: str | None = None) -> str:
    """Guess a tensor's role from its name and shape (used for modules and imports)."""
    leaf = name.rsplit(".", 1)[-1]
    if module_kind in ("norm",):
        return "norm_weight" if leaf == "weight" else "norm_bias"
    if leaf == "bias":
        return "bias"
    if len(shape) == 4 or len(shape) == 3:
        return "conv_weight"
    if len(shape) == 2:
        return "linear_weight"
    if len(shape) == 1:
        return "norm_weight"
    return "other"


@dataclass(frozen=True)
class Layout:
    """Ordered parameter tensors of one architecture, and which entries are fixed.

    ``fixed_mask`` is a boolean vector over the flat parameter vector, True where
    an entry is a fixed constant (W-Asymmetric nets); ``None`` for ordinary nets.
    ``buffers`` lists per-model non-parameter state (BatchNorm running stats),
    flattened into a separate vector with its own offsets.
    """

    tensors: tuple[TensorSpec, ...]
    fixed_mask: np.ndarray | None = field(default=None, compare=False)
    buffers: tuple[TensorSpec, ...] = ()

    # ---- construction -------------------------------------------------
    @classmethod
    def from_shapes(cls, items, fixed_mask=None, buffers=()) -> "Layout":
        """``items``: iterable of ``(name, shape, role)``; offsets are assigned in order."""
        return cls(_assign_offsets(items), _as_mask(fixed_mask), _assign_offsets(buffers))

    @classmethod
    def from_module(cls, module) -> "Layout":
        """Layout of a module's parameters in ``named_parameters`` order.

        Norm layers are recognised by type so their affine parameters get norm roles;
        W-Asym layers (having ``fixed_mask`` buffers) contribute to the fixed mask.
        """
        import torch  # deferred: a zoo's layout is read (zoo verify's child) without torch

        items, masks, buffers = [], [], []
        for mod_name, mod in module.named_modules():
            is_norm = isinstance(mod, (torch.nn.GroupNorm, torch.nn.BatchNorm2d, torch.nn.LayerNorm))
            for p_name, p in mod.named_parameters(recurse=False):
                name = f"{mod_name}.{p_name}" if mod_name else p_name
                shape = tuple(p.shape)
                items.append((name, shape, role_of(name, shape, "norm" if is_norm else None)))
                m = getattr(mod, "fixed_mask", None)
                masks.append(m.reshape(-1).cpu().numpy().astype(bool) if (m is not None and p_name == "weight")
                             else np.zeros(p.numel(), bool))
            if isinstance(mod, torch.nn.BatchNorm2d) and mod.track_running_stats:
                for b_name in ("running_mean", "running_var"):
                    buffers.append((f"{mod_name}.{b_name}", tuple(getattr(mod, b_name).shape), "other"))
        mask = np.concatenate(masks) if masks else np.zeros(0, bool)
        return cls.from_shapes(items, mask if mask.any() else None, buffers)

    # ---- sizes ----------------------------------------------------------
    @property
    def num_params(self) -> int:
        return self.tensors[-1].stop if self.tensors else 0

    @property
    def num_buffers(self) -> int:
        return self.buffers[-1].stop if self.buffers else 0

    @property
    def num_fixed(self) -> int:
        return 0 if self.fixed_mask is None else int(self.fixed_mask.sum())

    @property
    def num_trainable(self) -> int:
        return self.num_params - self.num_fixed

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    def __getitem__(self, name: str) -> TensorSpec:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"no tensor named {name!r} in layout; known: {', '.join(self.names)}")

    def __len__(self) -> int:
        return len(self.tensors)

    # ---- views ----------------------------------------------------------
    @property
    def trainable_index(self) -> np.ndarray:
        """Indices into the flat vector of the entries that are trained (not fixed)."""
        if self.fixed_mask is None:
            return np.arange(self.num_params)
        return np.flatnonzero(~self.fixed_mask)

    def trainable_layout(self) -> "Layout":
        """Layout of the trainable-only vector: tensors keep their names, shapes become
        ``(n_trainable_entries,)`` when some of their entries are fixed."""
        if self.fixed_mask is None:
            return self
        items = []
        for t in self.tensors:
            n = int((~self.fixed_mask[t.slice]).sum())
            if n:
                items.append((t.name, t.shape if n == t.size else (n,), t.role))
        return Layout.from_shapes(items)

    def flatten(self, tensors: dict) -> np.ndarray:
        """Dict name -> array/tensor (e.g. a state_dict) -> flat float32 vector."""
        out = np.empty(self.num_params, np.float32)
        for t in self.tensors:
            if t.name not in tensors:
                raise KeyError(f"missing tensor {t.name!r} (layout expects {t.shape})")
            v = tensors[t.name]
            v = v.detach().cpu().numpy() if _is_tensor(v) else np.asarray(v)
            if tuple(v.shape) != t.shape:
                raise ValueError(f"tensor {t.name!r} has shape {tuple(v.shape)}, layout expects {t.shape}")
            out[t.slice] = v.reshape(-1)
        return out

    def unflatten(self, vec) -> dict:
        """Flat vector(s) ``[..., P]`` -> dict name -> tensor ``[..., *shape]`` (views, no copy)."""
        lead = tuple(vec.shape[:-1])
        if vec.shape[-1] != self.num_params:
            raise ValueError(f"vector has {vec.shape[-1]} entries, layout has {self.num_params}")
        return {t.name: vec[..., t.slice].reshape(lead + t.shape) for t in self.tensors}

    def flatten_buffers(self, tensors: dict) -> np.ndarray:
        return Layout(self.buffers).flatten(tensors) if self.buffers else np.zeros(0, np.float32)

    def unflatten_buffers(self, vec) -> dict:
        return Layout(self.buffers).unflatten(vec) if self.buffers else {}

    # ---- serialisation --------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-able description (the fixed mask is stored separately, as an array)."""
        return {
            "tensors": [dict(asdict(t), shape=list(t.shape)) for t in self.tensors],
            "buffers": [dict(asdict(t), shape=list(t.shape)) for t in self.buffers],
            "num_params": self.num_params,
            "num_trainable": self.num_trainable,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict, fixed_mask=None) -> "Layout":
        def whole(v) -> bool:
            return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) and v >= 0

        def specs(rows):
            out = []
            for r in rows:  # read from files: every field checked, so offsets and slices are whole numbers
                if not (isinstance(r["name"], str) and isinstance(r["shape"], (list, tuple))
                        and all(map(whole, r["shape"]))
                        and whole(r["offset"]) and r["role"] in ROLES):
                    raise ValueError(f"tensor {str(r.get('name'))[:60]!r}: needs a name, a shape of whole numbers, "
                                     f"a whole offset and a role ({', '.join(ROLES)})")
                out.append(TensorSpec(r["name"], tuple(int(s) for s in r["shape"]), int(r["offset"]), r["role"]))
            return tuple(out)

        lay = cls(specs(d["tensors"]), _as_mask(fixed_mask), specs(d.get("buffers", [])))
        _check_contiguous(lay.tensors)
        _check_contiguous(lay.buffers)
        if lay.fixed_mask is not None and lay.fixed_mask.shape != (lay.num_params,):
            raise ValueError(f"fixed mask has {lay.fixed_mask.shape[0]} entries, layout has {lay.num_params}")
        return lay

    @classmethod
    def from_json(cls, s: str, fixed_mask=None) -> "Layout":
        return cls.from_dict(json.loads(s), fixed_mask)

    def same_tensors(self, other: "Layout") -> bool:
        return self.tensors == other.tensors and self.buffers == other.buffers


def _assign_offsets(items) -> tuple[TensorSpec, ...]:
    out, off = [], 0
    for name, shape, role in items:
        if role not in ROLES:
            raise ValueError(f"tensor {name!r}: unknown role {role!r}; allowed: {', '.join(ROLES)}")
        shape = tuple(int(s) for s in shape)
        out.append(TensorSpec(name, shape, off, role))
        off += math.prod(shape)
    return tuple(out)


def _check_contiguous(specs):
    off = 0
    for t in specs:
        if t.offset != off:
            raise ValueError(f"layout tensor {t.name!r} starts at {t.offset}, expected {off}")
        off = t.stop


def _as_mask(m):
    return None if m is None else np.asarray(m, dtype=bool).reshape(-1)


def _is_tensor(v) -> bool:
    """A torch tensor, told without importing torch (a caller holding one has imported it)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(v, torch.Tensor)
