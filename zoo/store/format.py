"""The on-disk weight dataset: HDF5 shards plus a JSON manifest (see docs/FORMAT.md).

Every file goes through :mod:`zoo.fs` (temporary name, fsync, rename), so a reader (or a
crash) only ever sees a whole file.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from .._version import __version__
from ..errors import ZooError
from ..fs import atomic_path, json_default, write_json, write_text
from ..layout import Layout
from .integrity import ShardVerifier, check_manifest, sha256_file
from .probe import child_env, deadline, probe_shard

SCHEMA_VERSION = 1
SUPPORTED_SCHEMAS = (1,)
MANIFEST = "manifest.json"
FORMAT = "metazoo-zoo"
SHARD_FORMAT = "metazoo-shard"
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


def metric_column(metric: str, checkpoint: str) -> str:
    """Table column of a metric at a checkpoint: plain name for 'final', ``name@ckpt`` otherwise."""
    return metric if checkpoint == "final" else f"{metric}@{checkpoint}"


def versions(device: str | None = None) -> dict:
    import torch  # deferred: reading and verifying a zoo (zoo verify's child) never needs torch

    return {"metazoo": __version__, "torch": torch.__version__, "h5py": h5py.__version__,
            "python": platform.python_version(), "device": device or "cpu"}


# ----------------------------------------------------------------- shards

@dataclass
class ShardContent:
    """What one shard holds. ``weights[ckpt]`` is ``[n, P]`` float32 in layout order."""

    ids: np.ndarray
    weights: dict
    table: pd.DataFrame
    layout: Layout
    fixed_values: np.ndarray | None = None
    extra_fixed: dict | None = None  # e.g. FiGLU mixing matrices, name -> array
    buffers: dict | None = None  # ckpt -> [n, Pb] (BatchNorm running stats)
    attrs: dict | None = None  # spec, versions, source ... (JSON-able)

    def __post_init__(self):
        self.ids = np.asarray(self.ids, dtype=np.int64)
        n, P = len(self.ids), self.layout.num_params
        if len(self.table) != n:
            raise ValueError(f"table has {len(self.table)} rows for {n} models")
        for ck, w in self.weights.items():
            if w.shape != (n, P):
                raise ValueError(f"weights[{ck!r}] has shape {w.shape}, expected {(n, P)}")


def write_shard(path: Path, content: ShardContent, record: Path | None = None) -> str:
    """Write one shard atomically; return its sha256.

    ``record``: also write the sha256 to this file, *before* the shard appears under its
    name, so a shard on disk always has the hash it was written with (generate checks
    parts and shards against it before sealing them into a zoo).

    The HDF5 file is built in memory and written with plain file writes: HDF5 itself
    must never meet a full disk, since h5py then fails in ``close`` and the interpreter
    crashes later while finalising the half-closed file (a segfault, not an error)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(path.name, "w", driver="core", backing_store=False) as f:
            _write_contents(f, content)
            f.flush()
            image = f.id.get_file_image()
        sha = hashlib.sha256(image).hexdigest()
        with open(tmp, "wb") as out:
            out.write(image)
        if record is not None:
            write_text(record, sha + "\n")
    return sha


def recorded_sha(record: Path) -> str | None:
    """The sha256 a :func:`write_shard` ``record`` file holds, or None."""
    try:
        sha = Path(record).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return sha if len(sha) == 64 else None


