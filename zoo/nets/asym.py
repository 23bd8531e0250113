"""W-Asymmetric and sigma-Asymmetric building blocks, shared by every architecture family.

W-Asym layers hold seeded fixed entries (``torch.where`` keeps them bit-identical to their
constants, with zero gradient); FiGLU is the sigma-Asym nonlinearity. The constants derive
from the zoo's ``asym_seed`` and the layer name, so every net of a zoo holds the same ones.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpecError
from ..seeding import derived_seed
from .config import NetConfig

WASYM_MODES = ("filters", "entries")


class AsymConv2d(nn.Conv2d):
    """Conv whose effective weight is ``where(fixed_mask, fixed_values, weight)``.

    ``torch.where`` (rather than M*W + (1-M)*F) keeps fixed entries bit-identical to F,
    and gives them exactly zero gradient."""

    def __init__(self, *args, fixed_mask=None, fixed_values=None, **kw):
        super().__init__(*args, **kw)
        self.register_buffer("fixed_mask", fixed_mask)
        self.register_buffer("fixed_values", fixed_values)

    def effective_weight(self):
        if self.fixed_mask is None:
            return self.weight
        return torch.where(self.fixed_mask, self.fixed_values, self.weight)

    def forward(self, x):
        return self._conv_forward(x, self.effective_weight(), self.bias)


class AsymLinear(nn.Linear):
    """Linear layer with the same fixed-entry mechanism as :class:`AsymConv2d`."""

    def __init__(self, *args, fixed_mask=None, fixed_values=None, **kw):
        super().__init__(*args, **kw)
        self.register_buffer("fixed_mask", fixed_mask)
        self.register_buffer("fixed_values", fixed_values)

    def effective_weight(self):
        if self.fixed_mask is None:
            return self.weight
        return torch.where(self.fixed_mask, self.fixed_values, self.weight)

    def forward(self, x):
        return F.linear(x, self.effective_weight(), self.bias)


class FiGLU(nn.Module):
    """sigma-Asymmetric nonlinearity: ``sigmoid(F x) * x`` with F a fixed 1x1 conv over channels."""

    def __init__(self, channels: int, scale: float, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        mix = torch.randn(channels, channels, 1, 1, generator=g) * (scale / channels ** 0.5)
        self.register_buffer("mix", mix)

    def forward(self, x):
        return torch.sigmoid(F.conv2d(x, self.mix)) * x


def fixed_entries(shape, n_fix: int, mode: str, kappa: float, seed: int):
    """Seeded mask (True = fixed) and fixed values for one weight of ``shape``.

    Conv ``[O, I, k, k]``: ``filters`` fixes min(n_fix, I) whole input filters per output
    channel (so a 3-channel stem with n_fix=8 is fully fixed, as in the paper);
    ``entries`` fixes n_fix of the I*k*k entries per output channel. Linear ``[O, I]``:
    n_fix entries per row."""
    g = torch.Generator().manual_seed(seed)
    out = shape[0]
    if len(shape) == 4 and mode == "filters":
        n_in = shape[1]
        chosen = torch.rand(out, n_in, generator=g).argsort(dim=1)[:, : min(n_fix, n_in)]
        mask = torch.zeros(out, n_in, dtype=torch.bool).scatter_(1, chosen, True)
        mask = mask[:, :, None, None].expand(shape).clone()
    else:
        fan_in = int(np.prod(shape[1:]))
        chosen = torch.rand(out, fan_in, generator=g).argsort(dim=1)[:, : min(n_fix, fan_in)]
        mask = torch.zeros(out, fan_in, dtype=torch.bool).scatter_(1, chosen, True).reshape(shape)
    values = torch.randn(shape, generator=g) * kappa
    return mask, torch.where(mask, values, torch.zeros(()))


def fixed_buffers(cfg: NetConfig, name: str, shape) -> dict:
    """The ``fixed_mask`` / ``fixed_values`` keyword arguments of an :class:`AsymConv2d` or
    :class:`AsymLinear` named ``name`` (none for a standard net).

    A conv fixes ``n_fix`` per output channel, a linear layer ``n_fix_linear`` per row; the
    seed derives from ``cfg.asym_seed`` and the layer name, so every net of a zoo (ResNet or
    smallcnn) holds the same constants."""
    w = cfg.wasym
    if w is None:
        return {}
    n_fix = w.n_fix if len(shape) == 4 else w.n_fix_linear
    mask, values = fixed_entries(shape, n_fix, w.mode, w.kappa, derived_seed(cfg.asym_seed, "wasym", name))
    return {"fixed_mask": mask, "fixed_values": values}


def validate_wasym(cfg: NetConfig, layers, prefix: str = "net") -> None:
    """Check ``cfg.wasym`` against the net's weight ``layers``: (name, fan_in, is_input, is_linear)."""
    w = cfg.wasym
    if w.mode not in WASYM_MODES:
        raise SpecError(f"{prefix}.wasym.mode", w.mode, f"allowed: {', '.join(WASYM_MODES)}")
    if not (w.kappa > 0):
        raise SpecError(f"{prefix}.wasym.kappa", w.kappa, "must be > 0")
    for field_name, n in (("n_fix", w.n_fix), ("n_fix_linear", w.n_fix_linear)):
        if n < 1:
            raise SpecError(f"{prefix}.wasym.{field_name}", n, "must be >= 1")
    # The input layer may be fully fixed (the paper's 3-channel stem with n_fix=8);
    # any other layer must keep at least one trainable entry per output unit.
    for name, fan_in, is_input, is_linear in layers:
        n = w.n_fix_linear if is_linear else w.n_fix
        if not is_input and n >= fan_in:
            fld = "n_fix_linear" if is_linear else "n_fix"
            raise SpecError(f"{prefix}.wasym.{fld}", n,
                            f"must be < the fan-in {fan_in} of layer '{name}' (allowed 1..{fan_in - 1})")


def weight_layers(cfg: NetConfig, net: nn.Module, input_layer: str):
    """(name, fan_in, is_input_layer, is_linear) of every conv/linear weight of ``net``, for
    :func:`validate_wasym` (the fan-in counts filters or entries as ``cfg.wasym.mode`` fixes them)."""
    mode = cfg.wasym.mode if cfg.wasym else "filters"
    out = []
    for name, mod in net.named_modules():
        if isinstance(mod, nn.Conv2d):
            fan_in = mod.in_channels if mode == "filters" else mod.weight[0].numel()
            out.append((name, fan_in, name == input_layer, False))
        elif isinstance(mod, nn.Linear):
            out.append((name, mod.in_features, False, True))
    return out
