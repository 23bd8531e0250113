"""Sub-commands of ``zoo`` that make and inspect zoos: presets, generate, info, verify, merge."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..console import human_bytes
from ..errors import ZooError
from ..fs import is_temp, remove_stale_temp
from ..generate import generate, progress_of, remove_zoo, write_manifest
from ..generate.distributed import generate_ray
from ..generate.hpcheck import SMALLCNNZOO_CONFIG, SMALLCNNZOO_NAMES, compare, format_rows, smallcnnzoo_preset
from ..generate.spec import load_spec, presets, spec_from_dict
from ..store import verify_isolated
from ..store.reader import open as open_zoo
from ..store.lock import lock_dir


def register(sub) -> None:
    p = sub.add_parser("presets", help="list the shipped zoo specs",
                       description="List the zoo specs shipped with metazoo (use a name with 'zoo generate').")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser(
        "generate", help="train a zoo from a preset or spec file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train every model of a zoo spec and write the sharded HDF5 weight dataset.\n\n"
                    "Rerunning the same command after an interruption (even kill -9) resumes: finished\n"
                    "models (written a group's worth at a time) are kept and the result equals an\n"
                    "uninterrupted run.",
        epilog="examples:\n  zoo generate digits-wasym-resnet8 --out runs/digits-wasym\n"
               "  zoo generate lim2024-resnet8 --out runs/lim-std --device cuda --models 2000\n"
               "  zoo generate my_spec.toml --out runs/mine --shard 0 --num-shards 4   # one of 4 jobs")
    p.add_argument("spec", metavar="PRESET_OR_FILE", help="a preset name (see 'zoo presets') or a TOML spec file")
    p.add_argument("--out", required=True, type=Path, help="output directory (created; resumed if it holds this zoo)")
    p.add_argument("--models", type=int, help="number of models (overrides the spec's 'models')")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: cpu; with --ray, a GPU per task when the cluster has GPUs)")
    p.add_argument("--group-size", type=int, help="models trained at once (default: chosen for the device)")
    refill = p.add_mutually_exclusive_group()
    refill.add_argument("--refill", dest="refill", action="store_true", default=None,
                        help="slot refill (default on CUDA): each finished model's slot takes the next queued "
                             "one, so the group keeps one shape for the whole shard (what a compiled step "
                             "needs). A resumed shard is bit-identical on the CPU (each model keeps its planned "
                             "slot in a group of fixed shape)")
    refill.add_argument("--no-refill", dest="refill", action="store_false",
                        help="fixed groups of models sorted by epochs, which shrink as their members finish "
                             "(default on the CPU: a resume is bit-identical at any thread count). A resumed "
                             "generation keeps what its plan says")
    p.add_argument("--shard", type=int, help="this job's index, with --num-shards (see 'zoo merge')")
    p.add_argument("--num-shards", type=int, help="number of parallel jobs sharing the output directory")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="compute precision (default auto: bf16 on CUDA, the fastest there; fp32 on CPU, "
                        "the exact reference). Weights are always kept and stored in fp32")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="channels-last memory format (default auto: on for CUDA)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the shards as Ray tasks on a running cluster at ADDRESS (or a local one)")
    p.add_argument("--force", action="store_true",
                   help="first delete the zoo (or unfinished generation) in --out; a folder holding anything "
                        "else is never deleted")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("info", help="summarise a zoo (or a generation in progress)",
                       description="Models, accuracy distribution, diverged count and size on disk of a zoo; "
                                   "for a generation in progress, how far it is.")
    p.add_argument("path", type=Path)
    p.add_argument("--no-verify", action="store_true",
                   help="skip the shard checksums (a verified shard is remembered by size and mtime, so this "
                        "only saves time on the first look at a zoo)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("verify", help="check a zoo's checksums, schema, shapes and weights",
                       description="Check every shard against the manifest (sha256, schema, shapes, ids) and that "
                                   "non-diverged models have finite weights. Exit 1 naming the bad shard.")
    p.add_argument("path", type=Path)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "hparams", help="compare a zoo's hyper-parameters with a spec's distributions",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="For every hyper-parameter a spec samples: the spec's range, the range (or values) the\n"
                    "zoo's runs actually used, how much of the range they cover, and a verdict:\n"
                    "  ok        inside the spec's support and covering it\n"
                    "  narrower  inside, but the runs leave so much of the spec's support unused that\n"
                    "            draws from the spec would do so with p < 0.001: they came from a narrower\n"
                    "            range (a small zoo's usual gaps are not flagged)\n"
                    "  OUTSIDE   the zoo holds values the spec cannot draw\n"
                    "  missing   the zoo's table has no such column\n"
                    "  unmodelled  (imported Small CNN Zoo) an upstream setting varies across the runs\n"
                    "            although the spec fixes it\n"
                    "Exit status 1 when any verdict is not ok. An imported Small CNN Zoo is compared with\n"
                    "its smallcnnzoo-<dataset> preset by default: the check of a preset's ranges against\n"
                    "the hyper-parameters upstream actually sampled.",
        epilog="examples:\n  zoo hparams runs/smallcnnzoo-cifar10            # imported: vs preset smallcnnzoo-cifar10\n"
               "  zoo hparams runs/mine --against my_spec.toml")
    p.add_argument("path", type=Path)
    p.add_argument("--against", metavar="PRESET_OR_FILE",
                   help="the spec to compare with (default: the zoo's own spec; for an imported Small CNN Zoo, "
                        "the smallcnnzoo-<dataset> preset)")
    p.set_defaults(func=cmd_hparams)

    p = sub.add_parser("merge", help="write the manifest once shard jobs have finished",
                       description="After 'zoo generate ... --shard I --num-shards N' jobs wrote all shards into "
                                   "one directory, check them and write manifest.json.")
    p.add_argument("path", type=Path)
    p.set_defaults(func=cmd_merge)


NOT_VERIFIED = "note: shard checksums not verified (--no-verify)"


def cmd_presets(args) -> int:
    for name in sorted(presets()):
        s = load_spec(name)
        print(f"{name:26s} {s.models:6d} models  {s.data['source']:8s}  {s.description}")
    return 0


def cmd_generate(args) -> int:
    if args.ray:
        ignored = [flag for flag, used in (("--shard/--num-shards", args.shard is not None or args.num_shards is not None),
                                            ("--precision", args.precision != "auto"),
                                            ("--channels-last", args.channels_last != "auto")) if used]
        if ignored:
            raise ZooError(f"{', '.join(ignored)} cannot be combined with --ray (Ray tasks use the device defaults "
                           "and one task per shard)")

        if args.force:
            with lock_dir(args.out, "zoo generate --force"):
                remove_zoo(args.out)
        generate_ray(args.spec, args.out, address=None if args.ray == "local" else args.ray, models=args.models,
                     group_size=args.group_size, progress=not args.quiet, device=args.device, refill=args.refill)
    else:
        generate(args.spec, args.out, models=args.models, device=args.device or "cpu", group_size=args.group_size,
                 shard=args.shard, num_shards=args.num_shards, progress=not args.quiet, force=args.force,
                 refill=args.refill,
                 bf16=None if args.precision == "auto" else args.precision == "bf16",
                 channels_last=None if args.channels_last == "auto" else args.channels_last == "on")
    if (args.out / "manifest.json").exists():
        print_info(args.out)
    return 0


def cmd_merge(args) -> int:
    with lock_dir(args.path, "zoo merge"):
        remove_stale_temp(args.path)  # under the exclusive lock, no shard job is writing them
        m = write_manifest(args.path)
    print(f"{args.path}: merged {len(m['shards'])} shards, {m['num_models']} models")
    return 0


def _size(path: Path) -> int:
    """Bytes of the zoo's own files: temporary files of writers (live or killed) do not count."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and not is_temp(f))


