"""DeepSets metanet: the parameters of a net as a set of scalars.

Mean-pooling makes the prediction invariant to *any* permutation of the parameters,
in particular to permuting the hidden units of a standard net."""
from __future__ import annotations

import torch
from einops import rearrange, reduce
from torch import nn

from ..data import InputInfo
from ._registry import register


class PooledReLU(torch.autograd.Function):
    """``sum_d relu(xr[b,d]*u + r[b,d]*v + w)`` over d, ``[b, d] -> [b, h]``, in chunks of d.

    Neither pass keeps the ``[b, d, h]`` pre-activations: the forward sums each chunk and
    drops it; the backward recomputes a chunk's ReLU mask and reduces it straight into the
    gradients of xr, r (both ``[b, d]``) and of the three ``[h]`` rows of ``mix``. That is
    one recomputation of a single product instead of checkpointing's re-run of the whole
    forward graph, and memory ``b * chunk * h`` whatever d."""

    @staticmethod
    def forward(ctx, xr, r, mix, chunk: int):
        ctx.save_for_backward(xr, r, mix)
        ctx.chunk = chunk
        u, v, w = mix
        out = xr.new_zeros(xr.shape[0], mix.shape[1])
        for a in range(0, xr.shape[1], chunk):
            z = xr[:, a:a + chunk, None] * u + r[:, a:a + chunk, None] * v + w
            out += z.relu_().sum(1)
        return out

    @staticmethod
    def backward(ctx, grad):
        xr, r, mix = ctx.saved_tensors
        u, v, w = mix
        g_xr, g_r, g_mix = torch.empty_like(xr), torch.empty_like(r), torch.zeros_like(mix)
        for a in range(0, xr.shape[1], ctx.chunk):
            xc, rc = xr[:, a:a + ctx.chunk, None], r[:, a:a + ctx.chunk, None]
            dz = ((xc * u + rc * v + w) > 0) * grad[:, None, :]  # [b, c, h]
            g_xr[:, a:a + ctx.chunk] = dz @ u
            g_r[:, a:a + ctx.chunk] = dz @ v
            g_mix[0] += torch.einsum("bch,bc->h", dz, xc[..., 0])
            g_mix[1] += torch.einsum("bch,bc->h", dz, rc[..., 0])
            g_mix[2] += dz.sum((0, 1))
        return g_xr, g_r, g_mix, None


@register("deepsets")
class DeepSets(nn.Module):
    """``[B, D]`` flat vector -> ``[B]``.

    phi = Linear(1,64)+LayerNorm+ReLU on each scalar; mean over the D scalars;
    rho = two [Linear(64,64)+LayerNorm+ReLU] then Linear(64,1).

    ``max_elements`` bounds the ``[B, d, 64]`` block of pre-activations that exists at any
    moment (forward or backward; see :class:`PooledReLU`). Default: 2^28 on GPUs, 2^22 on
    the CPU, where 16 MB chunks that stay in cache run faster than one big tensor."""

    description = "every scalar parameter a set element; invariant to any parameter permutation"
    view = "vector"

    def __init__(self, info: InputInfo, hidden: int = 64, max_elements: int | None = None):
        super().__init__()
        self.max_elements = max_elements
        self.phi = nn.Sequential(nn.Linear(1, hidden), nn.LayerNorm(hidden), nn.ReLU())
        self.rho = nn.Sequential(nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def _pool_sum(self, x, chunk: int | None = None):
        """Sum over scalars of phi(x), ``[b, d] -> [b, h]``, without LayerNorm's passes.

        For a scalar x, Linear(1,h) gives a*x + b; centred, A*x + B (A = a - mean a,
        B = b - mean b); its variance over channels is a quadratic in x. So
        LayerNorm(a*x + b) = (gamma*A) * x*r + (gamma*B) * r + beta with
        r = 1/sqrt(var(x) + eps): a rank-3 product, then ReLU, summed in chunks by
        :class:`PooledReLU`. Exactly ``self.phi`` (tested)."""
        lin, norm = self.phi[0], self.phi[1]
        a, b = lin.weight[:, 0], lin.bias
        A, B = a - a.mean(), b - b.mean()
        var = (A * A).mean() * x * x + 2 * (A * B).mean() * x + (B * B).mean()
        r = torch.rsqrt(var + norm.eps)
        mix = torch.stack([norm.weight * A, norm.weight * B, norm.bias])  # [3, h]
        return PooledReLU.apply(x * r, r, mix, chunk or x.shape[1])

    def phi_reference(self, x):
        """``[b, d] -> [b, h]``: the same sum computed literally with ``self.phi``."""
        return reduce(self.phi(rearrange(x, "b d -> b d 1")), "b d h -> b h", "sum")

    def forward(self, x):
        b, d = x.shape
        budget = self.max_elements or (1 << 22 if x.device.type == "cpu" else 1 << 28)
        chunk = max(1, budget // (b * self.phi[0].out_features))
        return rearrange(self.rho(self._pool_sum(x, chunk) / d), "b 1 -> b")
