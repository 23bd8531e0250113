"""The Small CNN Zoo's CNN (Unterthiner et al. 2020): the net and its family entry.

Three 3x3 convolutions with ``channels`` (16) filters and stride 2, each followed by the
activation and dropout, global average pooling, a dense layer. On one-channel images with
10 classes it has 4,970 parameters, named like an imported Small CNN Zoo (``conv2d``,
``conv2d_1``, ``conv2d_2``, ``dense``), so a generated and an imported zoo share one
:class:`~zoo.layout.Layout` and every metanet reads both.

Unlike the ResNet zoos, activation, dropout and initialisation are *per-model*
hyper-parameters here (as upstream), and so are the optimizers SGD, Adam and RMSProp
with Keras' defaults (upstream trains with ``tf.keras``). Its group trainer is
:mod:`zoo.generate.train_smallcnn`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpecError
from ..seeding import derived_seed
from .asym import AsymConv2d, AsymLinear, fixed_buffers, validate_wasym, weight_layers
from .config import NetConfig
from .family import Family, HParam

#: Per-model hyper-parameters a smallcnn spec adds to the trainer's (:data:`zoo.generate.spec.HPARAMS`).
HPARAMS = {
    "activation": HParam("str", "'relu' or 'tanh'", lambda v: v in ("relu", "tanh"), "relu"),
    "dropout": HParam("float", "in [0, 1)", lambda v: 0 <= v < 1, 0.0),
    "w_init": HParam("str", "one of " + ", ".join(("he_normal", "glorot_normal", "glorot_uniform", "orthogonal",
                                                    "random_normal", "truncated_normal")),
                     lambda v: v in INITS, "he_normal"),
    "init_std": HParam("float", "> 0", lambda v: v > 0, 0.05),
}
#: Keras initialisers upstream samples from; ``init_std`` is used by the last two only
#: (train_network.py sets ``stddev`` for RandomNormal / TruncatedNormal alone).
INITS = ("he_normal", "glorot_normal", "glorot_uniform", "orthogonal", "random_normal", "truncated_normal")
OPTIMIZERS = ("sgd", "adam", "rmsprop")
PADDINGS = ("valid", "same")
LAYERS = ("conv2d", "conv2d_1", "conv2d_2")
# Keras' truncated normal draws from N(0, s) cut at 2s, with s corrected so the result has std `std`.
_TRUNC_CORRECTION = 0.87962566103423978


def channels(cfg: NetConfig) -> int:
    return max(1, int(round(16 * cfg.width)))


def validate_smallcnn(cfg: NetConfig, prefix: str = "net") -> None:
    if cfg.padding not in PADDINGS:
        raise SpecError(f"{prefix}.padding", cfg.padding, f"allowed: {', '.join(PADDINGS)}")
    if not (cfg.width > 0):
        raise SpecError(f"{prefix}.width", cfg.width, "must be > 0 (16 * width filters per conv)")
    if cfg.activation not in ("relu", "tanh"):
        raise SpecError(f"{prefix}.activation", cfg.activation,
                        "allowed for smallcnn: relu, tanh (the per-model hparams.activation overrides it)")
    if cfg.wasym is not None:
        net = SmallCNN(NetConfig(**{**cfg.__dict__, "wasym": None}))
        validate_wasym(cfg, weight_layers(cfg, net, input_layer=LAYERS[0]), prefix)


def output_size(size: int, padding: str) -> int:
    """Spatial size after one 3x3 stride-2 conv."""
    return (size + 1) // 2 if padding == "same" else (size - 3) // 2 + 1


def check_input_size(cfg: NetConfig, hw: tuple[int, int]) -> None:
    """The three convs must leave at least one pixel (``valid`` needs >= 15x15 inputs)."""
    s = min(hw)
    for _ in LAYERS:
        s = output_size(s, cfg.padding)
        if s < 1:
            raise SpecError("net.padding", cfg.padding, f"{hw[0]}x{hw[1]} images are too small for three "
                            "unpadded 3x3 stride-2 convs (need >= 15x15); use padding = 'same'")


def padding_px(cfg: NetConfig) -> int:
    # Keras 'same' with stride 2 on even sizes pads (0 before, 1 after); we pad 1 both sides.
    # Shapes match, values at the border differ: fine for generated zoos, documented in the preset.
    return 1 if cfg.padding == "same" else 0


class SmallCNN(nn.Module):
    """conv(3x3, stride 2) -> act -> dropout, three times; global average pool; dense.

    With ``cfg.wasym`` it is W-Asymmetric exactly as the ResNets are (:func:`zoo.nets.fixed_buffers`):
    each conv fixes ``n_fix`` input filters (or entries) per output channel, the dense layer
    ``n_fix_linear`` entries per row, to seeded constants shared by the whole zoo."""

    def __init__(self, cfg: NetConfig, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        c, c_in = channels(cfg), 1 if cfg.grayscale else cfg.in_channels
        self.grayscale = cfg.grayscale
        for name in LAYERS:
            setattr(self, name, AsymConv2d(c_in, c, 3, stride=2, padding=padding_px(cfg),
                                           **fixed_buffers(cfg, name, (c, c_in, 3, 3))))
            c_in = c
        self.dense = AsymLinear(c, cfg.num_classes, **fixed_buffers(cfg, "dense", (cfg.num_classes, c)))
        self.activation, self.p = activation, float(dropout)

    def forward(self, x):
        act = torch.tanh if self.activation == "tanh" else F.relu
        if self.grayscale:
            x = x.mean(dim=1, keepdim=True)
        for name in LAYERS:
            x = F.dropout(act(getattr(self, name)(x)), self.p, self.training)
        return self.dense(x.mean(dim=(2, 3)))


def _init_(w: torch.Tensor, kind: str, std: float, g: torch.Generator) -> None:
    """Keras' initialiser ``kind`` on a PyTorch-ordered weight (fans as Keras computes them)."""
    fan_in = w[0].numel()
    fan_out = w.shape[0] * (w[0, 0].numel() if w.dim() == 4 else 1)
    if kind in ("he_normal", "glorot_normal", "truncated_normal"):
        s = {"he_normal": math.sqrt(2 / fan_in), "glorot_normal": math.sqrt(2 / (fan_in + fan_out)),
             "truncated_normal": std}[kind]
        s = s / _TRUNC_CORRECTION if kind != "truncated_normal" else s
        nn.init.trunc_normal_(w, 0.0, s, -2 * s, 2 * s, generator=g)
    elif kind == "glorot_uniform":
        lim = math.sqrt(6 / (fan_in + fan_out))
        nn.init.uniform_(w, -lim, lim, generator=g)
    elif kind == "orthogonal":
        nn.init.orthogonal_(w.view(w.shape[0], -1), generator=g)
    elif kind == "random_normal":
        nn.init.normal_(w, 0.0, std, generator=g)
    else:
        raise ValueError(f"unknown init {kind!r}; allowed: {', '.join(INITS)}")


