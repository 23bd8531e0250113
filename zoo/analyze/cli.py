"""``zoo analyze lmc | align | mli``: the loss-landscape analyses as sub-commands of ``zoo``."""
from __future__ import annotations

import argparse
import re
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from ..errors import ZooError
from .report import write_align, write_lmc, write_mli
from .study import Options, run_align, run_lmc, run_mli

EPILOG = """examples:
  zoo generate digits-lmc-resnet8 --out runs/lmc-std
  zoo generate digits-lmc-wasym-resnet8 --out runs/lmc-wasym
  zoo analyze lmc runs/lmc-std runs/lmc-wasym --align weight-matching --out runs/analyze-lmc
  zoo analyze align runs/lmc-std --out runs/analyze-align
  zoo analyze mli runs/lmc-std runs/lmc-wasym --out runs/analyze-mli
  zoo analyze lmc runs/lmc-std --workers 2          # the pairs shared by two processes (CPU)"""


def register(sub) -> None:
    p = sub.add_parser("analyze", help="loss-landscape analyses: lmc, align, mli",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Linear mode connectivity between the paired nets of a zoo, Git Re-Basin weight "
                                   "matching, and monotonic linear interpolation from init (Lim et al. 2024).",
                       epilog=EPILOG)
    an = p.add_subparsers(dest="analysis", metavar="ANALYSIS")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    def common(q, what):
        q.add_argument("zoos", nargs="+", type=Path, metavar="ZOO", help=f"zoo folder(s); {what}")
        q.add_argument("--out", type=Path, help="write results.md/json/csv and plots here (default: print only)")
        q.add_argument("--data", help="data source to evaluate on (default: the zoo's own; needed for imported zoos)")
        q.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
        q.add_argument("--seed", type=int, default=0, help="seed of matching orders, subsets and bootstraps (default 0)")
        q.add_argument("--batch", type=int, default=256, help="images per forward pass (default 256)")
        q.add_argument("--max-nets", type=int, default=25, help="interpolated nets evaluated at once (default 25)")
        q.add_argument("--limit", type=int, help="analyse only the first N pairs (lmc, align) or nets (mli)")
        q.add_argument("--alphas", type=int, default=25, help="points on the line, 0 and 1 included (default 25)")
        q.add_argument("--bn-reset", choices=("auto", "repair", "none"), default="auto",
                       help="re-estimate BatchNorm statistics at every alpha, REPAIR-style (auto: for BatchNorm nets)")
        q.add_argument("--workers", type=int, default=1,
                       help="processes sharing the pairs (nets) on a CPU, each with its share of the threads "
                            "(default 1; the results are the same, to float rounding)")
        q.add_argument("--no-verify", action="store_true", help="skip the shard checksums")
        q.add_argument("--quiet", action="store_true", help="no progress bars")

    q = an.add_parser("lmc", help="loss barriers along the line between the two nets of each pair",
                      formatter_class=argparse.RawDescriptionHelpFormatter,
                      description="For every pair of a pair zoo (spec [pairs] size = 2): test loss and accuracy along "
                                  "the line between the nets, and the barriers (midpoint, max minus endpoint mean, "
                                  "max gap to the chord). Several zoos: one table each, and the differences against "
                                  "the first (paired over pairs when the zoos share their pairs' hyper-parameters).",
                      epilog=EPILOG)
    common(q, "each generated with [pairs] size = 2 (presets digits-lmc-*)")
    q.add_argument("--align", choices=("none", "weight-matching"), default="none",
                   help="also interpolate after Git Re-Basin weight matching (standard nets only)")
    q.add_argument("--fold-asym", action="store_true",
                   help="ablation: align W-Asym nets too, after folding their fixed entries into ordinary "
                        "weights (the aligned nets are no longer W-Asymmetric)")
    q.add_argument("--restarts", type=int, default=3, help="weight-matching starts (default 3; best objective kept)")
    q.add_argument("--split", choices=("test", "train"), default="test", help="data split of the curves (default test)")
    q.set_defaults(func=cmd_lmc)

    q = an.add_parser("align", help="Git Re-Basin weight matching of each pair, with the function check",
                      description="Permute net B of every pair onto net A by weight matching; report distances, "
                                  "the matching objective and max |dlogits| between B and permuted B.")
    common(q, "pair zoos of standard nets (or W-Asym with --fold-asym)")
    q.add_argument("--fold-asym", action="store_true", help="fold a W-Asym net's fixed entries before aligning")
    q.add_argument("--restarts", type=int, default=3, help="weight-matching starts (default 3)")
    q.set_defaults(func=cmd_align)

    q = an.add_parser("mli", help="monotonic linear interpolation from each net's init to its final weights",
                      description="Train loss (fixed unaugmented subset, plain cross-entropy) from epoch 0 to final "
                                  "of every net; Δ, % monotonic, local and global convexity, min second difference.")
    common(q, "with an epoch_0 checkpoint")
    q.add_argument("--tol", type=float, default=0.0, help="monotonic means Δ <= tol (default 0, upstream's)")
    q.add_argument("--upstream-compat", action="store_true",
                   help="global convexity against upstream's line through the first two points (a likely bug "
                        "there: any decreasing curve scores 1) instead of the chord from L(0) to L(1)")
    q.add_argument("--subset", type=int, default=1024, help="training images the loss is computed on (default 1024)")
    q.set_defaults(func=cmd_mli)


