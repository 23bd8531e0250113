#!/usr/bin/env python3
"""Generate the demo's two digits zoos at a demo size and check the demo's accuracy targets.

Targets, for each zoo: 10th percentile of test accuracy <= 0.35, 90th >= 0.90; and the
two medians within 0.10 of each other. The zoos are made exactly as ``metanets demo``
makes them (``metanets.demo.generate_zoos``: one single-thread process per core), so the
script also prints the generation's wall time and CPU time, and the load average, since
a shared machine inflates the wall time.

  python scripts/check_demo_distribution.py --out runs            # default size, 625 nets per zoo
  python scripts/check_demo_distribution.py --out runs --size quick

Exit status 1 if a target is missed. Complete zoos already in ``--out`` are reused.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zoo  # noqa: E402
from metanets.demo import SIZES, generate_zoos, zoo_dirs  # noqa: E402

P10_MAX, P90_MIN, MEDIAN_GAP = 0.35, 0.90, 0.10
QUANTILES = (10, 25, 50, 75, 90)


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs"))
    ap.add_argument("--size", choices=tuple(SIZES), default="default")
    ap.add_argument("--models", type=int, help="nets per zoo (default: the size's)")
    args = ap.parse_args()
    models = args.models or SIZES[args.size]["models"]
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    print(f"# {command}\n# load average before: {loadavg()}")
    zoos = zoo_dirs(args.out, args.size)
    timing = generate_zoos(zoos, models, progress=sys.stderr.isatty())
    print(f"# load average after: {loadavg()}")
    if timing["processes"]:
        print(f"generation: wall {timing['wall_s']:.0f} s, CPU {timing['cpu_s']:.0f} s (user+sys) in "
              f"{timing['processes']} single-thread processes")
    header = "".join(f"{f'p{q}':>8s}" for q in QUANTILES)
    print(f"\n{'zoo':24s} {'nets':>6s} {'diverged':>9s}{header}    targets")
    medians, ok = [], True
    for preset, path in zoos:
        t = zoo.open(path).table
        acc = t.loc[~t["diverged"].astype(bool), "test_acc"].to_numpy()
        q = dict(zip(QUANTILES, np.percentile(acc, QUANTILES)))
        medians.append(q[50])
        good = q[10] <= P10_MAX and q[90] >= P90_MIN
        ok &= good
        print(f"{preset:24s} {len(t):6d} {int(t['diverged'].astype(bool).sum()):9d}"
              + "".join(f"{q[k]:8.3f}" for k in QUANTILES)
              + f"    p10 <= {P10_MAX}, p90 >= {P90_MIN}: {'met' if good else 'MISSED'}")
    gap = abs(medians[0] - medians[1])
    ok &= gap <= MEDIAN_GAP
    print(f"median gap {gap:.3f} (target <= {MEDIAN_GAP}): {'met' if gap <= MEDIAN_GAP else 'MISSED'}")
    print("all targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
