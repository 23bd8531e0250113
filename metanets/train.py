"""Training a metanet on one zoo, the paper's protocol.

AdamW (weight decay 1e-2), MSE on the target, batch 128, 50 epochs; after every epoch
the validation R² is measured and the epoch with the best one is kept. Everything is
seeded: the initialisation and the batch order derive from ``seed``, the metanet name
and an optional ``tag`` (the lr sweep trains with its own tag, so the final seeds are
fresh runs), so a run is reproducible on CPU (and on CUDA up to kernel nondeterminism).

A run whose training loss becomes non-finite is *diverged*: upstream has no such run
(it would crash), so it is flagged, never selected by the lr sweep and never counted
in a mean over seeds, even though its best earlier epoch has scores.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from zoo.seeding import derived_seed

from . import registry
from .data import InputInfo, WeightSet, as_view
from .errors import MetanetError
from .metrics import kendall_tau, r2
from .models.hparams import hparam_features

#: The paper's learning-rate grid.
LR_GRID = (1e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2)
EPOCHS = 50
BATCH_SIZE = 128
WEIGHT_DECAY = 1e-2


@dataclass
class FitResult:
    """One trained metanet and its scores (``lr``/``best_epoch`` are None for sklearn metanets)."""

    metanet: str
    model: object
    seed: int
    lr: float | None
    best_epoch: int | None
    val_r2: float
    val_tau: float
    test_r2: float
    test_tau: float
    train_time_s: float
    num_params: int
    predictions: dict = field(repr=False, default_factory=dict)  # split -> np.ndarray
    val_r2_history: list = field(repr=False, default_factory=list)
    diverged_epoch: int | None = None  # the epoch whose training loss became non-finite
    cpu_time_s: float = 0.0  # process CPU time (user + sys, all threads) of the run

    @property
    def status(self) -> str:
        """"diverged", "nan_predictions" (a metanet that outputs nan/inf) or "ok"."""
        if self.diverged_epoch is not None:
            return "diverged"
        if any(not np.isfinite(p).all() for p in self.predictions.values()):
            return "nan_predictions"
        return "ok"

    @property
    def note(self) -> str:
        """One line naming the metanet and seed when the run is not usable."""
        who = f"metanet {self.metanet!r} seed {self.seed}" + (f" lr {self.lr:g}" if self.lr else "")
        if self.status == "diverged":
            return f"{who}: training loss became non-finite in epoch {self.diverged_epoch} (diverged)"
        if self.status == "nan_predictions":
            bad = {s: int((~np.isfinite(p)).sum()) for s, p in self.predictions.items()}
            return f"{who}: predictions not finite (" + ", ".join(
                f"{n} of {len(self.predictions[s])} {s} nets" for s, n in bad.items() if n) + ")"
        return ""


def run_seed(seed: int, what: str, name: str, tag: str) -> int:
    return derived_seed(seed, what, name, tag) if tag else derived_seed(seed, what, name)


def build(name: str, info: InputInfo, seed: int = 0, device="cpu", tag: str = ""):
    """A fresh metanet ``name`` for inputs ``info``, initialised from ``seed`` (and ``tag``)."""
    cls = registry.get(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run_seed(seed, "init", name, tag))
        model = cls(info)
    return model.to(device) if cls.kind == "torch" else model


def num_parameters(model) -> int:
    if isinstance(model, torch.nn.Module):
        return sum(p.numel() for p in model.parameters())
    return int(model.num_parameters()) if hasattr(model, "num_parameters") else 0


def check_output(name: str, model, x) -> None:
    """A metanet must return one float prediction per net: shape [B] or [B, 1]."""
    b = len(x) if not isinstance(x, dict) else len(next(iter(x.values())))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        try:
            out = model(x)
        except Exception as e:  # a plugin's bug: report it against the plugin, not the runner
            raise MetanetError(f"metanet {name!r}: forward failed on a batch of {b} nets: "
                               f"{type(e).__name__}: {e}") from e
    model.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if not isinstance(out, torch.Tensor) or shape not in ((b,), (b, 1)):
        raise MetanetError(f"metanet {name!r}: forward returned {shape} for a batch of {b} nets; "
                           f"it must return a tensor of shape [{b}] or [{b}, 1] (one prediction per net)")


@torch.no_grad()
def predict(model, features: torch.Tensor, view: str, info: InputInfo, batch_size: int = 512) -> np.ndarray:
    """Predictions ``[N]`` for stored features of N nets (eval mode, batched)."""
    if not isinstance(model, torch.nn.Module):
        return np.asarray(model.predict(features.cpu()), np.float32)
    model.eval()
    outs = []
    for a in range(0, len(features), batch_size):
        outs.append(model(as_view(features[a:a + batch_size], view, info.layout)).reshape(-1).float().cpu())
    return torch.cat(outs).numpy() if outs else np.zeros(0, np.float32)


def features(ws: WeightSet, split: str, view: str):
    """A split's stored inputs in ``view``; ``hparams`` reads the zoo table, not the weights."""
    if view == "hparams":
        return hparam_features(ws, split)
    return ws.features(split, view)


