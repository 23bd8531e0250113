"""metazoo's producer side: nets, zoo specs, the group trainer, and the HDF5 weight store.

``zoo.open(path)`` reads a zoo; ``zoo generate`` (CLI) makes one.
"""
__version__ = "0.1.0"

from .errors import SpecError, ZooError  # noqa: E402
from .layout import Layout, TensorSpec  # noqa: E402
from .reader import Zoo, open  # noqa: E402,A004

__all__ = ["Layout", "SpecError", "TensorSpec", "Zoo", "ZooError", "open", "__version__"]
