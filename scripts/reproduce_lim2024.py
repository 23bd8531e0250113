"""Reproduce Lim et al. (NeurIPS 2024), Table 2's accuracy-prediction experiment.

Generates the paper's two CIFAR-10 ResNet8 zoos (presets ``lim2024-resnet8`` and
``lim2024-wasym-resnet8``) at a chosen scale, then runs the five-seed metanetwork
benchmark (MLP, DMC, DeepSets, StatNN; lr swept over the paper's grid on seed 0, 50
epochs, batch 128) on both and prints the table. Needs internet once (CIFAR-10) and,
at the paper's scale (10,000 nets per zoo), a GPU.

    python scripts/reproduce_lim2024.py --models 10000 --device cuda --out runs/lim2024
    python scripts/reproduce_lim2024.py --models 200 --epochs 5 --seeds 2   # a smoke run

Zoos already complete under ``--out`` are reused; an interrupted generation resumes.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from metanets import bench, registry, report
from metanets.errors import MetanetError

ZOOS = (("lim2024-resnet8", "resnet8-std"), ("lim2024-wasym-resnet8", "resnet8-wasym"))
PAPER_METANETS = "mlp,dmc,deepsets,statnn"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=10000, help="nets per zoo (paper: 10,000)")
    ap.add_argument("--out", type=Path, default=Path("runs/lim2024"))
    ap.add_argument("--device", default="cuda", help="device for generation and benchmark (default cuda)")
    ap.add_argument("--metanets", default=PAPER_METANETS, help=f"default: the paper's, {PAPER_METANETS}")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--lr", default="auto")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast while generating the zoos")
    args = ap.parse_args(argv)
    try:
        from zoo.generate import generate
        from zoo.generate.spec import load_spec

        if args.models < 8:
            raise MetanetError(f"--models {args.models} is invalid; allowed: >= 8 (2 nets per split at least)")
        paths = []
        for preset, sub in ZOOS:
            t0 = time.perf_counter()
            paths.append(Path(generate(load_spec(preset), args.out / sub, models=args.models, device=args.device,
                                       bf16=args.bf16)))
            print(f"{preset}: {args.out / sub} ready in {time.perf_counter() - t0:.0f}s")
        cfg = bench.BenchConfig(metanets=tuple(registry.parse_names(args.metanets)), seeds=args.seeds,
                                epochs=args.epochs, lr=bench.parse_lr(args.lr), device=args.device)
        t0 = time.perf_counter()
        result = bench.run(paths, cfg)
        files = report.write(result, args.out / "bench")
        print(files["md"].read_text())
        print(f"benchmark: {time.perf_counter() - t0:.0f}s; wrote " + ", ".join(str(p) for p in files.values()))
    except MetanetError as e:
        print(f"reproduce_lim2024: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from zoo.errors import ZooError

        if isinstance(e, ZooError):
            print(f"reproduce_lim2024: error: {e}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
