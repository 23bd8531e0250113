"""Checking a zoo before it is used: the manifest's schema, and each shard's sha256.

:func:`check_manifest` runs on every open (it costs microseconds per shard):
every key with its type, shard files that are plain names inside the zoo folder,
id ranges that are disjoint and cover the splits, and no ``shard-*.h5`` the
manifest does not list. Each failure is one line naming the file and the key.

:func:`check_shard` compares a shard's sha256 with the manifest's. Hashing reads the
whole file, so a verified ``(size, mtime)`` is remembered in a small JSON per zoo in
the user's cache folder (``$METAZOO_CACHE_DIR``, else ``$XDG_CACHE_HOME/metazoo`` or
``~/.cache/metazoo``), never in the zoo itself: a read-only or shared zoo opens the
same way, and a reader never writes into a zoo. The cache is a speed-up only: a file
changed in place keeps its size only if its mtime is reset too, which takes intent,
not an accident (docs/FORMAT.md).
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
from pathlib import Path

from ..errors import ZooError
from ..layout import Layout

SHARD_KEYS = {"file": str, "id_start": int, "id_stop": int, "num_models": int, "sha256": str, "bytes": int}
#: manifest key -> allowed types (None: JSON null)
MANIFEST_KEYS = {
    "format": (str,), "schema_version": (int,), "name": (str,), "num_models": (int,), "num_params": (int,),
    "num_trainable": (int,), "checkpoints": (list,), "metrics": (list,), "target": (str,), "layout": (dict,),
    "net": (dict, type(None)), "spec": (dict, type(None)), "data": (dict, type(None)), "source": (dict,),
    "shards": (list,), "splits": (dict,), "created_by": (dict,),
}
SPLITS = ("train", "val", "test")
_SHA = re.compile(r"[0-9a-f]{64}")
_SHARD_FILE = re.compile(r"shard-\d+\.h5")


def _type_ok(v, types) -> bool:
    if isinstance(v, bool) and bool not in types:
        return False
    return isinstance(v, types)


def check_manifest(m, root: Path, manifest_name: str = "manifest.json") -> None:
    """Raise a one-line ZooError naming ``root/manifest.json`` and the key at fault."""
    root = Path(root)
    where = root / manifest_name

    def bad(key, why):
        raise ZooError(f"{where}: key {key!r} {why}")

    if not isinstance(m, dict):
        raise ZooError(f"{where}: must hold a JSON object, not {type(m).__name__}")
    for key, types in MANIFEST_KEYS.items():
        if key not in m:
            bad(key, "is missing")
        if not _type_ok(m[key], types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            bad(key, f"must be {names}, not {type(m[key]).__name__}")
    if m["num_models"] < 0 or m["num_params"] < 1 or not 0 <= m["num_trainable"] <= m["num_params"]:
        bad("num_models", f"/num_params/num_trainable are inconsistent "
                          f"({m['num_models']}, {m['num_params']}, {m['num_trainable']})")
    cks = m["checkpoints"]
    if not cks or not all(isinstance(c, str) for c in cks) or len(set(cks)) != len(cks):
        bad("checkpoints", f"must be a non-empty list of distinct names, not {cks!r}")

    try:
        layout = Layout.from_dict(m["layout"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        bad("layout", f"is malformed ({type(e).__name__}: {e})")
    if layout.num_params != m["num_params"]:
        bad("num_params", f"= {m['num_params']} but the layout has {layout.num_params} parameters")

    names, ranges, total = set(), [], 0
    for i, s in enumerate(m["shards"]):
        key = f"shards[{i}]"
        if not isinstance(s, dict):
            bad(key, f"must be an object, not {type(s).__name__}")
        for k, t in SHARD_KEYS.items():
            if k not in s:
                bad(f"{key}.{k}", "is missing")
            if not _type_ok(s[k], (t,)):
                bad(f"{key}.{k}", f"must be {t.__name__}, not {type(s[k]).__name__}")
        f = s["file"]
        if f in (".", "..") or "/" in f or "\\" in f or "\0" in f or os.path.basename(f) != f or not f.endswith(".h5"):
            bad(f"{key}.file", f"= {f!r} must be a plain *.h5 file name inside the zoo folder")
        if f in names:
            bad(f"{key}.file", f"= {f!r} is listed twice")
        names.add(f)
        if not _SHA.fullmatch(s["sha256"]):
            bad(f"{key}.sha256", "must be 64 lowercase hex digits")
        if not (0 <= s["id_start"] <= s["id_stop"] and 0 <= s["num_models"] <= s["id_stop"] - s["id_start"]):
            bad(key, f"has an impossible id range [{s['id_start']}, {s['id_stop']}) for {s['num_models']} models")
        ranges.append((s["id_start"], s["id_stop"], f))
        total += s["num_models"]
    if total != m["num_models"]:
        bad("num_models", f"= {m['num_models']} but the shards hold {total}")
    ranges.sort()
    for (a0, a1, fa), (b0, b1, fb) in zip(ranges, ranges[1:]):
        if a0 < a1 and b0 < b1 and b0 < a1:
            bad("shards", f"id ranges overlap: {fa} [{a0}, {a1}) and {fb} [{b0}, {b1})")

    sp = m["splits"]
    seen = set()
    starts = [r[0] for r in ranges]

    for k in SPLITS:
        ids = sp.get(k)
        if not isinstance(ids, list) or not all(_type_ok(i, (int,)) for i in ids):
            bad(f"splits.{k}", "must be a list of model ids")
        for i in ids:
            if i in seen:
                bad(f"splits.{k}", f"lists model {i} twice or in two splits")
            seen.add(i)
            j = bisect.bisect_right(starts, i) - 1
            if j < 0 or not ranges[j][0] <= i < ranges[j][1]:
                bad(f"splits.{k}", f"lists model {i}, which no shard holds (a shard is missing from 'shards')")
    if len(seen) != m["num_models"]:
        bad("splits", f"cover {len(seen)} models but the zoo has {m['num_models']}")

    real = Path(os.path.realpath(root))
    for f in sorted(names):
        p = root / f
        if p.is_symlink() and Path(os.path.realpath(p)).parent != real:
            bad("shards", f"file {f!r} links outside the zoo folder; refused")
    try:
        stray = sorted(p.name for p in root.iterdir() if _SHARD_FILE.fullmatch(p.name) and p.name not in names)
    except OSError as e:
        raise ZooError(f"{root}: cannot list the zoo folder: {e.strerror}") from e
    if stray:
        bad("shards", f"does not list {stray[0]}" + (f" (and {len(stray) - 1} more)" if len(stray) > 1 else "")
            + ", which lies in the zoo folder: the manifest and the shards disagree")


# -------------------------------------------------------------- checksums

def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    env = os.environ.get("METAZOO_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "metazoo"


def _cache_file(root: Path) -> Path:
    key = hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:24]
    return cache_dir() / "verified" / f"{key}.json"


class ShardVerifier:
    """Verifies the shards of one zoo against the manifest, each at most once.

    ``check(entry)`` raises ZooError for a missing file, a wrong size or a wrong sha256;
    a shard whose ``(size, mtime_ns, sha256)`` was verified before is not read again."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.done: set[str] = set()
        self._cache: dict | None = None

    def check(self, entry: dict) -> None:
        name = entry["file"]
        if name in self.done:
            return
        path = self.root / name
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ZooError(f"{path}: missing (listed in {self.root / 'manifest.json'})") from None
        if st.st_size != entry["bytes"]:
            raise ZooError(f"{path}: {st.st_size} bytes, the manifest says {entry['bytes']}: the shard is "
                           "truncated or was replaced (zoo verify names every bad shard)")
        key = [st.st_size, st.st_mtime_ns, entry["sha256"]]
        cache = self._load()
        if cache.get(name) != key:
            sha = sha256_file(path)
            if sha != entry["sha256"]:
                raise ZooError(f"{path}: sha256 {sha[:12]}… does not match the manifest's {entry['sha256'][:12]}…: "
                               "the shard is damaged or was changed after the zoo was written; refused "
                               "(open with verify=False / --no-verify to read it anyway)")
            cache[name] = key
            self._save(cache)
        self.done.add(name)

    def remember(self, entry: dict) -> None:
        """Record a shard whose sha256 the caller has just computed from the file itself
        (a writer sealing a zoo), so the first open need not hash it again."""
        st = (self.root / entry["file"]).stat()
        cache = self._load()
        cache[entry["file"]] = [st.st_size, st.st_mtime_ns, entry["sha256"]]
        self._save(cache)

    def _load(self) -> dict:
        if self._cache is None:
            try:
                c = json.loads(_cache_file(self.root).read_text())
                self._cache = c if isinstance(c, dict) and c.get("zoo") == os.path.realpath(self.root) else {}
            except (OSError, ValueError, RecursionError):
                self._cache = {}
            self._cache.pop("zoo", None)
        return self._cache

    def _save(self, cache: dict) -> None:
        path = _cache_file(self.root)
        try:  # a cache we cannot write only costs a re-hash next time
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"zoo": os.path.realpath(self.root), **cache}))
            os.replace(tmp, path)
        except OSError:
            pass
