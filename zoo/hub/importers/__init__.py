"""Importers: upstream weight datasets -> standard metazoo zoos.

Each importer takes a source (a folder, or an archive it extracts safely) and an output
folder, and either writes a verified zoo there or raises :class:`~zoo.errors.ZooError`
and leaves nothing behind. Options arrive as strings from the CLI or a catalogue card.
"""
from __future__ import annotations

import inspect

from ...errors import ZooError
from .lim2024 import import_lim2024
from .metazoo import import_metazoo
from .modelzoos import import_modelzoos
from .smallcnnzoo import import_smallcnnzoo

IMPORTERS = {
    "lim2024": import_lim2024,
    "smallcnnzoo": import_smallcnnzoo,
    "modelzoos": import_modelzoos,
    "metazoo": import_metazoo,
}

#: Keyword arguments every importer takes that are not format options.
_COMMON = {"src", "out", "force", "source", "name", "limits"}


def options_of(fmt: str) -> list[str]:
    return [p for p in inspect.signature(importer(fmt)).parameters if p not in _COMMON]


def importer(fmt: str):
    if fmt not in IMPORTERS:
        raise ZooError(f"unknown format {fmt!r}; known: {', '.join(IMPORTERS)}")
    return IMPORTERS[fmt]


def run_import(fmt: str, src, out, *, options: dict | None = None, force: bool = False,
               name: str | None = None, source: dict | None = None, limits=None) -> dict:
    """Run the importer for ``fmt``; returns the written manifest. ``limits``: how far
    archives may expand (:class:`zoo.hub.safety.Limits`, default from the environment)."""
    fn = importer(fmt)
    options = dict(options or {})
    allowed = options_of(fmt)
    for k in options:
        if k not in allowed:
            raise ZooError(f"format {fmt!r} has no option {k!r}; allowed: {', '.join(allowed) or 'none'}")
    return fn(src, out, force=force, name=name, source=source, limits=limits, **options)


__all__ = ["IMPORTERS", "importer", "options_of", "run_import"]
