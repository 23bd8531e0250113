"""Every HDF5 file is read first by a helper process with a deadline, then by this one.

libhdf5 loops forever on some damaged files (docs/FORMAT.md, Fuzzing): reading a header attribute
of such a shard never returns, and no alarm can interrupt C code. A checksum stops damaged bytes,
but not a shard whose manifest was rewritten to match, nor one read with ``--no-verify``. So
:func:`zoo.store.open_shard` first has a helper interpreter open the file and parse what this
process will parse: every attribute, every group and link, every chunk index, a row of every large
dataset and all of every small one. Only if that comes back in time does this process open the
file; a helper that passes the deadline is killed and the shard refused, naming it:

    runs/z/shard-00003.h5: reading its HDF5 metadata did not finish within 20 s of CPU time (...)

The deadline (20 s plus one per 20 MB) counts the helper's CPU time, not the clock: a libhdf5 loop
burns CPU, while a helper starved on a busy machine (or under ``nice``) does not, and is waited for
(up to ten times the deadline in wall time, for a helper blocked on a hung file system).

The helper is one long-lived interpreter per process, started on first use (about half a second:
it imports h5py and numpy, never torch), so a zoo of many shards pays the start once; a file
already probed (same inode, size and mtime) is not probed again; the helper ends with this process.
Whatever the helper finds besides a hang or a crash (an HDF5 error, a missing dataset) this process
finds again when it reads the file, and reports as before.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import resource
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py

from ..errors import ZooError

#: Seconds an isolated reader is allowed before it counts the bytes (one more per 20 MB).
ISOLATED_BASE_S = 20.0
#: A helper that has not answered after this many times its CPU deadline in wall time is given
#: up on too (blocked, not looping: a hung file system).
WALL_FACTOR = 10
#: A dataset up to this size is read whole by the helper; a larger one (a shard's weights) a row.
WHOLE_BYTES = 64 << 20
_SERVE = "from zoo.store.probe import _serve; _serve()"


def probe_shard(path, timeout: float | None = None) -> None:
    """Have the helper read shard ``path``'s metadata; return when it has (whatever it found).

    ZooError naming ``path`` if it did not finish within ``timeout`` seconds of the helper's CPU
    time (by default :func:`deadline`) or killed its reader. A file probed before by this process,
    unchanged, is not probed again."""
    _PROBER.probe(Path(path), timeout)


def deadline(nbytes: int) -> float:
    """Seconds an isolated reader of ``nbytes`` of shards is allowed: 20, plus one per 20 MB."""
    return ISOLATED_BASE_S + nbytes / 20e6


def child_env() -> dict:
    """The environment of a child interpreter that imports this very ``zoo`` package."""
    here = str(Path(__file__).resolve().parents[2])  # the folder holding the zoo package
    return {**os.environ, "PYTHONPATH": os.pathsep.join(x for x in (here, os.environ.get("PYTHONPATH")) if x)}


class _Prober:
    def __init__(self):
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._stderr = None
        self._owner = None  # the pid that started the helper: a forked child starts its own
        self._done: set[tuple] = set()
        self._refused: dict[tuple, str] = {}

    def probe(self, path: Path, timeout: float | None) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return  # missing or unreadable: opening it says so, and libhdf5 reads nothing
        key = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if timeout is None:
            timeout = deadline(st.st_size)
        with self._lock:
            if key in self._refused:  # the same bytes again: the same answer, without the wait
                raise ZooError(self._refused[key])
            if key in self._done:
                return
            try:
                self._ask(path, timeout)
            except ZooError as e:
                self._refused[key] = str(e)
                raise
            self._done.add(key)

    def _ask(self, path: Path, timeout: float) -> None:
        proc = self._helper()
        try:
            proc.stdin.write((json.dumps([str(path), timeout]) + "\n").encode())
            proc.stdin.flush()
        except OSError:
            words = self._last_words()
            self._stop()
            raise ZooError(f"{path}: could not start reading its HDF5 metadata in a helper process "
                           f"({words})") from None
        # The deadline counts the helper's CPU time where the OS tells it (a libhdf5 loop burns CPU;
        # a helper merely starved on a busy machine does not), and wall time only as a far backstop.
        cpu0, start, line = _cpu_seconds(proc.pid), time.monotonic(), b""
        fd = proc.stdout.fileno()
        while not line.endswith(b"\n"):
            if not select.select([fd], [], [], 0.25)[0]:
                cpu = _cpu_seconds(proc.pid)
                wall = time.monotonic() - start
                spent = cpu - cpu0 if cpu is not None and cpu0 is not None else wall
                if spent > timeout or wall > WALL_FACTOR * timeout:
                    self._stop()
                    took = f"{timeout:.0f} s of CPU time" if spent != wall else f"{wall:.0f} s"
                    raise ZooError(f"{path}: reading its HDF5 metadata did not finish within {took} (the HDF5 "
                                   "library loops on some damaged files); the shard is refused. zoo verify names "
                                   "every bad shard")
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                words = self._last_words()
                self._stop()
                raise ZooError(f"{path}: reading its HDF5 metadata crashed the helper process ({words}); the "
                               "shard is damaged and refused. zoo verify names every bad shard")
            line += chunk

    def _helper(self) -> subprocess.Popen:
        if self._proc is not None and self._owner == os.getpid() and self._proc.poll() is None:
            return self._proc
        if self._owner == os.getpid():
            self._stop()
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen([sys.executable, "-c", _SERVE], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._stderr, env=child_env())
        self._owner = os.getpid()
        return self._proc

    def _last_words(self) -> str:
        code = None
        if self._proc is not None:
            try:  # its stdout has closed: it is exiting, or already gone
                code = self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        said = ""
        if self._stderr is not None:
            try:
                self._stderr.seek(0)
                said = (self._stderr.read().decode(errors="replace").strip().splitlines() or [""])[-1][:200]
            except OSError:
                pass
        return f"exit code {code}" + (f": {said}" if said else "")

    def _stop(self) -> None:
        """End the helper (only ours: a forked child leaves its parent's helper alone)."""
        proc, self._proc = self._proc, None
        if proc is not None and self._owner == os.getpid():
            for pipe in (proc.stdin, proc.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def _cpu_seconds(pid: int) -> float | None:
    """CPU seconds process ``pid`` has used (Linux /proc), or None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except (OSError, ValueError, IndexError):
        return None


_PROBER = _Prober()
atexit.register(_PROBER._stop)


# ------------------------------------------------------------------ the helper

def _limit_cpu(seconds: float) -> None:
    """Let the kernel end this process once it has used ``seconds`` more CPU time (SIGXCPU),
    without a core file."""
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    want = math.ceil(used + seconds)
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CPU, (want, hard))


def _read_metadata(path: Path) -> None:
    """Make libhdf5 parse what a reader of the shard will: attributes, links, chunk indexes, data."""
    with h5py.File(path, "r") as f:
        def touch(obj):
            for k in obj.attrs:
                obj.attrs[k]
            if isinstance(obj, h5py.Group):
                for k in obj:
                    obj.get(k, getlink=True)
            elif isinstance(obj, h5py.Dataset):
                if obj.chunks is not None:
                    obj.id.chunk_iter(lambda _: None)  # the whole chunk index, without the data
                if obj.shape is None or obj.ndim == 0 or obj.nbytes <= WHOLE_BYTES:
                    obj[()]
                elif obj.shape[0]:
                    obj[:1]

        touch(f)
        f.visititems(lambda _, obj: touch(obj))


def _serve() -> None:
    """The helper's loop: ``[path, deadline]`` as JSON per line in, one line out when it is read.
    Ends at EOF (its parent closed the pipe or died).

    Before each file it also sets its own CPU limit a little past the deadline, so that the
    kernel ends a looping helper whose parent was killed before it could kill the helper (an
    orphan must not spin forever), and no core file is written when that happens."""
    for line in sys.stdin.buffer:
        try:
            path, deadline = json.loads(line)
            _limit_cpu(2 * float(deadline) + 5)
            _read_metadata(Path(path))
            said = "read"
        except Exception as e:  # noqa: BLE001 - the caller meets it again in-process; only time matters here
            said = type(e).__name__
        sys.stdout.write(said + "\n")
        sys.stdout.flush()
