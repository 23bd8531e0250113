#!/usr/bin/env python3
"""Training throughput of the group trainer against one-net references, measured fairly.

Variants (pick with --variants, comma-separated; all alternate A B A B in one process):

  group:<M>:<opts>  the group trainer with M models; opts joined by '+': fp32 (default), bf16,
                    cl (channels-last), static (padded tail, fixed M), compile (torch.compile),
                    graph (with compile: CUDA graphs for forward + backward),
                    unfused (the input pipeline before the fused gather: normalise, augment,
                    transpose, cast, copy; the default gathers straight into the layout),
                    noahead (each epoch's plans drawn at its start, not in a background
                    thread during the epoch before)
  r0                today's one-net path (zoo.generate.train.AloneRun: eager fp32, torch.optim, a host
                    sync per step for the divergence check and the lr)
  r1                the one-net path given its best shot: bf16 (CUDA; --r1-bf16 on CPU),
                    channels-last, torch.compile (CUDA graphs on CUDA: mode reduce-overhead),
                    fused AdamW with the lr schedule on the device, no host sync in the step,
                    data and augmentation on the device
  r2:<k>            k r1 processes sharing the device, started together behind a barrier;
                    the rate is all k models' work over the slowest process's window

Every variant warms up on one full epoch (every shape it will time: full and tail batch,
compilation, cuDNN autotuning), then --windows rounds time --window-epochs epochs of each
(CUDA events on GPU, wall time on CPU). Printed: model-epochs/s as median [min, max] n, and
the group rate against r0 and against the best of r1/r2.

  python scripts/bench_generate.py                     # digits-resnet8, CPU
  python scripts/bench_generate.py --device cuda --preset lim2024-resnet8 \\
      --variants r0,r1,r2:4,group:128:bf16+cl,group:128:bf16+cl+static+compile+graph

CIFAR-shaped presets use random uint8 images (50,000 x 3 x 32 x 32, 10 classes) made in
memory, so the benchmark needs no download; speed does not depend on pixel values. Model
epochs are scaled to the full training set (--fraction 0.2 times 5 epochs = 1 model-epoch).
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.generate import images as image_data  # noqa: E402
from scripts.benchtools import Spread, Variant, alternate, device_info, timed  # noqa: E402
from zoo.nets import build_net  # noqa: E402
from zoo.generate.spec import load_spec, validate_for_data  # noqa: E402
from zoo.generate.train import (BETAS, EPS, AloneRun, GroupTrainer, Job, TrainOptions, aug_sizes,
                                data_generator, schedule_tensors, stack_plans, epoch_plan, lr_factor,
                                smoothed_ce, steps_per_epoch, train_subset)

#: Epochs of the jobs a benchmark trains: nobody finishes (or changes shape) while timed.
ENDLESS = 10**6


def cifar_shaped(device, n_train=50_000, n_test=10_000) -> image_data.ImageData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_train + n_test, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n_train + n_test,), generator=g)
    mean = torch.full((3,), 0.5)
    std = torch.full((3,), 0.29)
    return image_data.ImageData("cifar-shaped", x[:n_train], y[:n_train], x[n_train:], y[n_train:],
                                mean, std).to(device)


def load_preset(preset: str, device):
    """(spec, net config, data) of a preset; CIFAR-shaped random data for non-digits sources."""
    spec = load_spec(preset)
    data = image_data.load(spec.data, device) if spec.data["source"] == "digits" else cifar_shaped(device)
    return spec, validate_for_data(spec, data.shape[0], data.num_classes), data


def jobs_for(spec, n, epochs=ENDLESS, fraction=None):
    """n jobs of the preset's recipe, all with one training fraction (a group has one, so a
    preset that samples it gets the first model's; ``fraction`` overrides it)."""
    fraction = fraction or spec.sample_hparams(0)["train_fraction"]
    out = []
    for i in range(n):
        hp = spec.sample_hparams(i)
        # The preset's recipe; `epochs` fixed (warm-up capped) so that the timed work is the same.
        hp = {**hp, "epochs": epochs, "warmup_epochs": min(hp["warmup_epochs"], epochs / 2),
              "train_fraction": fraction}
        out.append(Job(i, spec.model_seed(i), hp))
    return out


