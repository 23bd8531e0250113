"""StatNN metanet (Unterthiner et al. 2020): an MLP on per-tensor weight statistics.

Statistics of a tensor do not change when its entries are permuted, so StatNN is
invariant to permuting the hidden units of a standard net."""
from __future__ import annotations

import torch
from torch import nn

from .data import InputInfo
from .registry import register


@register("statnn")
class StatNN(nn.Module):
    """``[B, T, 7]`` statistics -> ``[B]``.

    Linear(7T, 256)+ReLU+LayerNorm -> Linear(256, 256)+ReLU+LayerNorm -> Linear(256, 1).
    Features are standardised with the training set's mean and std (:meth:`prepare`),
    because variances and maxima of different tensors differ by orders of magnitude."""

    description = "MLP on 7 statistics per parameter tensor (Unterthiner et al. 2020)"
    view = "stats"

    def __init__(self, info: InputInfo, hidden: int = 256):
        super().__init__()
        d = info.num_tensors * info.num_stats
        self.register_buffer("shift", torch.zeros(d))
        self.register_buffer("scale", torch.ones(d))
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.LayerNorm(hidden),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.LayerNorm(hidden),
                                 nn.Linear(hidden, 1))

    @torch.no_grad()
    def prepare(self, train_features: torch.Tensor) -> None:
        """Set the standardisation from the training nets' statistics ``[N, T, 7]``."""
        f = train_features.flatten(1).to(self.shift.device)
        self.shift.copy_(f.mean(0))
        self.scale.copy_(f.std(0, unbiased=False).clamp_min(1e-8))

    def forward(self, x):
        return self.net((x.flatten(1) - self.shift) / self.scale).squeeze(-1)
