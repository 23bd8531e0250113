"""Treat files from the internet as data, never as code.

Three rules, each enforced here so importers cannot forget them:

* ``.pt`` files load with ``torch.load(..., weights_only=True)``: a pickle that carries
  anything but tensors and plain containers is refused, not executed.
* archives are extracted only after every entry has been checked: no absolute path,
  no ``..`` that leaves the target, no links or device files; and extraction goes to a
  temporary folder that is renamed into place only when it is complete.
* ``.npy`` files load with ``allow_pickle=False``.

Archives are also bounded in what they expand to (:class:`Limits`: total size and
compression ratio, overridable), so a decompression bomb is refused before the disk fills,
with a message that says so rather than "corrupt".
"""
from __future__ import annotations

import contextlib
import io
import lzma
import os
import pickle
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from ..errors import ZooError

#: What reading a damaged archive raises besides OSError and EOFError: tarfile's own errors, a
#: zip's, and the decompressors' (zlib.error and lzma.LZMAError are neither OSError nor TarError).
ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, ValueError,
                  NotImplementedError)

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2")
_GB = 1e9


@dataclass(frozen=True)
class Limits:
    """How far an archive may expand: ``max_gb`` in total, and ``max_ratio`` times its
    compressed size (checked once the content passes ``ratio_floor_bytes``, so tiny,
    very compressible files such as a csv of zeros are never refused). The defaults fit
    the largest published zoo (the Lim et al. record, ~10 GB) with room to spare;
    ``METAZOO_MAX_UNPACK_GB`` or ``--max-unpack-gb`` raise or lower them."""

    max_gb: float = 100.0
    max_ratio: float = 200.0
    ratio_floor_bytes: int = 256 << 20

    @classmethod
    def default(cls) -> Limits:
        env = os.environ.get("METAZOO_MAX_UNPACK_GB")
        if not env:
            return cls()
        try:
            gb = float(env)
        except ValueError:
            raise ZooError(f"METAZOO_MAX_UNPACK_GB = {env!r}: expected a number of GB") from None
        return cls().with_max_gb(gb, "METAZOO_MAX_UNPACK_GB")

    def with_max_gb(self, gb: float, what: str = "--max-unpack-gb") -> Limits:
        if not (gb > 0) or gb == float("inf"):
            raise ZooError(f"{what} = {gb!r}: expected a positive number of GB")
        return Limits(max_gb=gb, max_ratio=self.max_ratio, ratio_floor_bytes=self.ratio_floor_bytes)

    def check(self, archive, expanded: int, compressed: int | None = None) -> None:
        """Raise once ``expanded`` bytes (declared or written so far) exceed a limit."""
        if expanded > self.max_gb * _GB:
            raise ZooError(f"{archive}: archive expands beyond {self.max_gb:g} GB; refused (nothing was kept). "
                           f"If you trust it, raise the limit with --max-unpack-gb or METAZOO_MAX_UNPACK_GB")
        if compressed and expanded > self.ratio_floor_bytes and expanded > self.max_ratio * compressed:
            raise ZooError(f"{archive}: archive expands more than {self.max_ratio:g} times its size "
                           f"({expanded / _GB:.2f} GB from {compressed / _GB:.3f} GB), as a decompression bomb "
                           f"does; refused (nothing was kept)")


def copy_bounded(src, dst, archive, limits: Limits, already: int = 0, compressed: int | None = None) -> int:
    """Copy a member's stream, counting bytes against ``limits``; returns the new total."""
    total = already
    while block := src.read(1 << 20):
        total += len(block)
        limits.check(archive, total, compressed)
        dst.write(block)
    return total


def is_archive(path) -> bool:
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in ARCHIVE_SUFFIXES)


