"""``metanets demo``: the README's main job, end to end on a CPU.

Generates (or reuses, when already complete) the two default digits zoos — standard
and W-Asymmetric ResNet8s — under ``OUT/digits-std`` and ``OUT/digits-wasym`` with
``zoo.generate``, benchmarks both (with ``--match-accuracy``) and prints the table. The
benchmark part is sized to take about four minutes of a quiet 2-core CPU on zoos of
about 1,000 nets (see :data:`DEMO`); every setting can be overridden, and
``metanets bench ... --protocol lim2024`` is the paper's full protocol.
"""
from __future__ import annotations

import time
from pathlib import Path

from . import bench, registry, report
from .errors import MetanetError

ZOOS = (("digits-resnet8", "digits-std"), ("digits-wasym-resnet8", "digits-wasym"))

#: The demo's benchmark settings, sized for about 4 minutes of a quiet 2-core CPU on two
#: zoos of ~1,000 nets (500 training nets each; measured per metanet in docs/METANETS.md).
#: Batch 32 gives 16 steps per epoch (batch 128 would give 4). MLP and StatNN cost well
#: under 0.2 s of CPU per epoch, so they sweep the paper's lr grid over 20 epochs and 3
#: seeds. DMC and DeepSets cost about 4 s per epoch on one core, so they get 6 epochs and
#: 2 seeds at a fixed rate without a sweep: 1e-3 for DMC (on the 1,000-net standard digits
#: zoo, 6 epochs: test R² 0.52 at 1e-3, 0.36 at 5e-4, negative at 3e-3) and the paper's
#: standard-zoo rate 1e-2 for DeepSets (1e-3 and 3e-3 stayed at R² 0 within 6 epochs).
#: 1,000 bootstrap resamples cost about 0.1 s per metanet and zoo.
DEMO = dict(metanets="mlp,dmc,deepsets,statnn,statnn-gbm,hparams", seeds="3,dmc=2,deepsets=2",
            epochs="20,dmc=6,deepsets=6", batch_size=32, lr="mlp=auto,statnn=auto,dmc=1e-3,deepsets=1e-2",
            bootstrap=1000)


def ensure_zoo(preset: str, path: Path, models: int | None, device: str, progress: bool) -> Path:
    """Generate the preset's zoo at ``path`` unless a complete one with ``models`` nets is there."""
    manifest = path / "manifest.json"
    if manifest.exists():
        import zoo

        z = zoo.open(path)
        if models is None or len(z) == models:
            print(f"reusing {path} ({len(z)} models)")
            return path
    try:
        from zoo.generate import generate
        from zoo.spec import load_spec
    except ImportError as e:
        raise MetanetError(f"metanets demo needs zoo.generate to build the digits zoos ({e}); "
                           f"pass existing zoos to `metanets bench` instead") from None
    print(f"generating {preset} -> {path}" + (f" ({models} models)" if models else ""))
    return Path(generate(load_spec(preset), path, models=models, device=device, progress=progress))


def run_demo(out="runs", *, models=None, metanets=None, seeds=None, epochs=None, batch_size=None, lr=None,
             device="cpu", progress=True, bootstrap=None) -> dict:
    from .cli import check_out_dir

    out = Path(out)
    if models is not None and models < 1:
        raise MetanetError(f"--models {models} is invalid; allowed: >= 1")
    cfg = bench.BenchConfig(metanets=tuple(registry.parse_names(metanets or DEMO["metanets"])),
                            seeds=bench.parse_per_metanet(seeds or DEMO["seeds"], "--seeds"),
                            epochs=bench.parse_per_metanet(epochs or DEMO["epochs"], "--epochs"),
                            batch_size=batch_size or DEMO["batch_size"],
                            lr=bench.parse_lr(lr or DEMO["lr"]), device=device,
                            bootstrap=bootstrap or DEMO["bootstrap"], match_accuracy=True).check()
    check_out_dir(out / "bench")  # before hours of generation, not after
    paths = [ensure_zoo(preset, out / sub, models, device, progress) for preset, sub in ZOOS]
    t0 = time.perf_counter()
    result = bench.run(paths, cfg, progress=progress)
    result["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    files = report.write(result, out / "bench")
    print(files["md"].read_text())
    print(f"benchmark: {result['bench_wall_s']:.0f}s; wrote " + ", ".join(str(p) for p in files.values()))
    return result
