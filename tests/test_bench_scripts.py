"""The benchmark scripts: the timing harness's method, and that the prepared GPU session's
commands are valid (a rare GPU session must not be lost to a typo)."""
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts import (bench_generate, bench_input, bench_metanets, bench_shard, check_bf16_accuracy,  # noqa: E402
                     gpu_check)
from scripts.benchtools import Spread, Variant, alternate  # noqa: E402


def test_variants_alternate_after_every_warm_up_and_report_median_min_max():
    calls = []

    def variant(name, seconds):
        return Variant(name, lambda n: calls.append(name) or seconds.pop(0), work=2.0,
                       warmup=lambda: calls.append(f"warm {name}"))

    a, b = alternate([variant("A", [1.0, 2.0, 4.0]), variant("B", [1.0, 1.0, 1.0])], windows=3, progress=False)
    assert calls == ["warm A", "warm B", "A", "B", "A", "B", "A", "B"]
    assert a.rates == [2.0, 1.0, 0.5]
    s = Spread(a.rates)
    assert (s.median, s.n) == (1.0, 3) and s.fmt(1) == "1.0 [0.5, 2.0] n=3 (noisy)"
    assert Spread(b.rates).fmt(1) == "2.0 [2.0, 2.0] n=3"
    with pytest.raises(ValueError, match="windows = 0"):
        alternate([a], windows=0)


def test_a_window_is_lengthened_to_the_minimum_time_after_the_warm_up():
    """A unit of 0.4 s and a 1 s minimum: windows of 3 units, the rate per unit's work."""
    sizes = []

    def window(n):
        sizes.append(n)
        return 0.4 * n

    v, = alternate([Variant("A", window, work=1.0)], windows=2, min_window_s=1.0, progress=False)
    assert sizes == [1, 3, 3] and v.units == 3
    assert v.rates == pytest.approx([2.5, 2.5])


@pytest.mark.parametrize("dry", [True, False])
def test_every_command_of_the_gpu_session_is_accepted_by_its_script(dry):
    for key, title, cmd, limit in gpu_check.sections(dry):
        if cmd is None:
            continue
        script = ROOT / cmd[1]
        assert script.exists(), f"section {key}: {cmd[1]}"
        if cmd[1].endswith("bench_generate.py"):
            args = bench_generate.parse_args(cmd[2:])
            for v in args.variants.split(","):
                assert v.split(":")[0] in ("r0", "r1", "r2", "group"), v
        if cmd[1].endswith("bench_shard.py"):
            args = bench_shard.parse_args(cmd[2:])
            assert args.group_size >= 2 and args.windows >= 1
            if not dry:
                assert args.models == 1000 and args.preset == "lim2024-resnet8" and args.epochs is None, \
                    "a 1,000-model shard at the paper's epoch mix"
        if cmd[1].endswith("bench_metanets.py"):
            bench_metanets.parse_args(cmd[2:])  # an unknown option exits
        if cmd[1].endswith("check_bf16_accuracy.py"):
            args = check_bf16_accuracy.parse_args(cmd[2:])
            assert args.dry_run if dry else (args.models == 64 and args.device == "cuda")
        if cmd[1].endswith("bench_input.py"):
            args = bench_input.parse_args(cmd[2:])
            assert args.models == (4 if dry else 128) and args.windows == (2 if dry else 5)
    assert {k for k, *_ in gpu_check.sections(dry)} >= set("abcdefghijkl")


def test_bench_generate_refuses_an_unknown_variant_with_one_line(digits):
    args = bench_generate.parse_args(["--variants", "group:4:fp16"])
    spec, cfg, _ = bench_generate.load_preset("digits-resnet8", "cpu")
    with pytest.raises(SystemExit, match="unknown group option 'fp16'.*allowed: fp32, bf16, cl, static, compile"):
        bench_generate.build_variants(args, spec, cfg, digits)
    args = bench_generate.parse_args(["--variants", "group:4:static+graph"])
    with pytest.raises(SystemExit, match="'graph' needs 'compile'"):
        bench_generate.build_variants(args, spec, cfg, digits)


@pytest.mark.slow
def test_the_gpu_session_script_runs_end_to_end_in_its_cpu_dry_run(tmp_path, one_thread):
    out = tmp_path / "gpu.md"
    assert gpu_check.main(["--dry-run", "--only", "abg", "--minutes", "30", "--out", str(out)]) == 0
    md = out.read_text()
    assert "output channels-last" in md and "model-epochs/s" in md and "models/h" in md
    assert "refill / fixed" in md
    assert "group:4:bf16+cl" in md and "r0" in md