def _write_contents(f: h5py.File, c: ShardContent) -> None:
    f.attrs["format"] = SHARD_FORMAT
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["layout"] = c.layout.to_json()
    for k, v in (c.attrs or {}).items():
        f.attrs[k] = v if isinstance(v, (str, int, float)) else json.dumps(v, default=json_default)
    f.create_dataset("ids", data=c.ids)
    P = c.layout.num_params
    wg = f.create_group("weights")
    for ck, w in c.weights.items():
        wg.create_dataset(ck, data=np.asarray(w, np.float32), chunks=(1, P) if len(c.ids) else None)
    if c.buffers:
        bg = f.create_group("buffers")
        for ck, b in c.buffers.items():
            bg.create_dataset(ck, data=np.asarray(b, np.float32))
    if c.layout.fixed_mask is not None:
        f.create_dataset("fixed/mask", data=c.layout.fixed_mask)
        f.create_dataset("fixed/values", data=np.asarray(c.fixed_values, np.float32))
    for name, arr in (c.extra_fixed or {}).items():
        f.create_dataset(f"fixed/extra/{name}", data=np.asarray(arr, np.float32))
    tg = f.create_group("table")
    for col in c.table.columns:
        v = c.table[col].to_numpy()
        if v.dtype == object or v.dtype.kind in "US" or str(c.table[col].dtype) in ("string", "str"):
            tg.create_dataset(col, data=np.asarray([str(x) for x in v], dtype=object), dtype=h5py.string_dtype())
        else:
            tg.create_dataset(col, data=v)


def _check_shard_header(f: h5py.File, path) -> None:
    if f.attrs.get("format") != SHARD_FORMAT:
        raise ZooError(f"{path} is not a metazoo shard (format attribute {f.attrs.get('format')!r})")
    v = int(f.attrs.get("schema_version", -1))
    if v not in SUPPORTED_SCHEMAS:
        raise ZooError(f"{path} has schema version {v}; this metazoo reads {SUPPORTED_SCHEMAS}: upgrade metazoo")


def _check_shard_structure(f: h5py.File, path) -> None:
    """Refuse a shard whose datasets are not what docs/FORMAT.md says before anyone trusts their
    shapes (a checksum only says the file is the one the manifest names, not that it is sound):
    ``ids`` [n] integers; ``weights/<ck>`` and ``buffers/<ck>`` [n, P] float32; ``table/<col>``
    [n]; ``fixed/mask`` [P] bool and ``fixed/values`` [P]; and no links (metazoo writes none: an
    external link would read another file, outside the zoo)."""
    def bad(what):
        raise ZooError(f"{path} is not a valid metazoo shard: {what}")

    def members(group, name):
        if not isinstance(group, h5py.Group):
            bad(f"'{name}' is not a group")
        out = {}
        for k in group:
            if not isinstance(group.get(k, getlink=True), h5py.HardLink):
                bad(f"'{name}/{k}' is a link; refused")
            d = group[k]
            if isinstance(d, h5py.Dataset) and d.is_virtual:
                bad(f"'{name}/{k}' is a virtual dataset (it reads other files); refused")
            out[k] = d
        return out

    top = members(f, "")
    ids = top.get("ids")
    if not isinstance(ids, h5py.Dataset) or ids.ndim != 1 or ids.dtype.kind not in "iu":
        bad("'ids' must be a 1-D integer dataset")
    n, width = ids.shape[0], {}
    for group in ("weights", "buffers"):
        if group not in top:
            if group == "weights":
                bad("no 'weights' group")
            continue
        for ck, d in members(top[group], group).items():
            if not isinstance(d, h5py.Dataset) or d.ndim != 2 or d.dtype != np.float32 or d.shape[0] != n:
                bad(f"'{group}/{ck}' must be float32 [{n}, P] (one row per id), not "
                    f"{getattr(d, 'dtype', 'a group')} {getattr(d, 'shape', '')}")
            if width.setdefault(group, d.shape[1]) != d.shape[1]:
                bad(f"'{group}/{ck}' has {d.shape[1]} columns, another checkpoint {width[group]}")
    if "table" not in top:
        bad("no 'table' group")
    for col, d in members(top["table"], "table").items():
        if not isinstance(d, h5py.Dataset) or d.shape != (n,) or d.dtype.kind not in "biufSO":
            bad(f"'table/{col}' must hold one number or string per id ({n}), not "
                f"{getattr(d, 'dtype', 'a group')} {getattr(d, 'shape', '')}")
    if "fixed" in top:
        fixed = members(top["fixed"], "fixed")
        p = width.get("weights")
        for k, kind in (("mask", "b"), ("values", "f")):
            d = fixed.get(k)
            if d is not None and (not isinstance(d, h5py.Dataset) or d.shape != (p,) or d.dtype.kind != kind):
                bad(f"'fixed/{k}' must be a [{p}] {'bool' if kind == 'b' else 'float'} dataset")
        if ("mask" in fixed) != ("values" in fixed):
            bad("'fixed' needs both 'mask' and 'values'")
        if "extra" in fixed:
            for k, d in members(fixed["extra"], "fixed/extra").items():
                if not isinstance(d, h5py.Dataset) or d.dtype.kind != "f":
                    bad(f"'fixed/extra/{k}' must be a float dataset")


