"""metazoo's producer side: nets, zoo specs, the group trainer, and the HDF5 weight store.

``zoo.open(path)`` reads a zoo; ``zoo generate`` (CLI) makes one.
"""
from ._version import __version__
from .errors import SpecError, ZooError
from .layout import Layout, TensorSpec
from .store.reader import Zoo, open  # noqa: A004

__all__ = ["Layout", "SpecError", "TensorSpec", "Zoo", "ZooError", "open", "__version__"]
