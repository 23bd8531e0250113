#!/usr/bin/env python3
"""Throughput of the group trainer against the one-model-at-a-time reference, side by side.

Prints model-epochs/second, models/hour (at the preset's mean epoch count), peak GPU
memory per model, and the ratio to the reference, for each variant, with the command
that produced the figures. On CUDA it also tries bf16 autocast and channels-last.

  python scripts/bench_generate.py                                  # digits presets, CPU
  python scripts/bench_generate.py --device cuda                    # lim2024 presets, CIFAR-shaped data
  python scripts/bench_generate.py --device cuda --group-sizes 64,256,512

CIFAR-shaped data is random uint8 images (50,000 x 3 x 32 x 32, 10 classes) made in
memory, so the benchmark needs no download; speed does not depend on pixel values.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo import data as image_data  # noqa: E402
from zoo.spec import load_spec, validate_for_data  # noqa: E402
from zoo.train import GroupTrainer, Job, TrainOptions, train_alone  # noqa: E402

# The figures of record are in docs/BENCHMARKS.md, each with the command that produced it.


def cifar_shaped(device, n_train=50_000, n_test=10_000) -> image_data.ImageData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_train + n_test, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n_train + n_test,), generator=g)
    mean = torch.full((3,), 0.5)
    std = torch.full((3,), 0.29)
    return image_data.ImageData("cifar-shaped", x[:n_train], y[:n_train], x[n_train:], y[n_train:],
                                mean, std).to(device)


def jobs_for(spec, n, epochs, fraction=None):
    out = []
    for i in range(n):
        hp = spec.sample_hparams(i)
        # Same recipe, shortened: every model trains `epochs` epochs (warm-up scaled to fit).
        hp = {**hp, "epochs": epochs, "warmup_epochs": min(hp["warmup_epochs"], epochs / 2)}
        if fraction:
            hp["train_fraction"] = fraction
        out.append(Job(i, spec.model_seed(i), hp))
    return out


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(device, fn):
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def marginal(device, run):
    """(seconds of one steady-state epoch, seconds of everything else in a 1-epoch run).

    run(E) trains for E epochs. A first untimed run warms caches and cuDNN's autotuner on the
    very shapes that are timed; then epoch = t(2) - t(1) and overhead (init, evaluation) = t(1) - epoch."""
    run(1)
    t1 = _timed(device, lambda: run(1))
    t2 = _timed(device, lambda: run(2))
    epoch = max(t2 - t1, 1e-9)
    return epoch, max(t1 - epoch, 0.0)


def run_group(spec, cfg, data, device, M, fraction, opts):
    trainer = GroupTrainer(cfg, data, ["final"], opts)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if device.startswith("cuda") else 0
    epoch, over = marginal(device, lambda E: trainer.train(jobs_for(spec, M, E, fraction)))
    peak = (torch.cuda.max_memory_allocated() - base) / M if device.startswith("cuda") else float("nan")
    return epoch, over, peak


def run_reference(spec, cfg, data, device, fraction):
    opts = TrainOptions(device=device)
    return marginal(device, lambda E: train_alone(jobs_for(spec, 1, E, fraction)[0], cfg, data, ["final"], opts))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--presets", help="comma-separated presets (default: digits on CPU, lim2024 on CUDA)")
    ap.add_argument("--group-sizes", help="comma-separated group sizes (default: 1,4,8,16 on CPU; 256 on CUDA)")
    ap.add_argument("--fraction", type=float, default=None,
                    help="fraction of the training set per timed epoch (default 1 on CPU, 0.2 on CUDA); "
                         "epoch times are scaled to the full set")
    ap.add_argument("--variants", default=None, help="CUDA variants: fp32,bf16,cl,bf16+cl (default all)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = (args.presets or ("lim2024-resnet8,lim2024-wasym-resnet8" if cuda else
                                "digits-resnet8,digits-wasym-resnet8")).split(",")
    sizes = [int(s) for s in (args.group_sizes or ("256" if cuda else "1,4,8,16")).split(",")]
    fraction = args.fraction or (0.2 if cuda else 1.0)
    variants = (args.variants or ("fp32,bf16,cl,bf16+cl" if cuda else "fp32")).split(",")
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    dev_name = torch.cuda.get_device_name() if cuda else f"CPU x{torch.get_num_threads()} threads"
    print(f"# {command}\n# device: {dev_name}, torch {torch.__version__}")
    rows = []
    for preset in presets:
        spec = load_spec(preset)
        data = cifar_shaped(args.device) if spec.data["source"] != "digits" else image_data.load(spec.data, args.device)
        cfg = validate_for_data(spec, data.shape[0], data.num_classes)
        mean_epochs = float(np.mean([spec.sample_hparams(i)["epochs"] for i in range(200)]))

        def row(path, M, epoch, over, peak):
            epoch_full = epoch / fraction  # seconds per full-data epoch of the whole group
            rate = M / epoch_full
            per_hour = 3600 * M / (mean_epochs * epoch_full + over)
            return [preset, path, M, rate, per_hour, peak]

        ref = row("reference (one at a time)", 1, *run_reference(spec, cfg, data, args.device, fraction), float("nan"))
        rows.append(ref + [1.0])
        print(f"# {preset:24s} reference {ref[3]:8.2f} model-epochs/s", flush=True)
        for M in sizes:
            for v in variants:
                opts = TrainOptions(device=args.device, bf16="bf16" in v, channels_last="cl" in v)
                try:
                    r = row(f"group {v}", M, *run_group(spec, cfg, data, args.device, M, fraction, opts))
                except torch.cuda.OutOfMemoryError:
                    print(f"# {preset} M={M} {v}: out of memory")
                    continue
                rows.append(r + [r[3] / ref[3]])
                print(f"# {preset:24s} M={M:4d} {v:8s} {r[3]:8.2f} model-epochs/s", flush=True)
    print(f"\n{'preset':24s} {'path':26s} {'M':>5s} {'model-ep/s':>11s} {'models/h':>10s} "
          f"{'MiB/model':>10s} {'x ref':>7s}")
    for preset, path, M, rate, per_hour, peak, ratio in rows:
        mib = f"{peak / 2**20:10.1f}" if peak == peak else f"{'-':>10s}"
        print(f"{preset:24s} {path:26s} {M:5d} {rate:11.2f} {per_hour:10.0f} {mib} {ratio:7.2f}")
    print(f"\nmodel-ep/s: steady-state training epochs (full training set) per second, from t(2 epochs) - t(1 epoch)"
          f" on {fraction:.0%} of the data; models/h: at the preset's mean epoch count ({mean_epochs:.1f}), "
          f"including init and the final evaluation.\ncommand: {command}")


if __name__ == "__main__":
    main()
