"""The benchmark: every (zoo, metanet, seed) -> scores, with the paper's protocol.

For each zoo and each metanet: a learning-rate sweep over :data:`train.LR_GRID` on
seed 0 picks the rate with the best validation R² (``lr="auto"``; a number skips the
sweep), then seeds ``0..N-1`` are trained at that rate and scored on the test split.
The seed-0 run of the sweep *is* the seed-0 run at the chosen rate, so it is reused.
All zoos of one table must predict the same target.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import data, registry
from .errors import MetanetError
from .train import BATCH_SIZE, EPOCHS, LR_GRID, FitResult, fit


@dataclass
class BenchConfig:
    """Options of one benchmark; validated by :meth:`check`."""

    metanets: tuple = ("mlp", "dmc", "deepsets", "statnn", "statnn-gbm")
    seeds: int = 5
    epochs: int = EPOCHS
    lr: str | float | dict = "auto"  # or {metanet: "auto" | rate}; unlisted metanets sweep
    lr_grid: tuple = LR_GRID
    batch_size: int = BATCH_SIZE
    device: str = "cpu"
    params: str = "trainable"
    target: str | None = None
    checkpoint: str = "final"
    in_memory: bool | None = None  # None: load the zoo into memory when it fits

    def check(self) -> "BenchConfig":
        for n in self.metanets:
            registry.get(n)
        if not self.metanets:
            raise MetanetError(f"metanets={list(self.metanets)} names no metanet; known: {', '.join(registry.names())}")
        if self.seeds < 1:
            raise MetanetError(f"seeds={self.seeds} is invalid; allowed: >= 1")
        if self.epochs < 1:
            raise MetanetError(f"epochs={self.epochs} is invalid; allowed: >= 1")
        if self.batch_size < 2:
            raise MetanetError(f"batch_size={self.batch_size} is invalid; allowed: >= 2")
        for name, lr in (self.lr.items() if isinstance(self.lr, dict) else [("", self.lr)]):
            if name:
                registry.get(name)
            if lr != "auto" and not (isinstance(lr, (int, float)) and lr > 0):
                raise MetanetError(f"lr={lr!r}{' for ' + name if name else ''} is invalid; "
                                   f"allowed: 'auto' or a number > 0")
        if self.params not in data.PARAMS:
            raise MetanetError(f"params={self.params!r} is invalid; allowed: {', '.join(data.PARAMS)}")
        _check_device(self.device)
        return self

    def lr_for(self, name: str):
        """The learning rate of metanet ``name``: a number, or "auto" (sweep)."""
        if isinstance(self.lr, dict):
            return self.lr.get(name, "auto")
        return self.lr


def parse_lr(text: str):
    """``"auto"``, a positive float, or ``"mlp=auto,dmc=1e-3"`` (per metanet; others sweep)."""
    text = str(text).strip()
    if "=" in text:
        out = {}
        for part in text.split(","):
            name, _, value = part.partition("=")
            if not name.strip() or not value.strip():
                raise MetanetError(f"--lr {text!r} is invalid: write NAME=RATE pairs, e.g. mlp=auto,dmc=1e-3")
            out[name.strip().lower()] = parse_lr(value)
        return out
    if text.lower() == "auto":
        return "auto"
    try:
        v = float(text)
    except ValueError:
        raise MetanetError(f"--lr {text!r} is invalid; allowed: auto or a number > 0 (e.g. 1e-3)") from None
    if not (v > 0 and math.isfinite(v)):
        raise MetanetError(f"--lr {text!r} is invalid; allowed: auto or a number > 0 (e.g. 1e-3)")
    return v


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise MetanetError(f"--device {device!r} is invalid; allowed: cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MetanetError(f"--device {device!r}: this torch build sees no CUDA device; use --device cpu")


def zoo_targets(paths, target: str | None) -> dict:
    """Each zoo's target; error if the zoos of one table predict different ones."""
    out = {}
    for p in paths:
        z = data.open_zoo(p)
        out[str(p)] = data.zoo_target(z, target)
        z.close()
    if len(set(out.values())) > 1:
        desc = ", ".join(f"{p} -> {t!r}" for p, t in out.items())
        raise MetanetError(f"zoos predict different targets ({desc}); one table needs one target: "
                           f"pass --target METRIC to read every zoo for the same metric")
    return out


