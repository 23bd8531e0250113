"""DeepSets metanet: the parameters of a net as a set of scalars.

Mean-pooling makes the prediction invariant to *any* permutation of the parameters,
in particular to permuting the hidden units of a standard net."""
from __future__ import annotations

import torch
import torch.utils.checkpoint
from einops import rearrange, reduce
from torch import nn

from .data import InputInfo
from .registry import register


@register("deepsets")
class DeepSets(nn.Module):
    """``[B, D]`` flat vector -> ``[B]``.

    phi = Linear(1,64)+LayerNorm+ReLU on each scalar; mean over the D scalars;
    rho = two [Linear(64,64)+LayerNorm+ReLU] then Linear(64,1).

    ``chunk`` bounds memory: phi runs on at most ``chunk`` scalars per net at a time
    (each chunk recomputed in the backward pass), since ``B * D * 64`` activations of a
    78k-parameter ResNet8 would not fit otherwise. The result is the same mean."""

    view = "vector"

    def __init__(self, info: InputInfo, hidden: int = 64, chunk: int = 16384):
        super().__init__()
        self.chunk = chunk
        self.phi = nn.Sequential(nn.Linear(1, hidden), nn.LayerNorm(hidden), nn.ReLU())
        self.rho = nn.Sequential(nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def _pool_sum(self, x):
        elems = rearrange(x, "b d -> b d 1")
        return reduce(self.phi(elems), "b d h -> b h", "sum")

    def forward(self, x):
        d = x.shape[-1]
        total = 0
        for a in range(0, d, self.chunk):
            part = x[:, a:a + self.chunk]
            if torch.is_grad_enabled() and d > self.chunk:
                total = total + torch.utils.checkpoint.checkpoint(self._pool_sum, part, use_reentrant=False)
            else:
                total = total + self._pool_sum(part)
        return rearrange(self.rho(total / d), "b 1 -> b")
