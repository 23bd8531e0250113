"""What verification costs when a zoo is opened (docs/FORMAT.md, "What is verified when").

Builds a synthetic zoo of ResNet8s (width 1, 78,042 parameters, the lim2024-resnet8
architecture; random weights, written by the store writer in 1,000-model shards) and
times, per mode, with ``--repeats`` runs after one warm-up:

* ``open+row``:   ``zoo.open(path)`` then the first weights read (model 0): verifies one shard;
* ``open+table``: ``zoo.open(path)`` then ``z.table``, which touches every shard: verifies all;

with verification on and an empty cache (cold: every touched shard is hashed), on with
the cache the first open filled (cached: a stat per shard), and off (``verify=False``).
"First in a process" rows also start the helper process that reads every shard before this
process does (:mod:`zoo.store.probe`: once per process, then once per shard file), as a new
``zoo info`` or ``metanets bench`` would; the other rows find it started and the shards read.
The OS page cache is warm in every mode (the zoo was just written or read), so "cold"
is the hashing cost, not the disk's.

    python scripts/bench_open_verify.py --out /tmp/bench-zoo --models 10000
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zoo  # noqa: E402
from zoo import store  # noqa: E402
from zoo.layout import Layout  # noqa: E402
from zoo.nets import NetConfig, build_net  # noqa: E402


def build(out: Path, models: int, per_shard: int) -> None:
    if (out / store.MANIFEST).exists() and store.read_manifest(out)["num_models"] == models:
        return
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg = NetConfig(depth=8, width=1.0, in_channels=3, num_classes=10)
    layout = Layout.from_module(build_net(cfg))
    rng = np.random.default_rng(0)
    entries, t0 = [], time.perf_counter()
    for i, a in enumerate(range(0, models, per_shard)):
        ids = np.arange(a, min(models, a + per_shard))
        acc = rng.uniform(0.1, 0.9, len(ids))
        content = store.ShardContent(
            ids=ids, weights={"final": rng.standard_normal((len(ids), layout.num_params), np.float32) * 0.1},
            table=pd.DataFrame({"test_acc": acc, "test_loss": 1 - acc, "train_acc": acc, "train_loss": 1 - acc,
                                "diverged": np.zeros(len(ids), bool)}), layout=layout)
        path = out / store.shard_name(i)
        entries.append(store.shard_entry(path, ids, store.write_shard(path, content)))
        print(f"  wrote {path.name} ({time.perf_counter() - t0:.0f} s)", flush=True)
    manifest = store.build_manifest(name="bench-resnet8", layout=layout, shards=entries, checkpoints=["final"],
                                    splits=store.make_splits(np.arange(models)), net=cfg.to_dict(),
                                    source={"kind": "synthetic"})
    store.write_json(out / store.MANIFEST, manifest)


def timed(fn, repeats: int, before=None) -> list[float]:
    out = []
    for i in range(repeats + 1):  # the first run is the warm-up
        if before:
            before()
        t0 = time.perf_counter()
        fn()
        if i:
            out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for the synthetic zoo (kept for reruns)")
    ap.add_argument("--models", type=int, default=10_000)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    build(args.out, args.models, args.per_shard)
    size = sum(p.stat().st_size for p in args.out.glob("shard-*.h5"))
    cache = Path(tempfile.mkdtemp(prefix="metazoo-bench-cache-"))
    os.environ["METAZOO_CACHE_DIR"] = str(cache)

    def fresh_helper():  # as in a new process: no helper yet, no shard read by one
        store.probe._PROBER._stop()
        store.probe._PROBER._done.clear()

    def clear():
        shutil.rmtree(cache, ignore_errors=True)
        fresh_helper()

    def row(verify):
        with zoo.open(args.out, verify=verify) as z:
            z.weights([0])

    def table(verify):
        with zoo.open(args.out, verify=verify) as z:
            len(z.table)

    print(f"\nzoo: {args.models:,} ResNet8 nets, {size / 2**30:.2f} GiB in "
          f"{len(list(args.out.glob('shard-*.h5')))} shards; median [min, max] over {args.repeats} runs\n")
    print("| mode | open + first weights read (s) | open + table, all shards (s) |")
    print("| --- | --- | --- |")
    for mode, verify, before in (("verify on, cold (empty cache), first in a process", True, clear),
                                 ("verify on, cached", True, None), ("verify on, cached, first in a process", True,
                                                                    fresh_helper),
                                 ("verify off", False, None), ("verify off, first in a process", False, fresh_helper)):
        cells = []
        for fn in (row, table):
            if before is None and verify:
                fn(True)  # fill the cache
            t = timed(lambda: fn(verify), args.repeats, before)
            cells.append(f"{statistics.median(t):.3f} [{min(t):.3f}, {max(t):.3f}]")
        print(f"| {mode} | {cells[0]} | {cells[1]} |", flush=True)
    clear()


if __name__ == "__main__":
    main()
