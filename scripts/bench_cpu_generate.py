#!/usr/bin/env python3
"""CPU levers for the group trainer at the demo's size: threads, group size, batch, channels-last, compile.

Each variant trains one group of M digits models (the preset's own hyper-parameters, every
model ``--epochs`` epochs) after an untimed warm-up on the same shapes, ``--repeats`` times,
and prints the wall-clock and CPU seconds (user + sys of this process, all its threads) per
model-epoch on the full training set, as median [min, max]. The CPU figure is what a
machine shared with other work still measures faithfully: on a quiet machine with one
process per core, wall = CPU time; with T threads in one process, wall >= CPU / T.

  python scripts/bench_cpu_generate.py                          # the default sweep
  python scripts/bench_cpu_generate.py --variants t1-M16-B64,t2-M16-B64

A variant is ``t<threads>-M<group size>-B<batch>`` with optional ``-cl`` (channels-last)
and ``-compile`` (``torch.compile`` of the grouped forward).
"""
from __future__ import annotations

import argparse
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.generate import images as image_data  # noqa: E402
from zoo.generate.spec import load_spec, validate_for_data  # noqa: E402
from zoo.generate.train import GroupTrainer, Job, TrainOptions, steps_per_epoch  # noqa: E402

DEFAULT = ("t2-M8-B64,t1-M8-B64,t1-M16-B64,t1-M32-B64,t1-M16-B32,t1-M32-B32,t1-M16-B128,"
           "t1-M16-B64-cl,t1-M16-B64-compile")


def parse_variant(v: str) -> dict:
    out = {"cl": False, "compile": False}
    for part in v.split("-"):
        if part in ("cl", "compile"):
            out[part] = True
        elif part[:1] in "tMB" and part[1:].isdigit():
            out[{"t": "threads", "M": "M", "B": "batch"}[part[0]]] = int(part[1:])
        else:
            raise SystemExit(f"variant {v!r}: unknown part {part!r} (expected t<N>, M<N>, B<N>, cl, compile)")
    if not {"threads", "M", "batch"} <= set(out):
        raise SystemExit(f"variant {v!r}: needs t<threads>, M<group size> and B<batch>")
    return out


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def jobs(spec, M, epochs, batch, fraction):
    out = []
    for i in range(M):
        hp = {**spec.sample_hparams(i), "epochs": epochs, "batch_size": batch, "train_fraction": fraction}
        out.append(Job(i, spec.model_seed(i), hp))
    return out


def bench(spec, cfg, data, v, epochs, fraction, repeats):
    torch.set_num_threads(v["threads"])
    trainer = GroupTrainer(cfg, data, ["final"], TrainOptions(channels_last=v["cl"]))
    if v["compile"]:
        import zoo.generate.grouped as grouped

        # the method the trainer calls for every forward (training steps and evaluation)
        orig = grouped.GroupState.forward_input
        grouped.GroupState.forward_input = torch.compile(orig, dynamic=False)
    try:
        js = lambda: jobs(spec, v["M"], epochs, v["batch"], fraction)  # noqa: E731
        trainer.train(js())  # warm-up: allocator, oneDNN primitives, compilation
        walls, cpus = [], []
        for _ in range(repeats):
            c0, t0 = cpu_seconds(), time.perf_counter()
            trainer.train(js())
            walls.append(time.perf_counter() - t0)
            cpus.append(cpu_seconds() - c0)
    finally:
        if v["compile"]:
            grouped.GroupState.forward_input = orig
    # Per model-epoch on the full training set (the time includes init and the final evaluation).
    scale = v["M"] * epochs * fraction
    return [w / scale for w in walls], [c / scale for c in cpus]


def fmt(xs):
    return f"{statistics.median(xs) * 1000:7.1f} [{min(xs) * 1000:6.1f}, {max(xs) * 1000:6.1f}]"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="digits-resnet8,digits-wasym-resnet8")
    ap.add_argument("--variants", default=DEFAULT, help=f"comma-separated (default {DEFAULT})")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per model in a timed run")
    ap.add_argument("--fraction", type=float, default=0.5, help="training fraction of a timed run")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"# {command}\n# torch {torch.__version__}, {torch.get_num_threads()} default threads, "
          f"load average {' '.join(load)} at start")
    print(f"{'preset':22s} {'variant':22s} {'steps/ep':>8s} {'wall ms/model-epoch':>28s} {'CPU ms/model-epoch':>28s}")
    for preset in args.presets.split(","):
        spec = load_spec(preset)
        data = image_data.load(spec.data)
        cfg = validate_for_data(spec, data.shape[0], data.num_classes)
        for name in args.variants.split(","):
            v = parse_variant(name)
            walls, cpus = bench(spec, cfg, data, v, args.epochs, args.fraction, args.repeats)
            spe = steps_per_epoch(len(data.y_train), {"train_fraction": 1.0, "batch_size": v["batch"]})
            print(f"{preset:22s} {name:22s} {spe:8d} {fmt(walls):>28s} {fmt(cpus):>28s}", flush=True)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"\nms per model-epoch on the full training set ({len(data.y_train)} images), median [min, max] over "
          f"{args.repeats} runs of {args.epochs} epochs at training fraction {args.fraction}, including init and the "
          f"final evaluation. Load average at the end: {' '.join(load)}.\ncommand: {command}")


if __name__ == "__main__":
    main()
