"""The benchmark: every (zoo, metanet, seed) -> scores, with the paper's protocol.

For each zoo and each metanet with ``lr="auto"`` (a number or ``"paper"`` skips the choice),
the learning rate comes from :data:`train.LR_GRID` in one of two ways (``lr_select``):

* ``"seeds"`` (default): seeds ``0..N-1`` are trained at *every* rate of the grid; the rate
  whose seeds have the best *mean* validation R² (no seed diverged) is chosen, and those
  same seeds are scored on the test split. The choice rests on N runs per rate instead of
  one, so a single lucky run cannot pick a rate (with one run per rate the nfn-hnp row of
  the smallcnn table moved from R² 0.78 to 0.51 between two machines), and the test split
  never enters it.
* ``"sweep"``: the paper's protocol (``paper_scripts/*.sh`` then ``final_*.sh``): one run
  per rate, its own seed stream, picks the rate with the best validation R² among the runs
  that did not diverge; seeds ``0..N-1`` are then trained afresh at that rate.

Scores get bootstrap CIs and paired zoo comparisons (:mod:`metanets.uncertainty`). All
zoos of one table must predict the same target.

The sweep's runs (one init, one batch order) and then the final seeds train as one stacked
model where the metanet supports it (:mod:`metanets.stack`; ``stack=False`` or ``--no-stack``
trains run by run): the same results up to float rounding, and each run's ``train_time_s``
is then an equal share of the stacked training's.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from zoo import console
from zoo.store.reader import skip_verification
from zoo.workers import map_items

from . import data, registry, uncertainty
from . import stack as stacking
from .data import WeightSet
from .errors import MetanetError, NotApplicable
from .plugins import load_plugin
from .train import BATCH_SIZE, EPOCHS, LR_GRID, WEIGHT_DECAY, FitResult, fit


#: The paper's final learning rates (cptq/asymmetric-networks ``metanet/paper_scripts/final_*.sh``):
#: metanet -> (rate on standard ResNet8s, rate on W-Asym ResNet8s). ``--lr paper`` uses them.
PAPER_LR = {"mlp": (1e-2, 1e-4), "dmc": (1e-3, 5e-3), "deepsets": (1e-2, 5e-3), "statnn": (1e-3, 1e-2)}

#: ``--protocol lim2024``: the paper's protocol exactly (train.py defaults, the lr grid of
#: paper_scripts/*.sh, five runs per setting).
LIM2024 = dict(epochs=EPOCHS, batch_size=BATCH_SIZE, lr="auto", lr_grid=LR_GRID, seeds=5, lr_select="sweep")
#: ``lr_select`` values; None resolves to "sweep" under ``--protocol lim2024``, else "seeds".
LR_SELECT = ("seeds", "sweep")
PROTOCOLS = ("custom", "lim2024")


@dataclass
class BenchConfig:
    """Options of one benchmark; validated by :meth:`check`."""

    metanets: tuple = ("mlp", "dmc", "deepsets", "statnn", "statnn-gbm", "hparams")
    seeds: int | dict = 5  # or {"*": default, metanet: n} (:func:`parse_per_metanet`)
    epochs: int | dict = EPOCHS  # likewise
    lr: str | float | dict = "auto"  # "paper", or {metanet: "auto" | "paper" | rate}; unlisted metanets sweep
    lr_grid: tuple = LR_GRID
    lr_select: str | None = None  # how "auto" picks: "seeds" (mean val R² of the seeds) or "sweep" (paper)
    batch_size: int = BATCH_SIZE
    device: str = "cpu"
    params: str = "trainable"
    target: str | None = None
    checkpoint: str = "final"
    in_memory: bool | None = None  # None: load the zoo into memory when it fits
    match_accuracy: bool = False  # also score on a common accuracy histogram and above chance
    bootstrap: int = 1000  # resamples of the test nets per CI
    bootstrap_seed: int = 0
    protocol: str = "custom"
    stack: bool = True  # train a metanet's sweep runs, then its seeds, as one stacked model where it can

    def check(self) -> "BenchConfig":
        for n in self.metanets:
            registry.get(n)
        if not self.metanets:
            raise MetanetError(f"metanets={list(self.metanets)} names no metanet; known: {', '.join(registry.names())}")
        if self.protocol not in PROTOCOLS:
            raise MetanetError(f"protocol={self.protocol!r} is invalid; allowed: {', '.join(PROTOCOLS)}")
        if self.lr_select is None:
            self.lr_select = "sweep" if self.protocol == "lim2024" else "seeds"
        if self.lr_select not in LR_SELECT:
            raise MetanetError(f"lr_select={self.lr_select!r} is invalid; allowed: {', '.join(LR_SELECT)}")
        if self.protocol == "lim2024":
            for k, v in LIM2024.items():
                if k == "lr" and self.lr == "paper":  # final_*.sh alone: the paper's rates, no sweep
                    continue
                if getattr(self, k) != v:
                    raise MetanetError(f"--protocol lim2024 fixes {k.replace('_', '-')} = {v}; "
                                       f"{getattr(self, k)!r} was given (drop the option or the protocol)")
        for key in ("seeds", "epochs"):
            value = getattr(self, key)
            for name, v in (value.items() if isinstance(value, dict) else [("*", value)]):
                if name != "*":
                    registry.get(name)
                if not isinstance(v, int) or v < 1:
                    raise MetanetError(f"{key}={v!r}{'' if name == '*' else ' for ' + name} is invalid; "
                                       f"allowed: an integer >= 1")
        if self.batch_size < 2:
            raise MetanetError(f"batch_size={self.batch_size} is invalid; allowed: >= 2")
        if self.bootstrap < 10:
            raise MetanetError(f"bootstrap={self.bootstrap} is invalid; allowed: >= 10 resamples")
        for name, lr in (self.lr.items() if isinstance(self.lr, dict) else [("", self.lr)]):
            if name:
                registry.get(name)
            if lr not in ("auto", "paper") and not (isinstance(lr, (int, float)) and lr > 0):
                raise MetanetError(f"lr={lr!r}{' for ' + name if name else ''} is invalid; "
                                   f"allowed: 'auto', 'paper' or a number > 0")
            if lr == "paper" and name and name not in PAPER_LR:
                raise MetanetError(f"lr=paper for {name}: the paper gives final rates only for "
                                   f"{', '.join(PAPER_LR)}")
        if self.params not in data.PARAMS:
            raise MetanetError(f"params={self.params!r} is invalid; allowed: {', '.join(data.PARAMS)}")
        check_device(self.device)
        return self

    def seeds_for(self, name: str) -> int:
        return self.seeds.get(name, self.seeds.get("*", 5)) if isinstance(self.seeds, dict) else self.seeds

    def epochs_for(self, name: str) -> int:
        return self.epochs.get(name, self.epochs.get("*", EPOCHS)) if isinstance(self.epochs, dict) else self.epochs

    def lr_for(self, name: str, wasym: bool = False):
        """The learning rate of metanet ``name`` on a (W-Asym) zoo: a number, or "auto" (sweep).

        "paper" resolves to the paper's final rate (:data:`PAPER_LR`); metanets the paper
        gives none for sweep."""
        lr = self.lr.get(name, "auto") if isinstance(self.lr, dict) else self.lr
        if lr == "paper":
            return PAPER_LR[name][int(wasym)] if name in PAPER_LR else "auto"
        return lr


def parse_lr(text: str):
    """``"auto"``, ``"paper"``, a positive float, or ``"mlp=auto,dmc=1e-3"`` (per metanet; others sweep)."""
    text = str(text).strip()
    if "=" in text:
        out = {}
        for part in text.split(","):
            name, _, value = part.partition("=")
            if not name.strip() or not value.strip():
                raise MetanetError(f"--lr {text!r} is invalid: write NAME=RATE pairs, e.g. mlp=auto,dmc=1e-3")
            out[name.strip().lower()] = parse_lr(value)
        return out
    if text.lower() in ("auto", "paper"):
        return text.lower()
    try:
        v = float(text)
    except ValueError:
        raise MetanetError(f"--lr {text!r} is invalid; allowed: auto, paper or a number > 0 (e.g. 1e-3)") from None
    if not (v > 0 and math.isfinite(v)):
        raise MetanetError(f"--lr {text!r} is invalid; allowed: auto, paper or a number > 0 (e.g. 1e-3)")
    return v


def parse_per_metanet(text, option: str):
    """``"20"`` -> 20; ``"20,dmc=5,deepsets=5"`` -> ``{"*": 20, "dmc": 5, "deepsets": 5}`` (integers)."""
    out = {}
    for part in str(text).split(","):
        name, eq, value = part.rpartition("=") if "=" in part else ("*", "", part)
        try:
            out[name.strip().lower() or "?"] = int(value)
        except ValueError:
            raise MetanetError(f"{option} {text!r} is invalid; allowed: an integer, optionally followed by "
                               f"NAME=N overrides, e.g. 20,dmc=5") from None
    return out["*"] if list(out) == ["*"] else out


def check_device(device: str) -> None:
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


def zoo_facts(path) -> dict:
    """What the report needs from a zoo's manifest: W-Asym or not, and chance accuracy."""
    z = data.open_zoo(path)
    net = z.manifest.get("net") or {}
    z.close()
    classes = net.get("num_classes")
    return {"wasym": bool(net.get("wasym")), "num_classes": classes}