def load_tensors(path, data: bytes | None = None):
    """``torch.load`` restricted to tensors, numbers, strings and containers of them.

    ``data``: the file's bytes when it is read from inside an archive (``path`` then only names it)."""
    path = Path(path)
    if data is None and not path.is_file():
        raise ZooError(f"{path}: file is missing")
    try:
        obj = torch.load(io.BytesIO(data) if data is not None else path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ZooError(f"{path}: refused to load: it carries a pickled object that is not tensors "
                       f"(files from the internet are loaded as data only). Detail: {_first_line(e)}") from e
    except Exception as e:  # noqa: BLE001 - the restricted unpickler fails on damage in many ways
        raise ZooError(f"{path}: not a readable torch file (corrupt or truncated): "
                       f"{type(e).__name__}: {_first_line(e)}") from e
    where = _unusual_tensor(obj)
    if where is not None:
        raise ZooError(f"{path}: tensor {where} is stored sparse or quantized; weights must be dense tensors")
    return obj


def _unusual_tensor(obj, key: str = "", depth: int = 0) -> str | None:
    """The key of the first tensor in ``obj`` that is not a dense (strided) tensor, or None."""
    if isinstance(obj, torch.Tensor):
        return None if obj.layout == torch.strided and not obj.is_quantized else (key or "<the file>")
    if depth > 50:
        return None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        found = _unusual_tensor(v, f"{key}.{k}" if key else str(k), depth + 1)
        if found is not None:
            return found
    return None


def load_npy(path, mmap: bool = True, label=None) -> np.ndarray:
    """A ``.npy`` array without pickles; memory-mapped so a large zoo is read row block by block.
    ``label``: how messages name the file (an archive member extracted to a scratch folder)."""
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"{label or path}: file is missing")
    try:
        return _load_npy(path, mmap)
    except ZooError as e:
        if label is None:
            raise
        raise ZooError(str(e).replace(str(path), str(label), 1)) from e.__cause__


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
        raise ZooError(f"{path}: refused: {_first_line(e)} (object arrays need pickle, which is not allowed)") from e
    except Exception as e:  # noqa: BLE001 - a damaged header fails in many ways (SyntaxError, EOFError, ...)
        raise ZooError(f"{path}: not a readable .npy file (corrupt or truncated): "
                       f"{type(e).__name__}: {_first_line(e)}") from e
    if not isinstance(arr, np.ndarray):  # np.load also opens .npz archives (by content, not name)
        if hasattr(arr, "close"):
            arr.close()
        raise ZooError(f"{path}: not a .npy array (a {type(arr).__name__}, e.g. an .npz archive)")
    return arr


def one_line(e) -> str:
    """An exception's message on one line (tarfile's lists each method it tried on a line)."""
    return " ".join(str(e).split()) or type(e).__name__


def _first_line(e) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# ------------------------------------------------------------ archives

def check_member(archive: Path, name: str) -> PurePosixPath:
    """The member's path relative to the target, or a ZooError if it could escape or is nameless."""
    if not name:
        raise ZooError(f"{archive}: an entry has an empty name; refused (nothing was extracted)")
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or (p.parts and p.parts[0].endswith(":")):
        raise ZooError(f"{archive}: entry {name!r} has an absolute path; refused (nothing was extracted)")
    if ".." in p.parts:
        raise ZooError(f"{archive}: entry {name!r} contains '..' and could land outside the target folder; "
                       f"refused (nothing was extracted)")
    return p


