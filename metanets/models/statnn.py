"""StatNN metanet (Unterthiner et al. 2020): an MLP on per-tensor weight statistics.

Statistics of a tensor do not change when its entries are permuted, so StatNN is
invariant to permuting the hidden units of a standard net.

``statnn`` is the paper's (cptq/asymmetric-networks ``metanet/train.py``): the raw
statistics, variance unbiased (``torch.var``'s default there), no input scaling.
``statnn-std`` standardises them with the training nets' mean and std first — a
variant of this project, not in the paper, that trains at more learning rates because
variances and maxima of different tensors differ by orders of magnitude."""
from __future__ import annotations

import torch
from torch import nn

from ..data import STATS, InputInfo
from ._registry import register


def unbiased_variance_factor(info: InputInfo) -> torch.Tensor:
    """``[T, 7]`` multipliers turning the stored population variance (``metanets.data``)
    into the unbiased one, ``n / (n - 1)`` for a tensor of ``n`` entries (1 if ``n`` = 1)."""
    f = torch.ones(info.num_tensors, info.num_stats)
    var = STATS.index("var")
    for i, t in enumerate(info.layout.tensors):
        f[i, var] = t.size / (t.size - 1) if t.size > 1 else 1.0
    return f


@register("statnn")
class StatNN(nn.Module):
    """``[B, T, 7]`` statistics -> ``[B]``, the paper's StatNN (raw statistics, unbiased variance).

    Linear(7T, 256)+ReLU+LayerNorm -> Linear(256, 256)+ReLU+LayerNorm -> Linear(256, 1)."""

    description = "MLP on 7 raw statistics per parameter tensor (Unterthiner et al. 2020; as in Lim et al.)"
    view = "stats"

    def __init__(self, info: InputInfo, hidden: int = 256):
        super().__init__()
        d = info.num_tensors * info.num_stats
        self.register_buffer("var_factor", unbiased_variance_factor(info).reshape(d))
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.LayerNorm(hidden),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.LayerNorm(hidden),
                                 nn.Linear(hidden, 1))

    def inputs(self, x):
        return x.flatten(1) * self.var_factor

    def forward(self, x):
        return self.net(self.inputs(x)).squeeze(-1)


@register("statnn-std")
class StatNNStd(StatNN):
    """StatNN on statistics standardised with the training nets' mean and std (not in the paper)."""

    description = "StatNN on standardised statistics (train-set mean/std; a variant, not the paper's)"

    def __init__(self, info: InputInfo, hidden: int = 256):
        super().__init__(info, hidden)
        d = info.num_tensors * info.num_stats
        self.register_buffer("shift", torch.zeros(d))
        self.register_buffer("scale", torch.ones(d))

    @torch.no_grad()
    def prepare(self, train_features: torch.Tensor) -> None:
        """Set the standardisation from the training nets' statistics ``[N, T, 7]``."""
        f = super().inputs(train_features.to(self.shift.device))
        self.shift.copy_(f.mean(0))
        self.scale.copy_(f.std(0, unbiased=False).clamp_min(1e-8))

    def inputs(self, x):
        return (super().inputs(x) - self.shift) / self.scale