def open_shard(path: Path) -> h5py.File:
    """Open a shard read-only, turning HDF5's errors on a damaged file into a ZooError. A helper
    process reads the file first (:mod:`zoo.store.probe`), so bytes that make libhdf5 loop are a
    refusal naming the shard, not a hang."""
    probe_shard(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ZooError(f"shard {path} is unreadable (corrupt or truncated): {e}") from e
    try:
        _check_shard_header(f, path)
        _check_shard_structure(f, path)
    except ZooError:
        f.close()
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:  # HDF5 metadata damaged past the header
        f.close()
        raise ZooError(f"shard {path} is unreadable (corrupt or truncated): {' '.join(str(e).split())}") from e
    return f


def read_shard(path: Path, checkpoints=None, with_fixed: bool = True) -> ShardContent:
    """Read a whole shard back (used to assemble parts and merge shards)."""
    with open_shard(path) as f:
        try:
            mask = f["fixed/mask"][()] if "fixed" in f and "mask" in f["fixed"] else None
            layout = Layout.from_json(f.attrs["layout"], mask)
            cks = list(f["weights"].keys()) if checkpoints is None else checkpoints
            return ShardContent(
                ids=f["ids"][()],
                weights={ck: f["weights"][ck][()] for ck in cks},
                table=read_table(f),
                layout=layout,
                fixed_values=f["fixed/values"][()] if mask is not None else None,
                extra_fixed={k: v[()] for k, v in f["fixed/extra"].items()} if "fixed/extra" in f else None,
                buffers={ck: f["buffers"][ck][()] for ck in cks} if "buffers" in f else None,
                attrs={k: f.attrs[k] for k in f.attrs if k not in ("format", "schema_version", "layout")},
            )
        except (KeyError, OSError) as e:
            raise ZooError(f"shard {path} is damaged: {e}") from e


def read_table(f: h5py.File) -> pd.DataFrame:
    cols = {}
    for k, d in f["table"].items():
        v = d[()]
        if v.dtype == object:
            v = np.array([x.decode() if isinstance(x, bytes) else x for x in v], dtype=object)
        cols[k] = v
    df = pd.DataFrame(cols)
    df.insert(0, "model_id", f["ids"][()])
    return df


def concat_contents(parts: list[ShardContent]) -> ShardContent:
    """Join shard contents (same layout) into one, ordered by model id."""
    if not parts:
        raise ValueError("nothing to concatenate")
    ids = np.concatenate([p.ids for p in parts])
    order = np.argsort(ids, kind="stable")
    first = parts[0]
    table = pd.concat([p.table.drop(columns=["model_id"], errors="ignore") for p in parts], ignore_index=True)
    table = table.iloc[order].reset_index(drop=True)
    return ShardContent(
        ids=ids[order],
        weights={ck: np.concatenate([p.weights[ck] for p in parts])[order] for ck in first.weights},
        table=table, layout=first.layout, fixed_values=first.fixed_values, extra_fixed=first.extra_fixed,
        buffers={ck: np.concatenate([p.buffers[ck] for p in parts])[order] for ck in first.buffers}
        if first.buffers else None,
        attrs=first.attrs,
    )


# --------------------------------------------------------------- manifest

def make_splits(ids, fractions=(0.5, 0.25, 0.25), seed: int = 0) -> dict:
    """Seeded train/val/test split of model ids (fractions of the number of models)."""
    ids = np.sort(np.asarray(ids, dtype=np.int64))
    perm = np.random.default_rng(np.random.SeedSequence([seed, 0x5B117])).permutation(len(ids))
    n_train = int(round(fractions[0] * len(ids)))
    n_val = int(round(fractions[1] * len(ids)))
    cut = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}
    return {"seed": seed, "fractions": list(fractions),
            **{k: sorted(int(i) for i in ids[v]) for k, v in cut.items()}}