def print_info(path: Path, verify: bool = True) -> None:
    z = open_zoo(path, verify=verify)
    t = z.table
    acc = t.loc[~t["diverged"].astype(bool), "test_acc"] if "test_acc" in t else None
    m = z.manifest
    print(f"zoo {z.name!r} at {path}")
    print(f"  models      {len(z)}  ({(t['diverged'].astype(bool)).sum()} diverged)   "
          f"splits train/val/test {len(z.splits['train'])}/{len(z.splits['val'])}/{len(z.splits['test'])}")
    print(f"  parameters  {z.layout.num_params:,} per model ({z.layout.num_trainable:,} trainable)"
          f"   checkpoints {', '.join(z.checkpoints)}")
    src = m.get("data") or {}
    if src:
        print(f"  data        {src.get('source')} {src.get('shape')} {src.get('num_classes')} classes")
    if acc is not None and len(acc):
        q = np.percentile(acc, [0, 10, 25, 50, 75, 90, 100])
        print("  test acc    min {:.3f}  p10 {:.3f}  p25 {:.3f}  median {:.3f}  p75 {:.3f}  p90 {:.3f}  max {:.3f}"
              .format(*q))
        hist, edges = np.histogram(acc, bins=10, range=(0, 1))
        top = max(hist.max(), 1)
        for h, e in zip(hist, edges):
            print(f"    {e:.1f}-{e + 0.1:.1f} {'#' * int(round(40 * h / top)):40s} {h}")
    print(f"  on disk     {human_bytes(_size(path))} in {len(m['shards'])} shard(s)")
    if not verify:
        print(NOT_VERIFIED)