def epochs_of(run, n_epochs: int):
    """A function training ``n_epochs`` whole epochs of ``run`` (a GroupRun, AloneRun or R1)."""
    def go():
        for _ in range(n_epochs):
            run.start_epoch()
            for _ in range(run.spe):
                run.step()
    return go


class R1:
    """One net given its best shot: see ``r1`` in the module docstring."""

    def __init__(self, job: Job, cfg, data, device: str, bf16: bool, compile_mode: str | None):
        hp = self.hp = job.hp
        self.data, self.device = data, device
        self.net = build_net(cfg, job.seed).to(device).to(memory_format=torch.channels_last)
        self.lr = torch.tensor(float(hp["lr"]), device=device)
        self.base_lr = float(hp["lr"])
        # A tensor lr lets the schedule be written on the device, with no host sync.
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr, betas=BETAS, eps=EPS,
                                     weight_decay=hp["weight_decay"], fused=True)
        self.gen = data_generator(job)
        self.subset = train_subset(self.gen, len(data.y_train), hp["train_fraction"])
        self.spe = steps_per_epoch(len(data.y_train), hp)
        self.B = int(hp["batch_size"])
        self.sched = schedule_tensors([hp], self.spe, device)
        self.steps = torch.zeros(1, dtype=torch.float64, device=device)
        self.translate, self.cutout = aug_sizes([hp], device)
        self.hw = tuple(data.x_train.shape[2:])
        self.bf16 = bf16
        if compile_mode == "reduce-overhead":
            # as in GroupRun._compiled_loss: the graph reads the training images in place (the
            # fused input), not from a copy of the whole set made at every replay
            torch._dynamo.mark_static_address(data.x_train)
        self.loss = torch.compile(self._loss, mode=compile_mode, dynamic=False) if compile_mode else self._loss

    def _loss(self, batch):
        # the group trainer's fused input pipeline (one net: M = 1), compiled with the step
        x = image_data.grouped_batch(self.data, self.data.x_train, batch["order"], batch["flip"], batch["shift"],
                                     batch["center"], self.translate, self.cutout, channels_last=True)
        y = self.data.y_train[batch["order"][0]]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return smoothed_ce(self.net(x), y, self.hp["label_smoothing"])

    def start_epoch(self):
        self.plan = stack_plans([epoch_plan(self.gen, self.subset, self.hp, self.hw)], self.device)
        self.s = 0
        self.bad = torch.zeros((), dtype=torch.bool, device=self.device)

    def step(self):
        sl = slice(self.s * self.B, (self.s + 1) * self.B)
        loss = self.loss({k: v[:, sl] for k, v in self.plan.items()})
        self.bad |= ~torch.isfinite(loss)  # read once per epoch by a real trainer, never here
        loss.backward()
        self.lr.copy_(self.base_lr * lr_factor(self.steps, *self.sched)[0])
        self.steps += 1
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.s += 1


def _r1_compile_mode(args) -> str | None:
    if args.r1_compile == "off":
        return None
    return "reduce-overhead" if args.device.startswith("cuda") else "default"


def make_r1(args, spec, cfg, data, index=0) -> R1:
    job = jobs_for(spec, index + 1, fraction=args.fraction)[index]
    bf16 = args.device.startswith("cuda") or args.r1_bf16
    return R1(job, cfg, data, args.device, bf16, _r1_compile_mode(args))


