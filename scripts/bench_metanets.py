"""Speed of the metanetwork side, in one run.

1. HDF5 read throughput of the reader (row by row, as a Dataset reads it; and whole
   shards, as the in-memory fast path reads it) against a plain in-memory copy of the
   same array.
2. Time per training epoch (train + validation pass, the paper's protocol) of each
   metanet on a zoo of the given size, and the projected time of a full benchmark table.

Uses an existing zoo (``--zoo``) or writes a synthetic ResNet8 zoo of ``--models`` nets
(``--width``, ``--in-channels``: 1.0 and 3 are the paper's CIFAR-10 ResNet8, 78,042
parameters). Prints the exact command that produced the figures.

    python scripts/bench_metanets.py --models 512 --width 0.5 --in-channels 1
    python scripts/bench_metanets.py --models 10000 --device cuda      # paper scale, H100
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import zoo
from metanets import data, registry, train
from metanets.synthetic import make_zoo
from zoo.benchtools import Spread, Variant, alternate, device_info, timed


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
                sweep: int, windows: int) -> None:
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
    total = 0.0
    for v in variants:
        neural = registry.get(v.name).kind == "torch"
        per = Spread([1 / r for r in v.rates])
        # a table cell = lr sweep (seed 0, one run per rate) + the other seeds, at full length
        cell = per.median * train.EPOCHS * (sweep + seeds - 1) if neural else per.median * seeds
        total += cell * n_zoos
        print(f"| {v.name} | {per.fmt(3)}{'' if neural else ' (whole fit)'} | {cell:,.0f} |")
    for name, reason in skipped:
        print(f"| {name} | n/a ({reason}) | |")
    print(f"\nProjected full table ({len(names)} metanets x {n_zoos} zoos x {seeds} seeds, "
          f"{train.EPOCHS} epochs, {sweep}-rate sweep): {total / 60:.1f} min")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", type=Path, default=None, help="an existing zoo (default: write a synthetic one)")
    ap.add_argument("--models", type=int, default=512, help="nets in the synthetic zoo (default 512)")
    ap.add_argument("--width", type=float, default=1.0, help="ResNet8 width of the synthetic zoo (default 1.0)")
    ap.add_argument("--in-channels", type=int, default=3, help="input channels of the synthetic nets (default 3)")
    ap.add_argument("--wasym", action="store_true", help="W-Asymmetric synthetic nets")
    ap.add_argument("--metanets", default="mlp,dmc,deepsets,statnn,statnn-gbm")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=train.BATCH_SIZE)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per timed window (default 2)")
    ap.add_argument("--windows", type=int, default=5, help="timed windows per metanet (default 5)")
    ap.add_argument("--rows", type=int, default=2000, help="nets read row by row in the HDF5 test")
    ap.add_argument("--no-read", action="store_true", help="skip the HDF5 read-throughput part")
    ap.add_argument("--seeds", type=int, default=5, help="seeds in the projected table (default 5)")
    ap.add_argument("--zoos", type=int, default=2, help="zoos in the projected table (default 2)")
    args = ap.parse_args(argv)
    names = registry.parse_names(args.metanets)
    print("command: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    print(device_info(args.device))
    with tempfile.TemporaryDirectory() as tmp:
        path = args.zoo
        if path is None:
            t0 = time.perf_counter()
            path = make_zoo(Path(tmp) / "synthetic", models=args.models, width=args.width,
                            in_channels=args.in_channels, wasym=args.wasym, shard_size=1024)
            print(f"synthetic zoo: {args.models} ResNet8 (width {args.width}, {args.in_channels} input channels"
                  f"{', W-Asym' if args.wasym else ''}) written in {time.perf_counter() - t0:.1f}s")
        if not args.no_read:
            read_throughput(path, args.rows)
        epoch_times(path, names, args.device, args.batch_size, args.epochs, args.seeds, args.zoos,
                    len(train.LR_GRID), args.windows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