def cmd_info(args) -> int:
    path = args.path
    if not (path / "manifest.json").exists() and (path / "zoo-plan.json").exists():
        p = progress_of(path)
        print(f"zoo {p['name']!r} at {path}: generation in progress or interrupted")
        print(f"  models done {p['done']} / {p['models']}   shards {p['shards_done']} / {p['shards_total']}   "
              f"group size {p['group_size']}" + (", slot refill" if p["refill"] else ", fixed groups"))
        print(f"  on disk     {human_bytes(_size(path))}")
        return 0
    print_info(path, verify=not args.no_verify)
    return 0


def cmd_hparams(args) -> int:
    z = open_zoo(args.path)
    source = z.manifest.get("source") or {}
    imported = source.get("format") == "smallcnnzoo"
    if args.against:
        spec, what = load_spec(args.against), args.against
    elif z.spec:
        spec, what = spec_from_dict(z.spec), "its own spec"
    elif imported and smallcnnzoo_preset((z.manifest.get("data") or {}).get("name")):
        what = smallcnnzoo_preset(z.manifest["data"]["name"])
        spec = load_spec(what)
    else:
        raise ZooError(f"{args.path}: the zoo carries no spec to compare with; name one with --against PRESET_OR_FILE")
    rows = compare(z.table, spec, *((SMALLCNNZOO_NAMES, SMALLCNNZOO_CONFIG) if imported else ()))
    print(f"{args.path} ({len(z)} models) against {what} ({spec.name}):")
    print(format_rows(rows))
    return 0 if all(r.verdict == "ok" for r in rows) else 1


def cmd_verify(args) -> int:
    problems = verify_isolated(args.path)  # a zoo from someone else may hold a shard that hangs libhdf5
    if problems:
        for p in problems:
            print(f"{args.path}: {p}", file=sys.stderr)
        print(f"zoo verify: {len(problems)} problem(s) in {args.path}", file=sys.stderr)
        return 1

    z = open_zoo(args.path)
    print(f"{args.path}: OK ({len(z)} models in {len(z.manifest['shards'])} shard(s), checksums, schema, shapes "
          "and finite weights verified)")
    return 0