def shard_entry(path: Path, ids, sha: str | None = None) -> dict:
    ids = np.asarray(ids)
    return {"file": Path(path).name, "id_start": int(ids.min()) if len(ids) else 0,
            "id_stop": int(ids.max()) + 1 if len(ids) else 0, "num_models": int(len(ids)),
            "sha256": sha or sha256_file(path), "bytes": Path(path).stat().st_size}


def build_manifest(*, name: str, layout: Layout, shards: list[dict], checkpoints: list[str],
                   splits: dict, spec: dict | None = None, net: dict | None = None,
                   source: dict | None = None, device: str | None = None, data: dict | None = None) -> dict:
    return {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "name": name,
        "num_models": int(sum(s["num_models"] for s in shards)),
        "num_params": layout.num_params, "num_trainable": layout.num_trainable,
        "checkpoints": list(checkpoints), "metrics": list(METRICS), "target": "test_acc",
        "layout": layout.to_dict(), "net": net, "spec": spec, "data": data,
        "source": source or {"kind": "generated"},
        "shards": shards, "splits": splits, "created_by": versions(device),
    }


def read_manifest(root: Path, check: bool = True) -> dict:
    """The manifest of the zoo at ``root``, validated (:func:`zoo.store.integrity.check_manifest`)."""
    root = Path(root)
    path = root / MANIFEST
    if not root.exists():
        raise ZooError(f"{root} does not exist")
    if not path.exists():
        hint = " (a generation seems to be in progress or was interrupted: rerun `zoo generate` to finish it, " \
               "or `zoo merge` for shard jobs)" if (root / PLAN).exists() else ""
        raise ZooError(f"{root} is not a metazoo zoo: no {MANIFEST}{hint}")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZooError(f"{path} is not valid JSON: {e}") from e
    except RecursionError:  # json.loads recurses once per level of nesting
        raise ZooError(f"{path} is not a metazoo manifest (JSON nested too deep to read)") from None
    except OSError as e:
        raise ZooError(f"{path}: cannot read: {e.strerror}") from e
    if not isinstance(m, dict):
        raise ZooError(f"{path} is not a metazoo manifest (a JSON {type(m).__name__}, not an object)")
    if m.get("format") != FORMAT:
        raise ZooError(f"{path} is not a metazoo manifest (format {m.get('format')!r}, expected {FORMAT!r})")
    if m.get("schema_version") not in SUPPORTED_SCHEMAS:
        raise ZooError(f"{path}: unknown schema version {m.get('schema_version')!r}; "
                       f"this metazoo reads {list(SUPPORTED_SCHEMAS)}: upgrade metazoo")
    if check:
        check_manifest(m, root, MANIFEST)
    return m


def owned_by_metazoo(folder: Path) -> bool:
    """True if ``folder`` holds a metazoo zoo or a generation of one (what ``--force`` may
    replace); a folder of anything else, or a manifest of another format, is not ours."""
    folder = Path(folder)
    for name, fmt in ((MANIFEST, FORMAT), (PLAN, "metazoo-plan")):
        try:
            if json.loads((folder / name).read_text()).get("format") == fmt:
                return True
        except (OSError, ValueError, AttributeError, RecursionError):
            continue
    return False


