"""Graph metanetwork (Lim et al., ICLR 2024; Kofinas et al., ICLR 2024) on torch-geometric.

A net becomes its *parameter graph*: one node per neuron/channel (the input channels,
then every conv/linear output), one edge per (input channel, output channel) pair of
a layer carrying that pair's weights as its feature vector (a 3x3 kernel's 9 entries;
shorter kernels zero-padded to the longest), biases and norm parameters as features
of the node they act on, and a residual connection as identity edges flagged as such.
A W-Asym net's fixed entries are flagged per entry in the edge features (they hold the
fixed constants, as the net uses them). Message passing updates edges from their end
nodes and nodes from their incoming and outgoing edges; the readout averages nodes and
edges, so the prediction is invariant to any relabelling of nodes — in particular to
the hidden-channel permutations that leave a standard net's function unchanged.

The structure is recognised from the layout (:mod:`metanets.models.structure`: plain chains,
with norm layers and flattens; metazoo ResNets) and built once per layout, cached; a
batch of nets is one batched graph (all nets of a zoo share the structure, so only
the features differ). σ-Asym (FiGLU) nets are read like standard ones: the FiGLU mixing
is the same fixed matrix in every net of a zoo, so the graph does not encode it.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from zoo.layout import Layout

from ..data import InputInfo
from ..errors import MetanetError
from ._registry import register
from .structure import Layer, is_resnet, plain_chain, resnet_blocks

#: static edge flags: conv, linear, residual
EDGE_FLAGS = 3
#: static node flags: input, output, has bias, has norm
NODE_FLAGS = 4


@dataclass(frozen=True)
class ParamGraph:
    """The parameter graph of one layout; indices point into the flat vector, ``P`` = padding."""

    num_nodes: int
    edge_index: torch.Tensor  # [2, E] (source, target)
    edge_param: torch.Tensor  # [E, K] indices into the flat vector (P for padding)
    edge_static: torch.Tensor  # [E, EDGE_FLAGS + K]: flags and the per-entry fixed mask
    node_param: torch.Tensor  # [N, 3] indices of bias, norm weight, norm bias (P for none)
    node_static: torch.Tensor  # [N, NODE_FLAGS]

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]


class _Builder:
    def __init__(self, layout: Layout):
        self.P, self.mask = layout.num_params, layout.fixed_mask
        self.K = 1
        self.n = 0
        self.edges = []  # (src, dst, param idx array, flags)
        self.nodes = {}  # node -> (bias, nw, nb, flags)

    def new(self, count: int, flags=(0, 0)) -> np.ndarray:
        ids = np.arange(self.n, self.n + count)
        self.n += count
        for v in ids:
            self.nodes[int(v)] = [self.P, self.P, self.P, *flags, 0, 0]
        return ids

    def layer(self, lay: Layer, src: np.ndarray, output=False) -> np.ndarray:
        dst = self.new(lay.n_out, (0, int(output)))
        per = lay.weight.size // (lay.n_out * len(src))  # entries per (out, in) pair
        self.K = max(self.K, per)
        conv = lay.weight.role == "conv_weight"
        base = lay.weight.offset
        for o in range(lay.n_out):
            for i, s in enumerate(src):
                start = base + (o * len(src) + i) * per
                self.edges.append((int(s), int(dst[o]), np.arange(start, start + per), (int(conv), int(not conv), 0)))
        for k, t in enumerate((lay.bias, lay.norm_weight, lay.norm_bias)):
            if t is not None:
                for o in range(lay.n_out):
                    self.nodes[int(dst[o])][k] = t.offset + o
        for o in range(lay.n_out):
            self.nodes[int(dst[o])][5] = int(lay.bias is not None)
            self.nodes[int(dst[o])][6] = int(lay.norm_weight is not None)
        return dst

    def residual(self, src: np.ndarray, dst: np.ndarray) -> None:
        for s, d in zip(src, dst):
            self.edges.append((int(s), int(d), np.zeros(0, np.int64), (0, 0, 1)))

    def build(self) -> ParamGraph:
        K, P = self.K, self.P
        E = len(self.edges)
        ei = torch.tensor([[e[0] for e in self.edges], [e[1] for e in self.edges]], dtype=torch.long)
        ep = torch.full((E, K), P, dtype=torch.long)
        es = torch.zeros(E, EDGE_FLAGS + K)
        for k, (_, _, idx, flags) in enumerate(self.edges):
            ep[k, :len(idx)] = torch.from_numpy(idx)
            es[k, :EDGE_FLAGS] = torch.tensor(flags, dtype=torch.float32)
            if self.mask is not None and len(idx):
                es[k, EDGE_FLAGS:EDGE_FLAGS + len(idx)] = torch.from_numpy(self.mask[idx].astype(np.float32))
        rows = [self.nodes[v] for v in range(self.n)]
        npar = torch.tensor([r[:3] for r in rows], dtype=torch.long)
        nst = torch.tensor([r[3:] for r in rows], dtype=torch.float32)
        return ParamGraph(self.n, ei, ep, es, npar, nst)


def build_graph(layout: Layout) -> ParamGraph:
    """The parameter graph of ``layout``; ``ValueError`` naming why when it is not recognised."""
    b = _Builder(layout)
    if is_resnet(layout):
        stem, blocks, fc = resnet_blocks(layout)
        h = b.layer(stem, b.new(stem.n_in, (1, 0)))
        for blk in blocks:
            mid = b.layer(blk["conv1"], h)
            out = b.layer(blk["conv2"], mid)
            b.residual(b.layer(blk["shortcut"], h) if "shortcut" in blk else h, out)
            h = out
        b.layer(fc, h, output=True)
        return b.build()
    layers, reason = plain_chain(layout)
    if reason:
        raise ValueError(reason)
    h = b.new(layers[0].n_in, (1, 0))
    for k, lay in enumerate(layers):
        h = b.layer(lay, h, output=k == len(layers) - 1)
    return b.build()


_CACHE: dict[str, ParamGraph] = {}


def graph_for(layout: Layout) -> ParamGraph:
    """:func:`build_graph`, once per layout (keyed by its tensors and fixed mask)."""
    h = hashlib.sha256(layout.to_json().encode())
    if layout.fixed_mask is not None:
        h.update(np.packbits(layout.fixed_mask).tobytes())
    key = h.hexdigest()
    if key not in _CACHE:
        _CACHE[key] = build_graph(layout)
    return _CACHE[key]


def _mlp(d_in, d, d_out=None):
    return nn.Sequential(nn.Linear(d_in, d), nn.ReLU(), nn.Linear(d, d_out or d))


@functools.cache
def _edge_node_layer():
    """The message-passing layer class, defined on first use: importing torch-geometric costs
    about a second, which every ``metanets`` command would otherwise pay at start-up."""
    from torch_geometric.nn import MessagePassing  # deferred: ~1 s to import (see the docstring)

    class EdgeNodeLayer(MessagePassing):
        """Edges updated from their two end nodes; nodes from the mean message of their incoming
        and of their outgoing edges (two directions: a parameter graph is directed).

        Messages are ``relu(A x_src + B e + C x_dst)``: the node terms are projected once per
        node and gathered, so the per-edge work is one ``H x H`` product per use -- edges
        outnumber nodes ~20:1 in a ResNet8, and this keeps the CPU demo affordable."""

        def __init__(self, d: int):
            super().__init__(aggr="mean", flow="source_to_target")
            self.e_src, self.e_dst, self.e_self = nn.Linear(d, d), nn.Linear(d, d, bias=False), nn.Linear(d, d)
            self.in_src, self.in_e = nn.Linear(d, d), nn.Linear(d, d, bias=False)
            self.out_dst, self.out_e = nn.Linear(d, d), nn.Linear(d, d, bias=False)
            self.node = _mlp(3 * d, d)
            self.norm_e, self.norm_v = nn.LayerNorm(d), nn.LayerNorm(d)

        def forward(self, x, edge_index, e):
            src, dst = edge_index
            e = self.norm_e(e + torch.relu(self.e_src(x)[src] + self.e_dst(x)[dst] + self.e_self(e)))
            m_in = self.propagate(edge_index, h=self.in_src(x), he=self.in_e(e))
            m_out = self.propagate(edge_index.flip(0), h=self.out_dst(x), he=self.out_e(e))
            return self.norm_v(x + self.node(torch.cat([x, m_in, m_out], -1))), e

        def message(self, h_j, he):
            return torch.relu(h_j + he)

    return EdgeNodeLayer


@register("graph")
class GraphMetanet(nn.Module):
    """``[B, P]`` all parameters -> ``[B]`` via the parameter graph (see module docstring).

    Defaults are sized for the CPU demo: 16 hidden features, 2 message-passing layers."""

    description = "graph metanetwork on the parameter graph (Lim et al. 2024, Kofinas et al. 2024)"
    view = "full"

    @classmethod
    def unsupported(cls, info: InputInfo) -> str | None:
        try:
            graph_for(info.full_layout)
        except ValueError as e:
            return f"graph cannot build a parameter graph for this zoo's nets: {e}"
        return None

    def __init__(self, info: InputInfo, hidden: int = 16, depth: int = 2):
        super().__init__()
        try:
            g = graph_for(info.full_layout)
        except ValueError as e:
            raise MetanetError(f"graph cannot build a parameter graph for this zoo's nets: {e}") from None
        self.N, self.E, self.K = g.num_nodes, g.num_edges, g.edge_param.shape[1]
        for name in ("edge_index", "edge_param", "edge_static", "node_param", "node_static"):
            self.register_buffer(name, getattr(g, name).clone(), persistent=False)
        P = info.full_layout.num_params
        # per-entry scale (the std of the entry's tensor over the training nets, :meth:`prepare`)
        self.register_buffer("scale", torch.ones(P + 1))
        self.tensor_of = [t.slice for t in info.full_layout.tensors]
        self.embed_e = nn.Linear(self.K + EDGE_FLAGS + self.K, hidden)
        self.embed_v = _mlp(3 + NODE_FLAGS, hidden)
        layer = _edge_node_layer()
        self.layers = nn.ModuleList(layer(hidden) for _ in range(depth))
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.LayerNorm(hidden),
                                  nn.Linear(hidden, 1))
        self._batched = {}

    @torch.no_grad()
    def prepare(self, train_features: torch.Tensor) -> None:
        x = train_features.float()
        for sl in self.tensor_of:
            self.scale[sl] = x[:, sl].std().clamp_min(1e-8)

    def _edge_index(self, B: int, device) -> torch.Tensor:
        key = (B, str(device))
        if key not in self._batched:
            off = (torch.arange(B, device=device) * self.N).repeat_interleave(self.E)
            self._batched[key] = self.edge_index.repeat(1, B) + off
        return self._batched[key]

    def forward(self, x):
        B = len(x)
        xp = torch.cat([x.float(), x.new_zeros(B, 1, dtype=torch.float32)], 1) / self.scale  # index P = 0
        e = torch.cat([xp[:, self.edge_param], self.edge_static.expand(B, -1, -1)], -1)  # [B, E, F]
        v = torch.cat([xp[:, self.node_param], self.node_static.expand(B, -1, -1)], -1)  # [B, N, F]
        e = self.embed_e(e).reshape(B * self.E, -1)
        v = self.embed_v(v).reshape(B * self.N, -1)
        ei = self._edge_index(B, x.device)
        for layer in self.layers:
            v, e = layer(v, ei, e)
        pooled = torch.cat([v.view(B, self.N, -1).mean(1), e.view(B, self.E, -1).mean(1)], -1)
        return self.head(pooled).squeeze(-1)
