#!/usr/bin/env python3
"""`metanets demo` end to end, as a user runs it: wall time of the whole command, of its
generation and of its benchmark, over repeats.

Every repeat is the README's command in a fresh folder (`metanets demo --out DIR/rep-N
--no-progress`, generation included), in a subprocess that inherits this environment, so

  ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 OMP_NUM_THREADS=1 python scripts/bench_demo.py

times the demo as an AVX2-only CPU on one thread would run it (issue 18's setting), and

  python scripts/bench_demo.py --repeats 5 --keep runs/bench-demo

as this CPU does. First an untimed warm-up (`metanets demo --quick`, unless --no-warmup: the
data, Python's bytecode caches, the page cache), then --repeats timed runs; printed per phase:
median [min, max] n, with the load average, and whether every repeat printed the same table
(the demo is seeded end to end: it must). Arguments after `--` go to every `metanets demo`
(e.g. `-- --size quick`).
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.benchtools import Spread  # noqa: E402

GEN = re.compile(r"generated \d+ zoo\(s\) of \d+ nets in (\d+(?:\.\d+)?)s")
BENCH = re.compile(r"benchmark: (\d+(?:\.\d+)?)s")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def run_demo(out: Path, extra: list[str]) -> dict:
    """One `metanets demo` in a subprocess: wall, generation and benchmark seconds, its table."""
    cmd = [sys.executable, "-m", "metanets.cli", "demo", "--out", str(out), "--no-progress", *extra]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        tail = (run.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"bench_demo: `{shlex.join(cmd)}` failed (exit {run.returncode}): {tail}")
    gen, bench = GEN.search(run.stdout), BENCH.search(run.stdout)
    table = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    return {"wall": wall, "generate": float(gen.group(1)) if gen else 0.0,
            "bench": float(bench.group(1)) if bench else float("nan"), "table": table}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    raw = list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="timed demos (default 5)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed `metanets demo --quick` first")
    ap.add_argument("--keep", type=Path, help="keep the repeats' folders here (default: a temporary folder, removed)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats {args.repeats}: must be >= 1")
    env_keys = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS")
    setting = " ".join(f"{k}={os.environ[k]}" for k in env_keys if k in os.environ) or "native"
    print(f"# python scripts/bench_demo.py {shlex.join(raw)}")
    print(f"# setting: {setting}; {os.cpu_count()} CPUs; load average before: {loadavg()}")
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        if not args.no_warmup:
            warm = run_demo(root / "warmup", ["--quick", *[a for a in extra if a != "--quick"]])
            print(f"warm-up (--quick): {warm['wall']:.0f} s")
        runs = []
        for i in range(args.repeats):
            runs.append(run_demo(root / f"rep-{i + 1}", extra))
            r = runs[-1]
            print(f"repeat {i + 1}: {r['wall']:.1f} s (generation {r['generate']:.1f} s, benchmark "
                  f"{r['bench']:.1f} s); load average {loadavg()}", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print("\n| phase | seconds: median [min, max] n |\n| --- | --- |")
    for key, label in (("wall", "whole command"), ("generate", "generation"), ("bench", "benchmark")):
        print(f"| {label} | {Spread([r[key] for r in runs]).fmt(1)} |")
    same = all(r["table"] == runs[0]["table"] for r in runs)
    print(f"\npeak RSS of a child process: {peak:.0f} MB; every repeat printed the same table: "
          f"{'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
