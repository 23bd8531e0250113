"""One analysis over one zoo: LMC over its pairs, weight matching of its pairs, MLI of its nets.

Each ``run_*`` returns plain records (one per pair or net, JSON-able) and curves; the
summaries, comparisons, files and plots are :mod:`zoo.analyze.report`'s.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..console import progress
from ..errors import ZooError
from ..workers import map_items
from . import metrics
from .align import align, check_alignable
from .interp import Evaluator, curve, has_batchnorm
from .pairs import data_of, net_and_state, open_zoo, pairs_of, subset, variant_of


@dataclass(frozen=True)
class Options:
    alphas: int = 25
    align: str = "none"  # or "weight-matching"
    fold_asym: bool = False
    bn_reset: str = "auto"  # "repair", "none"
    restarts: int = 3
    seed: int = 0
    batch: int = 256
    max_nets: int = 25
    max_pairs: int | None = None
    data: str | None = None
    device: str = "cpu"
    # mli
    tol: float = 0.0
    upstream_compat: bool = False
    subset: int | None = 1024
    split: str = "test"
    verify: bool = True  # shard checksums (--no-verify skips them)
    workers: int = 1  # processes sharing the pairs (nets); 1: this process


def alphas_of(n: int) -> np.ndarray:
    if n < 3:
        raise ZooError(f"--alphas {n}: need at least 3 points (0, 1/2 and 1 for the midpoint barrier)")
    return np.linspace(0.0, 1.0, n)


def _bar(total, desc, quiet, unit="pair"):
    return progress(total, enabled=False if quiet else None, desc=desc, unit=unit, leave=False)


def _methods(z, opts: Options, variant: str) -> tuple[list[str], list[str]]:
    """Which interpolations to run on this zoo, and notes on what was skipped (and why)."""
    methods, notes = ["naive"], []
    if opts.align == "weight-matching":
        if variant == "standard":
            methods.append("weight-matching")
        elif variant == "W-Asym" and opts.fold_asym:
            methods.append("fold+weight-matching")
        else:
            try:
                check_alignable(z.rebuild(int(z.ids[0])))
            except ZooError as e:
                notes.append(f"{z.name}: not aligned ({variant}): {e}")
    return methods, notes


# ------------------------------------------------------------- items, here or in workers
#
# Each analysis is a setup (open the zoo, load its data, build the evaluator) and one item per
# pair (lmc, align) or net (mli). With ``workers > 1`` the items run in a pool of spawned
# processes (:func:`zoo.workers.map_items`), each of which does the setup once; the results come
# back in item order, so the output is the serial one.

def _item(item, opts, ctx, i):
    return item(ctx, opts, i)


def _map(setup, item, path, opts: Options, ctx, n: int, bar) -> list:
    """``[item(ctx, opts, i) for i in range(n)]``, in this process or in ``opts.workers``."""
    return map_items(setup, (path, opts), functools.partial(_item, item, opts), range(n), opts.workers,
                     done=lambda i, r: bar.update(1), ctx=ctx)


# ------------------------------------------------------------------------------ lmc

def _lmc_setup(path, opts: Options) -> dict:
    z = open_zoo(path, opts.verify)
    pairs, notes = pairs_of(z, opts.max_pairs)
    variant = variant_of(z)
    methods, skip = _methods(z, opts, variant)
    data = data_of(z, opts.data, opts.device)
    X, Y = (data.x_test, data.y_test) if opts.split == "test" else (data.x_train, data.y_train)
    return {"z": z, "alphas": alphas_of(opts.alphas), "pairs": pairs, "notes": notes + skip, "variant": variant,
            "methods": methods, "data": data, "ev": Evaluator(X, Y, data.normalize, opts.batch, opts.max_nets,
                                                              opts.device),
            "check_x": data.normalize(data.x_test[:256])}


def _lmc_pair(ctx, opts: Options, i: int):
    """Records and curves of pair ``i`` for every method, and whether BatchNorm was re-estimated."""
    z, p, alphas, data = ctx["z"], ctx["pairs"][i], ctx["alphas"], ctx["data"]
    records, curves, bn_used = [], [], False
    for method in ctx["methods"]:
        fold = method.startswith("fold")
        net_a, sa = net_and_state(z, p.a, fold=fold)
        net_b, sb = net_and_state(z, p.b, fold=fold)
        reset = opts.bn_reset == "repair" or (opts.bn_reset == "auto" and has_batchnorm(net_a))
        bn_used |= reset and has_batchnorm(net_a)
        rec = {"zoo": z.name, "variant": ctx["variant"], "method": method, "pair": p.tuple_id, "a": p.a, "b": p.b}
        if method != "naive":
            sb, rep = align(net_a, net_b, ctx["check_x"], seed=opts.seed, restarts=opts.restarts)
            rec.update({"distance_before": rep["distance_before"], "distance_after": rep["distance_after"],
                        "max_abs_dlogits": rep["max_abs_dlogits"], "sweeps": rep["sweeps"],
                        "moved_channels": rep["moved_channels"]})
        c = curve(ctx["ev"], net_a, sa, sb, alphas, bn_data=(data.x_train, data.normalize) if reset else None,
                  names=(f"model {p.a}", f"model {p.b}"))
        err = 1.0 - c["acc"]
        rec.update({f"{k}_loss": v for k, v in metrics.barriers(c["loss"], alphas).items()})
        rec.update({f"{k}_err": v for k, v in metrics.barriers(err, alphas).items()})
        rec.update({"loss_a": float(c["loss"][0]), "loss_b": float(c["loss"][-1]),
                    "acc_a": float(c["acc"][0]), "acc_b": float(c["acc"][-1])})
        records.append(rec)
        curves.append({"zoo": z.name, "method": method, "pair": p.tuple_id, "a": p.a, "b": p.b,
                       "alpha": alphas.tolist(), "loss": c["loss"].tolist(), "acc": c["acc"].tolist()})
    return records, curves, bn_used


def run_lmc(path, opts: Options, quiet: bool = False) -> dict:
    """Test loss and accuracy along the line between the nets of every pair, barriers, and
    (``opts.align``) the same after weight matching."""
    ctx = _lmc_setup(path, opts)
    z, pairs, methods = ctx["z"], ctx["pairs"], ctx["methods"]
    bar = _bar(len(pairs), f"lmc {z.name}", quiet)
    done = _map(_lmc_setup, _lmc_pair, path, opts, ctx, len(pairs), bar)
    bar.close()
    records = [r for rec, _, _ in done for r in rec]
    curves = [c for _, cur, _ in done for c in cur]
    notes = list(ctx["notes"])
    if any(bn for _, _, bn in done):
        notes.append(f"{z.name}: BatchNorm statistics re-estimated at every alpha (REPAIR-style)")
    return {"zoo": z.name, "path": str(z.path), "variant": ctx["variant"], "methods": methods, "split": opts.split,
            "alphas": ctx["alphas"].tolist(), "records": records, "curves": curves, "notes": notes,
            "hparams": _pair_hparams(z, pairs)}


def _pair_hparams(z, pairs) -> dict:
    """pair -> its hyper-parameters (to check that two zoos' pairs really match)."""
    t = z.table.set_index("model_id")
    cols = [c for c in ("lr", "weight_decay", "label_smoothing", "epochs") if c in t]
    return {str(p.tuple_id): {c: float(t.loc[p.a, c]) for c in cols} for p in pairs}


# ---------------------------------------------------------------------------- align

def _align_setup(path, opts: Options) -> dict:
    z = open_zoo(path, opts.verify)
    pairs, notes = pairs_of(z, opts.max_pairs)
    variant = variant_of(z)
    fold = opts.fold_asym and variant == "W-Asym"
    if not fold:
        check_alignable(z.rebuild(int(z.ids[0])))
    data = data_of(z, opts.data, opts.device)
    return {"z": z, "pairs": pairs, "notes": notes, "variant": variant, "fold": fold,
            "x": data.normalize(data.x_test[:256])}


def _align_pair(ctx, opts: Options, i: int) -> dict:
    z, p, fold = ctx["z"], ctx["pairs"][i], ctx["fold"]
    net_a, _ = net_and_state(z, p.a, fold=fold)
    net_b, _ = net_and_state(z, p.b, fold=fold)
    _, rep = align(net_a, net_b, ctx["x"], seed=opts.seed, restarts=opts.restarts)
    return {"zoo": z.name, "variant": ctx["variant"], "method": "fold+weight-matching" if fold else
            "weight-matching", "pair": p.tuple_id, "a": p.a, "b": p.b,
            **{k: v for k, v in rep.items() if k != "restart_objectives"},
            "restart_objectives": " ".join(f"{o:.6g}" for o in rep["restart_objectives"])}


def run_align(path, opts: Options, quiet: bool = False) -> dict:
    """Weight matching of every pair: distance before and after, matching objective, sweeps,
    and max |dlogits| between a net and its permuted copy (the function-preservation check)."""
    ctx = _align_setup(path, opts)
    z = ctx["z"]
    bar = _bar(len(ctx["pairs"]), f"align {z.name}", quiet)
    records = _map(_align_setup, _align_pair, path, opts, ctx, len(ctx["pairs"]), bar)
    bar.close()
    return {"zoo": z.name, "path": str(z.path), "variant": ctx["variant"], "records": records, "notes": ctx["notes"]}


# ------------------------------------------------------------------------------ mli

def _mli_setup(path, opts: Options) -> dict:
    z = open_zoo(path, opts.verify)
    if "epoch_0" not in z.checkpoints:
        raise ZooError(f"{z.path}: no epoch_0 checkpoint (stored: {', '.join(z.checkpoints)}); MLI needs each "
                       "net's initialisation: generate with checkpoints = [0, \"final\"]")
    data = data_of(z, opts.data, opts.device)
    idx = subset(len(data.y_train), opts.subset, opts.seed)
    t = z.table
    diverged = set(t.loc[t["diverged"].astype(bool), "model_id"]) if "diverged" in t else set()
    ids = [int(i) for i in t["model_id"] if int(i) not in diverged]
    if opts.max_pairs is not None:
        ids = ids[:opts.max_pairs]
    return {"z": z, "alphas": alphas_of(opts.alphas), "variant": variant_of(z), "data": data, "idx": idx,
            "ev": Evaluator(data.x_train[idx], data.y_train[idx], data.normalize, opts.batch, opts.max_nets,
                            opts.device), "ids": ids,
            "notes": [f"{z.name}: {len(diverged)} diverged net(s) left out"] if diverged else []}


def _mli_net(ctx, opts: Options, i: int):
    z, mid, alphas, data, idx = ctx["z"], ctx["ids"][i], ctx["alphas"], ctx["data"], ctx["idx"]
    net, s0 = net_and_state(z, mid, "epoch_0")
    _, s1 = net_and_state(z, mid, "final")
    reset = opts.bn_reset == "repair" or (opts.bn_reset == "auto" and has_batchnorm(net))
    c = curve(ctx["ev"], net, s0, s1, alphas, bn_data=(data.x_train[idx], data.normalize) if reset else None,
              names=(f"model {mid} at epoch 0", "final"))
    st = metrics.mli_stats(c["loss"], alphas, opts.tol, opts.upstream_compat)
    record = {"zoo": z.name, "variant": ctx["variant"], "model_id": mid, **st,
              "loss_init": float(c["loss"][0]), "loss_final": float(c["loss"][-1]), "acc_final": float(c["acc"][-1])}
    return record, {"zoo": z.name, "model_id": mid, "alpha": alphas.tolist(), "loss": c["loss"].tolist(),
                    "acc": c["acc"].tolist()}


def run_mli(path, opts: Options, quiet: bool = False) -> dict:
    """Train loss along the line from each net's epoch-0 weights to its final ones, on a fixed
    unaugmented subset of the training images, and the MLI statistics."""
    ctx = _mli_setup(path, opts)
    z = ctx["z"]
    bar = _bar(len(ctx["ids"]), f"mli {z.name}", quiet, unit="net")
    done = _map(_mli_setup, _mli_net, path, opts, ctx, len(ctx["ids"]), bar)
    bar.close()
    return {"zoo": z.name, "path": str(z.path), "variant": ctx["variant"], "alphas": ctx["alphas"].tolist(),
            "records": [r for r, _ in done], "curves": [c for _, c in done], "notes": ctx["notes"],
            "tol": opts.tol, "upstream_compat": opts.upstream_compat, "subset": int(len(ctx["idx"]))}
