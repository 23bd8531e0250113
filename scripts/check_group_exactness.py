#!/usr/bin/env python3
"""Check on this machine that a model trained inside a group equals the model trained alone.

  python scripts/check_group_exactness.py                 # CPU, fp32
  python scripts/check_group_exactness.py --device cuda   # CUDA (cuDNN may pick other kernels: expect ~1e-5)
  python scripts/check_group_exactness.py --slots 2 --static   # slot refill, static shapes

Trains a group of models with different hyper-parameters from a preset (default: the digits
W-Asym zoo), trains each one alone with plain nn.Module layers and torch.optim, and prints
the largest weight difference and both test accuracies per model.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.generate import images as image_data  # noqa: E402
from zoo.generate.spec import load_spec, validate_for_data  # noqa: E402
from zoo.generate.train import GroupTrainer, Job, TrainOptions, train_alone  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="digits-wasym-resnet8")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--tf32", action="store_true", help="allow TF32 convs/matmuls on CUDA (off: true fp32)")
    ap.add_argument("--slots", type=int, default=None,
                    help="train the models through this many slots (slot refill; default: all at once)")
    ap.add_argument("--static", action="store_true", help="static shapes (padded tail batch, fixed group size)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the group's forward + loss")
    args = ap.parse_args()
    import torch

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32
    spec = load_spec(args.preset)
    data = image_data.load(spec.data, args.device)
    cfg = validate_for_data(spec, data.shape[0], data.num_classes)
    if args.slots is not None and not 1 <= args.slots:
        ap.error(f"--slots {args.slots}: must be >= 1")
    # with slots, epochs 1..--epochs so that slots free up at different times and are refilled
    jobs = [Job(i, spec.model_seed(i), {**spec.sample_hparams(i),
                                        "epochs": 1 + i % args.epochs if args.slots else args.epochs})
            for i in range(args.models)]
    opts = TrainOptions(device=args.device)
    group_opts = TrainOptions(device=args.device, static_shapes=args.static, compile=args.compile)
    group = GroupTrainer(cfg, data, ["final"], group_opts).train(jobs, slots=args.slots)
    worst = 0.0
    for j, g in zip(jobs, group):
        a = train_alone(j, cfg, data, ["final"], opts)
        d = float(np.abs(a.weights["final"] - g.weights["final"]).max())
        worst = max(worst, d)
        print(f"model {j.model_id}: lr {j.hp['lr']:.2e} wd {j.hp['weight_decay']:.1e} "
              f"max |w_group - w_alone| = {d:.2e}   test acc group {g.metrics['test_acc']:.4f} "
              f"alone {a.metrics['test_acc']:.4f}")
    print(f"worst weight difference {worst:.2e} on {args.device}")


if __name__ == "__main__":
    main()
