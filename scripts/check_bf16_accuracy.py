#!/usr/bin/env python3
"""Does bf16 keep the fp32 accuracy distribution? (the bar: 64 models, mean |Δacc| < 0.5 points)

Trains the same models twice with `zoo generate` -- the lim2024-resnet8 recipe (its
hyper-parameter distributions, augmentation, schedule), same seeds, so the same inits and
batches -- once with --precision fp32 and once with --precision bf16, and compares each
model's test accuracy and the two distributions.

Data: CIFAR-10 when it is on disk (``--data cifar10``; torchvision's copy under
``--data-root``). The GPU machines have no internet, so by default the script writes
*digits32*: scikit-learn's 8x8 digits (ships with the package) scaled 3x, placed at a random
offset on a 32x32 canvas with a random colour and pixel noise, 3 channels -- CIFAR-shaped and
learnable, so accuracies spread as a real zoo's do. It is a proxy: bf16's rounding is the
same per step, the accuracy levels are not CIFAR-10's.

    python scripts/check_bf16_accuracy.py --device cuda                 # 64 models, ~4 min on an H100
    python scripts/check_bf16_accuracy.py --dry-run                     # CPU, 4 tiny models: checks it runs

Two readings of "mean |Δacc|": per model (the same seed in both precisions; bf16 rounding
makes training trajectories drift apart, so this includes that chaos) and of the
distribution (|mean fp32 - mean bf16|, with a paired 95% CI, and a two-sample KS test).
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # scripts.benchtools when run as a file
GOAL_POINTS = 0.5


def digits32(path: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """CIFAR-shaped (32x32x3 uint8) images of scikit-learn's digits: scaled 3x, random offset,
    colour and noise. Train and test images come from disjoint halves of the digits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = (d.images / 16.0).astype(np.float32)  # [1797, 8, 8] in [0, 1]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(imgs))
    halves = {"train": order[: len(order) // 2], "test": order[len(order) // 2:]}
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        idx = rng.choice(halves[split], n)
        big = np.kron(imgs[idx], np.ones((3, 3), np.float32))  # [n, 24, 24]
        canvas = np.zeros((n, 32, 32), np.float32)
        off = rng.integers(0, 9, (n, 2))
        for i in range(n):
            canvas[i, off[i, 0]:off[i, 0] + 24, off[i, 1]:off[i, 1] + 24] = big[i]
        colour = rng.uniform(0.3, 1.0, (n, 1, 1, 3)).astype(np.float32)
        background = rng.uniform(0.0, 0.3, (n, 1, 1, 3)).astype(np.float32)
        x = background + canvas[..., None] * (colour - background)
        x += rng.normal(0, 0.08, x.shape).astype(np.float32)
        out[f"x_{split}"] = (np.clip(x, 0, 1) * 255).astype(np.uint8)
        out[f"y_{split}"] = d.target[idx].astype(np.int64)
    np.savez(path, **out)
    return path


def spec_text(data_source: str, models: int, epochs: tuple[int, int] | None) -> str:
    text = (ROOT / "zoo/presets/lim2024-resnet8.toml").read_text()
    text = (text.replace('name = "lim2024-resnet8"', 'name = "bf16-check"')
            .replace('source = "cifar10"', f'source = "{data_source}"')
            .replace("models = 10000", f"models = {models}")
            .replace("models_per_shard = 1000", f"models_per_shard = {models}"))
    if epochs:
        text = text.replace("low = 10, high = 40", f"low = {epochs[0]}, high = {epochs[1]}").replace(
            "warmup_epochs = 5", f"warmup_epochs = {min(5, epochs[0])}")
    return text


def compare(fp32: np.ndarray, bf16: np.ndarray, seed: int = 0) -> dict:
    """Per-model and distribution differences, in accuracy points (percent)."""
    from scipy.stats import ks_2samp

    d = (bf16 - fp32) * 100
    rng = np.random.default_rng(seed)
    boot = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(2000)]
    return {"n": len(d), "mean_abs_per_model": float(np.abs(d).mean()), "max_abs_per_model": float(np.abs(d).max()),
            "mean_fp32": float(fp32.mean() * 100), "mean_bf16": float(bf16.mean() * 100),
            "mean_diff": float(d.mean()), "mean_diff_ci": (float(np.percentile(boot, 2.5)),
                                                           float(np.percentile(boot, 97.5))),
            "ks_p": float(ks_2samp(fp32, bf16).pvalue),
            "quantiles_fp32": np.percentile(fp32 * 100, [10, 50, 90]).tolist(),
            "quantiles_bf16": np.percentile(bf16 * 100, [10, 50, 90]).tolist()}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", type=int, default=64)
    ap.add_argument("--data", default="digits32", help="digits32 (default; offline) or cifar10 (on disk)")
    ap.add_argument("--data-root", default=None, help="torchvision's data folder, for --data cifar10")
    ap.add_argument("--train-images", type=int, default=10_000, help="digits32 training images (default 10,000)")
    ap.add_argument("--epochs", default=None, metavar="LO,HI",
                    help="epoch range instead of the recipe's 10,40 (e.g. 5,20 to halve the time)")
    ap.add_argument("--work", type=Path, default=None, help="folder for data and zoos (default: a temp dir)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, 4 models, 1-2 epochs, small data")
    args = ap.parse_args(argv)
    if args.epochs is not None:
        lo_hi = args.epochs.split(",")
        if len(lo_hi) != 2 or not all(x.strip().isdigit() for x in lo_hi) or \
                not 1 <= int(lo_hi[0]) <= int(lo_hi[1]):
            ap.error(f"--epochs {args.epochs!r}: expected LO,HI with 1 <= LO <= HI, e.g. 5,20")
    if args.models < 2:
        ap.error(f"--models {args.models}: at least 2 (a distribution is compared)")
    if args.train_images < 100:
        ap.error(f"--train-images {args.train_images}: at least 100")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.dry_run and args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(f"check_bf16_accuracy.py: error: --device {args.device}: no CUDA device here "
                  "(use --device cpu, or --dry-run)", file=sys.stderr)
            return 2
    epochs = tuple(int(e) for e in args.epochs.split(",")) if args.epochs else None
    if args.dry_run:
        args.device, args.models, args.train_images, epochs = "cpu", 4, 256, (1, 2)
    work = args.work or Path(tempfile.mkdtemp(prefix="bf16-check-"))
    work.mkdir(parents=True, exist_ok=True)
    from scripts.benchtools import device_info

    print(f"# {device_info(args.device)}", flush=True)
    if args.data == "digits32":
        source = f"npz:{digits32(work / 'digits32.npz', args.train_images, max(256, args.train_images // 5))}"
    else:
        source = args.data
    spec = work / "spec.toml"
    text = spec_text(source, args.models, epochs)
    if args.data_root:
        text = text.replace(f'source = "{source}"', f'source = "{source}"\nroot = "{args.data_root}"')
    spec.write_text(text)
    accs = {}
    for precision in ("fp32", "bf16"):
        cmd = [sys.executable, "-m", "zoo.cli", "generate", str(spec), "--out", str(work / precision),
               "--device", args.device, "--precision", precision, "--group-size", str(args.models), "--quiet"]
        print("$ " + shlex.join(cmd), flush=True)
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if r.returncode != 0:
            print((r.stdout + r.stderr)[-3000:] + f"\nzoo generate --precision {precision} failed (exit {r.returncode})")
            return r.returncode
        import zoo

        t = zoo.open(work / precision).table.sort_values("model_id")
        accs[precision] = t["test_acc"].to_numpy(np.float64)
        print(f"{precision}: {args.models} models in {time.perf_counter() - t0:.0f} s", flush=True)
    ok = np.isfinite(accs["fp32"]) & np.isfinite(accs["bf16"])
    if ok.sum() < 2:
        print(f"only {ok.sum()} of {args.models} models trained without diverging in both precisions: "
              "nothing to compare (lower the learning rates or train more models)")
        return 1
    c = compare(accs["fp32"][ok], accs["bf16"][ok])
    lo, hi = c["mean_diff_ci"]
    if args.dry_run:
        print("(dry run: 4 barely trained models; the figures below only show the script works)")
    print(f"\nbf16 vs fp32, {c['n']} models ({(~ok).sum()} diverged in either excluded), data {args.data}, "
          f"test accuracy in points:")
    print(f"  per model:    mean |Δacc| {c['mean_abs_per_model']:.2f}, max {c['max_abs_per_model']:.2f}  "
          f"(goal < {GOAL_POINTS}: {'met' if c['mean_abs_per_model'] < GOAL_POINTS else 'not met'})")
    print(f"  distribution: mean fp32 {c['mean_fp32']:.2f}, bf16 {c['mean_bf16']:.2f}, difference "
          f"{c['mean_diff']:+.2f} [95% CI {lo:+.2f}, {hi:+.2f}] (goal |.| < {GOAL_POINTS}: "
          f"{'met' if abs(c['mean_diff']) < GOAL_POINTS else 'not met'}); KS p = {c['ks_p']:.2f}")
    print("  p10/p50/p90:  fp32 " + " / ".join(f"{q:.1f}" for q in c["quantiles_fp32"]) +
          ",  bf16 " + " / ".join(f"{q:.1f}" for q in c["quantiles_bf16"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