def check_fit_args(name: str, epochs: int, batch_size: int, lrs=()) -> None:
    if epochs < 1:
        raise MetanetError(f"epochs={epochs} is invalid; allowed: >= 1")
    if batch_size < 2:
        raise MetanetError(f"batch_size={batch_size} is invalid; allowed: >= 2")
    for lr in lrs:
        if lr is None or not (lr > 0):
            raise MetanetError(f"lr={lr!r} is invalid for metanet {name!r}; allowed: a float > 0")


def fit(name: str, ws: WeightSet, *, lr: float | None = 1e-3, seed: int = 0, epochs: int = EPOCHS,
        batch_size: int = BATCH_SIZE, weight_decay: float = WEIGHT_DECAY, device="cpu",
        progress=None, tag: str = "") -> FitResult:
    """Train metanet ``name`` on ``ws``'s train split; keep the best-validation-R² epoch.

    ``progress``: an optional callable ``(epoch, val_r2)`` called after every epoch.
    ``tag``: an extra seed component (the lr sweep's runs use ``"sweep"``)."""
    check_fit_args(name, epochs, batch_size)
    cls = registry.get(name)
    view, info = cls.view, ws.info
    feats = {s: features(ws, s, view).to(device) for s in ("train", "val", "test")}
    y = {s: ws.y(s).to(device) for s in ("train", "val", "test")}
    t0 = time.perf_counter(), time.process_time()
    model = build(name, info, seed, device, tag)
    if cls.kind == "sklearn":
        model.fit(feats["train"].cpu(), y["train"].cpu().numpy(), seed=run_seed(seed, "fit", name, tag) % 2**31)
        return finish_run(name, model, seed, None, None, [], feats, y, view, info, t0)
    check_fit_args(name, epochs, batch_size, [lr])
    check_output(name, model, as_view(feats["train"][:2], view, info.layout))
    if hasattr(model, "prepare"):
        model.prepare(feats["train"])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    order = torch.Generator().manual_seed(run_seed(seed, "order", name, tag))
    n = len(feats["train"])
    best = (-math.inf, 0, copy.deepcopy(model.state_dict()))
    history, diverged_epoch = [], None
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=order).to(feats["train"].device)
        diverged = False
        for a in range(0, n, batch_size):
            idx = perm[a:a + batch_size]
            if len(idx) < 2:  # BatchNorm (DMC) cannot train on a batch of one net
                continue
            pred = model(as_view(feats["train"][idx], view, info.layout)).reshape(-1)
            loss = torch.nn.functional.mse_loss(pred.float(), y["train"][idx])
            if not torch.isfinite(loss):
                diverged = True
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        score = r2(y["val"].cpu().numpy(), predict(model, feats["val"], view, info))
        history.append(score)
        if progress:
            progress(epoch, score)
        if np.isfinite(score) and score > best[0]:
            best = (score, epoch, copy.deepcopy(model.state_dict()))
        if diverged:  # a too-large lr: later epochs cannot recover a nan model
            diverged_epoch = epoch
            break
    model.load_state_dict(best[2])
    return finish_run(name, model, seed, lr, best[1], history, feats, y, view, info, t0, diverged_epoch)


def finish_run(name, model, seed, lr, best_epoch, history, feats, y, view, info, t0, diverged_epoch=None):
    preds = {s: predict(model, feats[s], view, info) for s in ("val", "test")}  # train: unused, and costly
    wall, cpu = time.perf_counter() - t0[0], time.process_time() - t0[1]
    yt = {s: y[s].cpu().numpy() for s in y}
    return FitResult(name, model, seed, lr, best_epoch,
                     r2(yt["val"], preds["val"]), kendall_tau(yt["val"], preds["val"]),
                     r2(yt["test"], preds["test"]), kendall_tau(yt["test"], preds["test"]),
                     wall, num_parameters(model), preds, history, diverged_epoch, cpu)
