"""What metazoo prints while it works: one progress bar and one way to write a size.

Every long loop (generate, import, download, the metanet benchmark) shows the same bar,
on stderr, so that stdout stays the command's result; sizes are always binary units
(KiB, MiB, GiB: 1024 per step), the unit tqdm's byte counters and ``du -h`` use.
"""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit below it: ``'512 B'``, ``'1.5 MiB'``."""
    for unit in UNITS:
        if n < 1024 or unit == UNITS[-1]:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


class NoBar:
    """What :func:`progress` returns when no bar is wanted: counts, and prints ``write``'s notes."""

    def __init__(self, total=None, initial: int = 0):
        self.total, self.n = total, initial

    def update(self, n: int = 1) -> None:
        self.n += n

    def write(self, msg: str) -> None:
        print(msg)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _PerHourBar(tqdm):
    """tqdm with things/hour beside the per-second rate and ETA (a zoo takes hours, not seconds)."""

    @property
    def format_dict(self):
        d = super().format_dict
        rate = d["n"] / d["elapsed"] if d["elapsed"] else 0
        d["postfix"] = f"{rate * 3600:,.0f} {d['unit']}s/h"
        return d


def progress(total: int | None = None, *, enabled: bool | None = None, desc: str | None = None,
             unit: str = "it", per_hour: bool = False, **tqdm_kw):
    """A progress bar on stderr counting ``total`` ``unit``s.

    ``enabled``: True shows it, False returns a :class:`NoBar`, None shows it only where
    someone watches (stderr is a terminal). ``per_hour`` adds the rate per hour (model
    generation). Other keywords go to tqdm (``initial``, ``unit_scale``, ``leave``, ...)."""
    if enabled is False or total == 0:
        return NoBar(total, tqdm_kw.get("initial", 0))
    cls = _PerHourBar if per_hour else tqdm
    return cls(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None if enabled is None else False,
               **tqdm_kw)


def pyplot():
    """matplotlib's pyplot on the Agg backend: figures go to files, never to a display (servers, CI)."""
    import matplotlib  # deferred: only the figures need it, and Agg must be chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after the backend is chosen

    return plt
