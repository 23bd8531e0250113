#!/usr/bin/env python3
"""Where the group trainer spends its time: a torch.profiler table of one short group run,
then the device time and kernel count per step in categories (conv, norm, pointwise,
copy/transpose, memcpy, other), the attribution docs/BENCHMARKS.md reports.

  python scripts/profile_generate.py --device cuda --group-size 128 --bf16 --channels-last
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.bench_generate import cifar_shaped, jobs_for  # noqa: E402
from zoo.generate import images as image_data  # noqa: E402
from zoo.generate.spec import load_spec, validate_for_data  # noqa: E402
from zoo.generate.train import GroupTrainer, TrainOptions  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="lim2024-resnet8")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--fraction", type=float, default=0.1, help="training fraction (fewer steps)")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    spec = load_spec(args.preset)
    data = cifar_shaped(args.device) if spec.data["source"] != "digits" else image_data.load(spec.data, args.device)
    cfg = validate_for_data(spec, data.shape[0], data.num_classes)
    jobs = jobs_for(spec, args.group_size, 1)
    for j in jobs:
        j.hp["train_fraction"] = args.fraction
    opts = TrainOptions(device=args.device, bf16=args.bf16, channels_last=args.channels_last)
    trainer = GroupTrainer(cfg, data, ["final"], opts)
    trainer.train(jobs)  # warm-up (cuDNN benchmark)
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                    if args.device.startswith("cuda") else [])
    with torch.profiler.profile(activities=acts) as prof:
        trainer.train(jobs)
    key = "cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
    steps = trainer.start(jobs).spe
    print(categories(prof, args.device.startswith("cuda"), steps))


#: Kernel-name fragments per category, first match wins (cuDNN, ATen and Triton names).
CATEGORIES = (("memcpy", ("memcpy", "memset")),
              ("copy/transpose", ("copy", "transpose", "nchwtonhwc", "nhwctonchw", "contiguous", "permute")),
              ("conv", ("conv", "cudnn", "implicit_gemm", "wgrad", "dgrad", "sm90_xmma", "cutlass")),
              ("norm", ("group_norm", "groupnorm", "batch_norm", "batchnorm", "layer_norm", "welford")),
              ("pointwise", ("elementwise", "vectorized", "relu", "add", "mul", "where", "triton_poi", "fill")))


def categories(prof, cuda: bool, steps: int) -> str:
    """Device time (ms) and kernel launches per training step, by category."""
    tot = {c: [0.0, 0] for c, _ in CATEGORIES}
    tot["other"] = [0.0, 0]
    for e in prof.events():
        if cuda and e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        if not cuda and e.cpu_parent is not None:
            continue  # CPU: top-level ops only, so no time counts twice
        t = (e.device_time if cuda else e.cpu_time) / 1000
        name = e.name.lower()
        cat = next((c for c, keys in CATEGORIES if any(k in name for k in keys)), "other")
        tot[cat][0] += t
        tot[cat][1] += 1
    lines = [f"| category | {'device' if cuda else 'CPU'} ms/step | {'kernels' if cuda else 'ops'}/step |",
             "| --- | --- | --- |"]
    for c, (t, n) in tot.items():
        lines.append(f"| {c} | {t / steps:.2f} | {n / steps:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
