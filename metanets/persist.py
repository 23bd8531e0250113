"""Saving and loading one trained metanet (``metanets train`` / ``metanets predict``).

A metanet file is a safetensors file: the tensors of the metanet's ``state_dict``
plus, in the safetensors metadata, a JSON header (registry name, the input layout
it was built for, target, checkpoint, scores). A scikit-learn metanet's fitted
estimator is stored as a uint8 tensor holding a skops.io archive, which loads only
allow-listed types. Nothing in a metanet file is ever run as code: loading a file
from a stranger is safe.

Files written by metazoo 0.1 were pickles (``torch.save``), which run code when
loaded. They are refused; a file you trust converts once with
``python -m metanets.persist convert OLD NEW`` (docs/FORMAT.md).
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from zoo.fs import atomic_path, check_writable_dir, json_default

from . import registry
from .data import InputInfo
from .errors import MetanetError
from .plugins import load_plugin

FORMAT = "metazoo-metanet"
VERSION = 2
HEADER_KEY = "metazoo"
SKLEARN_TENSOR = "__sklearn_skops__"
#: Types a stored scikit-learn estimator may hold beyond skops' own trusted list.
TRUSTED_SKLEARN_TYPES = ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",)
CONVERT_HINT = ("if you trust where it came from, convert it once with "
                "`python -m metanets.persist convert {path} NEW_FILE` (this loads it with pickle, "
                "which can run code), then use NEW_FILE")


def check_writable(path, example: str = "metanet.pt") -> Path:
    """Refuse an output file we could not write, before hours of training."""
    path = Path(path)
    if path.is_dir():
        raise MetanetError(f"--out {path} is a folder; give a file name such as {path / example}")
    check_writable_dir(path.parent, what="--out")
    return path


def save(path, name: str, model, info: InputInfo, *, target: str, checkpoint: str = "final",
         meta: dict | None = None) -> Path:
    path = Path(path)
    cls = registry.get(name)
    header = {"format": FORMAT, "version": VERSION, "metanet": name, "info": info.to_dict(),
              "target": target, "checkpoint": checkpoint, "plugin": getattr(cls, "plugin_path", None),
              "meta": meta or {}, "kind": cls.kind}
    if cls.kind == "torch":
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    else:
        import skops.io as sio  # deferred: seconds to import (it scans scikit-learn's types)

        tensors = {SKLEARN_TENSOR: torch.from_numpy(np.frombuffer(sio.dumps(model.model), np.uint8).copy())}
    blob = st_save(tensors, metadata={HEADER_KEY: json.dumps(header, default=json_default)})
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
    return path


def _read(path: Path) -> tuple[dict, dict]:
    """(header, tensors) of a metanet file, read as data only."""
    with open(path, "rb") as f:
        magic = f.read(4)
    # torch.save writes a zip (local file header first) or, in its legacy mode, a bare pickle
    if magic == b"PK\x03\x04" or magic[:1] == b"\x80":
        raise MetanetError(f"{path} is an old pickle-based metanet file (metazoo 0.1), which could run code when "
                           f"loaded, so it is refused; " + CONVERT_HINT.format(path=path))
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, ValueError, OSError) as e:
        raise MetanetError(f"{path} is not a metanet file (not safetensors: {e})") from e
    try:
        header = json.loads(meta[HEADER_KEY])
    except (KeyError, json.JSONDecodeError, RecursionError) as e:
        raise MetanetError(f"{path} is not a metanet file (no valid {HEADER_KEY!r} header: "
                           f"{type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise MetanetError(f"{path} is not a saved metanet (no {FORMAT!r} header)")
    if header.get("version") != VERSION:
        raise MetanetError(f"{path}: metanet file version {header.get('version')!r}; this metazoo reads {VERSION}")
    for key, types in (("metanet", (str,)), ("kind", (str,)), ("info", (dict,)), ("plugin", (str, type(None))),
                       ("meta", (dict, type(None)))):
        if not isinstance(header.get(key), types):
            raise MetanetError(f"{path}: its {HEADER_KEY!r} header is damaged (key {key!r} = "
                               f"{str(header.get(key))[:80]!r})")
    return header, tensors


def load(path, device="cpu"):
    """-> (name, model, info, record); the model is in eval mode on ``device``."""
    path = Path(path)
    if not path.is_file():
        raise MetanetError(f"{path}: no such metanet file")
    rec, tensors = _read(path)
    name = rec.get("metanet")
    try:
        cls = registry.get(name)
    except MetanetError:
        hint = f" It came from plugin {rec['plugin']}: pass --plugin {rec['plugin']}." if rec.get("plugin") else ""
        raise MetanetError(f"{path}: metanet {name!r} is not registered.{hint}") from None
    if rec.get("kind") != cls.kind:
        raise MetanetError(f"{path}: holds a {rec.get('kind')!r} metanet but {name!r} is a {cls.kind!r} one")
    try:
        info = InputInfo.from_dict(rec["info"])
        model = cls(info)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, RuntimeError) as e:
        raise MetanetError(f"{path}: its input description is damaged ({type(e).__name__}: {e})") from e
    if cls.kind == "torch":
        try:
            model.load_state_dict(tensors)
        except RuntimeError as e:
            raise MetanetError(f"{path}: its tensors do not fit metanet {name!r}: {str(e).splitlines()[0]}") from e
        model = model.to(device).eval()
    else:
        model.model = _load_estimator(path, tensors)
    return name, model, info, rec


def _load_estimator(path: Path, tensors: dict):
    import skops.io as sio  # deferred: seconds to import (it scans scikit-learn's types)

    if SKLEARN_TENSOR not in tensors:
        raise MetanetError(f"{path}: no stored estimator ({SKLEARN_TENSOR!r} missing)")
    data = tensors[SKLEARN_TENSOR].numpy().tobytes()
    try:
        untrusted = [t for t in sio.get_untrusted_types(data=data) if t not in TRUSTED_SKLEARN_TYPES]
        if untrusted:
            raise MetanetError(f"{path}: its estimator holds types metazoo does not load ({', '.join(untrusted)}); "
                               "refused (nothing from a metanet file runs as code)")
        return sio.loads(data, trusted=list(TRUSTED_SKLEARN_TYPES))
    except MetanetError:
        raise
    except Exception as e:  # skops raises many kinds on a damaged archive
        raise MetanetError(f"{path}: its stored estimator is damaged or not a skops archive "
                           f"({type(e).__name__}: {e})") from e


#: Where the metanet classes a 0.1 pickle names (scikit-learn kinds pickle the whole metanet
#: object) live now: ``metanets.gbm.StatGBM`` is ``metanets.models.statnn_gbm.StatGBM``.
LEGACY_MODULES = {"metanets.gbm": "metanets.models.statnn_gbm", "metanets.registry": "metanets.models._registry",
                  **{f"metanets.{m}": f"metanets.models.{m}"
                     for m in ("mlp", "dmc", "deepsets", "statnn", "nfn", "graph", "hparams", "structure")}}


class _LegacyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        return super().find_class(LEGACY_MODULES.get(module, module), name)


#: ``pickle`` as torch.load uses it, with the 0.1 module paths mapped to today's.
_legacy_pickle = types.SimpleNamespace(Unpickler=_LegacyUnpickler, __name__="pickle",
                                       load=lambda f, **kw: _LegacyUnpickler(f, **kw).load())


def convert_legacy(src, dst) -> Path:
    """Rewrite a metazoo 0.1 (pickle) metanet file in the weights-only format.

    Unpickles ``src``: which runs any code it carries. Use only on files you trust."""
    src = Path(src)
    # trusted by the caller, see docstring; classes found under their 0.1 module paths too
    rec = torch.load(src, map_location="cpu", weights_only=False, pickle_module=_legacy_pickle)
    if not isinstance(rec, dict) or rec.get("format") != FORMAT or rec.get("version") != 1:
        raise MetanetError(f"{src} is not a metazoo 0.1 metanet file")
    name = rec["metanet"]
    cls = registry.get(name)
    info = InputInfo.from_dict(rec["info"])
    if cls.kind == "torch":
        model = cls(info)
        model.load_state_dict(rec["state"])
    else:
        model = rec["state"]
    return save(dst, name, model, info, target=rec["target"], checkpoint=rec.get("checkpoint", "final"),
                meta=rec.get("meta"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m metanets.persist",
                                description="Convert a trusted metazoo 0.1 (pickle) metanet file to the "
                                            "weights-only format. Loading the old file runs any code it holds: "
                                            "convert only files you made yourself or otherwise trust.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="OLD (pickle, trusted) -> NEW (safetensors)")
    c.add_argument("old")
    c.add_argument("new")
    c.add_argument("--plugin", action="append", metavar="FILE", help="plugin file registering the metanet")
    args = p.parse_args(argv)
    try:
        for f in args.plugin or []:
            load_plugin(f)
        out = convert_legacy(args.old, args.new)
    except MetanetError as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
