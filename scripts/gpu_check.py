#!/usr/bin/env python3
"""One prepared GPU session: every GPU figure docs/BENCHMARKS.md still waits for,
each printed with its command, then one markdown block ready to paste into
docs/BENCHMARKS.md (also written to --out). The default --minutes 8 covers the sections most
needed (about a to f and l, then i and k; compile times on the GPU are the unknown); --minutes 22 runs them all.

  python scripts/gpu_check.py --out gpu_check.md              # on the GPU machine
  python scripts/gpu_check.py --dry-run --out /tmp/dry.md      # CPU, tiny sizes: checks the script runs

Sections, most important first; each runs as its own process with a time limit, so a
failure or a hang costs that section only, and sections left when --minutes is spent are
listed as skipped:

  a  does F.group_norm keep a channels-last input channels-last?
  b  group trainer vs R0 for lim2024-resnet8 and lim2024-wasym-resnet8 (bf16+cl, M=128 and 32;
     resnet8 also as before the fused input gather: unfused input, plans drawn at each epoch start)
  c  R1 (compiled, CUDA-graphed one net) and R2 (k=4 R1 processes) in one run with R0
  d  the static-shape group step eager vs torch.compile(dynamic=False), M=128 and M=32
  e  a 20-step profile of M=128 bf16+cl with kernel categories and copy/transpose counts
  f  fp32 group-vs-alone exactness on CUDA with TF32 off (plain; slot refill + static + compile)
  g  end to end: `zoo generate` of a 1,000-model CIFAR-shaped shard at the paper's epoch mix (init,
     evaluation, HDF5 writes), models/h with slot refill and with fixed groups (scripts/bench_shard.py)
  h  metanet epoch times on a synthetic ResNet8 zoo, and a 2-epoch DMC profile
  i  the metanets' lr sweep and seeds trained stacked (metanets.stack) against run by run
  k  bf16 against fp32 on 64 models: per-model and distribution |Δacc| (scripts/check_bf16_accuracy.py)
  j  NFN-NP/HNP and graph metanet epoch times on synthetic smallcnns
  l  the input pipeline alone: fused gather vs the old path vs compiled, M=128 (bench_input.py)

Not in this session (it alone takes about 10 minutes): the paper-scale metanet table, really
run on two 10,000-net zoos -- `python scripts/bench_metanet_table.py --device cuda`.

The GPU machine has no internet: CIFAR-shaped random uint8 data stands in for CIFAR-10 (speed
does not depend on pixel values), written to an .npz for the `zoo generate` section.
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
PY = sys.executable


def _gn_channels_last(device: str) -> str:
    import torch
    import torch.nn.functional as F

    x = torch.randn(8, 64, 16, 16, device=device).contiguous(memory_format=torch.channels_last)
    outs = []
    for dtype in (torch.float32, torch.bfloat16):
        y = F.group_norm(x.to(dtype), 4)
        outs.append(f"{dtype}: output channels-last = {y.is_contiguous(memory_format=torch.channels_last)}")
    return "; ".join(outs)


def _dmc_profile(device: str, models: int) -> str:
    import torch

    from metanets import data, train
    from zoo.generate.synthetic import make_zoo
    from scripts.profile_generate import categories

    with tempfile.TemporaryDirectory() as tmp:
        path = make_zoo(Path(tmp) / "z", models=models, width=1.0, in_channels=3, shard_size=1024)
        ws = data.load(path, device=device)
        train.fit("dmc", ws, lr=1e-3, epochs=1, device=device)  # warm-up
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                        if device.startswith("cuda") else [])
        with torch.profiler.profile(activities=acts) as prof:
            train.fit("dmc", ws, lr=1e-3, epochs=2, device=device)
        key = "cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60)
        return table + "\n(per 'step' below = per epoch)\n" + categories(prof, device.startswith("cuda"), 2)


def sections(dry: bool) -> list[tuple[str, str, list[str] | None, int]]:
    """(key, title, command or None for an in-process check, time limit in s)."""
    bg = [PY, "scripts/bench_generate.py"]
    if dry:
        dev, big, small, frac = "cpu", 4, 2, "0.1"
        presets = ("digits-resnet8", "digits-wasym-resnet8")
        common = ["--device", dev, "--fraction", frac, "--windows", "2"]
        r1 = ["--r1-compile", "off"]
    else:
        dev, big, small, frac = "cuda", 128, 32, "0.1"
        presets = ("lim2024-resnet8", "lim2024-wasym-resnet8")
        common = ["--device", dev, "--fraction", frac, "--windows", "5", "--min-window-s", "2"]
        r1 = []
    out = [("a", "GroupNorm keeps channels-last?", None, 60)]
    for i, p in enumerate(presets):
        # the first preset also runs the group as it was before the fused input gather (input pipeline
        # unfused, plans drawn at each epoch start), alternated with today's
        before = f",group:{big}:bf16+cl+unfused+noahead" if i == 0 else ""
        out.append(("b", f"group trainer vs R0, {p}" + (" (and before the fused gather)" if before else ""),
                    bg + common + ["--preset", p, "--variants",
                                   f"r0,group:{big}:bf16+cl{before},group:{small}:bf16+cl"], 150))
    out.append(("c", "R1 and R2 against R0", bg + common + r1 + [
        "--preset", presets[0], "--variants", "r0,r1,r2:2" if dry else "r0,r1,r2:4"], 240))
    # dry run: no compiled variant (a 3-minute compile on a CPU), the eager fp32 one instead
    eager, fast = ("fp32+static", "bf16+cl+static") if dry else ("bf16+cl+static", "bf16+cl+static+compile")
    variants = [f"group:{small}:{eager}", f"group:{small}:{fast}", f"group:{big}:{eager}", f"group:{big}:{fast}"]
    if not dry:  # CUDA graphs matter most at small M, where launches are a larger share
        variants.insert(2, f"group:{small}:{fast}+graph")
    out.append(("d", "static-shape group step, eager vs compiled (vs CUDA-graphed)", bg + common + [
        "--preset", presets[0], "--variants", ",".join(variants)], 300))
    out.append(("e", f"profile, M={big} bf16+cl", [PY, "scripts/profile_generate.py", "--device", dev, "--preset",
                                                  presets[0], "--group-size", str(big), "--fraction",
                                                  "0.02" if dry else "0.2", "--bf16", "--channels-last",
                                                  "--rows", "20"], 60))
    out.append(("f", "fp32 exactness, TF32 off", [PY, "scripts/check_group_exactness.py", "--device", dev,
                                                  "--models", "2" if dry else "4", "--epochs", "1"], 60))
    out.append(("f", "fp32 exactness with slot refill and static shapes" + ("" if dry else " + compile"),
                [PY, "scripts/check_group_exactness.py", "--device", dev, "--models", "3" if dry else "6",
                 "--epochs", "2", "--slots", "2" if dry else "3", "--static"] + ([] if dry else ["--compile"]), 120))
    # A 1,000-model shard at the paper's epoch mix (10-40) with and without slot refill, on 1,024
    # CIFAR-shaped training images (2 steps per epoch; the full 50,000 would take hours per run)
    # and the full 10,000-image test set: about 6 minutes on an H100 (est.: 2 x ~150 s plus two
    # one-group warm-ups): give it the budget (--minutes 14, or --only g on its own).
    shard = (["--preset", "digits-wasym-resnet8", "--models", "6", "--group-size", "2", "--epochs", "1,2"] if dry
             else ["--device", "cuda", "--preset", "lim2024-resnet8", "--models", "1000", "--group-size", "128",
                   "--train-images", "1024", "--test-images", "10000"])
    out.append(("g", "end to end: zoo generate of a 1,000-model shard, slot refill vs fixed groups",
                [PY, "scripts/bench_shard.py", *shard, "--windows", "1"], 480))
    out.append(("h", "metanet epoch times", [PY, "scripts/bench_metanets.py", "--device", dev, "--models",
                                            "64" if dry else "2000", "--width", "0.25" if dry else "1.0",
                                            "--in-channels", "1" if dry else "3", "--epochs", "1" if dry else "2",
                                            "--windows", "2" if dry else "3", "--rows", "50", "--no-stack"], 120))
    out.append(("h", "DMC profile, 2 epochs", None, 90))
    # about 100 s on an H100 (estimated from the epoch times of section h: 4 metanets x 6 windows
    # of 6 + 5 runs of one epoch, each stacked and run by run, on a 2,000-net zoo)
    out.append(("i", "metanet sweep and seeds stacked against run by run", [
        PY, "scripts/bench_metanets.py", "--device", dev, "--no-read", "--stack-only", "--models",
        "64" if dry else "2000", "--width", "0.25" if dry else "1.0", "--in-channels", "1" if dry else "3",
        "--metanets", "mlp,statnn" if dry else "mlp,statnn,deepsets,dmc", "--epochs", "1", "--seeds",
        "2" if dry else "5", "--windows", "2" if dry else "5"], 150))
    # 64 models trained in fp32 and in bf16 (lim2024 recipe, digits32 data: 10,000 CIFAR-shaped
    # training images), each model's test accuracy compared: about 4 minutes on an H100 (est.)
    out.append(("k", "bf16 keeps the fp32 accuracy distribution? (64 models)",
                [PY, "scripts/check_bf16_accuracy.py"] + (["--dry-run"] if dry else ["--device", "cuda"]), 360))
    # GPU epoch times: NFN and the graph metanet read plain CNNs (synthetic smallcnns)
    out.append(("j", "NFN and graph metanet epoch times on smallcnns", [
        PY, "scripts/bench_metanets.py", "--device", dev, "--arch", "smallcnn", "--in-channels", "1",
        "--models", "64" if dry else "2000", "--metanets", "mlp,nfn-np,nfn-hnp,graph", "--epochs", "1",
        "--windows", "2" if dry else "3", "--no-read", "--no-stack"], 120))
    # the fused input gather against the old path, alone (about 30 s with a compile)
    out.append(("l", "input pipeline: fused gather vs the old path", [
        PY, "scripts/bench_input.py", "--device", dev, "--models", "4" if dry else "128", "--windows",
        "2" if dry else "5"], 90))
    # Most needed first: when the budget runs out, what is left is what matters least. The order:
    # a, b (resnet8), c, d, l, f (plain), i, k, b (wasym), g, e, h (metanets), f (refill), h (DMC), j.
    out = [out[i] for i in (0, 1, 3, 4, 14, 6, 11, 12, 2, 8, 5, 9, 7, 10, 13)]
    # a loaded 2-core CPU is far slower than the GPU these limits are sized for
    return [(k, t, c, limit * 3 if dry else limit) for k, t, c, limit in out]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check that every section runs")
    ap.add_argument("--minutes", type=float, default=8.0, help="stop starting sections after this (default 8)")
    ap.add_argument("--only", default=None, help="section letters to run, e.g. 'abc' (default all)")
    ap.add_argument("--out", type=Path, default=Path("gpu_check.md"), help="markdown block written here")
    args = ap.parse_args(argv)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device here; use --dry-run for the CPU check of the script", file=sys.stderr)
            return 2
    dev = "cpu" if args.dry_run else "cuda"
    start = time.perf_counter()
    md = [f"### GPU check {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
          f"`python scripts/gpu_check.py{' --dry-run' if args.dry_run else ''}`", ""]
    from scripts.benchtools import device_info

    md += ["```", device_info(dev), "```"]
    failed = []
    for key, title, cmd, limit in sections(args.dry_run):
        if args.only and key not in args.only:
            continue
        left = args.minutes * 60 - (time.perf_counter() - start)
        if left < 10:
            md += [f"#### {key}. {title}: skipped (the {args.minutes:g}-minute budget is spent)", ""]
            continue
        print(f"\n=== {key}. {title}", flush=True)
        t0 = time.perf_counter()
        try:
            if cmd is not None:
                r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=min(limit, left))
                body = [f"$ {shlex.join(cmd[1:])}", _tail(r.stdout, r.stderr)]
                if r.returncode:
                    failed.append(key)
                    body.append(f"(exit status {r.returncode})")
            elif key == "a":
                body = [_gn_channels_last(dev)]
            else:
                body = [_dmc_profile(dev, 64 if args.dry_run else 2000)]
        except subprocess.TimeoutExpired as e:
            failed.append(key)
            body = [f"$ {shlex.join(cmd[1:])}", _tail(e.stdout, e.stderr), f"(stopped after {e.timeout:.0f} s)"]
        except Exception as e:  # one section's failure must not cost the rest of a rare GPU session
            failed.append(key)
            body = [f"(failed: {type(e).__name__}: {e})"]
        text = "\n".join(body)
        print(text, flush=True)
        md += [f"#### {key}. {title} ({time.perf_counter() - t0:.0f} s)", "```", text, "```", ""]
    args.out.write_text("\n".join(md) + "\n")
    print(f"\nmarkdown for docs/BENCHMARKS.md written to {args.out}"
          + (f"; sections with problems: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _tail(out, err, n=4000) -> str:
    def s(x):
        return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")

    # the warm-up/window progress lines are noise in the record; keep the result table
    text = "\n".join(line for line in s(out).splitlines() if not line.startswith(("# warm-up", "# window")))
    err = s(err).strip()
    return (text[-n:] + (f"\n[stderr] {err[-800:]}" if err else "")).strip()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
