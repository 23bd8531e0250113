"""MLP metanet (Lim et al. 2024): one hidden layer on the flat parameter vector."""
from __future__ import annotations

from torch import nn

from ..data import InputInfo
from ._registry import register


@register("mlp")
class MLP(nn.Module):
    """``[B, D]`` flat vector -> ``[B]``: Linear(D, 64) -> ReLU -> LayerNorm -> Linear(64, 1).

    Not invariant to anything: it must learn every permutation of a standard net
    separately, which is why it profits most from W-Asymmetric zoos."""

    description = "MLP on the flat parameter vector (Lim et al. 2024)"
    view = "vector"

    def __init__(self, info: InputInfo, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(info.num_inputs, hidden), nn.ReLU(), nn.LayerNorm(hidden),
                                 nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)
