"""The ``metanets`` command line: bench, list, train, predict, demo."""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from zoo.errors import ZooError
from zoo.fs import check_writable_dir
from zoo.store.reader import skip_verification

from . import bench, data, persist, registry, report
from .bench import check_device
from .demo import run_demo
from .errors import MetanetError
from .metrics import kendall_tau, r2
from .plugins import load_plugin
from .train import BATCH_SIZE, EPOCHS, LR_GRID, fit, predict


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        for p in getattr(args, "plugin", None) or []:
            load_plugin(p)
        skip = getattr(args, "no_verify", False)
        with skip_verification() if skip else contextlib.nullcontext():
            code = int(args.func(args) or 0)
        if skip:  # after the work: a failure stays one line on stderr
            print(f"metanets {args.command}: note: zoo shard checksums were not verified (--no-verify)",
                  file=sys.stderr)
        return code
    except ZooError as e:
        print(f"metanets {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"metanets {args.command}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metanets",
        description="metazoo: benchmark metanetworks that predict a net's test accuracy from its weights.",
        epilog="Run 'metanets COMMAND --help' for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p):
        p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:N")
        p.add_argument("--epochs", default=str(EPOCHS),
                       help=f"training epochs (default {EPOCHS}); bench also takes per-metanet overrides: "
                            f"20,dmc=5")
        p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"batch size (default {BATCH_SIZE})")
        p.add_argument("--params", default="trainable", choices=("trainable", "all"),
                       help="feed only trainable parameters (default; drops W-Asym fixed entries) or all")
        p.add_argument("--target", default=None, help="table metric to predict (default: the zoo's, test_acc)")
        p.add_argument("--plugin", action="append", metavar="FILE",
                       help="a Python file registering extra metanets (repeatable)")
        no_verify(p)

    def no_verify(p):
        p.add_argument("--no-verify", action="store_true",
                       help="skip the zoos' shard checksums (verified shards are remembered by size and mtime, "
                            "so this saves time only on a zoo's first use)")

    b = sub.add_parser("bench", help="benchmark metanets on one or more zoos")
    b.add_argument("zoos", nargs="+", metavar="ZOO", help="zoo directories (written by `zoo`)")
    b.add_argument("--metanets", default="mlp,dmc,deepsets,statnn,statnn-gbm,hparams",
                   help="comma-separated metanet names (see `metanets list`); hparams is the control "
                        "that reads no weights")
    b.add_argument("--seeds", default="5",
                   help="fresh final runs per (metanet, zoo) (default 5), optionally per metanet: 3,dmc=2")
    b.add_argument("--out", required=True, help="folder for results.{json,csv,md}, summary.csv and plots")
    b.add_argument("--lr", default="auto",
                   help="auto (pick a rate of the paper's grid by validation R², never one where a run diverged; "
                        "see --lr-select), "
                        "paper (the paper's final per-zoo rates, final_*.sh), a rate, or per metanet: "
                        "mlp=auto,dmc=1e-3")
    b.add_argument("--lr-select", default=None, choices=("seeds", "sweep"),
                   help="how --lr auto picks a rate: seeds (default: every seed trained at every rate of the "
                        "grid, the rate with the best mean validation R² chosen and those seeds scored; "
                        "robust to one lucky run) or sweep (the paper's: one run per rate, then fresh seeds)")
    b.add_argument("--protocol", default="custom", choices=("custom", "lim2024"),
                   help="lim2024: the paper's protocol exactly (batch 128, 50 epochs, lr sweep over "
                        "{1e-5,1e-4,5e-4,1e-3,5e-3,1e-2}, AdamW wd 1e-2, best-val-R² epoch, 5 runs); "
                        "the options it fixes must be left at their defaults")
    b.add_argument("--match-accuracy", action="store_true",
                   help="also score every zoo on test nets resampled to the zoos' common accuracy "
                        "histogram, and on the nets above chance accuracy")
    b.add_argument("--bootstrap", type=int, default=1000,
                   help="seeded resamples of the test nets per 95%% CI (default 1000)")
    b.add_argument("--no-progress", action="store_true", help="hide progress bars")
    b.add_argument("--no-stack", action="store_true",
                   help="train every run on its own; by default the lr sweep's runs of mlp, statnn, "
                        "statnn-std, deepsets and dmc (same init and batches), then their seeds, train as one "
                        "stacked model with per-run lr, best epoch and divergence: the same results up to "
                        "float rounding, faster (other metanets always train run by run)")
    b.add_argument("--workers", type=int, default=1,
                   help="CPU processes sharing the (metanet, zoo) units, each with its share of the threads "
                        "(default 1). Every run is seeded on its own, so the results are the one-process ones "
                        "(bit for bit at one thread per process); on a 2-core CPU, 2 halves the time of a "
                        "benchmark of two zoos")
    b.add_argument("--stream", action="store_true",
                   help="read weights from HDF5 per batch instead of loading each zoo into memory "
                        "(automatic when a zoo exceeds half the machine's memory)")
    common(b)
    b.set_defaults(func=cmd_bench)

    ls = sub.add_parser("list", help="show the registered metanets")
    ls.add_argument("--plugin", action="append", metavar="FILE", help="also load metanets from FILE")
    ls.set_defaults(func=cmd_list)

    t = sub.add_parser("train", help="train one metanet on one zoo and save it")
    t.add_argument("zoo", metavar="ZOO")
    t.add_argument("--metanet", required=True, help="registry name (see `metanets list`)")
    t.add_argument("--out", required=True, help="file to save the trained metanet to (e.g. mlp.pt)")
    t.add_argument("--lr", default="1e-3", help="learning rate (default 1e-3) or auto (sweep, pick by val R²)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-stack", action="store_true",
                   help="with --lr auto: train the sweep's runs one by one instead of as one stacked model "
                        "(same results up to float rounding, slower)")
    common(t)
    t.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="predict with a saved metanet")
    p.add_argument("model", metavar="METANET_FILE", help="file written by `metanets train`")
    p.add_argument("zoo", metavar="ZOO")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    p.add_argument("--out", default=None, help="CSV of model_id, target, prediction (default: print a summary)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--plugin", action="append", metavar="FILE")
    no_verify(p)
    p.set_defaults(func=cmd_predict)

    d = sub.add_parser("demo", help="generate the two digits zoos (standard, W-Asym) and benchmark them")
    d.add_argument("--out", default="runs", help="folder for the zoos and results (default runs/)")
    size = d.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="size", action="store_const", const="quick",
                      help="256 nets per zoo and a short benchmark (about 2 minutes on 2 cores); zoos in OUT/quick/")
    size.add_argument("--full", dest="size", action="store_const", const="full",
                      help="2,000 nets per zoo and the paper's benchmark protocol (long); zoos in OUT/full/")
    d.set_defaults(size="default")
    d.add_argument("--models", type=int, default=None,
                   help="nets per zoo (default: 625; 256 with --quick, 2,000 with --full)")
    d.add_argument("--metanets", default=None, help="override the demo's metanet list")
    d.add_argument("--seeds", default=None, help="override the demo's seeds (N or N,dmc=M)")
    d.add_argument("--epochs", default=None, help="override the demo's epochs (N or N,dmc=M)")
    d.add_argument("--batch-size", type=int, default=None, help="override the demo's batch size")
    d.add_argument("--lr", default=None, help="override the demo's learning rate (auto = full sweep)")
    d.add_argument("--bootstrap", type=int, default=None, help="override the demo's bootstrap resamples")
    d.add_argument("--device", default="cpu")
    d.add_argument("--no-progress", action="store_true")
    no_verify(d)
    d.set_defaults(func=cmd_demo)
    return parser


