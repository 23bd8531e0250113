#!/usr/bin/env python3
"""`zoo analyze`'s interpolation engine: K nets along a line evaluated at once against one at a time.

One LMC curve = the K = --alphas nets between two nets of one architecture, each evaluated
(loss and accuracy) on --images images:

  batched        zoo.analyze.interp.Evaluator: the K weight sets stacked, one
                 torch.func.functional_call under torch.vmap per batch of images (what
                 `zoo analyze lmc | mli` runs; --max-nets at a time)
  one-at-a-time  for each alpha: the net built, its interpolated state loaded, evaluated
                 alone (what a script looping over alphas does, as upstream's interpolate_test)

Images are random uint8 of the shape asked for (no download: timings do not depend on their
content). Variants alternated A B A B after a warm-up, over --windows windows (CUDA events
on GPU, wall time on CPU); printed: seconds per curve, median [min, max] n, and the speed-up.
Also checks that both variants compute the same curve.

  python scripts/bench_analyze.py                                   # digits-sized ResNet8 (width 0.5), CPU
  python scripts/bench_analyze.py --arch smallcnn
  python scripts/bench_analyze.py --shape 3,32,32 --width 1 --images 10000 --device cuda   # CIFAR ResNet8

With --zoo PAIR_ZOO --workers 1,2 it times instead `zoo analyze lmc` (run_lmc) end to end on a
pair zoo with each number of worker processes (the pairs shared between spawned processes, each
with its share of the threads), alternated, and checks that every variant returns the same
records:

  zoo generate digits-lmc-resnet8 --out runs/lmc-std
  python scripts/bench_analyze.py --zoo runs/lmc-std --workers 1,2 --limit 8
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.analyze.interp import Evaluator, constant_keys, lerp_states  # noqa: E402
from scripts.benchtools import Spread, Variant, alternate, device_info, timed  # noqa: E402
from zoo.generate.images import ImageData  # noqa: E402
from zoo.nets import NetConfig, WAsym, build_net  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=("resnet8", "resnet20", "smallcnn"), default="resnet8")
    ap.add_argument("--variant", choices=("standard", "wasym", "sigma"), default="standard")
    ap.add_argument("--width", type=float, help="width multiplier (default: 0.5 for ResNets, 1 for smallcnn, as the digits-lmc presets)")
    ap.add_argument("--shape", default="1,8,8", help="C,H,W of the images (default 1,8,8: digits)")
    ap.add_argument("--images", type=int, default=449, help="images per evaluation (default 449: the digits test set)")
    ap.add_argument("--alphas", type=int, default=25)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--max-nets", type=int, default=25)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--windows", type=int, default=5, help="timed windows per variant (default 5)")
    ap.add_argument("--zoo", type=Path, help="a pair zoo: time `zoo analyze lmc` with each --workers count instead")
    ap.add_argument("--workers", default="1,2", help="with --zoo: worker counts to compare (default 1,2)")
    ap.add_argument("--limit", type=int, default=8, help="with --zoo: pairs analysed per run (default 8)")
    return ap.parse_args(argv)


def bench_workers(args, command: str) -> int:
    """run_lmc on a pair zoo with 1, 2, ... worker processes: seconds per pair."""
    from dataclasses import replace

    from zoo.analyze.study import Options, run_lmc

    counts = [int(w) for w in args.workers.split(",")]
    base = Options(alphas=args.alphas, batch=args.batch, max_nets=args.max_nets, max_pairs=args.limit)
    ref = None
    variants = []
    for w in counts:
        opts = replace(base, workers=w)

        def run(opts=opts):
            return run_lmc(args.zoo, opts, quiet=True)

        got = run()
        if ref is None:
            ref = got["records"]
        elif got["records"] != ref:
            close = all(abs(a[k] - b[k]) < 1e-5 for a, b in zip(ref, got["records"]) for k in a
                        if isinstance(a[k], float))
            if not close:
                print(f"error: --workers {w} returns other records than --workers {counts[0]}", file=sys.stderr)
                return 1
        pairs = len(got["records"])
        variants.append(Variant(f"workers {w}", lambda n, run=run: timed("cpu", lambda: [run() for _ in range(n)]),
                                pairs, warmup=lambda: None))
    alternate(variants, args.windows)
    print(f"\n# {command}\n{device_info('cpu')}")
    print(f"# zoo analyze lmc on {args.zoo} ({pairs} pairs, {args.alphas} alphas, batch {args.batch}), "
          f"{torch.get_num_threads()} torch threads shared by the workers; each run starts its processes")
    print_seconds(variants, variants[0], "pair")
    return 0


def print_seconds(variants, base, unit: str) -> None:
    """Seconds per ``unit`` of each variant, median [min, max] n, and its speed-up over ``base``."""
    ref = Spread([1 / r for r in base.rates])
    print(f"{'variant':16s} {f's per {unit}  median [min, max] n':40s} {'speed-up':>9s}")
    for v in variants:
        s = Spread([1 / r for r in v.rates])
        print(f"{v.name:16s} {s.fmt(4):40s} {ref.median / s.median:9.2f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python scripts/bench_analyze.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.zoo is not None:
        return bench_workers(args, command)
    C, H, W = (int(s) for s in args.shape.split(","))
    if args.width is None:
        args.width = 1.0 if args.arch == "smallcnn" else 0.5
    kw = {"wasym": WAsym(n_fix=2, n_fix_linear=2, kappa=0.5)} if args.variant == "wasym" else \
        {"activation": "figlu"} if args.variant == "sigma" else {}
    cfg = NetConfig(arch="smallcnn", in_channels=C, padding="same", width=args.width, **kw) if args.arch == "smallcnn" \
        else NetConfig(depth=int(args.arch[6:]), width=args.width, in_channels=C, **kw)
    g = torch.Generator().manual_seed(0)
    X = torch.randint(0, 256, (args.images, C, H, W), dtype=torch.uint8, generator=g)
    Y = torch.randint(0, 10, (args.images,), generator=g)
    data = ImageData("bench", X, Y, X, Y, torch.full((C,), 0.5), torch.full((C,), 0.25)).to(args.device)
    a, b = build_net(cfg, 1), build_net(cfg, 2)
    sa, sb = a.state_dict(), b.state_dict()
    alphas = np.linspace(0, 1, args.alphas)
    stacked = lerp_states(a, sa, sb, alphas)
    consts = {k: sa[k] for k in constant_keys(a) if sa.get(k) is not None}
    ev = Evaluator(data.x_test, data.y_test, data.normalize, args.batch, args.max_nets, args.device)
    nets = []
    for j in range(len(alphas)):  # built once, outside the timing: only the evaluation is compared
        n = build_net(cfg, 1)
        n.load_state_dict({**{k: v[j] for k, v in stacked.items()}, **consts}, strict=False)
        nets.append(n.to(args.device))

    def batched():
        return ev(a, stacked, consts)

    def alone():
        res = [ev.one(n) for n in nets]
        return np.array([r[0] for r in res]), np.array([r[1] for r in res])

    (l1, a1), (l2, a2) = batched(), alone()
    same = float(np.abs(l1 - l2).max())
    if same > 1e-4 or float(np.abs(a1 - a2).max()) > 1.5 / args.images:
        print(f"error: the variants disagree (max |dloss| {same:.3g})", file=sys.stderr)
        return 1

    def window(fn):
        return lambda n: timed(args.device, lambda: [fn() for _ in range(n)])

    variants = [Variant("batched", window(batched), 1, warmup=batched),
                Variant("one-at-a-time", window(alone), 1, warmup=alone)]
    alternate(variants, args.windows)
    print(f"\n# {command}\n{device_info(args.device)}")
    params = sum(p.numel() for p in a.parameters())
    print(f"# {args.arch} ({args.variant}, width {args.width}, {params:,} parameters), {args.alphas} nets per curve, "
          f"{args.images} images of {C}x{H}x{W}, batch {args.batch}, {args.max_nets} nets per vmap call; "
          f"max |dloss| between the variants {same:.2g}")
    print_seconds(variants, variants[1], "curve")
    return 0


if __name__ == "__main__":
    sys.exit(main())
