"""Read an upstream source as shipped: a folder, a zip, a tar, or a folder of archives,
without unpacking it first.

Published zoos are large (the Lim et al. record is ~10 GB) and importers only need some
of their files (one model type of four), so members are read where they lie:

* a folder's files are read in place; archives inside it are opened as sub-trees named
  ``<folder path>/<archive name without suffix>/<member>``;
* a zip is read member by member (its central directory gives random access; a zip
  inside a zip is opened the same way, without extracting it);
* a tar (``.tar``, ``.tar.gz``, ``.tar.xz`` ...) has no index, so :meth:`Source.prepare`
  extracts just the members an importer asks for, in one pass, into the import's
  temporary folder.

Every member name is checked (no absolute path, no ``..``, no links) and every read is
bounded by :class:`zoo.hub.safety.Limits`, so a bomb is refused as such.
"""
from __future__ import annotations

import contextlib
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from ...errors import ZooError
from ..safety import (ARCHIVE_ERRORS, ARCHIVE_SUFFIXES, Limits, archive_stem, check_member, copy_bounded, is_archive,
                      load_npy, load_tensors)


class Source:
    """All files of ``path`` by posix name; use as a context manager (archives stay open)."""

    def __init__(self, path, workdir: Path, limits: Limits | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise ZooError(f"{self.path} does not exist")
        self.workdir = Path(workdir)
        self.limits = limits or Limits.default()
        self._stack = contextlib.ExitStack()
        self._where: dict[str, tuple] = {}  # name -> ("file", Path) | ("zip", ZipFile, info, archive) | ("tar", ...)
        self._expanded = 0
        self._compressed = 0
        self._extracted = 0

    def __enter__(self):
        try:
            if self.path.is_dir():
                for p in sorted(self.path.rglob("*")):
                    if p.is_file() and not p.is_symlink():
                        rel = p.relative_to(self.path).as_posix()
                        if is_archive(p):
                            self._add_archive(p, _parent_prefix(rel) + archive_stem(p))
                        else:
                            self._where[rel] = ("file", p)
            elif is_archive(self.path):
                self._add_archive(self.path, "")
            else:
                self._where[self.path.name] = ("file", self.path)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc):
        self._stack.close()

    # ------------------------------------------------------------ listing

    @property
    def names(self) -> list[str]:
        return sorted(self._where)

    def _add_archive(self, path: Path, prefix: str, fileobj=None, label: str | None = None, depth: int = 0) -> None:
        label = label or str(path)
        if depth > 2:
            raise ZooError(f"{label}: archives nested more than 2 deep; refused")
        if str(path).lower().endswith(".zip"):
            try:  # a zip inside a zip is read (and its CRC checked) already by the seek
                size = fileobj.seek(0, 2) if fileobj is not None else path.stat().st_size
                if fileobj is not None:
                    fileobj.seek(0)
                self._compressed += size
                zf = self._stack.enter_context(zipfile.ZipFile(fileobj if fileobj is not None else path))
            except (*ARCHIVE_ERRORS, OSError) as e:
                raise ZooError(f"{label}: not a readable zip archive (corrupt or truncated): {_one_line(e)}") from e
            for info in zf.infolist():
                rel = check_member(Path(label), info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise ZooError(f"{label}: entry {info.filename!r} is a symbolic link; refused")
                if info.is_dir():
                    continue
                name = _join(prefix, rel)
                if is_archive(info.filename):
                    if not info.filename.lower().endswith(".zip"):
                        raise ZooError(f"{label}: holds the archive {info.filename!r}; unpack that one first "
                                       f"(only zips inside zips are read in place)")
                    try:
                        inner = self._stack.enter_context(zf.open(info))
                    except (*ARCHIVE_ERRORS, OSError) as e:
                        raise ZooError(f"{label}: could not read {info.filename} (archive corrupt or truncated: "
                                       f"{_one_line(e)})") from e
                    self._add_archive(Path(info.filename), _join(prefix, rel.parent / archive_stem(Path(rel.name))),
                                      fileobj=inner, label=f"{label}:{info.filename}", depth=depth + 1)
                    continue
                self._expanded += info.file_size
                self._where[name] = ("zip", zf, info, label)
        else:
            if fileobj is not None:
                raise ZooError(f"{label}: a tar inside an archive; unpack it first")
            self._compressed += path.stat().st_size
            try:
                tf = self._stack.enter_context(tarfile.open(path))
                infos = tf.getmembers()
            except (*ARCHIVE_ERRORS, OSError) as e:
                raise ZooError(f"{label}: not a readable tar archive (corrupt or truncated): {_one_line(e)}") from e
            for info in infos:
                rel = check_member(path, info.name)
                if info.isdir():
                    continue
                if not info.isfile():
                    raise ZooError(f"{label}: entry {info.name!r} is a link or special file; refused")
                self._expanded += info.size
                self._where[_join(prefix, rel)] = ("tar", tf, info, label)
        self.limits.check(label, self._expanded, self._compressed)

    # ------------------------------------------------------------ reading

    def prepare(self, names) -> None:
        """Make ``names`` cheap to read: tar members among them are extracted in one pass
        per archive (in archive order), bounded by the limits. Zips and files need nothing."""
        by_tar: dict[int, list[str]] = {}
        for n in names:
            kind = self._where[n]
            if kind[0] == "tar":
                by_tar.setdefault(id(kind[1]), []).append(n)
        for group in by_tar.values():
            tf, label = self._where[group[0]][1], self._where[group[0]][3]
            for n in sorted(group, key=lambda n: self._where[n][2].offset):
                dest = self._local(n)
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with tf.extractfile(self._where[n][2]) as src, open(dest, "wb") as out:
                        self._extracted = copy_bounded(src, out, label, self.limits, self._extracted,
                                                       self._compressed)
                except (*ARCHIVE_ERRORS, OSError) as e:
                    dest.unlink(missing_ok=True)
                    raise ZooError(f"{label}: could not read {n} (archive corrupt or truncated: {_one_line(e)})") from e
                self._where[n] = ("file", dest)

    def read_bytes(self, name: str) -> bytes:
        kind = self._need(name)
        if kind[0] == "file":
            return kind[1].read_bytes()
        if kind[0] == "tar":
            self.prepare([name])
            return self._where[name][1].read_bytes()
        _, zf, info, label = kind
        try:
            with zf.open(info) as f:
                data = f.read(info.file_size + 1)
        except (*ARCHIVE_ERRORS, OSError) as e:
            raise ZooError(f"{label}: could not read {info.filename} (archive corrupt or truncated: "
                           f"{_one_line(e)})") from e
        if len(data) > info.file_size:
            raise ZooError(f"{label}: {info.filename} holds more bytes than its header declares; refused")
        return data

    def local_path(self, name: str) -> Path:
        """A real file holding ``name`` (for memory-mapped arrays): in place, or copied out."""
        kind = self._need(name)
        if kind[0] == "tar":
            self.prepare([name])
        elif kind[0] == "zip":
            _, zf, info, label = kind
            dest = self._local(name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(dest, "wb") as out:
                    self._extracted = copy_bounded(src, out, label, self.limits, self._extracted, self._compressed)
            except (*ARCHIVE_ERRORS, OSError) as e:
                dest.unlink(missing_ok=True)
                raise ZooError(f"{label}: could not read {info.filename} (archive corrupt or truncated: "
                               f"{_one_line(e)})") from e
            self._where[name] = ("file", dest)
        return self._where[name][1]

    def tensors(self, name: str):
        """A ``.pt`` member, loaded as data only (``weights_only``)."""
        kind = self._need(name)
        if kind[0] == "file" and not _inside(kind[1], self.workdir):
            return load_tensors(kind[1])
        return load_tensors(self.label(name), data=self.read_bytes(name))  # named as the user knows it

    def npy(self, name: str):
        return load_npy(self.local_path(name), label=self.label(name))

    def label(self, name: str) -> str:
        """How to name a member in a message: its file, or ``archive:member``."""
        kind = self._need(name)
        return str(kind[1]) if kind[0] == "file" and not _inside(kind[1], self.workdir) else \
            f"{self.path}:{name}" if self.path.is_file() else str(self.path / name)

    def _need(self, name: str):
        if name not in self._where:
            raise ZooError(f"{self.path}: {name} is missing")
        return self._where[name]

    def _local(self, name: str) -> Path:
        return self.workdir / ".source" / PurePosixPath(name)


def _one_line(e) -> str:
    """An archive library's message on one line (tarfile's lists each method it tried on a line)."""
    return " ".join(str(e).split()) or type(e).__name__


def _join(prefix: str, rel) -> str:
    rel = PurePosixPath(rel).as_posix()
    return f"{prefix}/{rel}" if prefix else rel


def _parent_prefix(rel: str) -> str:
    parent = PurePosixPath(rel).parent.as_posix()
    return "" if parent == "." else parent + "/"


def _inside(p: Path, folder: Path) -> bool:
    try:
        p.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def remove_extracted(workdir: Path) -> None:
    shutil.rmtree(Path(workdir) / ".source", ignore_errors=True)


__all__ = ["ARCHIVE_SUFFIXES", "Source", "remove_extracted"]
