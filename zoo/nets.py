"""CIFAR-style ResNets: standard, W-Asymmetric and sigma-Asymmetric (FiGLU).

The architecture is written once, in :meth:`ResNet._run`, as a walk over named
layers that calls an *ops* object. :class:`PlainOps` runs the ordinary
``nn.Module`` layers (the reference, and what ``rebuild`` returns);
``zoo.grouped.GroupedOps`` runs the same walk for M models at once. So a group
can never drift from the single net it claims to train.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import SpecError
from .seeding import derived_seed  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class WAsym:
    """W-Asymmetry: fixed random entries in every conv and linear weight.

    ``mode="filters"`` fixes ``n_fix`` whole input filters per output channel of a conv;
    ``mode="entries"`` fixes ``n_fix`` single entries per output channel. Linear layers fix
    ``n_fix_linear`` entries per row. Fixed values are ``kappa * N(0, 1)``.
    """

    n_fix: int = 8
    n_fix_linear: int = 8
    kappa: float = 2.0
    mode: str = "filters"


@dataclass(frozen=True)
class NetConfig:
    """Everything needed to build one net of a zoo (same for every model of the zoo)."""

    depth: int = 8
    width: float = 1.0
    norm: str = "groupnorm"
    activation: str = "relu"
    in_channels: int = 3
    num_classes: int = 10
    wasym: WAsym | None = None
    figlu_scale: float = 1.0
    asym_seed: int = 0
    #: "resnet" or "smallcnn" (Unterthiner et al. 2020; see :class:`SmallCNN`)
    arch: str = "resnet"
    #: smallcnn only: "valid" (upstream Keras default) or "same" (needed for 8x8 digits)
    padding: str = "valid"
    #: smallcnn only: average the input channels first (upstream's grayscale CIFAR-10 / SVHN)
    grayscale: bool = False

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6

    @property
    def widths(self) -> tuple[int, int, int]:
        return tuple(max(1, int(round(c * self.width))) for c in (16, 32, 64))

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.arch == "resnet":  # ResNet manifests and fingerprints stay as before smallcnn existed
            del d["arch"], d["padding"], d["grayscale"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NetConfig":
        d = dict(d)
        if d.get("wasym") is not None:
            d["wasym"] = WAsym(**d["wasym"])
        return cls(**d)


ARCHS = ("resnet", "smallcnn")
NORMS = ("groupnorm", "batchnorm")
ACTIVATIONS = ("relu", "figlu")
WASYM_MODES = ("filters", "entries")


# ---------------------------------------------------------------- layers

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


def fixed_buffers(cfg: "NetConfig", name: str, shape) -> dict:
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


# ---------------------------------------------------------------- the net

class BasicBlock(nn.Module):
    def __init__(self, make, c_in: int, c_out: int, stride: int, prefix: str):
        super().__init__()
        self.conv1 = make.conv(f"{prefix}.conv1", c_in, c_out, 3, stride)
        self.norm1 = make.norm(c_out)
        self.act1 = make.act(f"{prefix}.act1", c_out)
        self.conv2 = make.conv(f"{prefix}.conv2", c_out, c_out, 3, 1)
        self.norm2 = make.norm(c_out)
        self.act2 = make.act(f"{prefix}.act2", c_out)
        self.has_shortcut = stride != 1 or c_in != c_out
        if self.has_shortcut:
            self.shortcut_conv = make.conv(f"{prefix}.shortcut_conv", c_in, c_out, 1, stride)
            self.shortcut_norm = make.norm(c_out)


class _Maker:
    """Builds layers for a config, deriving each fixed tensor's seed from the layer name."""

    def __init__(self, cfg: NetConfig):
        self.cfg = cfg

    def conv(self, name, c_in, c_out, k, stride):
        return AsymConv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False,
                          **fixed_buffers(self.cfg, name, (c_out, c_in, k, k)))

    def linear(self, name, c_in, c_out):
        return AsymLinear(c_in, c_out, **fixed_buffers(self.cfg, name, (c_out, c_in)))

    def norm(self, c):
        return nn.GroupNorm(1, c) if self.cfg.norm == "groupnorm" else nn.BatchNorm2d(c)

    def act(self, name, c):
        if self.cfg.activation == "figlu":
            return FiGLU(c, self.cfg.figlu_scale, derived_seed(self.cfg.asym_seed, "figlu", name))
        return nn.ReLU()


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016, Sec. 4.2) with GroupNorm(1, C) by default.

    ResNet8 (depth 8) on 3x32x32 with 10 classes has 78,042 parameters."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        make = _Maker(cfg)
        w1, w2, w3 = cfg.widths
        self.conv1 = make.conv("conv1", cfg.in_channels, w1, 3, 1)
        self.norm1 = make.norm(w1)
        self.act1 = make.act("act1", w1)
        c_in = w1
        for s, (c, stride) in enumerate(zip((w1, w2, w3), (1, 2, 2)), start=1):
            blocks = []
            for b in range(cfg.blocks_per_stage):
                blocks.append(BasicBlock(make, c_in, c, stride if b == 0 else 1, f"layer{s}.{b}"))
                c_in = c
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
        self.fc = make.linear("fc", w3, cfg.num_classes)

    def forward(self, x):
        return self._run(x, PlainOps(self))

    def _run(self, x, ops):
        h = ops.act("act1", ops.norm("norm1", ops.conv("conv1", x)))
        for s in (1, 2, 3):
            for b, block in enumerate(getattr(self, f"layer{s}")):
                p = f"layer{s}.{b}"
                out = ops.act(f"{p}.act1", ops.norm(f"{p}.norm1", ops.conv(f"{p}.conv1", h)))
                out = ops.norm(f"{p}.norm2", ops.conv(f"{p}.conv2", out))
                if block.has_shortcut:
                    h = ops.norm(f"{p}.shortcut_norm", ops.conv(f"{p}.shortcut_conv", h))
                h = ops.act(f"{p}.act2", out + h)
        return ops.linear("fc", ops.pool(h))

    def effective_state(self) -> dict:
        """Parameters as the net uses them (fixed entries replaced by their constants)."""
        state = {}
        for name, mod in self.named_modules():
            for p_name, p in mod.named_parameters(recurse=False):
                full = f"{name}.{p_name}" if name else p_name
                eff = mod.effective_weight() if (p_name == "weight" and hasattr(mod, "effective_weight")) else p
                state[full] = eff.detach()
        return state

    def buffer_state(self) -> dict:
        return {f"{n}.{b}": getattr(m, b).detach() for n, m in self.named_modules()
                if isinstance(m, nn.BatchNorm2d) for b in ("running_mean", "running_var")}


