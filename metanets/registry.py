"""Metanets by name: the built-ins (:mod:`metanets.models`) and any registered plugin.

A CLI flag, a saved checkpoint, a test and a user's plugin file all say ``"statnn"`` and
get the same class. What a metanet class must provide is in :mod:`metanets.models._registry`.
"""
from __future__ import annotations

from .errors import MetanetError
from .models import _registry
from .models._registry import KINDS, VIEWS, register

__all__ = ["KINDS", "VIEWS", "get", "names", "parse_names", "register", "unsupported"]


def names() -> list[str]:
    """Registered metanet names, built-ins first in the paper's order, then plugins."""
    order = ["mlp", "dmc", "deepsets", "statnn", "statnn-gbm", "statnn-std", "hparams", "nfn-np", "nfn-hnp", "graph"]
    return [n for n in order if n in _registry.REGISTRY] + sorted(n for n in _registry.REGISTRY if n not in order)


def get(name: str) -> type:
    """The class registered as ``name``; an unknown name is an error listing the known ones."""
    if name not in _registry.REGISTRY:
        raise MetanetError(f"unknown metanet {name!r}; known: {', '.join(names())} "
                           f"(register your own with --plugin FILE)")
    return _registry.REGISTRY[name]


def unsupported(name: str, info) -> str | None:
    """Why metanet ``name`` cannot read nets of ``info`` (None when it can)."""
    check = getattr(get(name), "unsupported", None)
    return check(info) if check else None


def parse_names(text: str) -> list[str]:
    """``"mlp,dmc"`` -> ``["mlp", "dmc"]``, each checked against the registry."""
    out = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not out:
        raise MetanetError(f"--metanets {text!r} names no metanet; known: {', '.join(names())}")
    for n in out:
        get(n)
    if len(set(out)) != len(out):
        raise MetanetError(f"--metanets {text!r} names a metanet twice")
    return out