# ------------------------------------------------------------ runs of one metanet

def fit_runs(name: str, ws: WeightSet, runs, *, stack: bool = True, on_result=None, **kw) -> list[FitResult]:
    """One :class:`FitResult` per ``(lr, seed)`` of ``runs``, in order, each what
    ``train.fit(name, ws, lr=lr, seed=seed, **kw)`` returns. With ``stack`` (default) the runs of a
    metanet that supports it (:mod:`metanets.stack`) train as one stacked model, which gives
    the same results faster; other metanets train run by run.

    ``on_result``: optional callable receiving each result as it is ready; ``progress``: an
    optional callable ``(epoch, val_r2)`` after every epoch of a run, ``val_r2`` a list (one
    per run still training) when the runs train stacked."""
    runs = [(lr, seed) for lr, seed in runs]
    if stack and len(runs) > 1 and stacking.supports(name):
        results = []
        for a in range(0, len(runs), stacking.MAX_REPLICAS):
            results += stacking.fit_stacked(name, ws, runs[a:a + stacking.MAX_REPLICAS], **kw)
            for res in results[a:] if on_result else ():
                on_result(res)
        return results
    results = []
    for lr, seed in runs:
        results.append(fit(name, ws, lr=lr, seed=seed, **kw))
        if on_result:
            on_result(results[-1])
    return results


