"""The metanet registry: names -> metanet classes (a leaf: it imports no metanet).

A CLI flag, a saved checkpoint, a test and a user's plugin file all say ``"statnn"``
and get the same class. A metanet is either

* a ``torch.nn.Module`` (``kind = "torch"``) built as ``cls(info)`` whose ``forward``
  takes a batch of inputs in its ``view`` and returns one prediction per net, or
* an estimator (``kind = "sklearn"``) with ``fit(x, y, seed)`` / ``predict(x)``.

``view`` names the weight-space input it reads (see :mod:`metanets.data`):
``"vector"`` ([B, D] flat parameters), ``"layers"`` (dict name -> [B, *shape]),
``"stats"`` ([B, T, 7] per-tensor statistics), ``"hparams"`` ([B, k] sampled
hyper-parameters from the zoo table, no weights: the control, :mod:`metanets.models.hparams`) or
``"full"`` ([B, P] all parameters, fixed entries included, in ``info.full_layout``).

A metanet that reads only some architectures defines ``unsupported(info) -> str | None``
(a classmethod): the benchmark shows it as n/a with that reason instead of running it.
"""
from __future__ import annotations

from ..errors import MetanetError

VIEWS = ("vector", "layers", "stats", "hparams", "full")
KINDS = ("torch", "sklearn")

#: name -> class of every registered metanet, built-ins and plugins
REGISTRY: dict[str, type] = {}


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
        old = REGISTRY.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            owner = (f"the built-in {old.__module__}.{old.__qualname__}" if old.__module__.startswith("metanets.")
                     else f"{old.__module__}.{old.__qualname__}"
                     + (f" from plugin {old.plugin_path}" if getattr(old, "plugin_path", None) else ""))
            raise MetanetError(f"metanet name {name!r} of {cls.__module__}.{cls.__qualname__} is already "
                               f"taken by {owner}; register it under another name")
        cls.registry_name = name
        cls.kind = kind
        REGISTRY[name] = cls
        return cls

    return deco