def test_the_metanet_table_script_times_one_real_bench_of_two_zoos(tmp_path, capsys):
    from scripts import bench_metanet_table

    rc = bench_metanet_table.main(["--dry-run", "--work", str(tmp_path), "--metanets", "mlp,statnn"])
    out = capsys.readouterr().out
    assert rc == 0
    for kind in ("std", "wasym"):
        assert (tmp_path / f"synthetic-{kind}-64" / "manifest.json").is_file()
    assert "metanets.cli bench" in out and (tmp_path / "bench" / "results.json").is_file()
    line = next(line for line in out.splitlines() if line.startswith("table: "))
    assert "2 metanets x 2 zoos x 64 nets" in line and "wall" in line and "dry run" in line
    # a second run reuses the zoos it wrote
    assert bench_metanet_table.main(["--dry-run", "--work", str(tmp_path), "--metanets", "mlp"]) == 0
    assert "wrote " not in capsys.readouterr().out.split("$ ")[0]


@pytest.mark.exactness
def test_the_bf16_accuracy_check_trains_both_precisions_and_compares_them(tmp_path, capsys):
    from scripts import check_bf16_accuracy

    assert check_bf16_accuracy.main(["--dry-run", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "--precision fp32" in out and "--precision bf16" in out
    assert "per model:    mean |Δacc|" in out and "distribution: mean fp32" in out
    a, b = (zoo_weights(tmp_path / p) for p in ("fp32", "bf16"))
    assert a.shape == b.shape and not np.array_equal(a, b)  # bf16 really ran (a group of 4, seeds equal)


def test_digits32_is_cifar_shaped_uint8_with_all_ten_classes(tmp_path):
    from scripts.check_bf16_accuracy import digits32

    with np.load(digits32(tmp_path / "d.npz", 300, 100)) as z:
        assert z["x_train"].shape == (300, 32, 32, 3) and z["x_train"].dtype == np.uint8
        assert z["x_test"].shape == (100, 32, 32, 3) and set(np.unique(z["y_train"])) <= set(range(10))
        assert len(np.unique(z["y_train"])) == 10


def zoo_weights(path):
    import zoo

    return zoo.open(path).weights()


def test_the_input_benchmark_times_fused_against_unfused_and_checks_they_agree(capsys, monkeypatch):
    """scripts/bench_input.py: both pipelines, fp32 and bf16 + channels-last, median [min, max]
    per variant; it refuses to time two variants that build different inputs."""
    assert bench_input.main(["--models", "2", "--steps", "1", "--windows", "2"]) == 0
    out = capsys.readouterr().out
    for v in ("fused fp32", "unfused fp32", "fused bf16+cl", "unfused bf16+cl"):
        line = next(ln for ln in out.splitlines() if ln.startswith(v + " "))
        assert "n=2" in line and "[" in line, line
    assert "every variant builds the same input" in out
    with pytest.raises(SystemExit, match="--windows: 0"):
        bench_input.parse_args(["--windows", "0"])
    for opt in ("--models", "--steps"):  # 0 is no default
        with pytest.raises(SystemExit, match=f"{opt}: 0"):
            bench_input.parse_args([opt, "0"])
    for bad in (["--preset", "nope"], ["--device", "foo"]):
        with pytest.raises(SystemExit, match=bad[1]):
            bench_input.main(bad)
    # a preset that samples the training fraction still makes one group
    assert bench_input.main(["--preset", "digits-resnet8", "--models", "2", "--steps", "1", "--windows", "1"]) == 0
    old = bench_input.augmented_batch
    monkeypatch.setattr(bench_input, "augmented_batch", lambda *a: (old(*a)[0].flip(-2), old(*a)[1]))  # rows mirrored
    with pytest.raises(SystemExit, match="unfused fp32: builds another input than fused fp32"):
        bench_input.main(["--models", "2", "--steps", "1", "--windows", "1"])


def test_the_input_benchmark_compiles_the_fused_gather_once_per_dtype_and_layout(capsys, monkeypatch):
    """fused+compile must time one compiled graph per (dtype, layout), reused at every step:
    a step number reaching the compiled function as a Python int would be a constant, one
    compile per step, and past torch's recompile limit the steps would run eager."""
    import torch
    from torch._dynamo.testing import CompileCounter

    counter, real = CompileCounter(), torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, **{**kw, "backend": counter}))
    torch._dynamo.reset()
    assert bench_input.main(["--models", "2", "--steps", "3", "--windows", "2", "--compile"]) == 0
    torch._dynamo.reset()
    out = capsys.readouterr().out
    assert any(ln.startswith("fused+compile bf16+cl ") for ln in out.splitlines())
    assert counter.frame_count == 2