def sweep_lr(name: str, ws: WeightSet, lrs=LR_GRID, *, seed: int = 0, on_result=None, stack: bool = True, **kw):
    """Train one run per learning rate; return (best lr by validation R², all results).

    The runs share initialisation and batches, so by default they train as one stacked
    model (:func:`fit_runs`). ``on_result``: optional callable receiving each
    :class:`FitResult` as it finishes."""
    results = fit_runs(name, ws, [(lr, seed) for lr in lrs], stack=stack, on_result=on_result, **kw)
    return best_lr(results), results


def best_lr(results) -> float | None:
    """The rate of the usable run with the best validation R²; None if every run diverged
    or gave non-finite predictions (a diverged run is never selected, whatever its score)."""
    scored = [r for r in results if r.status == "ok" and np.isfinite(r.val_r2)]
    return max(scored, key=lambda r: r.val_r2).lr if scored else None


def best_mean_lr(results) -> float | None:
    """The rate whose runs (one per seed) have the best mean validation R²; rates where a
    run diverged or gave non-finite predictions are never chosen. None if no rate is left."""
    by_lr: dict = {}
    for r in results:
        by_lr.setdefault(r.lr, []).append(r)
    usable = {lr: float(np.mean([r.val_r2 for r in rs])) for lr, rs in by_lr.items()
              if all(r.status == "ok" and np.isfinite(r.val_r2) for r in rs)}
    return max(usable, key=usable.get) if usable else None


