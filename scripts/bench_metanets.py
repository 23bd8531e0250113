"""Speed of the metanetwork side, in one run.

1. HDF5 read throughput of the reader (row by row, as a Dataset reads it; and whole
   shards, as the in-memory fast path reads it) against a plain in-memory copy of the
   same array.
2. Time per training epoch (train + validation pass, the paper's protocol) of each
   metanet on a zoo of the given size, and the projected time of a full benchmark table.
3. Stacked against run by run (:mod:`metanets.stack`): the lr sweep's runs (one init, one
   batch order: the input read once) and the final seeds (own batches) as one stacked model,
   beside the same runs trained one after the other, in epoch-runs/s; and the projected
   table with the stacked rates.

Uses an existing zoo (``--zoo``) or writes a synthetic ResNet8 zoo of ``--models`` nets
(``--width``, ``--in-channels``: 1.0 and 3 are the paper's CIFAR-10 ResNet8, 78,042
parameters). Prints the exact command that produced the figures.

    python scripts/bench_metanets.py --models 512 --width 0.5 --in-channels 1
    python scripts/bench_metanets.py --models 10000 --device cuda      # paper scale, H100
    python scripts/bench_metanets.py --models 256 --width 0.25 --in-channels 1 --no-read --stack-only \
        --metanets mlp,statnn,deepsets,dmc --epochs 1 --seeds 3       # stacked vs run by run, CPU
    python scripts/bench_metanets.py --zoo runs/digits-std --adam --metanets mlp,statnn --batch-size 32 \
        --epochs 2 --seeds 3                                            # fused AdamW against unfused
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts.benchtools when run as a file

import zoo  # noqa: E402
from metanets import bench, data, registry, stack, train  # noqa: E402
from scripts.benchtools import Spread, Variant, alternate, device_info, timed  # noqa: E402
from zoo.generate.synthetic import make_zoo  # noqa: E402


def _timed(fn, repeat=1):
    t0 = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return (time.perf_counter() - t0) / repeat, out


def read_throughput(path: Path, rows: int) -> None:
    z = zoo.open(path)
    ids = z.ids[: min(rows, len(z))]
    mb = len(ids) * z.layout.num_params * 4 / 1e6
    t_rows, arr = _timed(lambda: z.weights(ids))  # one HDF5 row read per net
    t_bulk, _ = _timed(lambda: z.weights(None))  # whole shards
    mb_all = len(z) * z.layout.num_params * 4 / 1e6
    mem = np.array(arr)
    order = np.random.default_rng(0).permutation(len(ids))
    t_mem, _ = _timed(lambda: np.stack([mem[i] for i in order]), repeat=3)  # per-item, like a Dataset
    z.close()
    print(f"\n## HDF5 read throughput ({z.layout.num_params} params/net)")
    print("| reader | nets/s | MB/s |\n| --- | --- | --- |")
    print(f"| zoo.weights(ids): one HDF5 row per net ({len(ids)} nets) | {len(ids) / t_rows:,.0f} | {mb / t_rows:,.0f} |")
    print(f"| zoo.weights(None): whole shards, fast path ({len(z)} nets) | {len(z) / t_bulk:,.0f} | {mb_all / t_bulk:,.0f} |")
    print(f"| in-memory numpy copy, per-net random access | {len(ids) / t_mem:,.0f} | {mb / t_mem:,.0f} |")


def epoch_times(path: Path, names, device: str, batch_size: int, epochs: int, seeds: int, n_zoos: int,
                sweep: int, windows: int):
    t0 = time.perf_counter()
    ws = data.load(path, device=device)
    t_load = time.perf_counter() - t0
    n = {s: len(ws.ids(s)) for s in data.SPLITS}
    variants, skipped = [], []
    for name in names:  # every registered metanet the user names: new ones need no edit here
        reason = registry.unsupported(name, ws.info)
        if reason:  # e.g. NFN on ResNets: listed as n/a, not timed
            skipped.append((name, reason))
            continue
        neural = registry.get(name).kind == "torch"
        k = epochs if neural else 1

        def fit(k, name=name):
            return lambda: train.fit(name, ws, lr=1e-3, epochs=k, batch_size=batch_size, device=device)

        # a neural metanet's unit is an epoch (windows of `epochs`), GBM's a whole fit
        variants.append(Variant(name, lambda n, fit=fit: timed(device, fit(n)), 1, fit(1), units=k))
    alternate(variants, windows)
    print(f"\n## Time per training epoch ({n['train']} train + {n['val']} val nets, "
          f"{ws.info.num_inputs} inputs, device {device}, batch {batch_size}); zoo loaded in {t_load:.1f}s")
    print(f"Each window is one fit() of {epochs} epochs (model set-up and final predictions included), "
          f"after a 1-epoch warm-up; metanets alternate; median [min, max] n.")
    print("| metanet | s/epoch | projected table cell (s) |\n| --- | --- | --- |")
    total, cells = 0.0, {}
    for v in variants:
        neural = registry.get(v.name).kind == "torch"
        per = Spread([1 / r for r in v.rates])
        # a table cell = the lr sweep (one run per rate) + the seeds' fresh runs, at full length
        cells[v.name] = cell = per.median * train.EPOCHS * (sweep + seeds) if neural else per.median * seeds
        total += cell * n_zoos
        print(f"| {v.name} | {per.fmt(3)}{'' if neural else ' (whole fit)'} | {cell:,.0f} |")
    for name, reason in skipped:
        print(f"| {name} | n/a ({reason}) | |")
    print(f"\nProjected full table, run by run ({len(names)} metanets x {n_zoos} zoos x {seeds} seeds, "
          f"{train.EPOCHS} epochs, {sweep}-rate sweep): {total / 60:.1f} min")
    return ws, cells


def stack_times(ws, names, device: str, batch_size: int, epochs: int, seeds: int, n_zoos: int, windows: int,
                cells: dict) -> None:
    """Stacked sweep and stacked seeds against the same runs one after the other."""
    names = [n for n in names if stack.supports(n) and not registry.unsupported(n, ws.info)]
    if not names:
        return
    variants = []
    for name in names:
        kw = dict(batch_size=batch_size, device=device)
        sweep = [(lr, 0) for lr in train.LR_GRID]
        finals = [(1e-3, s) for s in range(seeds)]

        def runs(which, stacked, name=name, kw=kw):
            def window(k):
                return timed(device, lambda: bench.fit_runs(name, ws, which, epochs=k, stack=stacked, **kw))
            return window

        # the unit is an epoch of every run of the group: epoch-runs per second
        for label, which in (("sweep", sweep), ("seeds", finals)):
            for stacked in (False, True):
                window = runs(which, stacked)
                variants.append(Variant(f"{name} {label} {'stacked' if stacked else 'run by run'}", window,
                                        len(which), lambda w=window: w(1), units=epochs))
    alternate(variants, windows)
    print(f"\n## Stacked against run by run ({len(train.LR_GRID)}-rate sweep: one init, shared batches; "
          f"{seeds} seeds: own init and batches; device {device}, batch {batch_size})")
    print(f"Each window is one bench.fit_runs() of {epochs} epochs per run (set-up and final predictions "
          f"included), after a 1-epoch warm-up; variants alternate; median [min, max] n.")
    print("| metanet | runs | run by run (epoch-runs/s) | stacked (epoch-runs/s) | speed-up | "
          "projected cell stacked (s) |\n| --- | --- | --- | --- | --- | --- |")
    total = sum(c for n, c in cells.items() if n not in names) * n_zoos
    by = {v.name: Spread(v.rates) for v in variants}
    for name in names:
        cell = 0.0
        for label, r in (("sweep", len(train.LR_GRID)), ("seeds", seeds)):
            seq, stk = by[f"{name} {label} run by run"], by[f"{name} {label} stacked"]
            cell += train.EPOCHS * r / stk.median
            print(f"| {name} | {label} ({r}) | {seq.fmt(2)} | {stk.fmt(2)} | {stk.median / seq.median:.2f}x | "
                  + (f"{cell:,.0f} |" if label == "seeds" else "|"))
        total += cell * n_zoos
    print(f"\nProjected full table with stacking ({', '.join(names)} stacked; the others as above): "
          f"{total / 60:.1f} min")


def adam_times(ws, names, device: str, batch_size: int, epochs: int, seeds: int, windows: int) -> None:
    """The stacked runs' AdamW update: torch's fused CPU kernel against the unfused update
    (:data:`metanets.stack.FUSED_CPU`), the demo's lr choice (every seed at every rate)."""
    names = [n for n in names if stack.supports(n) and not registry.unsupported(n, ws.info)]
    runs = [(lr, s) for lr in train.LR_GRID for s in range(seeds)]
    variants = []
    for name in names:
        for fused in (False, True):
            def window(k, name=name, fused=fused):
                old, stack.FUSED_CPU = stack.FUSED_CPU, fused
                try:
                    return timed(device, lambda: bench.fit_runs(name, ws, runs, epochs=k, batch_size=batch_size,
                                                                device=device))
                finally:
                    stack.FUSED_CPU = old
            variants.append(Variant(f"{name} {'fused' if fused else 'unfused'}", window, len(runs),
                                    lambda w=window: w(1), units=epochs))
    alternate(variants, windows)
    print(f"\n## Stacked AdamW on the {device}: fused kernel against the unfused update ({len(runs)} runs: "
          f"{seeds} seeds x {len(train.LR_GRID)} rates, batch {batch_size}; {epochs} epochs per window after a "
          f"1-epoch warm-up; variants alternate; median [min, max] n)")
    print("| metanet | unfused (epoch-runs/s) | fused (epoch-runs/s) | speed-up |\n| --- | --- | --- | --- |")
    by = {v.name: Spread(v.rates) for v in variants}
    for name in names:
        a, b = by[f"{name} unfused"], by[f"{name} fused"]
        print(f"| {name} | {a.fmt(2)} | {b.fmt(2)} | {b.median / a.median:.2f}x |")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", type=Path, default=None, help="an existing zoo (default: write a synthetic one)")
    ap.add_argument("--models", type=int, default=512, help="nets in the synthetic zoo (default 512)")
    ap.add_argument("--width", type=float, default=1.0, help="ResNet8 width of the synthetic zoo (default 1.0)")
    ap.add_argument("--in-channels", type=int, default=3, help="input channels of the synthetic nets (default 3)")
    ap.add_argument("--wasym", action="store_true", help="W-Asymmetric synthetic nets")
    ap.add_argument("--arch", choices=("resnet", "smallcnn"), default="resnet",
                    help="synthetic nets: ResNet8 (default) or the Small CNN Zoo's CNN (4,970 parameters on "
                         "--in-channels; for NFN, which reads plain CNNs only)")
    ap.add_argument("--metanets", default="mlp,dmc,deepsets,statnn,statnn-gbm")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=train.BATCH_SIZE)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per timed window (default 2)")
    ap.add_argument("--windows", type=int, default=5, help="timed windows per metanet (default 5)")
    ap.add_argument("--rows", type=int, default=2000, help="nets read row by row in the HDF5 test")
    ap.add_argument("--adam", action="store_true",
                    help="only time the stacked AdamW update, fused CPU kernel against unfused")
    ap.add_argument("--no-read", action="store_true", help="skip the HDF5 read-throughput part")
    ap.add_argument("--no-stack", action="store_true", help="skip the stacked-against-run-by-run part")
    ap.add_argument("--stack-only", action="store_true",
                    help="only the stacked-against-run-by-run part (with --no-read: no HDF5 part either)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds in the projected table (default 5)")
    ap.add_argument("--zoos", type=int, default=2, help="zoos in the projected table (default 2)")
    args = ap.parse_args(argv)
    if args.arch == "smallcnn" and args.wasym:
        ap.error("--wasym: synthetic W-Asym zoos are ResNets only (drop --arch smallcnn or --wasym)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    names = registry.parse_names(args.metanets)
    print("command: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    print(device_info(args.device))
    with tempfile.TemporaryDirectory() as tmp:
        path = args.zoo
        if path is None:
            t0 = time.perf_counter()
            path = make_zoo(Path(tmp) / "synthetic", models=args.models, width=args.width,
                            in_channels=args.in_channels, wasym=args.wasym, shard_size=1024, arch=args.arch)
            what = f"ResNet8 (width {args.width}, " if args.arch == "resnet" else "smallcnn ("
            print(f"synthetic zoo: {args.models} {what}{args.in_channels} input channels"
                  f"{', W-Asym' if args.wasym and args.arch == 'resnet' else ''}) written in "
                  f"{time.perf_counter() - t0:.1f}s")
        if args.adam:
            adam_times(data.load(path, device=args.device), names, args.device, args.batch_size, args.epochs,
                       args.seeds, args.windows)
            return 0
        if not args.no_read:
            read_throughput(path, args.rows)
        if not args.stack_only:
            ws, cells = epoch_times(path, names, args.device, args.batch_size, args.epochs, args.seeds, args.zoos,
                                    len(train.LR_GRID), args.windows)
        else:
            ws, cells = data.load(path, device=args.device), {}
        if not args.no_stack:
            stack_times(ws, names, args.device, args.batch_size, args.epochs, args.seeds, args.zoos, args.windows,
                        cells)
    return 0


if __name__ == "__main__":
    sys.exit(main())
