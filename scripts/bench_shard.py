#!/usr/bin/env python3
"""End to end: `zoo generate` of one shard with slot refill against without, in models/hour.

Each window generates the same shard into a fresh folder: data load, initialisation,
training, evaluation, the HDF5 part files, the shard and its checksum (everything but the
Python start-up). The two variants ('refill' and 'fixed', i.e. --no-refill) first generate
a shard of one group's worth of models each, untimed (libraries, cuDNN autotuning, the allocator), then alternate
(refill fixed refill fixed ...). Printed: models/h as median [min, max] n per variant, and
the per-window ratio refill / fixed; on the CPU also models per CPU-hour (user + sys time of
this process), which a machine shared with other work still measures faithfully (with one
thread on a quiet machine the two agree).

  python scripts/bench_shard.py                         # digits-wasym-resnet8, 48 models, CPU
  python scripts/bench_shard.py --device cuda --preset lim2024-resnet8 --models 1000 \\
      --group-size 128 --train-images 1024 --windows 2  # the paper's epoch mix, 2 steps/epoch

The shard keeps the preset's hyper-parameter distributions (for lim2024: epochs 10-40, the
paper's mix) unless --epochs says otherwise. CIFAR-shaped presets train on random uint8
images (--train-images x 3 x 32 x 32, --test-images for evaluation), written to an .npz: no
download, and speed does not depend on pixel values. A smaller training set scales the
training part of the time down (epochs are of --train-images images) but not the per-model
evaluation on the test set, nor initialisation and writes.
"""
from __future__ import annotations

import argparse
import resource
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.generate import train as ztrain  # noqa: E402
from scripts.benchtools import Spread, Variant, alternate, device_info  # noqa: E402
from zoo.generate import generate  # noqa: E402
from zoo.generate.spec import load_spec, spec_from_dict  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="digits-wasym-resnet8")
    ap.add_argument("--models", type=int, default=48, help="models in the shard (default 48)")
    ap.add_argument("--group-size", type=int, default=8, help="slots of a group (default 8, the CPU's for batch 64)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's)")
    ap.add_argument("--epochs", default=None, metavar="LOW,HIGH",
                    help="epochs drawn uniformly from LOW..HIGH (default: the preset's distribution)")
    ap.add_argument("--train-images", type=int, default=50_000, help="CIFAR-shaped presets: training images")
    ap.add_argument("--test-images", type=int, default=10_000, help="CIFAR-shaped presets: test images")
    ap.add_argument("--windows", type=int, default=5, help="generations timed per variant (default 5)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    if args.models < 1 or args.group_size < 2:
        ap.error("--models must be >= 1 and --group-size >= 2 (a group of one never refills)")
    if args.epochs is not None:
        try:
            lo, hi = (int(x) for x in args.epochs.split(","))
        except ValueError:
            ap.error(f"--epochs {args.epochs!r}: expected LOW,HIGH, e.g. 10,40")
        if not 1 <= lo <= hi:
            ap.error(f"--epochs {args.epochs!r}: need 1 <= LOW <= HIGH")
        args.epochs = (lo, hi)
    return args


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def shard_spec(args, work: Path, models: int):
    """The preset as a one-shard spec of ``models`` models (CIFAR-shaped data for non-digits)."""
    d = load_spec(args.preset).to_dict()
    d.update(models=models, models_per_shard=models)
    if args.epochs:
        d["hparams"]["epochs"] = {"dist": "randint", "low": args.epochs[0], "high": args.epochs[1]}
    if d["data"]["source"] != "digits":
        path = work / "cifar_shaped.npz"
        if not path.exists():
            rng = np.random.default_rng(0)
            n, m = args.train_images, args.test_images
            np.savez(path, x_train=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                     y_train=rng.integers(0, 10, n), x_test=rng.integers(0, 256, (m, 32, 32, 3), dtype=np.uint8),
                     y_test=rng.integers(0, 10, m))
        d["data"] = {"source": f"npz:{path}"}
    return spec_from_dict(d)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python " + shlex.join(["scripts/bench_shard.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"# {command}\n{device_info(args.device)}", flush=True)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        spec = shard_spec(args, work, args.models)
        small = shard_spec(args, work, min(args.models, args.group_size))  # one full group: its shapes
        runs = [0]
        # Group steps and model-steps (slots, masked ones included) of a variant's last
        # generation: what refill changes is how many group steps carry the same models.
        steps = {True: [0, 0], False: [0, 0]}
        real_step = ztrain.GroupRun.step

        def gen(s, refill: bool) -> None:
            out = work / f"zoo-{runs[0]}"
            runs[0] += 1
            steps[refill] = count = [0, 0]

            def counted(run):
                count[0] += 1
                count[1] += run.M
                return real_step(run)

            ztrain.GroupRun.step = counted
            try:
                generate(s, out, device=args.device, group_size=args.group_size, progress=False, refill=refill)
            finally:
                ztrain.GroupRun.step = real_step
            shutil.rmtree(out)

        cpu_rates = {True: [], False: []}  # models per CPU-hour, per window

        def window(refill):
            def run(n):
                c0, t0 = cpu_seconds(), time.perf_counter()
                for _ in range(n):
                    gen(spec, refill)
                wall = time.perf_counter() - t0
                cpu_rates[refill].append(3600.0 * args.models * n / (cpu_seconds() - c0))
                return wall
            return run

        variants = [Variant(name, window(refill), work=3600.0 * args.models,
                            warmup=lambda refill=refill: gen(small, refill))
                    for name, refill in (("refill", True), ("fixed", False))]
        alternate(variants, args.windows)
    epochs = [spec.sample_hparams(i)["epochs"] for i in range(args.models)]
    print(f"\n{args.models}-model shard of {args.preset} on {args.device}, group size {args.group_size}, "
          f"epochs {min(epochs)}-{max(epochs)} (mean {np.mean(epochs):.1f}), "
          + ("" if spec.data["source"] == "digits" else f"{args.train_images:,} training images, ")
          + f"end to end (data load, init, training, evaluation, HDF5 writes):")
    cuda = args.device.startswith("cuda")
    for v, refill in zip(variants, (True, False)):
        cpu = "" if cuda else f"; {Spread(cpu_rates[refill]).fmt(0)} models per CPU-hour"
        print(f"  {v.name:7s} {Spread(v.rates).fmt(0)} models/h{cpu}   (warm-up {v.warmup_s:.1f} s; "
              f"{steps[refill][0]:,} group steps, {steps[refill][1]:,} model-steps)")
    ratio = Spread([a / b for a, b in zip(variants[0].rates, variants[1].rates)])
    print(f"  refill / fixed, per window pair: {ratio.fmt(3)} (wall)")
    if not cuda:
        cpu_ratio = Spread([a / b for a, b in zip(cpu_rates[True], cpu_rates[False])])
        print(f"  refill / fixed, per window pair: {cpu_ratio.fmt(3)} (CPU time)")
    print(f"command: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
