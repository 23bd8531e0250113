"""metazoo's producer side: nets, zoo specs, the group trainer, and the HDF5 weight store.

``zoo.open(path)`` reads a zoo; ``zoo generate`` (CLI) makes one.

``import zoo`` does not import torch: ``zoo.open`` and ``zoo.Zoo`` load the reader (and torch)
on first use, so the processes that only check bytes (the helper that reads each shard before
HDF5 opens it here, ``zoo verify``'s child) start in a fraction of a second instead of two.
"""
from ._version import __version__
from .errors import SpecError, ZooError
from .layout import Layout, TensorSpec

__all__ = ["Layout", "SpecError", "TensorSpec", "Zoo", "ZooError", "open", "__version__"]


def __getattr__(name: str):  # PEP 562: the reader's names, loaded when first asked for
    if name in ("Zoo", "open"):
        from .store import reader  # deferred: the reader imports torch and the nets

        return getattr(reader, name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
