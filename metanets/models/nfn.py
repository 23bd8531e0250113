"""Neural functionals (Zhou et al., NeurIPS 2023): NFN-NP and NFN-HNP, invariant versions.

The weights of a plain CNN/MLP with layers ``i = 1..L`` are tensors ``W_i [n_i, n_{i-1}]``
(a conv kernel's k*k entries are feature channels of its entry) and biases ``b_i [n_i]``.
Permuting the hidden neurons (channels) of a layer permutes the rows of ``W_i``, the
entries of ``b_i`` and the columns of ``W_{i+1}`` and leaves the function unchanged.
An NF layer maps such weights to weights of the same shape (with ``C`` channels) and
commutes with every such permutation: each output entry is a linear map of its own
entry, of row, column and full means of its own tensor, of the neighbouring tensors'
means over the shared neuron axis, and of all tensors' global means. Stacked NF layers
with pointwise ReLUs, then mean pooling over the permuted axes and an MLP, give a
prediction invariant to the permutations.

* ``nfn-np`` treats *every* neuron axis as permutable, inputs and outputs included;
* ``nfn-hnp`` permutes hidden neurons only: the input axis of the first layer and the
  output axis of the last are fixed, so they are mixed by dense maps and kept in the
  readout (the HNP setting of the paper; this layer uses a subset of its full basis).

Our own implementation in a few einsums (the ``nfn`` package works on its own weight
container; mapping it onto :class:`~zoo.layout.Layout` would cost more than the layer).
Nets with residual connections or normalisation layers are refused (:meth:`unsupported`):
their symmetries are not the ones these layers assume.
"""
from __future__ import annotations

import torch
from torch import nn

from ..data import InputInfo
from ..errors import MetanetError
from ._registry import register
from .structure import has_norm, plain_chain


def chain_or_reason(info: InputInfo):
    layout = info.full_layout
    layers, reason = plain_chain(layout)
    if reason is None and has_norm(layers):
        reason = "it has normalisation layers"
    return layers, reason


class NFLayer(nn.Module):
    """One permutation-equivariant layer over a chain of ``L`` layers, ``c_in -> c_out`` channels."""

    def __init__(self, L: int, c_in: int, c_out: int, hnp: bool, n_first_in: int, n_last_out: int):
        super().__init__()
        self.L, self.hnp = L, hnp
        lin = lambda k: nn.Linear(k * c_in, c_out)  # noqa: E731
        # per layer: own entry; row-indexed terms (W row mean, b, next W's column mean);
        # column-indexed terms (W column mean, previous b, previous W's row mean); tensor mean
        self.w_self = nn.ModuleList(lin(1) for _ in range(L))
        self.w_row = nn.ModuleList(lin(3) for _ in range(L))
        self.w_col = nn.ModuleList(lin(3) for _ in range(L))
        self.b_self = nn.ModuleList(lin(3) for _ in range(L))  # b, W row mean, next W column mean
        self.glob_w = nn.Linear(2 * L * c_in, c_out)
        self.glob_b = nn.Linear(2 * L * c_in, c_out)
        if hnp:  # the fixed axes are mixed densely
            self.first_in = nn.Parameter(torch.randn(c_out, n_first_in, c_in, n_first_in) / (c_in * n_first_in) ** .5)
            self.last_out = nn.Parameter(torch.randn(c_out, n_last_out, c_in, n_last_out) / (c_in * n_last_out) ** .5)
            self.last_b = nn.Parameter(torch.randn(c_out, n_last_out, c_in, n_last_out) / (c_in * n_last_out) ** .5)

    def forward(self, W: list, b: list):
        """``W[i] [B, n_i, m_i, C]``, ``b[i] [B, n_i, C]`` -> the same with ``c_out`` channels."""
        L = self.L
        row = [w.mean(2) for w in W]  # [B, n_i, C]: mean over inputs
        col = [w.mean(1) for w in W]  # [B, m_i, C]: mean over outputs
        glob = torch.cat([w.mean((1, 2)) for w in W] + [x.mean(1) for x in b], -1)  # [B, 2LC]
        gw, gb = self.glob_w(glob), self.glob_b(glob)
        zeros_r = lambda i: torch.zeros_like(row[i])  # noqa: E731
        zeros_c = lambda i: torch.zeros_like(col[i])  # noqa: E731
        W2, b2 = [], []
        for i in range(L):
            nxt_col = col[i + 1] if i + 1 < L else zeros_r(i)  # next layer's inputs = our outputs
            prv_b = b[i - 1] if i > 0 else zeros_c(i)
            prv_row = row[i - 1] if i > 0 else zeros_c(i)
            r = self.w_row[i](torch.cat([row[i], b[i], nxt_col], -1))  # [B, n, c]
            c = self.w_col[i](torch.cat([col[i], prv_b, prv_row], -1))  # [B, m, c]
            w = self.w_self[i](W[i]) + r[:, :, None] + c[:, None] + gw[:, None, None]
            bb = self.b_self[i](torch.cat([b[i], row[i], nxt_col], -1)) + gb[:, None]
            if self.hnp and i == 0:
                w = w + torch.einsum("bnkc,dmck->bnmd", W[0], self.first_in)
            if self.hnp and i == L - 1:
                w = w + torch.einsum("bkmc,dnck->bnmd", W[i], self.last_out)
                bb = bb + torch.einsum("bkc,dnck->bnd", b[i], self.last_b)
            W2.append(w)
            b2.append(bb)
        return W2, b2


