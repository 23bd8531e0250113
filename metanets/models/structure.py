"""What an input net's Layout says about its structure: plain chains and our ResNets.

NFN and the graph metanet need more than a flat vector: which tensors feed which,
where the residual connections are. A :class:`~zoo.layout.Layout` holds names,
shapes and roles only, so the structure is recognised here, for two families:

* a *plain chain* — conv/linear weights, each optionally followed by its bias and a
  norm layer's weight and bias, each layer's input size the previous layer's output
  size (conv -> dense through global average pooling, or through a flatten when the
  dense input size is a multiple of the channels): the Small CNN Zoo's CNN, MLPs,
  imported CNNs;
* metazoo's CIFAR ResNets (names ``conv1``, ``layer{s}.{b}.conv{1,2}``, ``shortcut_conv``,
  ``fc``; :class:`zoo.nets.ResNet`).

Anything else is refused with the reason, so a metanet never reads a net it misunderstands.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from zoo.layout import Layout, TensorSpec

WEIGHT_ROLES = ("conv_weight", "linear_weight")


@dataclass(frozen=True)
class Layer:
    """One conv/linear layer: its weight, and the bias and norm parameters of its outputs."""

    weight: TensorSpec
    bias: TensorSpec | None = None
    norm_weight: TensorSpec | None = None
    norm_bias: TensorSpec | None = None

    @property
    def n_out(self) -> int:
        return self.weight.shape[0]

    @property
    def n_in(self) -> int:
        return self.weight.shape[1]

    @property
    def kernel(self) -> int:
        """Entries per (output, input) pair: k*k for a conv, 1 for a linear layer."""
        return self.weight.size // (self.n_out * self.n_in)


def _group_layers(layout: Layout) -> tuple[list[Layer], str | None]:
    """Weights with the bias / norm tensors that follow them; an error text if something is odd."""
    layers: list[dict] = []
    for t in layout.tensors:
        if t.role in WEIGHT_ROLES:
            if len(t.shape) < 2:
                return [], f"tensor {t.name!r} has shape {t.shape}, not a weight matrix or kernel"
            layers.append({"weight": t})
        elif t.role in ("bias", "norm_weight", "norm_bias"):
            if not layers or t.shape != (layers[-1]["weight"].shape[0],):
                return [], f"tensor {t.name!r} ({t.role}, shape {t.shape}) does not belong to a preceding layer"
            key = "bias" if t.role == "bias" else t.role
            if key in layers[-1]:
                return [], f"layer {layers[-1]['weight'].name!r} has two {key} tensors"
            layers[-1][key] = t
        else:
            return [], f"tensor {t.name!r} has role {t.role!r}, which no structure here covers"
    return [Layer(**d) for d in layers], None


def plain_chain(layout: Layout) -> tuple[list[Layer] | None, str | None]:
    """``(layers, None)`` if the layout is a plain chain, else ``(None, reason)``."""
    if not len(layout):
        return None, "the layout has no tensors"
    residual = [t.name for t in layout.tensors if re.search(r"shortcut|downsample|residual", t.name)]
    if residual:
        return None, f"it has residual connections ({residual[0]}, ...)"
    layers, err = _group_layers(layout)
    if err:
        return None, err
    for prev, cur in zip(layers, layers[1:]):
        if cur.n_in != prev.n_out and not (prev.weight.role == "conv_weight" and cur.weight.role == "linear_weight"
                                           and cur.n_in % prev.n_out == 0):
            return None, (f"layer {cur.weight.name!r} takes {cur.n_in} inputs but {prev.weight.name!r} gives "
                          f"{prev.n_out} (not a chain: skip or residual connections?)")
    return layers, None


def has_norm(layers) -> bool:
    return any(layer.norm_weight is not None for layer in layers)


# ------------------------------------------------------------------ ResNet

_RESNET_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(conv1|conv2|shortcut_conv)\.weight$")


def is_resnet(layout: Layout) -> bool:
    names = set(layout.names)
    return "conv1.weight" in names and "fc.weight" in names and any(_RESNET_BLOCK.match(n) for n in names)


def resnet_blocks(layout: Layout):
    """``(stem, blocks, fc)`` for a metazoo ResNet layout: each block a dict with ``conv1``,
    ``conv2`` and optionally ``shortcut`` :class:`Layer` s, in execution order."""
    layers, err = _group_layers(layout)
    if err:
        raise ValueError(err)
    by_name = {lay.weight.name[: -len(".weight")]: lay for lay in layers}
    blocks = {}
    for name in by_name:
        m = re.match(r"^(layer\d+\.\d+)\.(conv1|conv2|shortcut_conv)$", name)
        if m:
            blocks.setdefault(m.group(1), {})[{"shortcut_conv": "shortcut"}.get(m.group(2), m.group(2))] = by_name[name]
    order = sorted(blocks, key=lambda k: tuple(int(x) for x in re.findall(r"\d+", k)))
    return by_name["conv1"], [blocks[k] for k in order], by_name["fc"]
