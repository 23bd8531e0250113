"""The machinery every fuzz family shares: JSON-able mutation plans drawn by hypothesis, their
application to bytes, JSON and TOML, and the oracle that judges one run of a reader.

A *plan* is plain JSON (lists, ints, strings), so a finding is kept as a file under
tests/fuzz_regressions/ and replayed exactly: the seed inputs are rebuilt deterministically and
the plan applied to them again.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import resource
import shutil
import signal
from pathlib import Path

from hypothesis import strategies as st

from zoo import ZooError

#: Seconds one case may take before it counts as a hang.
CASE_TIMEOUT_S = 30
#: Peak resident memory (bytes) past which a case is a finding (the readers' inputs are KBs).
MEMORY_BOUND = 3 << 30


class Finding(AssertionError):
    """The oracle's verdict on one case: a reader broke a promise."""


class CaseTimeout(BaseException):
    """Raised by the alarm inside a reader that runs too long (a BaseException, so that a
    reader's ``except Exception`` cannot swallow it)."""


# ------------------------------------------------------------------ plans

_U32 = st.integers(0, 2**32 - 1)
_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**63 - 1, 2**64 - 1, 2**31]

BYTE_OP = st.one_of(
    st.tuples(st.just("flip"), st.sampled_from(["head", "tail", "any"]), _U32, st.integers(0, 7)),
    st.tuples(st.just("set"), st.sampled_from(["head", "tail", "any"]), _U32, st.integers(0, 255)),
    st.tuples(st.just("int"), st.sampled_from(["head", "tail", "any"]), _U32, st.sampled_from([1, 2, 4, 8]),
              st.sampled_from(_INTERESTING)),
    st.tuples(st.just("truncate"), _U32),
    st.tuples(st.just("zero"), st.sampled_from(["head", "any"]), _U32, st.integers(1, 512)),
    st.tuples(st.just("delete"), st.sampled_from(["head", "any"]), _U32, st.integers(1, 64)),
    st.tuples(st.just("insert"), st.sampled_from(["head", "any"]), _U32, st.binary(min_size=1, max_size=16).map(bytes.hex)),
    st.tuples(st.just("dup"), _U32, _U32, st.integers(1, 256)),
).map(list)

#: 1-4 byte-level edits: flips, interesting integers, truncation, splices.
BYTE_PLAN = st.lists(BYTE_OP, min_size=1, max_size=4)


def _pos(region: str, p: int, n: int) -> int:
    if n == 0:
        return 0
    if region == "head":
        return p % min(n, 4096)
    if region == "tail":
        return n - 1 - p % min(n, 4096)
    return p % n


def apply_bytes(data: bytes, plan) -> bytes:
    b = bytearray(data)
    for op in plan:
        kind, n = op[0], len(b)
        if kind == "flip" and n:
            b[_pos(op[1], op[2], n)] ^= 1 << op[3]
        elif kind == "set" and n:
            b[_pos(op[1], op[2], n)] = op[3]
        elif kind == "int" and n:
            i, width = _pos(op[1], op[2], n), op[3]
            b[i:i + width] = (op[4] % (1 << 8 * width)).to_bytes(width, "little")
        elif kind == "truncate":
            del b[op[1] % (n + 1):]
        elif kind == "zero" and n:
            i = _pos(op[1], op[2], n)
            b[i:i + op[3]] = bytes(len(b[i:i + op[3]]))
        elif kind == "delete" and n:
            i = _pos(op[1], op[2], n)
            del b[i:i + op[3]]
        elif kind == "insert":
            i = _pos(op[1], op[2], n + 1) if n else 0
            b[i:i] = bytes.fromhex(op[3])
        elif kind == "dup" and n:
            src, dst = op[1] % n, op[2] % n
            b[dst:dst] = b[src:src + op[3]]
    return bytes(b)


# ------------------------------------------------------------- JSON values

_TEXT = st.one_of(
    st.sampled_from(["", " ", "x", "../x.h5", "/etc/passwd", "shard-00000.h5", "shard-99999.h5", "a/b.h5", ".",
                     "..", "final", "epoch_0", "test_acc", "conv_weight", "metazoo-zoo", "metazoo-shard",
                     "nan", "inf", "-1", "1e400", "\x00", "é" * 3, "A" * 300, "0" * 64, "f" * 64]),
    st.text(max_size=12),
)
_FLOATS = st.one_of(st.sampled_from([0.0, -0.0, 0.5, -1.0, 1e308, -1e308, 5e-324, math.inf, -math.inf, math.nan]),
                    st.floats(allow_nan=True, allow_infinity=True))
