"""The metanet registry: names -> metanet classes.

A CLI flag, a saved checkpoint, a test and a user's plugin file all say ``"statnn"``
and get the same class. A metanet is either

* a ``torch.nn.Module`` (``kind = "torch"``) built as ``cls(info)`` whose ``forward``
  takes a batch of inputs in its ``view`` and returns one prediction per net, or
* an estimator (``kind = "sklearn"``) with ``fit(x, y, seed)`` / ``predict(x)``.

``view`` names the weight-space input it reads (see :mod:`metanets.data`):
``"vector"`` ([B, D] flat parameters), ``"layers"`` (dict name -> [B, *shape]),
``"stats"`` ([B, T, 7] per-tensor statistics), ``"hparams"`` ([B, k] sampled
hyper-parameters from the zoo table, no weights: the control, :mod:`metanets.hparams`) or
``"full"`` ([B, P] all parameters, fixed entries included, in ``info.full_layout``).

A metanet that reads only some architectures defines ``unsupported(info) -> str | None``
(a classmethod): the benchmark shows it as n/a with that reason instead of running it.
"""
from __future__ import annotations

from .errors import MetanetError

VIEWS = ("vector", "layers", "stats", "hparams", "full")
KINDS = ("torch", "sklearn")

_REGISTRY: dict[str, type] = {}


def register(name: str):
    """Class decorator: make a metanet available under ``name`` (lower-case, no spaces)."""
    if not isinstance(name, str) or not name or name != name.strip().lower() or " " in name or "," in name:
        raise MetanetError(f"metanet name {name!r} is invalid: use a lower-case word without spaces or commas")

    def deco(cls):
        view = getattr(cls, "view", None)
        kind = getattr(cls, "kind", "torch")
        if view not in VIEWS:
            raise MetanetError(f"metanet {name!r} ({cls.__name__}): class attribute view = {view!r}; "
                               f"allowed: {', '.join(VIEWS)}")
        if kind not in KINDS:
            raise MetanetError(f"metanet {name!r} ({cls.__name__}): class attribute kind = {kind!r}; "
                               f"allowed: {', '.join(KINDS)}")
        old = _REGISTRY.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            owner = (f"the built-in {old.__module__}.{old.__qualname__}" if old.__module__.startswith("metanets.")
                     else f"{old.__module__}.{old.__qualname__}"
                     + (f" from plugin {old.plugin_path}" if getattr(old, "plugin_path", None) else ""))
            raise MetanetError(f"metanet name {name!r} of {cls.__module__}.{cls.__qualname__} is already "
                               f"taken by {owner}; register it under another name")
        cls.registry_name = name
        cls.kind = kind
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtins() -> None:
    # Importing the modules runs their @register decorators.
    from . import deepsets, dmc, gbm, graph, hparams, mlp, nfn, statnn  # noqa: F401


def names() -> list[str]:
    """Registered metanet names, built-ins first in the paper's order, then plugins."""
    _load_builtins()
    order = ["mlp", "dmc", "deepsets", "statnn", "statnn-gbm", "statnn-std", "hparams", "nfn-np", "nfn-hnp", "graph"]
    return [n for n in order if n in _REGISTRY] + sorted(n for n in _REGISTRY if n not in order)


def get(name: str) -> type:
    """The class registered as ``name``; an unknown name is an error listing the known ones."""
    _load_builtins()
    if name not in _REGISTRY:
        raise MetanetError(f"unknown metanet {name!r}; known: {', '.join(names())} "
                           f"(register your own with --plugin FILE)")
    return _REGISTRY[name]


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
