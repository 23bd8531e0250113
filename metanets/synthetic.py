"""Synthetic zoos of real ResNets whose accuracy is a known function of their weights.

For tests and speed benchmarks before (or without) a trained zoo: each model is a
freshly initialised :class:`zoo.nets.ResNet` whose trainable weights are multiplied by
a random scale ``s``, and its "test accuracy" is a smooth function of ``log s`` plus a
little noise. A metanet that reads weights at all can learn it; permuting hidden
units does not change it. Written through :func:`zoo.store.write_zoo`, so the zoo is
read exactly like a generated one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from zoo.layout import Layout
from zoo.nets import NetConfig, WAsym, build_net, derived_seed
from zoo.store import ShardContent, write_zoo


def synthetic_target(log_scale: np.ndarray) -> np.ndarray:
    """The accuracy a synthetic net of weight scale ``exp(log_scale)`` is given, in [0.1, 0.9]."""
    return (0.1 + 0.8 / (1.0 + np.exp(-3.0 * log_scale))).astype(np.float32)


def net_vector(net, layout: Layout) -> np.ndarray:
    """A net's effective parameters (fixed entries as the net uses them) in layout order."""
    state = net.effective_state() if hasattr(net, "effective_state") else net.state_dict()
    return layout.flatten(state)


def make_zoo(root, *, models: int = 64, wasym: bool = False, width: float = 0.25, in_channels: int = 1,
             seed: int = 0, n_diverged: int = 0, shard_size: int = 64, noise: float = 0.01,
             name: str | None = None, mode: str = "scale", arch: str = "resnet") -> Path:
    """Write a synthetic zoo of ``models`` ResNet8s (``arch="smallcnn"``: Small-CNN-Zoo CNNs,
    4,970 parameters on one channel; ``width``, ``wasym`` then unused) to ``root``; return the path.

    ``mode="scale"``: weights multiplied by ``s`` (a hidden-unit permutation-invariant,
    nonlinear cue); ``mode="shift"``: ``log s`` added to every weight (a linear cue even an
    MLP reads). ``n_diverged`` of them are marked diverged (non-finite weights and metrics)."""
    if mode not in ("scale", "shift"):
        raise ValueError(f"mode={mode!r}; allowed: scale, shift")
    if arch == "smallcnn":
        if wasym:
            raise ValueError("wasym=True: synthetic W-Asym zoos are ResNets only (arch='resnet')")
        cfg = NetConfig(arch="smallcnn", width=1.0, in_channels=in_channels, num_classes=10, padding="same")
    elif arch == "resnet":
        cfg = NetConfig(depth=8, width=width, in_channels=in_channels, num_classes=10,
                        wasym=WAsym(n_fix=2, n_fix_linear=2) if wasym else None, asym_seed=seed)
    else:
        raise ValueError(f"arch={arch!r}; allowed: resnet, smallcnn")
    net0 = build_net(cfg, seed=0)
    layout = Layout.from_module(net0)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    log_s = rng.uniform(-0.7, 0.7, models).astype(np.float32)
    acc = np.clip(synthetic_target(log_s) + noise * rng.standard_normal(models).astype(np.float32), 0, 1)
    w = np.empty((models, layout.num_params), np.float32)
    for i in range(models):
        net = build_net(cfg, seed=derived_seed(seed, "synthetic", i))
        with torch.no_grad():
            for p in net.parameters():
                if mode == "scale":
                    p.mul_(float(np.exp(log_s[i])))
                else:
                    p.add_(float(log_s[i]))
        w[i] = net_vector(net, layout)
    diverged = np.zeros(models, bool)
    diverged[rng.choice(models, n_diverged, replace=False)] = True
    w[diverged] = np.nan
    table = pd.DataFrame({
        "log_scale": log_s,
        "train_loss": np.where(diverged, np.nan, 1.0 - acc), "train_acc": np.where(diverged, np.nan, acc),
        "test_loss": np.where(diverged, np.nan, 1.0 - acc), "test_acc": np.where(diverged, np.nan, acc),
        "diverged": diverged,
    })
    fixed = None
    if layout.fixed_mask is not None:
        fixed = np.where(layout.fixed_mask, net_vector(net0, layout), 0).astype(np.float32)
    shards = []
    for a in range(0, models, shard_size):
        sl = slice(a, min(models, a + shard_size))
        shards.append(ShardContent(ids=np.arange(models)[sl], weights={"final": w[sl]},
                                   table=table.iloc[sl].reset_index(drop=True), layout=layout,
                                   fixed_values=fixed))
    write_zoo(Path(root), shards, name=name or Path(root).name, net=cfg.to_dict(),
              source={"kind": "synthetic", "seed": seed, "hparam_columns": []}, split_seed=seed)
    return Path(root)