class PlainOps:
    """Runs the walk with the net's own ``nn.Module`` layers."""

    def __init__(self, net: ResNet):
        self.mods = dict(net.named_modules())

    def conv(self, name, x):
        return self.mods[name](x)

    norm = act = linear = conv

    def pool(self, x):
        return x.mean(dim=(2, 3))


def build_net(cfg: NetConfig, seed: int | None = None, hp: dict | None = None) -> nn.Module:
    """A net for ``cfg``; its trainable initialisation is drawn from ``seed`` (fixed entries
    and FiGLU mixes come from ``cfg.asym_seed`` and are the same for every seed).

    A smallcnn takes its per-model activation, dropout and initialisation from ``hp``."""
    if cfg.arch == "smallcnn":
        from .smallcnn import build_smallcnn

        return build_smallcnn(cfg, seed, hp)
    if seed is None:
        return ResNet(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ResNet(cfg)


def weight_layers(cfg: NetConfig, net: nn.Module | None = None, input_layer: str = "conv1"):
    """(name, fan_in, is_input_layer, is_linear) of every conv/linear weight of ``net``
    (default: the ResNet of ``cfg``), for validation."""
    if net is None:
        net = ResNet(NetConfig(**{**asdict(cfg), "wasym": None, "activation": "relu"}))
    out = []
    for name, mod in net.named_modules():
        if isinstance(mod, nn.Conv2d):
            fan_in = mod.in_channels if _mode(cfg) == "filters" else mod.weight[0].numel()
            out.append((name, fan_in, name == input_layer, False))
        elif isinstance(mod, nn.Linear):
            out.append((name, mod.in_features, False, True))
    return out


def _mode(cfg):
    return cfg.wasym.mode if cfg.wasym else "filters"


def validate_net(cfg: NetConfig, prefix: str = "net") -> None:
    """Raise :class:`SpecError` naming the field for any out-of-range option."""
    if cfg.arch not in ARCHS:
        raise SpecError(f"{prefix}.arch", cfg.arch, f"allowed: {', '.join(ARCHS)}")
    if cfg.arch == "smallcnn":
        from .smallcnn import validate_smallcnn

        return validate_smallcnn(cfg, prefix)
    if cfg.depth < 8 or (cfg.depth - 2) % 6:
        raise SpecError(f"{prefix}.depth", cfg.depth, "must be 6n+2 with n >= 1 (8 = ResNet8, 20 = ResNet20)")
    if not (cfg.width > 0):
        raise SpecError(f"{prefix}.width", cfg.width, "must be > 0")
    if cfg.norm not in NORMS:
        raise SpecError(f"{prefix}.norm", cfg.norm, f"allowed: {', '.join(NORMS)}")
    if cfg.activation not in ACTIVATIONS:
        raise SpecError(f"{prefix}.activation", cfg.activation, f"allowed: {', '.join(ACTIVATIONS)}")
    if not (cfg.figlu_scale > 0):
        raise SpecError(f"{prefix}.figlu_scale", cfg.figlu_scale, "must be > 0")
    if cfg.wasym is not None:
        validate_wasym(cfg, weight_layers(cfg), prefix)


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