def cmd_bench(args) -> int:
    if args.workers < 1:
        raise MetanetError(f"--workers {args.workers} is invalid; allowed: >= 1")
    if args.workers > 1 and args.device != "cpu":
        raise MetanetError(f"--workers {args.workers} is for CPU runs; on {args.device} use --workers 1")
    cfg = bench.BenchConfig(metanets=tuple(registry.parse_names(args.metanets)),
                            seeds=bench.parse_per_metanet(args.seeds, "--seeds"),
                            epochs=bench.parse_per_metanet(args.epochs, "--epochs"),
                            lr=bench.parse_lr(args.lr), batch_size=args.batch_size,
                            device=args.device, params=args.params, target=args.target,
                            in_memory=False if args.stream else None, match_accuracy=args.match_accuracy,
                            bootstrap=args.bootstrap, protocol=args.protocol, stack=not args.no_stack,
                            lr_select=args.lr_select).check()
    check_writable_dir(Path(args.out), what="--out")
    result = bench.run(args.zoos, cfg, progress=not args.no_progress, workers=args.workers)
    files = report.write(result, args.out)
    print(files["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0


def cmd_list(args) -> int:
    for n in registry.names():
        cls = registry.get(n)
        doc = [getattr(cls, "description", None)] if getattr(cls, "description", None) else \
            (cls.__doc__ or "").strip().splitlines()
        origin = f"  [plugin {cls.plugin_path}]" if getattr(cls, "plugin_path", None) else ""
        print(f"{n:12s} view={cls.view:7s} kind={cls.kind:8s} {doc[0] if doc else ''}{origin}")
    return 0


def cmd_train(args) -> int:
    name = registry.parse_names(args.metanet)[0]
    args.epochs = bench.parse_per_metanet(args.epochs, "--epochs")
    if isinstance(args.epochs, dict):
        raise MetanetError(f"--epochs {args.epochs}: train takes one number of epochs")
    persist.check_writable(args.out)
    bench.BenchConfig(metanets=(name,), epochs=args.epochs, batch_size=args.batch_size, device=args.device,
                      params=args.params).check()
    lr = bench.parse_lr(args.lr)
    if isinstance(lr, dict):
        raise MetanetError(f"--lr {args.lr!r}: train takes one rate or auto, not NAME=RATE pairs")
    if args.no_stack and lr != "auto":
        raise MetanetError(f"--no-stack applies to --lr auto (the sweep's runs); --lr {args.lr} trains one run")
    ws = data.load(args.zoo, params=args.params, target=args.target, device=args.device)
    kw = dict(epochs=args.epochs, batch_size=args.batch_size, device=args.device)
    if registry.get(name).kind == "sklearn":
        res = fit(name, ws, lr=None, seed=args.seed, **kw)
    elif lr == "paper":
        raise MetanetError("--lr paper: train takes one rate or auto; `metanets bench --lr paper` picks the "
                           "paper's rate per zoo")
    elif lr == "auto":
        lr, results = bench.sweep_lr(name, ws, LR_GRID, seed=args.seed, stack=not args.no_stack, **kw)
        if lr is None:
            raise MetanetError(f"{name} on {args.zoo}: every rate of {list(LR_GRID)} diverged or gave "
                               f"non-finite predictions")
        res = next(r for r in results if r.lr == lr)
    else:
        res = fit(name, ws, lr=lr, seed=args.seed, **kw)
    scores = {"val_r2": res.val_r2, "val_tau": res.val_tau, "test_r2": res.test_r2, "test_tau": res.test_tau,
              "lr": res.lr, "best_epoch": res.best_epoch, "seed": args.seed, "zoo": str(args.zoo)}
    if res.status != "ok":
        raise MetanetError(f"{res.note}; nothing saved")
    persist.save(args.out, name, res.model, ws.info, target=ws.target, meta=scores)
    print(f"{name} on {ws.name}: val R² {res.val_r2:.4f} τ {res.val_tau:.4f} | test R² {res.test_r2:.4f} "
          f"τ {res.test_tau:.4f}" + (f" (lr {res.lr:g}, best epoch {res.best_epoch})" if res.lr else "")
          + f"; saved {args.out}")
    return 0


def cmd_predict(args) -> int:
    check_device(args.device)
    if args.out:
        persist.check_writable(args.out, example="predictions.csv")
    name, model, info, rec = persist.load(args.model, args.device)
    ws = data.load(args.zoo, params=info.params, target=rec["target"], checkpoint=rec["checkpoint"],
                   device=args.device)
    if not ws.info.layout.same_tensors(info.layout):
        raise MetanetError(f"{args.zoo}: its {info.params} parameter layout ({ws.info.num_inputs} inputs) differs "
                           f"from the one {args.model} was trained on ({info.num_inputs} inputs)")
    splits = data.SPLITS if args.split == "all" else (args.split,)
    view = registry.get(name).view
    frames = []
    for s in splits:
        yhat = predict(model, ws.features(s, view), view, info)
        frames.append(pd.DataFrame({"model_id": ws.ids(s), "split": s, "target": ws.selection.y[s],
                                    "prediction": yhat}))
    df = pd.concat(frames, ignore_index=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out, index=False)
    print(f"{name} on {ws.name} ({args.split}, {len(df)} nets, {ws.n_excluded} excluded): "
          f"R² {r2(df.target, df.prediction):.4f}  τ {kendall_tau(df.target, df.prediction):.4f}"
          + (f"; wrote {args.out}" if args.out else ""))
    if not args.out:
        print(df.head(10).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    bad = int((~np.isfinite(df.prediction)).sum())
    if bad:
        print(f"metanets predict: {name} from {args.model}: {bad} of {len(df)} predictions not finite",
              file=sys.stderr)
    return 0 if not bad else 1


def cmd_demo(args) -> int:
    run_demo(args.out, size=args.size, models=args.models, metanets=args.metanets, seeds=args.seeds,
             epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, device=args.device,
             progress=not args.no_progress, bootstrap=args.bootstrap)
    return 0


if __name__ == "__main__":
    sys.exit(main())
