"""DMC metanet (Eilertsen et al. 2020): a 1-D CNN sliding over the flat parameter vector."""
from __future__ import annotations

import torch
from torch import nn

from ..data import InputInfo
from ..errors import MetanetError
from ._registry import register

#: Output channels of the ten conv layers.
CHANNELS = (2, 4, 8, 16, 32, 64, 64, 64, 64, 64)
#: Layers (1-based) followed by max-pool 2: the first six, the 8th and the 10th.
POOL_AFTER = frozenset({1, 2, 3, 4, 5, 6, 8, 10})
KERNEL = 5


def output_length(length: int) -> int:
    """Positions left after the conv stack for an input vector of ``length`` entries."""
    for i in range(1, len(CHANNELS) + 1):
        length -= KERNEL - 1  # no padding
        if length < 1:
            return 0
        if i in POOL_AFTER:
            length //= 2
    return length


def min_length() -> int:
    """Shortest parameter vector the stack accepts (4092)."""
    n = 1
    while output_length(n) < 1:
        n += 1
    return n


def convs_fast(convs, x):
    """Run the conv stack; on CPU with PyTorch's native kernels instead of NNPACK and
    oneDNN, which for these 1-64 channel, very long 1-D convs are 3-8x slower (measured
    with scripts/bench_metanets.py). The backward pass follows the choice made here."""
    if x.device.type != "cpu":
        return convs(x)
    nnpack = torch.backends.nnpack.set_flags(False)[0]
    mkldnn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        return convs(x)
    finally:
        torch.backends.mkldnn.enabled = mkldnn
        torch.backends.nnpack.set_flags(nnpack)


@register("dmc")
class DMC(nn.Module):
    """``[B, D]`` flat vector -> ``[B]``.

    Ten Conv1d(kernel 5, no padding) layers, each ReLU then BatchNorm, channels
    1->2->4->8->16->32->64->64->64->64->64, max-pool 2 after layers 1-6, 8 and 10. The
    readout applies Linear(64,64)+LayerNorm+ReLU at every position, mean-pools positions,
    then Linear(64,64)+LayerNorm+ReLU and Linear(64,1)."""

    description = "1-D CNN over the flat parameter vector (Eilertsen et al. 2020)"
    view = "vector"

    def __init__(self, info: InputInfo):
        super().__init__()
        if output_length(info.num_inputs) < 1:
            raise MetanetError(f"dmc needs a parameter vector of at least {min_length()} entries "
                               f"(10 unpadded kernel-5 convs and 8 max-pools); this zoo gives {info.num_inputs}")
        layers, c_in = [], 1
        for i, c in enumerate(CHANNELS, start=1):
            layers += [nn.Conv1d(c_in, c, KERNEL), nn.ReLU(), nn.BatchNorm1d(c)]
            if i in POOL_AFTER:
                layers.append(nn.MaxPool1d(2))
            c_in = c
        self.convs = nn.Sequential(*layers)
        self.per_position = nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x):
        h = convs_fast(self.convs, x.unsqueeze(1))  # [B, 64, L]
        h = self.per_position(h.transpose(1, 2)).mean(dim=1)  # [B, 64]
        return self.head(h).squeeze(-1)