def test_r1_under_cuda_graphs_reads_the_training_images_in_place(monkeypatch):
    """R1 gathers its batch inside the compiled step (the fused input), so the whole training
    set is an input of the graph: under CUDA graphs (reduce-overhead) it must be a static
    input, as in the group trainer, or every replay first copies the whole set (150 MB for
    CIFAR-10) into the graph's own buffer, a handicap the best-shot reference must not have."""
    import torch

    spec, cfg, data = bench_generate.load_preset("digits-resnet8", "cpu")
    static, real = [], torch.compile

    def backend(gm, inputs):
        static.extend(torch._dynamo.utils.get_static_address_type(t) for t in inputs
                      if isinstance(t, torch.Tensor) and t.shape == data.x_train.shape)
        return gm.forward

    # the graph's inputs as CUDA graphs would get them, traced on the CPU
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, dynamic=False, backend=backend))
    torch._dynamo.reset()
    r1 = bench_generate.R1(bench_generate.jobs_for(spec, 1)[0], cfg, data, "cpu", False, "reduce-overhead")
    r1.start_epoch()
    r1.step()
    torch._dynamo.reset()
    assert static and all(s is not None for s in static), static


def test_benchmark_jobs_share_one_training_fraction_where_the_preset_samples_it():
    """A group has one training fraction (a grouping key); digits-resnet8 samples it per
    model, which made `bench_generate.py --variants group:2` fail on its default preset."""
    from zoo.generate.spec import load_spec

    spec = load_spec("digits-resnet8")
    assert len({spec.sample_hparams(i)["train_fraction"] for i in range(8)}) > 1, "the preset samples it"
    jobs = bench_generate.jobs_for(spec, 8)
    assert {j.hp["train_fraction"] for j in jobs} == {spec.sample_hparams(0)["train_fraction"]}
    assert {j.hp["train_fraction"] for j in bench_generate.jobs_for(spec, 3, fraction=0.1)} == {0.1}


def test_the_cpu_lever_benchmark_compiles_the_forward_the_trainer_calls(digits, monkeypatch, one_thread):
    """bench_cpu_generate's `-compile` variant swaps in a compiled grouped forward: it must be
    the method every training step and evaluation goes through, or the variant times eager
    code under a 'compile' label (as it did once the trainer stopped calling the old one)."""
    import torch
    from torch._dynamo.testing import CompileCounter

    from scripts import bench_cpu_generate
    from zoo.generate.grouped import GroupState
    from zoo.generate.spec import load_spec, validate_for_data

    counter, real = CompileCounter(), torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, **{**kw, "backend": counter}))
    torch._dynamo.reset()
    spec = load_spec("digits-resnet8")
    cfg = validate_for_data(spec, digits.shape[0], digits.num_classes)
    eager = GroupState.forward_input
    walls, _ = bench_cpu_generate.bench(spec, cfg, digits, bench_cpu_generate.parse_variant("t1-M2-B64-compile"),
                                        1, 0.1, 1)
    torch._dynamo.reset()
    assert len(walls) == 1 and counter.frame_count >= 1, "the compiled forward ran"
    assert GroupState.forward_input is eager, "the eager method is put back"


def test_the_demo_benchmark_times_repeated_demos_and_checks_they_print_one_table(tmp_path, capsys):
    """Two tiny demos in fresh folders: both phases are timed, and the seeded demo prints the
    same table twice (the script fails otherwise)."""
    from scripts import bench_demo

    assert bench_demo.main(["--repeats", "2", "--no-warmup", "--keep", str(tmp_path), "--", "--quick",
                            "--models", "16", "--metanets", "hparams,statnn-gbm"]) == 0
    out = capsys.readouterr().out
    assert "| whole command |" in out and "| generation |" in out and "| benchmark |" in out and " n=2" in out
    assert "every repeat printed the same table: yes" in out
    for rep in ("rep-1", "rep-2"):  # generation included: each repeat made its own zoos
        assert (tmp_path / rep / "quick" / "digits-std" / "manifest.json").exists()