def build_smallcnn(cfg: NetConfig, seed: int | None = None, hp: dict | None = None) -> SmallCNN:
    """A smallcnn with model hyper-parameters ``hp`` (activation, dropout, w_init, init_std);
    kernels drawn from ``seed`` with the Keras initialiser, biases zero (upstream b_init)."""
    hp = {k: v.default for k, v in HPARAMS.items()} | {"activation": cfg.activation} | (hp or {})
    net = SmallCNN(cfg, hp["activation"], hp["dropout"])
    g = torch.Generator().manual_seed(0 if seed is None else derived_seed(seed, "init"))
    with torch.no_grad():
        for mod in (*(getattr(net, n) for n in LAYERS), net.dense):
            _init_(mod.weight, hp["w_init"], float(hp["init_std"]), g)
            mod.bias.zero_()
    return net


FAMILY = Family("smallcnn", "smallcnn (the Small CNN Zoo's CNN)", build_smallcnn, validate_smallcnn,
                hparams=HPARAMS, hparam_defaults={"optimizer": "sgd", "momentum": 0.0}, optimizers=OPTIMIZERS,
                config_fields=("padding", "grayscale"),
                # a group also shares its activation: no model computes both tanh and relu
                group_keys=("activation",),
                rebuild_hparams=("activation", "dropout"), check_input_size=check_input_size,
                # its trainer counts optimizer steps per group, not per model, so a refilled
                # slot would start Adam mid-count
                refill=False,
                # 4,970 parameters: memory is never the limit
                group_size=(8, 64))