def run(paths, cfg: BenchConfig, *, progress: bool = True, log=print, workers: int = 1) -> dict:
    """Run the benchmark; return ``{"config", "zoos", "runs", "sweeps", "predictions", "summary", "comparisons"}``.

    ``runs`` holds every final run with its ``status`` ("ok", "diverged",
    "nan_predictions") and a ``note``; only "ok" runs enter ``predictions`` and the
    summary (which says how many seeds it counted). ``skipped`` lists the (zoo, metanet)
    pairs that could not run at all, with the reason (shown as n/a).

    ``workers > 1`` (CPU only): the (metanet, zoo) units run in that many spawned processes
    (:func:`zoo.workers.map_items`), each with its share of the CPU threads; every run is
    seeded on its own, so the result is the serial one (bit for bit when each process runs
    one thread)."""
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
        facts = zoo_facts(ws.path)
        is_acc = ws.target.endswith("acc")
        info = {"zoo": label, "path": str(ws.path), "target": ws.target, "params": cfg.params,
                "num_inputs": ws.info.num_inputs, "streamed": isinstance(ws.x["train"], data.StreamedRows),
                "num_tensors": ws.info.num_tensors, "wasym": facts["wasym"],
                "chance": 1.0 / facts["num_classes"] if is_acc and facts["num_classes"] else None,
                "diverged_excluded": ws.selection.n_diverged, "nonfinite_target_excluded": ws.selection.n_nonfinite,
                **{f"n_{s}": int(len(ws.ids(s))) for s in data.SPLITS}}
        zoos.append(info)
        log(f"{label}: {info['n_train']}/{info['n_val']}/{info['n_test']} train/val/test nets, "
            f"{info['num_inputs']} inputs ({cfg.params}), {info['diverged_excluded']} diverged excluded")

    total = sum(_n_runs(cfg, m, z["wasym"]) for m in cfg.metanets for z in zoos)
    bar = console.progress(total, enabled=progress, desc="bench", unit="run", dynamic_ncols=True)
    # one unit per (metanet, zoo), metanet-major: with workers, the units of one metanet (about
    # the same cost) run side by side
    units = [(m, k) for m in cfg.metanets for k in range(len(zoos))]
    order = sorted(range(len(units)), key=lambda i: (units[i][1], cfg.metanets.index(units[i][0])))  # zoo by zoo
    runs, sweeps, preds, skipped = [], [], [], []
    try:
        if workers > 1 and len(units) > 1:
            if cfg.device != "cpu":
                raise MetanetError(f"--workers {workers} is for CPU runs; on {cfg.device} use --workers 1")

            def done(i, out):
                m, k = units[i]
                for line in out["log"]:
                    log(line)
                bar.set_postfix_str(f"{m} on {zoos[k]['zoo']} done")
                bar.update(out["ticks"])

            plugins = sorted({p for m in cfg.metanets if (p := getattr(registry.get(m), "plugin_path", None))})
            outs = map_items(_worker_setup, (paths, cfg, zoos, plugins), _worker_unit, units, workers, done=done)
        else:
            outs = [None] * len(units)
            for i in order:
                m, k = units[i]
                outs[i] = _unit(m, zoos[k], sets[k], cfg, log=log, bar=bar)
    finally:
        bar.close()
    for out in (outs[i] for i in order):
        runs += out["runs"]
        sweeps += out["sweeps"]
        preds += out["predictions"]
        skipped += out["skipped"]
    result = {"config": {**asdict(cfg), "metanets": list(cfg.metanets), "lr_grid": list(cfg.lr_grid),
                         "weight_decay": WEIGHT_DECAY},
              "zoos": zoos, "runs": runs, "sweeps": sweeps, "predictions": preds, "skipped": skipped,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    result["summary"], result["comparisons"] = uncertainty.summarize(
        result, B=cfg.bootstrap, seed=cfg.bootstrap_seed, match=cfg.match_accuracy)
    return result


# ------------------------------------------------------------ one metanet on one zoo

def _n_runs(cfg: BenchConfig, m: str, wasym: bool) -> int:
    """The runs ``m`` trains on one zoo (the progress bar's unit)."""
    if registry.get(m).kind == "sklearn":
        return cfg.seeds_for(m)
    if cfg.lr_for(m, wasym) != "auto":
        return cfg.seeds_for(m)
    if cfg.lr_select == "seeds":
        return cfg.seeds_for(m) * len(cfg.lr_grid)
    return cfg.seeds_for(m) + len(cfg.lr_grid)


def _unit(m: str, info: dict, ws: WeightSet, cfg: BenchConfig, *, log=print, bar=None) -> dict:
    """Metanet ``m`` on one zoo: ``{"runs", "sweeps", "predictions", "skipped", "ticks"}``.

    ``bar``: a progress bar to move run by run (None in a worker: its parent moves the bar by
    ``ticks`` when the unit is done)."""
    label, wasym = info["zoo"], info["wasym"]
    out = {"runs": [], "sweeps": [], "predictions": [], "skipped": [], "ticks": _n_runs(cfg, m, wasym)}

    def tick(n, text=None):
        if bar is not None:
            if text:
                bar.set_postfix_str(text)
            bar.update(n)

    def record(res: FitResult, into, counts=True):
        row = {"zoo": label, "metanet": res.metanet, "seed": res.seed, "lr": res.lr, "best_epoch": res.best_epoch,
               "val_r2": res.val_r2, "val_tau": res.val_tau, "test_r2": res.test_r2, "test_tau": res.test_tau,
               "status": res.status, "note": res.note,
               "train_time_s": round(res.train_time_s, 3), "cpu_time_s": round(res.cpu_time_s, 3),
               "num_params": res.num_params, "epochs": cfg.epochs_for(res.metanet) if res.lr is not None else None}
        into.append(row)
        if res.status != "ok":
            log(f"{label}: {res.note}")
        if counts:
            tick(1, f"{res.metanet} on {label}: test R² {res.test_r2:.3f}")

    def not_applicable(reason, left):
        out["skipped"].append({"zoo": label, "metanet": m, "reason": reason})
        log(f"{m} on {label}: n/a ({reason})")
        tick(left)

    # stacked runs finish together, so the bar also shows the epoch they are at
    kw = dict(epochs=cfg.epochs_for(m), batch_size=cfg.batch_size, device=cfg.device, stack=cfg.stack,
              progress=(lambda e, _: bar.set_postfix_str(f"{m} on {label}: epoch {e}/{cfg.epochs_for(m)}"))
              if bar is not None else None)
    lr = cfg.lr_for(m, wasym)
    check = getattr(registry.get(m), "unsupported", None)  # a metanet that reads only some nets
    reason = check(ws.info) if check else None
    if reason:
        not_applicable(reason, out["ticks"])
        return out
    chosen = None  # the runs to score, when the lr choice already trained them
    try:
        if registry.get(m).kind == "sklearn":
            lr = None
        elif lr == "auto" and cfg.lr_select == "seeds":
            # every seed at every rate; the chosen rate's seeds are the final runs
            grid = [(r, seed) for r in cfg.lr_grid for seed in range(cfg.seeds_for(m))]
            results = fit_runs(m, ws, grid, **kw, on_result=lambda r: record(r, out["sweeps"], counts=False))
            lr = best_mean_lr(results)
            tick(len(results) - cfg.seeds_for(m))  # the chosen rate's runs tick below
            if lr is None:
                not_applicable(f"at every rate of {list(cfg.lr_grid)} a seed diverged "
                               f"or gave non-finite predictions", cfg.seeds_for(m))
                return out
            chosen = [r for r in results if r.lr == lr]
        elif lr == "auto":
            # the sweep's runs have their own seed stream: the final seeds are fresh runs
            results = fit_runs(m, ws, [(r, 0) for r in cfg.lr_grid], tag="sweep", **kw,
                               on_result=lambda r: record(r, out["sweeps"]))
            lr = best_lr(results)
            if lr is None:
                not_applicable(f"every rate of the lr sweep {list(cfg.lr_grid)} diverged "
                               f"or gave non-finite predictions", cfg.seeds_for(m))
                return out
        else:
            lr = float(lr)
        if chosen is None:
            chosen = fit_runs(m, ws, [(lr, seed) for seed in range(cfg.seeds_for(m))], **kw)
        for res in chosen:
            record(res, out["runs"])
            if res.status == "ok":
                out["predictions"].append({"zoo": label, "metanet": m, "seed": res.seed, "model_id": ws.ids("test"),
                                           "target": ws.selection.y["test"], "prediction": res.predictions["test"]})
    except NotApplicable as e:
        not_applicable(str(e), out["ticks"])
    return out


# A worker's setup and unit (:func:`zoo.workers.map_items`): the parent has verified the zoos'
# shards already, and a plugin's metanets are registered again in the worker.

def _worker_setup(paths, cfg: BenchConfig, zoos, plugins) -> dict:
    for p in plugins:
        load_plugin(p)
    return {"paths": paths, "cfg": cfg, "zoos": zoos, "sets": {}}


def _worker_unit(ctx, unit) -> dict:
    m, k = unit
    if k not in ctx["sets"]:
        cfg = ctx["cfg"]
        with skip_verification():
            ctx["sets"][k] = data.load(ctx["paths"][k], params=cfg.params, target=cfg.target,
                                       checkpoint=cfg.checkpoint, device=cfg.device, in_memory=cfg.in_memory)
    lines = []
    out = _unit(m, ctx["zoos"][k], ctx["sets"][k], ctx["cfg"], log=lines.append)
    out["log"] = lines
    return out
