"""Fuzz every reader of foreign files (issue 21): a long campaign over the families of
tests/fuzz/families.py, each in a worker process of its own (a crash or hang of a reader is
itself a finding, and must not end the campaign).

    nice -n 19 python scripts/fuzz.py --minutes 60                 # every family, time shared
    python scripts/fuzz.py --minutes 5 --family manifest,shard_h5  # some families
    python scripts/fuzz.py --cases 10000 --minutes 600             # stop each family at 10,000 cases

Prints cases/s and findings per family. Each new finding (one per distinct message) is kept as
tests/fuzz_regressions/<family>-<id>.json, which tests/fuzz/test_fuzz.py replays: fix the
reader, and the replay passes.
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Seconds after which a case stuck where the in-process alarm cannot reach it ends its worker.
HANG_S = 120
sys.path.insert(0, str(ROOT / "tests"))


def signature(family: str, message: str) -> str:
    """Findings that differ only in paths, numbers or quoted values are the same finding."""
    m = re.sub(r"/\S+", "PATH", message)
    m = re.sub(r"'[^']*'|\"[^\"]*\"", "Q", m)
    m = re.sub(r"\d+", "N", m)
    return f"{family}: {m[:90]}"


# ---------------------------------------------------------------- worker

def worker(family: str, seconds: float, cases: int, inflight: Path, seed: int) -> int:
    import random

    from fuzz.core import Finding
    from fuzz.runner import run_hypothesis

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    from zoo.store import probe

    torch.set_num_threads(1)
    # A shard that makes libhdf5 loop is refused when the helper has spent this much CPU time on it:
    # well inside the case's 30 s alarm even on a busy machine (the seed files take milliseconds).
    probe.ISOLATED_BASE_S = 8.0
    base = Path(tempfile.mkdtemp(prefix=f"metazoo-fuzz-{family}-"))
    rng = random.Random(seed)
    count = 0
    start = time.monotonic()
    last = [None]

    def on_case(plan):
        nonlocal count
        count += 1
        last[0] = plan
        inflight.write_text(json.dumps(plan))
        # A hang inside C code (HDF5, a decompressor) never returns to the case's Python alarm:
        # this watchdog thread ends the worker instead, and the campaign records the case.
        faulthandler.dump_traceback_later(HANG_S, exit=True)

    while time.monotonic() - start < seconds and count < cases:
        try:
            run_hypothesis(family, base, profile="fuzz-campaign", max_examples=min(100, cases - count),
                           seed=rng.getrandbits(64), on_case=on_case)
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the campaign goes on
            kind = "finding" if isinstance(e, Finding) else f"harness {type(e).__name__}"
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(json.dumps({"finding": f"{kind}: {msg}", "plan": last[0]}), flush=True)
        print(json.dumps({"cases": count, "seconds": time.monotonic() - start}), flush=True)
    return 0


# ---------------------------------------------------------------- campaign

def run_family(family: str, seconds: float, cases: int, seen: dict, keep: bool, log) -> dict:
    from fuzz.runner import keep_finding

    stats = {"cases": 0, "seconds": 0.0, "findings": [], "new": 0}
    inflight = Path(tempfile.mkstemp(prefix="fuzz-inflight-")[1])
    deadline = time.monotonic() + seconds
    seed = int.from_bytes(os.urandom(4), "little")
    while time.monotonic() < deadline and stats["cases"] < cases:
        left = deadline - time.monotonic()
        cmd = [sys.executable, __file__, "--worker", family, "--seconds", str(left),
               "--cases", str(cases - stats["cases"]), "--inflight", str(inflight), "--seed", str(seed)]
        seed += 1
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        done_before = stats["cases"]

        def report(message, plan):
            sig = signature(family, message)
            stats["findings"].append(sig)
            if sig in seen:
                return
            seen[sig] = message
            stats["new"] += 1
            path = keep_finding(family, plan, message) if keep and plan is not None else None
            print(f"  NEW {sig}\n      {message[:300]}\n      kept: {path}", file=log, flush=True)

        for line in proc.stdout:
            rec = json.loads(line)
            if "finding" in rec:
                report(rec["finding"], rec["plan"])
            else:
                stats["cases"] = done_before + rec["cases"]
        rc = proc.wait()
        if rc != 0:  # the reader crashed the interpreter (or a hang outlived the in-process alarm)
            plan = json.loads(inflight.read_text()) if inflight.stat().st_size else None
            report(f"crash or hang: worker exit {rc} (a signal, or the {HANG_S} s watchdog)", plan)
            stats["cases"] += 1
    stats["seconds"] = seconds - max(0.0, deadline - time.monotonic())
    inflight.unlink(missing_ok=True)
    return stats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10, help="total time, shared between the families")
    p.add_argument("--family", action="append", help="family (or comma list); default: all")
    p.add_argument("--cases", type=int, default=10**9, help="stop a family after this many cases")
    p.add_argument("--no-keep", action="store_true", help="do not write regression files")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    p.add_argument("--inflight", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return worker(a.worker, a.seconds, a.cases, a.inflight, a.seed)
    from fuzz.families import FAMILIES

    fams = [f for spec in (a.family or [",".join(FAMILIES)]) for f in spec.split(",") if f]
    unknown = [f for f in fams if f not in FAMILIES]
    if unknown:
        p.error(f"unknown family {unknown[0]!r}; known: {', '.join(FAMILIES)}")
    seen: dict = {}
    results = {}
    total = a.minutes * 60
    start = time.monotonic()
    for i, fam in enumerate(fams):
        share = (total - (time.monotonic() - start)) / (len(fams) - i)  # unused time passes on
        print(f"{fam}: up to {share / 60:.1f} min", flush=True)
        r = run_family(fam, share, a.cases, seen, not a.no_keep, sys.stdout)
        results[fam] = r
        distinct = len(set(r["findings"]))
        print(f"{fam}: {r['cases']} cases in {r['seconds']:.0f} s ({r['cases'] / max(r['seconds'], 1e-9):.1f}/s), "
              f"{distinct} distinct findings ({r['new']} new)", flush=True)
    print("\nfamily               cases   cases/s  findings")
    for fam, r in results.items():
        print(f"{fam:<20} {r['cases']:>6}  {r['cases'] / max(r['seconds'], 1e-9):>7.1f}  {len(set(r['findings'])):>8}")
    if a.json:
        a.json.write_text(json.dumps({f: {"cases": r["cases"], "seconds": round(r["seconds"], 1),
                                          "findings": sorted(set(r["findings"]))} for f, r in results.items()},
                                     indent=1))
    return 1 if any(r["findings"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
