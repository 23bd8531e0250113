#!/usr/bin/env python3
"""The group trainer's input pipeline alone: fused gather (``grouped_batch``) against the old path.

One step's input for M models (batch B each) of a CIFAR-shaped preset, built from the
step's draws (order, flips, translations, cutout centres) into the group's input layout
``[B, M*C, H, W]``, the way the trainer does it:

  fused     zoo.generate.images.grouped_batch: each pixel read once as uint8 at its flipped and
            translated source, normalised, padding and cutout set to 0, written in the
            layout (the default)
  unfused   normalise the gathered batch, flip, pad, two gathers, cutout, transpose,
            cast and layout copy (the earlier path; TrainOptions(fused_input=False))
  fused+compile   (CUDA; --compile) grouped_batch under torch.compile(dynamic=False): one kernel

Each variant in fp32 and in bf16 + channels-last (the CUDA default), alternated A B A B,
after a warm-up, over --windows windows (CUDA events on GPU, wall time on CPU). Printed:
milliseconds per step, median [min, max] n, and the effective bandwidth (one uint8 read and
one write of the result per image). Also checks that every variant builds the same input.

  python scripts/bench_input.py                         # CPU, M=16
  python scripts/bench_input.py --device cuda --models 128
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.bench_generate import jobs_for, load_preset  # noqa: E402
from scripts.benchtools import Spread, Variant, alternate, device_info, timed  # noqa: E402
from zoo.generate.images import grouped_batch  # noqa: E402
from zoo.errors import ZooError  # noqa: E402
from zoo.generate.grouped import GroupState  # noqa: E402
from zoo.generate.train import (aug_sizes, augmented_batch, data_generator, stack_plans, epoch_plan,
                                train_subset)  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="lim2024-resnet8", help="a CIFAR-shaped preset (default lim2024-resnet8)")
    ap.add_argument("--models", type=int, default=None, help="models in the group, M (default 16 on CPU, 128 on CUDA)")
    ap.add_argument("--steps", type=int, default=None, help="steps per window (default 2 on CPU, 20 on CUDA)")
    ap.add_argument("--windows", type=int, default=5, help="timed windows per variant (default 5)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="also time fused+compile (default: on CUDA only; on a CPU it needs a C++ compiler)")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.models = (128 if cuda else 16) if args.models is None else args.models
    args.steps = (20 if cuda else 2) if args.steps is None else args.steps
    args.compile = cuda if args.compile is None else args.compile
    for name in ("models", "steps", "windows"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name}: {getattr(args, name)}; must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA device here")
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    try:
        torch.device(args.device)
        spec, cfg, data = load_preset(args.preset, args.device)
    except (ZooError, RuntimeError) as e:
        raise SystemExit(f"--preset {args.preset} --device {args.device}: {e}") from None
    jobs = jobs_for(spec, args.models)
    hw = tuple(data.x_train.shape[2:])
    plans = []
    for j in jobs:
        gen = data_generator(j)
        plans.append(epoch_plan(gen, train_subset(gen, len(data.y_train), j.hp["train_fraction"]), j.hp, hw))
    plan = stack_plans(plans, args.device)
    translate, cutout = aug_sizes([j.hp for j in jobs], args.device)
    B = int(jobs[0].hp["batch_size"])
    n_batches = plan["order"].shape[1] // B
    if n_batches < 1:
        raise SystemExit(f"{args.preset}: fewer training images than one batch ({B})")

    def fused(s, dtype, cl, gather=grouped_batch):
        # the step's slices are cut here, as GroupRun.step does, so that a compiled gather sees
        # tensors of one shape (a step number would be a constant: one compile per step)
        sl = slice(s * B, (s + 1) * B)
        return gather(data, data.x_train, plan["order"][:, sl], plan["flip"][:, sl], plan["shift"][:, sl],
                             plan["center"][:, sl], translate, cutout, dtype, cl)

    def unfused(s, dtype, cl):
        sl = slice(s * B, (s + 1) * B)
        x, _ = augmented_batch(data, plan["order"][:, sl], plan, sl, translate, cutout)
        return GroupState.layout_input(x, cl, dtype)

    builders = {"fused": fused, "unfused": unfused}
    if args.compile:
        compiled = torch.compile(grouped_batch, dynamic=False)
        builders["fused+compile"] = lambda s, dtype, cl: fused(s, dtype, cl, compiled)
    variants, first = [], {}
    for tag, dtype, cl in (("fp32", torch.float32, False), ("bf16+cl", torch.bfloat16, True)):
        for name, build in builders.items():
            def window(n, build=build, dtype=dtype, cl=cl):
                def go():
                    for i in range(n * args.steps):
                        build(i % n_batches, dtype, cl)
                return timed(args.device, go)
            full = f"{name} {tag}"
            variants.append(Variant(full, window, args.steps, warmup=lambda w=window: w(1)))
            first[full] = build(0, dtype, cl)
        ref = first[f"fused {tag}"]
        for name in builders:
            if not torch.equal(first[f"{name} {tag}"], ref):
                raise SystemExit(f"{name} {tag}: builds another input than fused {tag}; a defect")
    alternate(variants, args.windows)
    img_bytes = data.x_train[0].numel()
    print(f"\n# {command}\n{device_info(args.device)}")
    print(f"# preset {args.preset}: M={args.models} models x batch {B}, {tuple(data.x_train.shape[1:])} images, "
          f"translate {translate}, cutout {cutout if isinstance(cutout, int) else 'per model'}; "
          f"{args.steps} steps per window, variants alternated; every variant builds the same input")
    print(f"{'variant':24s} {'ms per step  median [min, max] n':40s} {'x unfused':>10s} {'GB/s':>8s}")
    spreads = {v.name: Spread([1e3 / r for r in v.rates]) for v in variants}
    for v in variants:
        tag = v.name.split(" ", 1)[1]
        s, base = spreads[v.name], spreads[f"unfused {tag}"]
        out_bytes = first[v.name].element_size()
        gbs = args.models * B * img_bytes * (1 + out_bytes) / (s.median / 1e3) / 1e9
        print(f"{v.name:24s} {s.fmt(3):40s} {base.median / s.median:10.2f} {gbs:8.1f}")
    print("GB/s: one uint8 read and one write of the result per image, over the median time (the floor's traffic)")
    print(f"command: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
