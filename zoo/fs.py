"""Files written whole or not at all, and the checks before writing them.

Every file is written to a temporary name in the same directory, flushed, fsynced and then
renamed over its final name, so a reader (or a crash) only ever sees a whole file. Anything
that fails mid-write removes its temporary file and leaves what was there before untouched.
The zoo store, the hub and metanets' result and model files all write through here.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from .errors import ZooError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

@contextlib.contextmanager
def atomic_path(final: Path, exclusive: bool = False):
    """Yield a temporary path beside ``final``; on success fsync it and rename it over
    ``final``; on any error delete it and re-raise. The rename is atomic on POSIX.
    A failed write (disk full, read-only folder, a file where a folder should be)
    becomes a ZooError naming ``final`` and the cause.

    ``exclusive``: never replace an existing ``final`` (hard link instead of rename; the
    first writer wins and later ones raise FileExistsError)."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=TMP_SUFFIX, dir=final.parent)
    except OSError as e:
        raise ZooError(f"could not write {final}: {e.strerror or e}") from e
    os.close(fd)
    tmp = Path(tmp)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; zoos are shared between users and jobs
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, final)
            tmp.unlink()
        else:
            os.replace(tmp, final)
        with contextlib.suppress(OSError):  # make the rename itself durable
            dfd = os.open(final.parent, os.O_RDONLY)
            os.fsync(dfd)
            os.close(dfd)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, (FileNotFoundError, FileExistsError)):
            raise ZooError(f"could not write {final}: {e.strerror or e}; nothing was left half-written") from e
        raise


#: Suffix of every temporary file metazoo writes (``.NAME.XXXXXXXX.tmp``); a later run
#: removes those a killed process left (:func:`remove_stale_temp`).
TMP_SUFFIX = ".tmp"
_TMP = re.compile(r"\.(shard-\d+\.h5|group-\d+\.h5|manifest\.json|zoo-plan\.json|[\w.-]+\.sha256)"
                  r"\.[A-Za-z0-9_]{8}\.tmp")


def is_temp(path) -> bool:
    """True for a temporary file of :func:`atomic_path` (ours by name, never a user's file)."""
    return bool(_TMP.fullmatch(Path(path).name))


def remove_stale_temp(folder: Path, pattern: str = "*") -> list[Path]:
    """Delete metazoo temporary files in ``folder`` and its ``.parts`` (call it holding the
    folder's lock: then no live writer owns them). ``pattern`` narrows to one shard's."""
    folder = Path(folder)
    removed = []
    for p in [*folder.glob(f".{pattern}{TMP_SUFFIX}"), *folder.glob(f".parts/**/.{pattern}{TMP_SUFFIX}")]:
        if is_temp(p) and p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


_UMASK = os.umask(0)
os.umask(_UMASK)


def write_json(path: Path, obj, exclusive: bool = False) -> None:
    with atomic_path(path, exclusive) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=False, default=json_default))


def json_default(o):
    """``json.dumps(default=...)`` for numpy scalars and arrays (everything metazoo writes as JSON)."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def strict_json(obj):
    """``obj`` with every non-finite float replaced by None and numpy values made plain, so it
    dumps as strict JSON (NaN and inf are not JSON)."""
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict_json(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def read_toml(path: Path, what: str) -> dict:
    """The TOML file ``path`` (a ``what``: "spec", "card") as a dict; a file that cannot be read
    or is not TOML (nested too deep included) is a ZooError naming it."""
    try:
        return tomllib.loads(Path(path).read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ZooError(f"{what} {path} is not valid TOML: {type(e).__name__}: {e}") from e
    except OSError as e:
        raise ZooError(f"{what} {path}: cannot read it: {e.strerror}") from e


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def make_dirs(folder) -> list[Path]:
    """``mkdir -p folder``; returns the folders it created, outermost first, so that a command
    that is then refused can take them away again (:func:`remove_empty_dirs`)."""
    folder = Path(os.path.abspath(folder))
    missing, p = [], folder
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def remove_empty_dirs(created) -> None:
    """Remove, innermost first, those of ``created`` (folders this process made) that are still
    empty: a refused ``--out a/b/c`` leaves no ``a/b`` behind. A folder someone filled stays."""
    for d in reversed(list(created)):
        with contextlib.suppress(OSError):
            os.rmdir(d)


def check_writable_dir(folder: Path, what: str = "--out", need_bytes: int = 0) -> None:
    """Refuse, before long work, a folder we cannot write into or that lacks the space.

    Creates ``folder`` (and parents) if needed and writes a probe file: permission bits
    alone do not tell (root ignores them; a read-only mount ignores them the other way)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ZooError(f"{what} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=TMP_SUFFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ZooError(f"{what} {folder} is not writable: {e.strerror or e}") from e
    if need_bytes:
        free = shutil.disk_usage(folder).free
        if free < need_bytes:
            raise ZooError(f"{what} {folder}: {free / 2**20:,.0f} MiB free, about {need_bytes / 2**20:,.0f} MiB "
                           "needed (No space left on device); free some space or choose another folder")