_INTS = st.one_of(st.sampled_from([0, 1, -1, 2, 3, 7, 8, 24, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64,
                                   -(2**63), 10**30]), st.integers(-10**6, 10**6))
JSON_SCALAR = st.one_of(st.none(), st.booleans(), _INTS, _FLOATS, _TEXT)
JSON_VALUE = st.recursive(JSON_SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_TEXT, inner, max_size=3)), max_leaves=8)

#: A change relative to the value already there (a count off by one, a string in place of a number).
RELATIVE = st.sampled_from(["+1", "-1", "neg", "zero", "str", "list", "double", "float", "bool", "empty", "null"])

TOML_SCALAR = st.one_of(
    st.booleans(), _INTS.filter(lambda i: -(2**63) <= i < 2**63), _FLOATS, _TEXT.filter(lambda s: "\x00" not in s),
    # plans are JSON: datetimes travel as ISO strings (see revive_toml)
    st.sampled_from(["1979-05-27T07:32:00", "2020-01-01", "12:30:00"]))
TOML_VALUE = st.recursive(TOML_SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3)), max_leaves=6)


def json_op(value=JSON_VALUE):
    """One structure-aware edit of a JSON/TOML document, addressed by a path index."""
    return st.one_of(
        st.tuples(st.just("set"), _U32, value),
        st.tuples(st.just("rel"), _U32, RELATIVE),
        st.tuples(st.just("delete"), _U32),
        st.tuples(st.just("add"), _U32, st.text(max_size=10), value),
        st.tuples(st.just("swap"), _U32, _U32),
        st.tuples(st.just("dup"), _U32),
    ).map(list)


JSON_PLAN = st.lists(json_op(), min_size=1, max_size=4)


def paths(doc, prefix=()):
    """Every path into ``doc`` (the root included), in a fixed order."""
    out = [prefix]
    if isinstance(doc, dict):
        for k in doc:
            out += paths(doc[k], prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, prefix + (i,))
    return out


def _get(doc, path):
    for k in path:
        doc = doc[k]
    return doc


def _set(doc, path, value):
    if not path:
        return value
    _get(doc, path[:-1])[path[-1]] = value
    return doc


def _relative(v, how):
    if how == "+1":
        return v + 1 if isinstance(v, (int, float)) and not isinstance(v, bool) else [v, v]
    if how == "-1":
        return v - 1 if isinstance(v, (int, float)) and not isinstance(v, bool) else v[:-1] if isinstance(v, (str, list)) else None
    if how == "neg":
        return -v if isinstance(v, (int, float)) and not isinstance(v, bool) else not v
    if how == "zero":
        return 0
    if how == "str":
        return str(v)
    if how == "list":
        return [v]
    if how == "double":
        return v * 2 if isinstance(v, (int, float, str, list)) and not isinstance(v, bool) else v
    if how == "float":
        return float(v) if isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**1000 else 0.5
    if how == "bool":
        return True
    if how == "empty":
        return type(v)() if isinstance(v, (list, dict, str)) else ""
    return None


def apply_json(doc, plan, *, toml: bool = False):
    """``doc`` with ``plan``'s edits; with ``toml`` no value becomes null (TOML has none)."""
    doc = json.loads(json.dumps(doc, default=str))
    for op in plan:
        ps = paths(doc)
        p = ps[op[1] % len(ps)]
        if op[0] == "set":
            doc = _set(doc, p, op[2])
        elif op[0] == "rel":
            new = _relative(_get(doc, p), op[2])
            doc = _set(doc, p, "" if new is None and toml else new)
        elif op[0] == "delete" and p:
            parent = _get(doc, p[:-1])
            del parent[p[-1]]
        elif op[0] == "add":
            target = _get(doc, p)
            if isinstance(target, dict):
                target[op[2]] = op[3]
            elif isinstance(target, list):
                target.append(op[3])
        elif op[0] == "swap":
            q = ps[op[2] % len(ps)]
            if p and q and p[:len(q)] != q and q[:len(p)] != p:  # neither inside the other
                a, b = _get(doc, p), _get(doc, q)
                _set(doc, p, b)
                _set(doc, q, a)
        elif op[0] == "dup" and p:
            parent = _get(doc, p[:-1])
            if isinstance(parent, list):
                parent.insert(p[-1], json.loads(json.dumps(parent[p[-1]])))
        # Every edit leaves a tree: "double" repeats a list's items by reference, and a later swap
        # of such an item with its own copy's parent would make the document contain itself.
        doc = json.loads(json.dumps(doc))
    return doc