class _NFN(nn.Module):
    view = "full"
    hnp = False

    @classmethod
    def unsupported(cls, info: InputInfo) -> str | None:
        _, reason = chain_or_reason(info)
        if reason:
            return f"{cls.registry_name} needs a plain CNN/MLP (conv/linear layers with biases in a chain); {reason}"
        return None

    def __init__(self, info: InputInfo, hidden: int = 16, depth: int = 2, head: int = 64):
        super().__init__()
        reason = self.unsupported(info)
        if reason:
            raise MetanetError(reason)
        layers, _ = chain_or_reason(info)
        self.layers = layers
        self.L = L = len(layers)
        # per-tensor scale, set from the training nets (:meth:`prepare`): a scalar per tensor
        # keeps equivariance and puts kernels and biases of all layers on one scale
        self.register_buffer("w_scale", torch.ones(L))
        self.register_buffer("b_scale", torch.ones(L))
        self.embed_w = nn.ModuleList(nn.Linear(_feat_dim(layers, i), hidden) for i in range(L))
        self.embed_b = nn.ModuleList(nn.Linear(1, hidden) for _ in layers)
        n0, nL = layers[0].n_in, layers[-1].n_out
        self.nf = nn.ModuleList(NFLayer(L, hidden, hidden, self.hnp, n0, nL) for _ in range(depth))
        if self.hnp:
            d = hidden * (n0 + 2 * (L - 2) + 1 + 2 * nL) if L > 1 else hidden * (n0 + nL)
        else:
            d = 2 * L * hidden
        self.head = nn.Sequential(nn.Linear(d, head), nn.ReLU(), nn.LayerNorm(head), nn.Linear(head, 1))

    def _split(self, x):
        """Flat ``[B, P]`` -> per layer ``W [B, n_out, n_in, k]`` and ``b [B, n_out, 1]`` (scaled)."""
        W, b = [], []
        for i, lay in enumerate(self.layers):
            w = x[:, lay.weight.slice].reshape(len(x), lay.n_out, lay.n_in, -1) / self.w_scale[i]
            if i > 0 and lay.n_in != self.layers[i - 1].n_out:  # dense after a flatten: inputs per channel
                c = self.layers[i - 1].n_out
                w = w.reshape(len(x), lay.n_out, c, -1)
            W.append(w)
            bias = x[:, lay.bias.slice] / self.b_scale[i] if lay.bias is not None else x.new_zeros(len(x), lay.n_out)
            b.append(bias[..., None])
        return W, b

    @torch.no_grad()
    def prepare(self, train_features: torch.Tensor) -> None:
        x = train_features.float()
        for i, lay in enumerate(self.layers):
            self.w_scale[i] = x[:, lay.weight.slice].std().clamp_min(1e-8)
            if lay.bias is not None:
                self.b_scale[i] = x[:, lay.bias.slice].std().clamp_min(1e-8)

    def forward(self, x):
        W, b = self._split(x.float())
        W = [e(w) for e, w in zip(self.embed_w, W)]
        b = [e(v) for e, v in zip(self.embed_b, b)]
        for k, layer in enumerate(self.nf):
            W, b = layer(W, b)
            if k + 1 < len(self.nf):
                W, b = [torch.relu(w) for w in W], [torch.relu(v) for v in b]
        if self.hnp:
            parts = [W[0].mean(1).flatten(1)]  # first layer: input axis fixed, keep it
            parts += [t for i in range(1, self.L - 1) for t in (W[i].mean((1, 2)), b[i].mean(1))]
            parts += [b[0].mean(1)] if self.L > 1 else []
            parts += [W[-1].mean(2).flatten(1), b[-1].flatten(1)] if self.L > 1 else [b[-1].flatten(1)]
        else:
            parts = [t for i in range(self.L) for t in (W[i].mean((1, 2)), b[i].mean(1))]
        return self.head(torch.cat(parts, -1)).squeeze(-1)


def _feat_dim(layers, i: int) -> int:
    """Features per (output, input) entry: a conv's k*k; a dense layer after a flatten gets
    the ``n_in / channels`` weights that read one channel."""
    lay = layers[i]
    if i > 0 and lay.n_in != layers[i - 1].n_out:
        return lay.kernel * lay.n_in // layers[i - 1].n_out
    return lay.kernel


@register("nfn-np")
class NFN_NP(_NFN):
    """NFN with neuron-permutation (NP) equivariant layers: every neuron axis permutable."""

    description = "permutation-equivariant neural functional, NP (Zhou et al. 2023); plain CNN/MLP only"
    hnp = False


@register("nfn-hnp")
class NFN_HNP(_NFN):
    """NFN with hidden-neuron-permutation (HNP) layers: input and output axes fixed."""

    description = "permutation-equivariant neural functional, HNP (Zhou et al. 2023); plain CNN/MLP only"
    hnp = True
