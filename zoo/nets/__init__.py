"""The nets of metazoo's zoos, one architecture family per module, found by name.

:data:`ARCHS` maps ``net.arch`` to its :class:`~zoo.nets.family.Family`: the CIFAR ResNets
(:mod:`zoo.nets.resnet`) and the Small CNN Zoo's CNN (:mod:`zoo.nets.smallcnn`). A new family
is a module with a ``FAMILY`` record and one line here. W-Asym and sigma-Asym building blocks
shared by all families live in :mod:`zoo.nets.asym`; :class:`NetConfig` in :mod:`zoo.nets.config`.
"""
from __future__ import annotations

from torch import nn

from ..errors import SpecError
from . import resnet, smallcnn
from .asym import (WASYM_MODES, AsymConv2d, AsymLinear, FiGLU, fixed_buffers, fixed_entries, validate_wasym,
                   weight_layers)
from .config import NetConfig, WAsym
from .family import Family, HParam
from .resnet import ACTIVATIONS, NORMS, BasicBlock, PlainOps, ResNet

__all__ = ["ACTIVATIONS", "ARCHS", "NORMS", "WASYM_MODES", "AsymConv2d", "AsymLinear", "BasicBlock", "Family", "FiGLU",
           "HParam", "NetConfig", "PlainOps", "ResNet", "WAsym", "build_net", "family", "fixed_buffers",
           "fixed_entries", "validate_net", "validate_wasym", "weight_layers"]

#: Architecture families by ``net.arch``.
ARCHS: dict[str, Family] = {f.name: f for f in (resnet.FAMILY, smallcnn.FAMILY)}


def family(arch: str, field: str = "net.arch") -> Family:
    """The family named ``arch``; a :class:`SpecError` naming ``field`` for an unknown one."""
    try:
        return ARCHS[arch]
    except (KeyError, TypeError):
        raise SpecError(field, arch, "allowed: " + ", ".join(f.summary for f in ARCHS.values())) from None


def build_net(cfg: NetConfig, seed: int | None = None, hp: dict | None = None) -> nn.Module:
    """A net for ``cfg``; its trainable initialisation is drawn from ``seed`` (fixed entries
    and FiGLU mixes come from ``cfg.asym_seed`` and are the same for every seed).

    ``hp``: the model's own hyper-parameters where the family has some (a smallcnn's
    activation, dropout and initialisation)."""
    return family(cfg.arch).build(cfg, seed, hp)


def validate_net(cfg: NetConfig, prefix: str = "net") -> None:
    """Raise :class:`SpecError` naming the field for any out-of-range option."""
    family(cfg.arch, f"{prefix}.arch").validate(cfg, prefix)
