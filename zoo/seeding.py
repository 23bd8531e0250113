"""Seeds derived from a zoo's seed and names: every random draw in metazoo starts here."""
from __future__ import annotations

import zlib

import numpy as np


def derived_seed(*parts) -> int:
    """A 63-bit seed from integers and strings, stable across runs and machines.

    Strings go through crc32 (never Python's salted ``hash()``)."""
    ints = [p if isinstance(p, int) else zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(2, np.uint64)[0] >> np.uint64(1))
