"""Treat files from the internet as data, never as code.

Three rules, each enforced here so importers cannot forget them:

* ``.pt`` files load with ``torch.load(..., weights_only=True)``: a pickle that carries
  anything but tensors and plain containers is refused, not executed.
* archives are extracted only after every entry has been checked: no absolute path,
  no ``..`` that leaves the target, no links or device files; and extraction goes to a
  temporary folder that is renamed into place only when it is complete.
* ``.npy`` files load with ``allow_pickle=False``.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from .errors import ZooError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2")


def is_archive(path) -> bool:
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in ARCHIVE_SUFFIXES)


def load_tensors(path):
    """``torch.load`` restricted to tensors, numbers, strings and containers of them."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ZooError(f"{path}: refused to load: it carries a pickled object that is not tensors "
                       f"(files from the internet are loaded as data only). Detail: {_first_line(e)}") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ZooError(f"{path}: not a readable torch file (corrupt or truncated): {_first_line(e)}") from e


def load_npy(path, mmap: bool = True) -> np.ndarray:
    """A ``.npy`` array without pickles; memory-mapped so a large zoo is read row block by block."""
    path = Path(path)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
        raise ZooError(f"{path}: refused: {_first_line(e)} (object arrays need pickle, which is not allowed)") from e
    except OSError as e:
        raise ZooError(f"{path}: not a readable .npy file (corrupt or truncated): {_first_line(e)}") from e


def _first_line(e) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# ------------------------------------------------------------ archives

def _check_member(archive: Path, name: str) -> PurePosixPath:
    """The member's path relative to the target, or a ZooError if it could escape."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or (p.parts and p.parts[0].endswith(":")):
        raise ZooError(f"{archive}: entry {name!r} has an absolute path; refused (nothing was extracted)")
    if ".." in p.parts:
        raise ZooError(f"{archive}: entry {name!r} contains '..' and could land outside the target folder; "
                       f"refused (nothing was extracted)")
    return p


def _members(archive: Path):
    """Yield ``(relative path, is_dir, open_fn)`` for every entry, checking all before any is used."""
    if archive.name.lower().endswith(".zip"):
        try:
            zf = zipfile.ZipFile(archive)
        except zipfile.BadZipFile as e:
            raise ZooError(f"{archive}: not a readable zip archive (corrupt or truncated): {e}") from e
        with zf:
            infos = zf.infolist()
            checked = []
            for info in infos:
                rel = _check_member(archive, info.filename)
                mode = (info.external_attr >> 16) & 0o170000
                if mode == 0o120000:
                    raise ZooError(f"{archive}: entry {info.filename!r} is a symbolic link; refused "
                                   f"(nothing was extracted)")
                checked.append((rel, info))
            for rel, info in checked:
                yield rel, info.is_dir(), (lambda i=info: zf.open(i))
        return
    try:
        tf = tarfile.open(archive)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ZooError(f"{archive}: not a readable tar archive (corrupt or truncated): {e}") from e
    with tf:
        try:
            infos = tf.getmembers()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ZooError(f"{archive}: archive is corrupt or truncated: {e}") from e
        checked = []
        for info in infos:
            rel = _check_member(archive, info.name)
            if not (info.isfile() or info.isdir()):
                raise ZooError(f"{archive}: entry {info.name!r} is a link or special file; refused "
                               f"(nothing was extracted)")
            checked.append((rel, info))
        for rel, info in checked:
            yield rel, info.isdir(), (lambda i=info: tf.extractfile(i))


def safe_extract(archive, target) -> Path:
    """Extract ``archive`` (zip or tar, optionally gz/xz/bz2) into the new folder ``target``.

    Every entry is checked before anything is written; the content is extracted into a
    temporary sibling folder that is renamed to ``target`` only when complete, so a
    refused or truncated archive leaves nothing behind."""
    archive, target = Path(archive), Path(target)
    if target.exists():
        raise ZooError(f"{target} already exists; extraction needs a new folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        root = tmp.resolve()
        for rel, is_dir, open_fn in _members(archive):
            dest = (tmp / rel).resolve()
            if dest != root and root not in dest.parents:  # belt and braces after the '..' check
                raise ZooError(f"{archive}: entry {str(rel)!r} resolves outside the target folder; refused")
            if is_dir:
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open_fn() as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        os.replace(tmp, target)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ZooError(f"{archive}: archive is corrupt or truncated ({e}); nothing was extracted") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


@contextlib.contextmanager
def unpacked(path, workdir=None):
    """Yield a folder holding the content of ``path``: the folder itself, or an archive
    safely extracted into a temporary folder (nested archives too) that is removed on exit."""
    path = Path(path)
    if not path.exists():
        raise ZooError(f"{path} does not exist")
    if path.is_dir() and not _has_archives(path):
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix=".metazoo-unpack.", dir=workdir))
    try:
        dest = tmp / "content"
        if path.is_dir():
            # A download folder: extract its archives, copy the (small) loose files beside them.
            dest.mkdir()
            for p in sorted(path.iterdir()):
                if p.is_file() and is_archive(p):
                    safe_extract(p, dest / _stem(p))
                elif p.is_dir():
                    shutil.copytree(p, dest / p.name)
                else:
                    shutil.copy2(p, dest / p.name)
        elif is_archive(path):
            safe_extract(path, dest)
        else:
            raise ZooError(f"{path}: expected a folder or an archive ({', '.join(ARCHIVE_SUFFIXES)})")
        _extract_nested(dest)
        yield dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _stem(p: Path) -> str:
    for s in ARCHIVE_SUFFIXES:
        if p.name.lower().endswith(s):
            return p.name[: -len(s)]
    return p.name


def _has_archives(folder: Path) -> bool:
    return any(is_archive(p) for p in folder.rglob("*") if p.is_file())


def _extract_nested(folder: Path, depth: int = 0) -> None:
    """Upstream records often wrap archives in archives (e.g. Zenodo's all-files zip)."""
    if depth > 3:
        raise ZooError(f"{folder}: archives nested more than 3 deep; refused")
    for p in sorted(folder.rglob("*")):
        if p.is_file() and is_archive(p):
            stem = _stem(p)
            dest = p.with_name(stem + ".d") if (p.parent / stem).exists() else p.parent / stem
            safe_extract(p, dest)
            p.unlink()
            _extract_nested(dest, depth + 1)
