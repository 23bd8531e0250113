"""One writer per output folder: ``with lock_dir(out, what="zoo generate"): ...``.

The lock is an ``flock`` on a small file *beside* the folder (``.NAME.lock`` in its
parent), so it also guards a folder that does not exist yet or that is replaced by a
rename (``zoo import``). The kernel drops an flock when its process dies, however it
dies, so a lock left by a killed process is simply free: no guessing from PIDs, and a
reused PID cannot keep a folder locked. The file holds who holds the lock (PID,
host, process start time, command, since when) only to name them in the error:

    runs/z is being written by process 4242 on node7 (zoo generate) since 2026-11-27 04:51:07 UTC

``key`` lets cooperating writers share a folder: ``zoo generate --shard I --num-shards N``
jobs take the folder lock shared and a lock of their own shard exclusively, so jobs of
different shards run together while a second job for the same shard, or a whole-zoo
writer, is refused.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import tempfile
import time
import warnings
from pathlib import Path

from ..errors import ZooError
from ..fs import make_dirs, remove_empty_dirs

_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class LockedError(ZooError):
    """Another live process writes the folder."""


def lock_path(path, key: str | None = None) -> Path:
    """The lock file of folder ``path``: beside it, or inside it (``.metazoo[.KEY].lock``)
    when the parent is not writable but the folder is (a folder an admin made for you)."""
    path = Path(os.path.abspath(path))
    beside = path.parent / (f".{path.name}.{key}.lock" if key else f".{path.name}.lock")
    if path.is_dir() and not beside.exists() and not _writable(path.parent) and _writable(path):
        return path / (f".metazoo.{key}.lock" if key else ".metazoo.lock")
    return beside


def _writable(folder: Path) -> bool:
    try:
        fd, probe = tempfile.mkstemp(prefix=".lock-probe.", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


@contextlib.contextmanager
def lock_dir(path, what: str = "zoo generate", key: str | None = None):
    """Hold the write lock of folder ``path`` for the ``with`` block.

    Raises :class:`LockedError` (a ZooError) naming the holder when another process
    holds it. With ``key``, the folder lock is taken shared and ``key``'s lock exclusive
    (see the module doc). On a file system without locks, warns and goes on unlocked."""
    path = Path(path)
    try:
        created = make_dirs(path.parent)
    except OSError as e:
        raise ZooError(f"could not create {path.parent}: {e.strerror}") from e
    try:
        with contextlib.ExitStack() as stack:
            if key is None:
                stack.enter_context(_flock(lock_path(path), path, what, shared=False))
            else:
                stack.enter_context(_flock(lock_path(path), path, what, shared=True))
                stack.enter_context(_flock(lock_path(path, key), path, f"{what} {key}", shared=False))
            yield
    finally:  # folders made only to hold the lock file go again if the command wrote nothing into them
        remove_empty_dirs(created)


def holder(path, key: str | None = None) -> dict | None:
    """What the lock file of ``path`` says about its last holder (None if no file)."""
    try:
        return json.loads(lock_path(path, key).read_text())
    except (OSError, ValueError, RecursionError):
        return None


@contextlib.contextmanager
def _flock(lock: Path, folder: Path, what: str, shared: bool):
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # a refused writer beside us removed the folder it made: make it again
            try:
                lock.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ZooError(f"could not lock {folder}: cannot create {lock.parent}: {e.strerror}") from e
            continue
        except OSError as e:
            raise ZooError(f"could not lock {folder}: cannot create {lock}: {e.strerror}") from e
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(_busy_message(folder, lock)) from None
        except OSError as e:
            os.close(fd)
            if e.errno in _UNSUPPORTED:
                warnings.warn(f"{lock.parent} does not support file locks; {folder} is not protected "
                              "against a second writer", stacklevel=3)
                yield
                return
            raise
        # The releasing holder may have unlinked the file between our open and flock: then we
        # hold a lock on an orphan inode and must start over on the path's current file.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        if not shared or os.fstat(fd).st_size == 0:  # shared holders keep the first one's name
            _write_holder(fd, what)
        yield
    finally:
        _release(fd, lock)


def _write_holder(fd: int, what: str) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(),
            "what": what, "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    with contextlib.suppress(OSError):  # who holds it is for messages only: a full disk must not stop us
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)


def _release(fd: int, lock: Path) -> None:
    # Remove the file only when nobody else holds it (a shard job sharing the folder lock
    # may still run): upgrade to exclusive without blocking, and unlink only if that works.
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                os.unlink(lock)
    except OSError:
        pass
    finally:
        os.close(fd)


def _busy_message(folder: Path, lock: Path) -> str:
    try:
        h = json.loads(lock.read_text())
        host = "" if h.get("host") == socket.gethostname() else f" on {h.get('host')}"
        return (f"{folder} is being written by process {h.get('pid')}{host} ({h.get('what')}) since "
                f"{h.get('since')}; wait for it to finish or stop it, or choose another folder")
    except (OSError, ValueError, AttributeError, RecursionError):
        return f"{folder} is being written by another process (lock {lock}); wait for it or choose another folder"


def _process_start() -> str | None:
    """This process's start time in clock ticks since boot (with the boot id): names the
    holder unambiguously even after its PID has been reused."""
    try:
        stat = Path("/proc/self/stat").read_text()
        start = stat.rsplit(")", 1)[1].split()[19]
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{start}"
    except (OSError, IndexError):
        return None
