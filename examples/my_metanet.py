"""Benchmarking your own metanet without editing metazoo.

    metanets list --plugin examples/my_metanet.py
    metanets bench runs/digits-std runs/digits-wasym --metanets norms-mlp,statnn \
        --plugin examples/my_metanet.py --out runs/my-bench

A plugin file registers one or more classes with ``@register("name")``. The class is
built as ``cls(info)`` (``info.layout`` is the layout of the parameters it will see),
declares which weight-space ``view`` it reads, and its ``forward`` returns one
prediction per net, shape ``[B]``. The runner checks that shape before training.
"""
import torch
from torch import nn

from metanets import register


@register("norms-mlp")
class NormsMLP(nn.Module):
    """Per-tensor RMS and mean of the weights -> a small MLP (reads the ``layers`` view).

    Like StatNN it is invariant to permuting hidden units, but it sees only two numbers
    per tensor."""

    view = "layers"  # forward gets {tensor name: [B, *shape]}

    def __init__(self, info, hidden: int = 64):
        super().__init__()
        self.names = [t.name for t in info.layout.tensors]
        self.mlp = nn.Sequential(nn.Linear(2 * len(self.names), hidden), nn.ReLU(), nn.LayerNorm(hidden),
                                 nn.Linear(hidden, 1))

    def forward(self, layers):
        feats = []
        for name in self.names:
            w = layers[name].flatten(1)
            feats += [w.pow(2).mean(1).sqrt(), w.mean(1)]
        return self.mlp(torch.stack(feats, dim=1)).squeeze(-1)
