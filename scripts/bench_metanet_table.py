#!/usr/bin/env python3
"""The paper-scale metanet table, really run and timed (the goal: under 10 minutes on one H100).

Writes two synthetic zoos of CIFAR-10-shaped ResNet8s (78,042 parameters; standard and
W-Asym, ``--models`` nets each; reused when already there), then times one
`metanets bench` of both with the paper's protocol: the metanets MLP, DMC, DeepSets,
StatNN and the GBM, the lr swept over the paper's grid on seed 0, then the seeds, 50
epochs each. Synthetic weights cost the metanets exactly what trained ones do (same
shapes, same protocol); what they learn is not the point here.

    python scripts/bench_metanet_table.py --device cuda --work /tmp/table     # 2 x 10,000 nets
    python scripts/bench_metanet_table.py --dry-run                          # CPU, tiny: checks it runs

Prints the `metanets bench` command, its table, and the wall time of the whole table
(zoo loading included, zoo writing not) against the 10-minute goal.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # scripts.benchtools when run as a file
METANETS = "mlp,dmc,deepsets,statnn,statnn-gbm"
GOAL_MIN = 10.0


def make_zoos(work: Path, models: int, width: float, in_channels: int) -> list[Path]:
    """The two synthetic zoos (standard, W-Asym) under ``work``, written unless complete."""
    from zoo.generate.synthetic import make_zoo

    paths = []
    for wasym in (False, True):
        path = work / f"synthetic-{'wasym' if wasym else 'std'}-{models}"
        if not (path / "manifest.json").exists():
            t0 = time.perf_counter()
            make_zoo(path, models=models, wasym=wasym, width=width, in_channels=in_channels,
                     shard_size=1000, name=path.name)
            print(f"wrote {path} in {time.perf_counter() - t0:.0f} s", flush=True)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="benchmark device (default cuda)")
    ap.add_argument("--models", type=int, default=10_000, help="nets per zoo (default 10,000, the paper's)")
    ap.add_argument("--work", type=Path, default=None, help="folder for the zoos and results (default: a temp dir)")
    ap.add_argument("--metanets", default=METANETS, help=f"default: {METANETS}")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=None, help="stop the bench after this many seconds")
    ap.add_argument("--extra", default="", help="more `metanets bench` options, e.g. '--no-stack' for comparison")
    ap.add_argument("--dry-run", action="store_true", help="CPU, 64 small nets per zoo, 1 epoch, 1 seed")
    args = ap.parse_args(argv)
    if args.models < 8:
        ap.error(f"--models {args.models}: at least 8 (a zoo is split into train, val and test nets)")
    if args.seeds < 1 or args.epochs < 1:
        ap.error("--seeds and --epochs: at least 1")
    if not args.dry_run and args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            ap.error(f"--device {args.device}: no CUDA device here (use --device cpu, or --dry-run)")
    if args.dry_run:
        args.device, args.models, args.seeds, args.epochs = "cpu", 64, 1, 1
    width, in_channels = (0.25, 1) if args.dry_run else (1.0, 3)
    work = args.work or Path(tempfile.mkdtemp(prefix="metanet-table-"))
    work.mkdir(parents=True, exist_ok=True)
    from scripts.benchtools import device_info

    print(f"# {device_info(args.device)}", flush=True)
    zoos = make_zoos(work, args.models, width, in_channels)
    cmd = [sys.executable, "-m", "metanets.cli", "bench", *map(str, zoos), "--metanets", args.metanets,
           "--device", args.device, "--seeds", str(args.seeds), "--epochs", str(args.epochs),
           "--out", str(work / "bench"), *shlex.split(args.extra)]
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"table: stopped after {args.timeout:.0f} s (--timeout), unfinished: over {args.timeout / 60:.1f} min")
        return 1
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        print(f"table: metanets bench failed (exit {r.returncode}) after {wall:.0f} s")
        return r.returncode
    goal = ("dry run: not the goal's scale" if args.dry_run else
            f"goal < {GOAL_MIN:g} min: {'met' if wall / 60 < GOAL_MIN else 'NOT met'}")
    print(f"table: {len(args.metanets.split(','))} metanets x 2 zoos x {args.models:,} nets, lr sweep on seed 0 + "
          f"{args.seeds} seeds, {args.epochs} epochs: wall {wall / 60:.1f} min (loading included; {goal})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
