"""CIFAR-style ResNets: standard, W-Asymmetric and sigma-Asymmetric (FiGLU).

The architecture is written once, in :meth:`ResNet._run`, as a walk over named
layers that calls an *ops* object. :class:`PlainOps` runs the ordinary
``nn.Module`` layers (the reference, and what ``rebuild`` returns);
``zoo.generate.grouped.GroupedOps`` runs the same walk for M models at once. So a group
can never drift from the single net it claims to train.
"""
from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from ..errors import SpecError
from ..seeding import derived_seed
from .asym import AsymConv2d, AsymLinear, FiGLU, fixed_buffers, validate_wasym, weight_layers
from .config import NetConfig
from .family import Family

NORMS = ("groupnorm", "batchnorm")
ACTIVATIONS = ("relu", "figlu")


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


def build(cfg: NetConfig, seed: int | None = None, hp: dict | None = None) -> ResNet:
    """A ResNet for ``cfg``, its trainable initialisation drawn from ``seed`` (PyTorch's default
    initialisers under a forked RNG); a ResNet has no per-model ``hp``."""
    if seed is None:
        return ResNet(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ResNet(cfg)


def validate(cfg: NetConfig, prefix: str = "net") -> None:
    """Raise :class:`SpecError` naming the field for any out-of-range option."""
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
        net = ResNet(NetConfig(**{**asdict(cfg), "wasym": None, "activation": "relu"}))
        validate_wasym(cfg, weight_layers(cfg, net, input_layer="conv1"), prefix)


FAMILY = Family("resnet", "resnet (depth 8 = ResNet8, 20 = ResNet20, ...)", build, validate)