def check_replaceable(folder: Path, option: str = "--force") -> None:
    """Refuse to replace a non-empty folder that is not a metazoo zoo, naming one of its files."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ZooError(f"{folder} is a file, not a zoo folder; {option} replaces only zoo folders")
    if owned_by_metazoo(folder):
        return
    first = next(iter(sorted(folder.iterdir())), None)
    if first is not None:
        raise ZooError(f"{folder} holds files that are not a metazoo zoo (e.g. {first.name}); {option} replaces "
                       "only a folder holding a zoo: choose another folder or empty it yourself")


#: The generation plan written when a generation starts (see zoo.generate).
PLAN = "zoo-plan.json"


# ----------------------------------------------------------------- verify

def verify(root: Path) -> list[str]:
    """Check a zoo: checksums, schema, shapes, ids, finite weights of non-diverged models.

    Returns a list of problems, each naming the file; empty when the zoo is sound."""
    root = Path(root)
    m = read_manifest(root, check=False)
    try:
        check_manifest(m, root, MANIFEST)
    except ZooError as e:
        return [str(e)]
    problems = []
    layout = Layout.from_dict(m["layout"])
    seen = []
    for s in m["shards"]:
        path = root / s["file"]
        if not path.exists():
            problems.append(f"{s['file']}: missing")
            continue
        sha = sha256_file(path)  # zoo verify always re-reads: it is the check to run when in doubt
        if sha != s["sha256"]:
            problems.append(f"{s['file']}: sha256 {sha[:12]}… does not match manifest {s['sha256'][:12]}…")
            continue
        found = len(problems)
        try:
            with open_shard(path) as f:
                ids = f["ids"][()]
                seen.append(ids)
                if len(ids) != s["num_models"]:
                    problems.append(f"{s['file']}: holds {len(ids)} models, manifest says {s['num_models']}")
                if len(ids) and (ids.min() < s["id_start"] or ids.max() >= s["id_stop"]):
                    problems.append(f"{s['file']}: ids outside manifest range [{s['id_start']}, {s['id_stop']})")
                if not Layout.from_json(f.attrs["layout"]).same_tensors(layout):
                    problems.append(f"{s['file']}: layout differs from the manifest's")
                diverged = f["table/diverged"][()].astype(bool) if "diverged" in f["table"] else np.zeros(len(ids), bool)
                for ck in m["checkpoints"]:
                    if ck not in f["weights"]:
                        problems.append(f"{s['file']}: checkpoint {ck!r} missing")
                        continue
                    d = f["weights"][ck]
                    if d.shape != (len(ids), layout.num_params):
                        problems.append(f"{s['file']}: weights/{ck} shape {d.shape}, "
                                        f"expected {(len(ids), layout.num_params)}")
                        continue
                    for i in range(0, len(ids), 256):
                        block = d[i:i + 256]
                        bad = ~np.isfinite(block).all(axis=1) & ~diverged[i:i + 256]
                        if bad.any():
                            problems.append(f"{s['file']}: model {int(ids[i + np.flatnonzero(bad)[0]])} has "
                                            f"non-finite weights at {ck!r} but is not marked diverged")
                            break
                for col in ("diverged",):
                    if col not in f["table"]:
                        problems.append(f"{s['file']}: table column {col!r} missing")
            if len(problems) == found:  # read through without a fault: later opens need not hash it again
                ShardVerifier(root).remember(s)
        except ZooError as e:
            problems.append(f"{s['file']}: {e}")
        except (KeyError, OSError, ValueError, TypeError, AttributeError, RecursionError) as e:
            # e.g. a layout attribute that is not JSON: the shard is damaged, and verify says so
            problems.append(f"{s['file']}: damaged ({type(e).__name__}: {' '.join(str(e).split())[:200]})")
    if seen and not problems:  # with a bad shard, the id checks below would only echo it
        all_ids = np.concatenate(seen)
        if len(np.unique(all_ids)) != len(all_ids):
            problems.append("model ids are duplicated across shards")
        split_ids = sorted(i for k in ("train", "val", "test") for i in m["splits"].get(k, []))
        if split_ids != sorted(all_ids.tolist()):
            problems.append(f"{MANIFEST}: splits do not cover exactly the models in the shards")
    return problems


def _child_main(fn) -> None:
    """The child of :func:`_run_isolated`: ``fn(argv[1])`` as one JSON line on stdout."""
    try:
        out = {"kind": "ok", "value": fn(Path(sys.argv[1]))}
    except ZooError as e:
        out = {"kind": "zoo_error", "value": str(e)}
    except BaseException as e:  # a bug, not a verdict: the parent raises it as such
        out = {"kind": "error", "value": f"{type(e).__name__}: {e}"}
    sys.stdout.write("\n" + json.dumps(out) + "\n")


def _verify_main() -> None:
    _child_main(verify)


def shard_ids(path: Path) -> list[int]:
    """The model ids shard ``path`` holds."""
    with open_shard(path) as f:
        return [int(i) for i in f["ids"][()]]


_CHILD = "from zoo.store.format import _verify_main; _verify_main()"


class _Unreadable(Exception):
    """The isolated reader passed its deadline or died: what happened, in words."""


def _run_isolated(code: str, arg: Path, timeout: float, what: str, crashed: str):
    """Run ``code`` (a :func:`_child_main`) on ``arg`` in a fresh interpreter with a deadline:
    its value; ZooError as itself; a deadline passed or a dead child as :class:`_Unreadable`
    (``what`` did not finish; ``crashed`` its process)."""
    try:
        run = subprocess.run([sys.executable, "-c", code, str(arg)], capture_output=True, text=True,
                             timeout=timeout, env=child_env())
    except subprocess.TimeoutExpired:
        raise _Unreadable(f"{what} did not finish within {timeout:.0f} s: a shard the HDF5 library cannot "
                          "read (it loops on some damaged files)") from None
    lines = run.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if run.returncode == 0 and lines else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or answer.get("kind") not in ("ok", "zoo_error", "error"):
        last = (run.stderr.strip().splitlines() or [""])[-1][:200]
        raise _Unreadable(f"{crashed} (exit code {run.returncode}"
                          f"{': ' + last if last else ''}): a shard the HDF5 library cannot read")
    if answer["kind"] == "zoo_error":
        raise ZooError(answer["value"])
    if answer["kind"] == "error":
        raise RuntimeError(f"{what} failed in its child process: {answer['value']}")
    return answer["value"]


def verify_isolated(root: Path, timeout: float | None = None, _code: str = _CHILD) -> list[str]:
    """:func:`verify` in a child process with a deadline, for zoos that come from someone else.

    libhdf5 loops forever on some damaged shard files (docs/FORMAT.md, Fuzzing); the checksum
    stops them before HDF5 reads them unless the manifest was forged to match, as a hostile
    archive's can be. In a child, such a shard is a problem reported (the deadline passed, or
    the child died) and the caller stops; this process never hangs. ``timeout``: seconds, by
    default 20 plus one per 20 MB of shards (the sha256 of every byte is part of the work).
    The child is a fresh interpreter (``python -c``), not a fork of this one, and never runs
    the caller's script again."""
    root = Path(root)
    if timeout is None:
        size = sum(p.stat().st_size for p in root.glob("*.h5") if p.is_file())
        timeout = deadline(size)
    try:
        return _run_isolated(_code, root, timeout, "verification",
                             "reading the shards crashed the verifying process")
    except _Unreadable as e:
        return [f"{e}; nothing was read further"]


def write_zoo(root: Path, shards: list[ShardContent], *, name: str, checkpoints=None, net: dict | None = None,
              spec: dict | None = None, source: dict | None = None, split_seed: int = 0,
              split_fractions=(0.5, 0.25, 0.25), device: str | None = None, data: dict | None = None) -> dict:
    """Write ``shards`` (each a :class:`ShardContent`) and the manifest into ``root``.

    Importers and tests use this; ``zoo generate`` writes shards as it goes and then
    the manifest through :func:`build_manifest`. Returns the manifest."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, content in enumerate(shards):
        path = root / shard_name(i)
        entries.append(shard_entry(path, content.ids, write_shard(path, content)))
    all_ids = np.concatenate([s.ids for s in shards]) if shards else np.zeros(0, np.int64)
    manifest = build_manifest(
        name=name, layout=shards[0].layout, shards=entries,
        checkpoints=checkpoints or list(shards[0].weights), splits=make_splits(all_ids, split_fractions, split_seed),
        spec=spec, net=net, source=source, device=device, data=data)
    write_json(root / MANIFEST, manifest)
    return manifest
