"""Saving and loading one trained metanet (``metanets train`` / ``metanets predict``).

A file holds the metanet's registry name, the input layout it was built for, the
target it predicts and its trained state (a ``state_dict``, or the fitted estimator
for scikit-learn metanets). Loading unpickles: load only files you trust.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import registry
from .data import InputInfo
from .errors import MetanetError

FORMAT = "metazoo-metanet"
VERSION = 1


def save(path, name: str, model, info: InputInfo, *, target: str, checkpoint: str = "final",
         meta: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cls = registry.get(name)
    state = model.state_dict() if cls.kind == "torch" else model
    if cls.kind == "torch":
        state = {k: v.detach().cpu() for k, v in state.items()}
    torch.save({"format": FORMAT, "version": VERSION, "metanet": name, "info": info.to_dict(),
                "target": target, "checkpoint": checkpoint, "plugin": getattr(cls, "plugin_path", None),
                "meta": meta or {}, "state": state}, path)
    return path


def load(path, device="cpu"):
    """-> (name, model, info, record); the model is in eval mode on ``device``."""
    path = Path(path)
    if not path.is_file():
        raise MetanetError(f"{path}: no such metanet file")
    try:
        rec = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise MetanetError(f"{path} is not a saved metanet: {type(e).__name__}: {e}") from e
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise MetanetError(f"{path} is not a saved metanet (no {FORMAT!r} header)")
    if rec.get("version") != VERSION:
        raise MetanetError(f"{path}: metanet file version {rec.get('version')!r}; this metazoo reads {VERSION}")
    name = rec["metanet"]
    try:
        cls = registry.get(name)
    except MetanetError:
        hint = f" It came from plugin {rec['plugin']}: pass --plugin {rec['plugin']}." if rec.get("plugin") else ""
        raise MetanetError(f"{path}: metanet {name!r} is not registered.{hint}") from None
    info = InputInfo.from_dict(rec["info"])
    if cls.kind == "torch":
        model = cls(info)
        model.load_state_dict(rec["state"])
        model = model.to(device).eval()
    else:
        model = rec["state"]
    return name, model, info, rec