@contextlib.contextmanager
def _members(archive: Path):
    """The checked entries ``(relative path, is_dir, size, open_fn)``: all are checked
    before the caller uses any; the archive stays open inside the ``with``."""
    if archive.name.lower().endswith(".zip"):
        try:
            zf = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, *ARCHIVE_ERRORS, OSError) as e:
            raise ZooError(f"{archive}: not a readable zip archive (corrupt or truncated): {one_line(e)}") from e
        with zf:
            checked = []
            for info in zf.infolist():
                rel = check_member(archive, info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise ZooError(f"{archive}: entry {info.filename!r} is a symbolic link; refused "
                                   f"(nothing was extracted)")
                checked.append((rel, info.is_dir(), info.file_size, (lambda i=info: zf.open(i))))
            yield checked
        return
    try:
        tf = tarfile.open(archive)
    except (*ARCHIVE_ERRORS, OSError) as e:
        raise ZooError(f"{archive}: not a readable tar archive (corrupt or truncated): {one_line(e)}") from e
    with tf:
        try:
            infos = tf.getmembers()
        except (*ARCHIVE_ERRORS, OSError) as e:
            raise ZooError(f"{archive}: archive is corrupt or truncated: {one_line(e)}") from e
        checked = []
        for info in infos:
            rel = check_member(archive, info.name)
            if not (info.isfile() or info.isdir()):
                raise ZooError(f"{archive}: entry {info.name!r} is a link or special file; refused "
                               f"(nothing was extracted)")
            checked.append((rel, info.isdir(), info.size, (lambda i=info: tf.extractfile(i))))
        yield checked


def safe_extract(archive, target, limits: Limits | None = None) -> Path:
    """Extract ``archive`` (zip or tar, optionally gz/xz/bz2) into the new folder ``target``.

    Every entry is checked before anything is written (paths, and the declared sizes against
    ``limits``); the content is extracted into a temporary sibling folder, counting bytes
    as they are written, that is renamed to ``target`` only when complete, so a refused or
    truncated archive leaves nothing behind."""
    archive, target = Path(archive), Path(target)
    limits = limits or Limits.default()
    if target.exists():
        raise ZooError(f"{target} already exists; extraction needs a new folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_partial_dir(target.parent, f".{target.name}.", ".partial")
    compressed = archive.stat().st_size
    try:
        root = tmp.resolve()
        with _members(archive) as members:
            limits.check(archive, sum(size for _, is_dir, size, _ in members if not is_dir), compressed)
            written = 0
            for rel, is_dir, _, open_fn in members:
                dest = (tmp / rel).resolve()
                if dest != root and root not in dest.parents:  # belt and braces after the '..' check
                    raise ZooError(f"{archive}: entry {str(rel)!r} resolves outside the target folder; refused")
                if is_dir:
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open_fn() as src, open(dest, "wb") as out:
                    written = copy_bounded(src, out, archive, limits, written, compressed)
        os.replace(tmp, target)
    except ARCHIVE_ERRORS as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ZooError(f"{archive}: archive is corrupt or truncated ({one_line(e)}); nothing was extracted") from e
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ZooError(f"{archive}: could not extract into {target.parent}: {e.strerror or e}; "
                       f"nothing was extracted") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def make_partial_dir(parent: Path, prefix: str, suffix: str) -> Path:
    """A fresh temporary folder with the permissions a plain ``mkdir`` would give (mkdtemp
    makes 0700; zoos are meant to be shared)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


@contextlib.contextmanager
def unpacked(path, workdir=None, limits: Limits | None = None):
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
            _refuse_links(path)
            dest.mkdir()
            for p in sorted(path.iterdir()):
                if p.is_file() and is_archive(p):
                    safe_extract(p, dest / archive_stem(p), limits)
                    continue
                try:
                    if p.is_dir():
                        shutil.copytree(p, dest / p.name)
                    else:
                        shutil.copy2(p, dest / p.name)
                except (OSError, shutil.Error) as e:
                    raise ZooError(f"{p}: could not be copied for the import ({_first_error(e)})") from e
        elif is_archive(path):
            safe_extract(path, dest, limits)
        else:
            raise ZooError(f"{path}: expected a folder or an archive ({', '.join(ARCHIVE_SUFFIXES)})")
        _extract_nested(dest, limits)
        yield dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _refuse_links(folder: Path) -> None:
    """A folder that holds archives is copied, not read in place: a symbolic link in it would be
    followed out of the folder (a link to / would copy the disk), so it is refused, named."""
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            if os.path.islink(os.path.join(root, name)):
                raise ZooError(f"{os.path.join(root, name)} is a symbolic link; a folder with archives in it is "
                               "copied for the import and links are not followed: import the archive itself, "
                               "or put the file in place of the link")


def _first_error(e: BaseException) -> str:
    """shutil.copytree's Error holds a list of (src, dst, why): the first why, in words."""
    if isinstance(e, shutil.Error) and e.args and isinstance(e.args[0], list) and e.args[0]:
        return str(e.args[0][0][-1])
    return e.strerror or str(e) if isinstance(e, OSError) else str(e)


def archive_stem(p: Path) -> str:
    for s in ARCHIVE_SUFFIXES:
        if p.name.lower().endswith(s):
            return p.name[: -len(s)]
    return p.name


def _has_archives(folder: Path) -> bool:
    return any(is_archive(p) for p in folder.rglob("*") if p.is_file())


def _extract_nested(folder: Path, limits, depth: int = 0) -> None:
    """Upstream records often wrap archives in archives (e.g. Zenodo's all-files zip)."""
    if depth > 3:
        raise ZooError(f"{folder}: archives nested more than 3 deep; refused")
    for p in sorted(folder.rglob("*")):
        if p.is_file() and is_archive(p):
            stem = archive_stem(p)
            dest = p.with_name(stem + ".d") if (p.parent / stem).exists() else p.parent / stem
            safe_extract(p, dest, limits)
            p.unlink()
            _extract_nested(dest, limits, depth + 1)
