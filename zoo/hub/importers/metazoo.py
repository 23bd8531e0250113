"""Importer for metazoo's own release archives (made by ``zoo pack``).

The archive holds one folder with ``manifest.json`` and its shards. It is extracted with
path checks, verified (checksums, shapes, ids) and only then moved to ``out``.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ...errors import ZooError
from ...store import MANIFEST, read_manifest, verify_isolated
from ...store.lock import lock_dir
from ...store.reader import Zoo
from ..safety import unpacked
from .common import claim_output


def import_metazoo(src, out, *, force: bool = False, source: dict | None = None, name: str | None = None,
                   limits=None) -> dict:
    # One writer per output (its lock also removes the parent folders it made if nothing is kept).
    with lock_dir(Path(out), what="zoo import"):
        out = claim_output(out, force)
        # A fixed scratch name per output, so what a killed run left is removed by the next one.
        scratch = out.parent / f".imp.{out.name}.source"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        try:
            return _import(src, out, scratch, limits)
        except ZooError as e:  # name a nested archive as the user knows it, not by our scratch copy
            if str(scratch) not in str(e):
                raise
            raise ZooError(re.sub(re.escape(str(scratch)) + r"/\.metazoo-unpack\.[^/]+/content/?", f"{src}:",
                                  str(e))) from e.__cause__
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _import(src, out: Path, scratch: Path, limits) -> dict:
    with unpacked(src, workdir=scratch, limits=limits) as root:
        found = sorted(p.parent for p in Path(root).rglob(MANIFEST))
        if len(found) != 1:
            raise ZooError(f"{src}: expected one zoo (one {MANIFEST}) in the archive, found {len(found)}")
        zoo_dir = found[0]
        try:
            problems = verify_isolated(zoo_dir)  # a forged manifest can make libhdf5 hang: not here
        except ZooError as e:  # it names our scratch copy, which is gone once this returns
            problems = [str(e).replace(str(zoo_dir), "<zoo in the archive>")]
        if not problems:  # its bytes are sound: the architecture it names must also build its layout
            try:
                with Zoo(zoo_dir) as z:
                    z.check_net()
            except ZooError as e:
                problems = [str(e).replace(str(zoo_dir), "<zoo in the archive>")]
        if problems:
            raise ZooError(f"{src}: the zoo in this archive failed verification (nothing was kept): "
                           + "; ".join(problems[:5]))
        if Path(src).is_dir() and zoo_dir == Path(src):
            raise ZooError(f"{src} is already an unpacked zoo; open it with zoo.open() or copy it")
        if out.exists():
            claim_output(out, force=True)  # still a zoo: the only kind of folder ever replaced
            shutil.rmtree(out)
        tmp = out.with_name(f".{out.name}.moving")
        shutil.rmtree(tmp, ignore_errors=True)
        if scratch.resolve() in zoo_dir.resolve().parents:
            shutil.move(str(zoo_dir), tmp)  # our extracted copy
        else:
            shutil.copytree(zoo_dir, tmp)  # the user's own folder: never moved away
        os.replace(tmp, out)
    return read_manifest(out)