def _options(args):

    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        raise ZooError(f"--device {args.device!r}: unknown device; use cpu, cuda or cuda:N")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ZooError(f"--device {args.device}: CUDA is not available on this machine (use --device cpu)")
    if args.workers > 1 and args.device != "cpu":
        raise ZooError(f"--workers {args.workers}: worker processes are for CPU analyses; on {args.device} one "
                       "process evaluates --max-nets nets at once (use --workers 1)")
    for name in ("batch", "max_nets", "alphas", "limit", "restarts", "subset", "workers"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise ZooError(f"--{name.replace('_', '-')} {v}: must be >= 1")
    for z in args.zoos:
        if not (z / "manifest.json").exists():
            raise ZooError(f"{z}: not a zoo (no manifest.json); generate one with e.g. "
                           "`zoo generate digits-lmc-resnet8 --out runs/lmc-std`")
    return Options(alphas=args.alphas, align=getattr(args, "align", "none"), fold_asym=getattr(args, "fold_asym", False),
                   bn_reset=args.bn_reset, restarts=getattr(args, "restarts", 3), seed=args.seed, batch=args.batch,
                   max_nets=args.max_nets, max_pairs=args.limit, data=args.data, device=args.device,
                   tol=getattr(args, "tol", 0.0), upstream_compat=getattr(args, "upstream_compat", False),
                   subset=getattr(args, "subset", None), split=getattr(args, "split", "test"),
                   verify=not args.no_verify, workers=args.workers)


def _command() -> str:
    """The command line as typed (for the report's header)."""
    args = sys.argv[1:]
    return "zoo " + " ".join(shlex.quote(a) for a in args) if args[:1] == ["analyze"] else ""


def _run(args, fn):
    opts = _options(args)
    return [fn(z, opts, args.quiet) for z in args.zoos]


def _emit(args, rep) -> int:
    print(rep["markdown"], end="")
    if args.out:
        print(f"\nwritten to {args.out}: " + ", ".join(sorted(p.name for p in rep["files"].values())))
    return 0


def _write_or_tmp(args, writer, results):
    if args.out:
        return writer(results, args.out, _command())
    with tempfile.TemporaryDirectory() as tmp:
        rep = writer(results, tmp, _command())
        rep["files"] = {}
        return rep


def cmd_lmc(args) -> int:

    results = _run(args, run_lmc)
    return _emit(args, _write_or_tmp(args, write_lmc, results))


def cmd_align(args) -> int:

    results = _run(args, run_align)
    return _emit(args, _write_or_tmp(args, write_align, results))


def cmd_mli(args) -> int:

    results = _run(args, run_mli)
    return _emit(args, _write_or_tmp(args, write_mli, results))