def revive_toml(v):
    """Plans are JSON: datetimes travel as strings and come back as TOML datetimes."""
    if isinstance(v, dict):
        return {str(k): revive_toml(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [revive_toml(x) for x in v if x is not None]
    if isinstance(v, str):
        for parse in (dt.datetime.fromisoformat, dt.date.fromisoformat, dt.time.fromisoformat):
            if v[:1].isdigit() and len(v) >= 8:
                with contextlib.suppress(ValueError):
                    return parse(v)
    return v


def deep_nesting(depth: int = 100_000) -> bytes:
    """A JSON text nested deeper than any parser's recursion limit."""
    return b"[" * depth + b"]" * depth


# ----------------------------------------------------------------- oracle

def snapshot(folder: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            with contextlib.suppress(FileNotFoundError):
                st_ = p.lstat()
                out[p.relative_to(folder).as_posix()] = (st_.st_size, st_.st_mtime_ns, p.is_dir())
    return out


def check_error(e: BaseException, names=()) -> None:
    """A refusal must be a ZooError (SpecError, MetanetError are ones) of one line; with
    ``names``, one of them must appear in it (the message names the input)."""
    if not isinstance(e, ZooError):
        raise Finding(f"{type(e).__name__} escaped instead of ZooError: {str(e)[:300]}") from e
    msg = str(e)
    if not msg.strip() or "\n" in msg:
        raise Finding(f"error message is not one line: {msg[:300]!r}") from e
    if names and not any(n in msg for n in names):
        raise Finding(f"error message names none of {list(names)}: {msg[:300]!r}") from e


@contextlib.contextmanager
def alarm(seconds: float):
    def ring(*_):
        raise CaseTimeout(f"case ran past {seconds} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Case:
    """One case's sandbox: ``root`` holds its inputs (and ``out`` may be written); ``marker``
    would appear if a payload ran. ``judge`` runs the reader under the oracle."""

    def __init__(self, base: Path):
        self.root = base / "case"
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self.marker = base / "PWNED"
        self.marker.unlink(missing_ok=True)
        # A fresh verification cache per case: a cache entry left by an earlier case of the same
        # size and mtime would vouch for a changed shard (the cache's documented limit).
        cache = base / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        os.environ["METAZOO_CACHE_DIR"] = str(cache)

    def judge(self, run, *, may_write=(), may_delete=(), names=(), timeout=CASE_TIMEOUT_S):
        """Run ``run()``; return ``(result, None)`` or ``(None, error)`` for an accepted refusal.
        Raises :class:`Finding` for any broken promise. ``may_write``: relative paths (and
        their insides) the reader may create or change; ``may_delete``: ones it may remove."""
        before = snapshot(self.root)
        result = error = None
        try:
            with alarm(timeout):
                result = run()
        except CaseTimeout as e:
            raise Finding(f"hang: {e}") from None
        except Finding:
            raise
        except MemoryError as e:
            raise Finding("MemoryError: the reader tried to allocate past the bound") from e
        except BaseException as e:  # noqa: BLE001 - judging every kind is the point
            if isinstance(e, KeyboardInterrupt):
                raise
            check_error(e, names)
            error = e
        if self.marker.exists():
            raise Finding("code ran: the payload's marker file appeared")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if peak > MEMORY_BOUND:
            raise Finding(f"peak memory {peak >> 20} MiB past the bound {MEMORY_BOUND >> 20} MiB")
        after = snapshot(self.root)

        def allowed(rel, which):
            return any(rel == a or rel.startswith(a.rstrip("/") + "/") for a in which)

        for rel, st_ in before.items():
            if rel not in after and not allowed(rel, may_delete) and not allowed(rel, may_write):
                raise Finding(f"deleted {rel}, which the tool did not create")
            if rel in after and after[rel] != st_ and not st_[2] and not allowed(rel, may_write):
                raise Finding(f"changed {rel}, an input")
        for rel in after:
            if rel not in before and not allowed(rel, may_write):
                raise Finding(f"wrote {rel}, outside its output folder")
        return result, error