def _r2_worker(rank, args, threads, barrier, queue, units):
    torch.set_num_threads(threads)
    spec, cfg, data = load_preset(args.preset, args.device)
    run = make_r1(args, spec, cfg, data, rank)
    epochs_of(run, 1)()  # warm-up
    barrier.wait()
    while True:
        barrier.wait()  # start together
        if units.value == 0:
            return
        queue.put((rank, timed(args.device, epochs_of(run, units.value))))
        barrier.wait()  # end together


class R2:
    """k R1 processes on one device, in lock step with the parent's windows."""

    def __init__(self, args, k: int):
        self.args, self.k = args, k
        self.threads = max(1, torch.get_num_threads() // k) if not args.device.startswith("cuda") else 1

    def warmup(self):
        ctx = torch.multiprocessing.get_context("spawn")
        self.barrier, self.queue, self.units = ctx.Barrier(self.k + 1), ctx.Queue(), ctx.Value("i", 1)
        self.procs = [ctx.Process(target=_r2_worker, daemon=True,
                                  args=(r, self.args, self.threads, self.barrier, self.queue, self.units))
                      for r in range(self.k)]
        for p in self.procs:
            p.start()
        self.barrier.wait(timeout=1800)  # every worker warmed up

    def window(self, n: int) -> float:
        self.units.value = n
        self.barrier.wait()
        self.barrier.wait()
        return max(self.queue.get(timeout=600)[1] for _ in range(self.k))

    def finish(self):
        self.units.value = 0  # the workers' signal to stop
        self.barrier.wait()
        for p in self.procs:
            p.join(timeout=60)


def build_variants(args, spec, cfg, data) -> list[Variant]:
    f = args.fraction or 1.0
    n_sub = max(1, round(f * len(data.y_train)))
    frac = n_sub / len(data.y_train)  # of a full-set epoch, per epoch trained
    E = args.window_epochs
    out = []
    names = args.variants.split(",")
    if len(set(names)) < len(names):
        raise SystemExit(f"--variants: {args.variants!r} names a variant twice")
    for name in names:
        kind, *rest = name.split(":")
        if kind == "group":
            if len(rest) not in (1, 2):
                raise SystemExit(f"--variants: {name!r}; expected group:<M> or group:<M>:<opts>")
            M, flags = int(rest[0]), set((rest[1] if len(rest) > 1 else "fp32").split("+"))
            unknown = flags - {"fp32", "bf16", "cl", "static", "compile", "graph", "unfused", "noahead"}
            if unknown:
                raise SystemExit(f"--variants: unknown group option {sorted(unknown)[0]!r} in {name!r}; "
                                 "allowed: fp32, bf16, cl, static, compile, graph, unfused, noahead")
            if "graph" in flags and "compile" not in flags:
                raise SystemExit(f"--variants: {name!r}: 'graph' needs 'compile' (the graphs are Inductor's)")
            opts = TrainOptions(device=args.device, bf16="bf16" in flags, channels_last="cl" in flags,
                                static_shapes="static" in flags, compile="compile" in flags,
                                cuda_graphs="graph" in flags, fused_input="unfused" not in flags,
                                plan_ahead="noahead" not in flags)
            run = GroupTrainer(cfg, data, ["final"], opts).start(jobs_for(spec, M, fraction=args.fraction))
            out.append(Variant(name, _window(args, run), M * frac, epochs_of(run, 1), units=E))
        elif kind == "r0":
            run = AloneRun(jobs_for(spec, 1, fraction=args.fraction)[0], cfg, data, TrainOptions(device=args.device))
            out.append(Variant(name, _window(args, run), frac, epochs_of(run, 1), units=E))
        elif kind == "r1":
            run = make_r1(args, spec, cfg, data)
            out.append(Variant(name, _window(args, run), frac, epochs_of(run, 1), units=E))
        elif kind == "r2":
            k = int(rest[0]) if rest else 2
            r2 = R2(args, k)
            out.append(Variant(name, r2.window, k * frac, r2.warmup, r2.finish, units=E))
        else:
            raise SystemExit(f"--variants: unknown variant {name!r}; allowed: group:<M>[:opts], r0, r1, r2:<k>")
    return out


def _window(args, run):
    return lambda n: timed(args.device, epochs_of(run, n))


def report(variants: list[Variant], command: str) -> str:
    spreads = {v.name: Spread(v.rates) for v in variants}
    warm = {v.name: v.warmup_s for v in variants}
    units = {v.name: v.units for v in variants}
    r0 = spreads.get("r0")
    refs = [s.median for n, s in spreads.items() if n == "r1" or n.startswith("r2")]
    best = max(refs) if refs else None
    lines = [f"{'variant':34s} {'model-epochs/s  median [min, max] n':42s} {'x r0':>6s} {'x best r1/r2':>13s} "
             f"{'warm-up s':>10s} {'epochs/window':>14s}"]
    for name, s in spreads.items():
        x0 = f"{s.median / r0.median:6.2f}" if r0 else f"{'-':>6s}"
        xb = f"{s.median / best:13.2f}" if best else f"{'-':>13s}"
        # three significant digits at least (CPU rates of CIFAR-shaped nets are about 0.01)
        digits = max(3, 2 - math.floor(math.log10(s.median))) if s.median > 0 else 3
        lines.append(f"{name:34s} {s.fmt(digits):42s} {x0} {xb} {warm[name]:10.1f} {units[name]:14d}")
    lines.append("warm-up s: wall time of the untimed first epoch (compilation and autotuning show here)")
    lines.append(f"command: {command}")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default=None, help="default: digits-resnet8 on CPU, lim2024-resnet8 on CUDA")
    ap.add_argument("--variants", default=None,
                    help="default: r0,r1,r2:2,group:8,group:8:static on CPU; "
                         "r0,r1,r2:4,group:128:bf16+cl,group:128:bf16+cl+static+compile on CUDA")
    ap.add_argument("--fraction", type=float, default=None,
                    help="training fraction per epoch (default: the preset's on CPU, 0.2 on CUDA)")
    ap.add_argument("--windows", type=int, default=5, help="timed windows per variant (default 5)")
    ap.add_argument("--window-epochs", type=int, default=1, help="epochs per window, at least (default 1)")
    ap.add_argument("--min-window-s", type=float, default=None,
                    help="lengthen each variant's window to at least this many seconds (default 3 on CUDA, "
                         "1 on CPU), measured on one untimed epoch after the warm-up")
    ap.add_argument("--r1-compile", choices=("on", "off"), default="on",
                    help="compile r1's forward+loss (default on; CUDA: with CUDA graphs)")
    ap.add_argument("--r1-bf16", action="store_true", help="r1 in bf16 on the CPU too (always on CUDA)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.preset = args.preset or ("lim2024-resnet8" if cuda else "digits-resnet8")
    args.variants = args.variants or ("r0,r1,r2:4,group:128:bf16+cl,group:128:bf16+cl+static+compile" if cuda
                                      else "r0,r1,r2:2,group:8,group:8:static")
    if args.fraction is None and cuda:
        args.fraction = 0.2
    if args.min_window_s is None:
        args.min_window_s = 3.0 if cuda else 1.0
    if args.windows < 1 or args.window_epochs < 1:
        ap.error("--windows and --window-epochs must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    spec, cfg, data = load_preset(args.preset, args.device)
    variants = build_variants(args, spec, cfg, data)
    alternate(variants, args.windows, args.min_window_s)
    steps = math.ceil(max(1, round((args.fraction or 1.0) * len(data.y_train))) / int(spec.sample_hparams(0)["batch_size"]))
    print(f"\n# {command}\n{device_info(args.device)}")
    print(f"# preset {args.preset}, epochs of {steps} steps (fraction {args.fraction or 'preset'}), warm-up 1 "
          f"epoch per variant, windows of >= {args.min_window_s:g} s, variants alternated")
    print(report(variants, command))


if __name__ == "__main__":
    main()