def zoo_labels(sets) -> list[str]:
    """Column labels: zoo names, made unique with their folder names when two clash."""
    names = [ws.name for ws in sets]
    return [n if names.count(n) == 1 else f"{n} ({ws.path.name})" for n, ws in zip(names, sets)]


def run(paths, cfg: BenchConfig, *, progress: bool = True, log=print) -> dict:
    """Run the benchmark; return ``{"config", "zoos", "runs", "sweeps", "predictions"}``."""
    cfg.check()
    paths = [Path(p) for p in paths]
    if not paths:
        raise MetanetError("no zoo given; pass one or more zoo directories")
    zoo_targets(paths, cfg.target)
    sets = [data.load(p, params=cfg.params, target=cfg.target, checkpoint=cfg.checkpoint, device=cfg.device,
                      in_memory=cfg.in_memory) for p in paths]
    labels = zoo_labels(sets)
    zoos = []
    for label, ws in zip(labels, sets):
        info = {"zoo": label, "path": str(ws.path), "target": ws.target, "params": cfg.params,
                "num_inputs": ws.info.num_inputs, "streamed": isinstance(ws.x["train"], data.StreamedRows), "num_tensors": ws.info.num_tensors,
                "diverged_excluded": ws.selection.n_diverged, "nonfinite_target_excluded": ws.selection.n_nonfinite,
                **{f"n_{s}": int(len(ws.ids(s))) for s in data.SPLITS}}
        zoos.append(info)
        log(f"{label}: {info['n_train']}/{info['n_val']}/{info['n_test']} train/val/test nets, "
            f"{info['num_inputs']} inputs ({cfg.params}), {info['diverged_excluded']} diverged excluded")
    total = sum((cfg.seeds if registry.get(m).kind == "sklearn" else
                 cfg.seeds - 1 + (len(cfg.lr_grid) if cfg.lr_for(m) == "auto" else 1))
                for m in cfg.metanets) * len(sets)
    bar = tqdm(total=total, desc="bench", unit="run", disable=not progress, dynamic_ncols=True)
    runs, sweeps, preds, skipped = [], [], [], []

    def record(label, ws, res: FitResult, into):
        row = {"zoo": label, "metanet": res.metanet, "seed": res.seed, "lr": res.lr, "best_epoch": res.best_epoch,
               "val_r2": res.val_r2, "val_tau": res.val_tau, "test_r2": res.test_r2, "test_tau": res.test_tau,
               "train_time_s": round(res.train_time_s, 3), "num_params": res.num_params,
               "epochs": cfg.epochs if res.lr is not None else None}
        into.append(row)
        bar.set_postfix_str(f"{res.metanet} on {label}: test R² {res.test_r2:.3f}")
        bar.update(1)
        return row

    try:
        for label, ws in zip(labels, sets):
            for m in cfg.metanets:
                reason = registry.unsupported(m, ws.info)
                if reason:  # n/a in the table, with the reason; never a crash or a wrong answer
                    skipped.append({"zoo": label, "metanet": m, "reason": reason})
                    log(f"{m} on {label}: n/a ({reason})")
                    continue
                kw = dict(epochs=cfg.epochs, batch_size=cfg.batch_size, device=cfg.device)
                done = {}
                if registry.get(m).kind == "sklearn":
                    lr = None
                elif cfg.lr_for(m) == "auto":
                    results, rows = [], {}
                    for lr_try in cfg.lr_grid:
                        r = fit(m, ws, lr=lr_try, seed=0, **kw)
                        results.append(r)
                        rows[lr_try] = record(label, ws, r, sweeps)
                    scored = [r for r in results if np.isfinite(r.val_r2)]
                    best = max(scored, key=lambda r: r.val_r2) if scored else results[0]
                    lr, done[0] = best.lr, best
                else:
                    lr = float(cfg.lr_for(m))
                for seed in range(cfg.seeds):
                    if seed in done:
                        res = done[seed]
                        runs.append({**rows[lr], "from_sweep": True})
                    else:
                        res = fit(m, ws, lr=lr, seed=seed, **kw)
                        record(label, ws, res, runs)
                    preds.append({"zoo": label, "metanet": m, "seed": seed, "model_id": ws.ids("test"),
                                  "target": ws.selection.y["test"], "prediction": res.predictions["test"]})
    finally:
        bar.close()
    return {"config": {**asdict(cfg), "metanets": list(cfg.metanets), "lr_grid": list(cfg.lr_grid)},
            "zoos": zoos, "runs": runs, "sweeps": sweeps, "predictions": preds, "skipped": skipped,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
