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

    ``max_elements`` bounds the ``[B, d, 64]`` activations phi materialises at once: above
    it, phi runs on chunks of scalars, each recomputed in the backward pass instead of
    stored. The result is the same mean. Default: 2^28 on GPUs (a batch of 128
    78k-parameter ResNet8s is 640M floats), 2^22 on CPU, where 16 MB chunks that stay
    in cache run about 2x faster than one big tensor, recomputation included."""

    description = "every scalar parameter a set element; invariant to any parameter permutation"
    view = "vector"

    def __init__(self, info: InputInfo, hidden: int = 64, max_elements: int | None = None):
        super().__init__()
        self.max_elements = max_elements
        self.phi = nn.Sequential(nn.Linear(1, hidden), nn.LayerNorm(hidden), nn.ReLU())
        self.rho = nn.Sequential(nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def _pool_sum(self, x):
        """Sum over scalars of phi(x), ``[b, d] -> [b, h]``, without LayerNorm's passes.

        For a scalar x, Linear(1,h) gives a*x + b; centred, A*x + B (A = a - mean a,
        B = b - mean b); its variance over channels is a quadratic in x. So
        LayerNorm(a*x + b) = (gamma*A) * x*r + (gamma*B) * r + beta with
        r = 1/sqrt(var(x) + eps): one [b, d, 3] x [3, h] product, then ReLU. Exactly
        ``self.phi`` (tested), about 1.5x faster and with one [b, d, h] tensor instead of four."""
        lin, norm = self.phi[0], self.phi[1]
        a, b = lin.weight[:, 0], lin.bias
        A, B = a - a.mean(), b - b.mean()
        var = (A * A).mean() * x * x + 2 * (A * B).mean() * x + (B * B).mean()
        r = torch.rsqrt(var + norm.eps)
        coords = torch.stack([x * r, r, torch.ones_like(r)], dim=-1)  # [b, d, 3]
        mix = torch.stack([norm.weight * A, norm.weight * B, norm.bias])  # [3, h]
        return reduce(torch.relu(coords @ mix), "b d h -> b h", "sum")

    def phi_reference(self, x):
        """``[b, d] -> [b, h]``: the same sum computed literally with ``self.phi``."""
        return reduce(self.phi(rearrange(x, "b d -> b d 1")), "b d h -> b h", "sum")

    def forward(self, x):
        b, d = x.shape
        budget = self.max_elements or (1 << 22 if x.device.type == "cpu" else 1 << 28)
        chunk = max(1, budget // (b * self.phi[0].out_features))
        if d <= chunk:
            total = self._pool_sum(x)
        elif torch.is_grad_enabled():
            total = sum(torch.utils.checkpoint.checkpoint(self._pool_sum, x[:, a:a + chunk], use_reentrant=False)
                        for a in range(0, d, chunk))
        else:
            total = sum(self._pool_sum(x[:, a:a + chunk]) for a in range(0, d, chunk))
        return rearrange(self.rho(total / d), "b 1 -> b")
