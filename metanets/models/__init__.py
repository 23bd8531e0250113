"""The built-in metanets, one module each; importing this package registers them all.

The registry they register in (:mod:`metanets.models._registry`) is a leaf, so a metanet
module imports it without importing the others; plugins register through the same
``register`` (:mod:`metanets.plugins`); :mod:`metanets.registry` looks them up by name.
"""
from . import deepsets, dmc, graph, hparams, mlp, nfn, statnn, statnn_gbm  # noqa: F401 (registers them)
from ._registry import KINDS, VIEWS, register

__all__ = ["KINDS", "VIEWS", "register"]
