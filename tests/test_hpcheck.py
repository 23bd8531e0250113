"""zoo hparams: a preset's distributions against the hyper-parameters a zoo's runs actually used."""
import numpy as np
import pandas as pd
from hub_fixtures import tar_folder, write_smallcnnzoo

from zoo.cli import main
from zoo.generate.hpcheck import SMALLCNNZOO_NAMES, compare
from zoo.generate.spec import load_spec
from zoo.hub.importers import run_import

KERAS_NAMES = {"random_normal": "RandomNormal", "truncated_normal": "TruncatedNormal"}


def _upstream_like(spec, n=3000):
    """A metrics table as upstream writes it (config.* stripped, its column names, Keras class
    names for two initialisers), drawn from ``spec``: what the real zoo holds if the preset is right."""
    draws = [spec.sample_hparams(i) for i in range(n)]
    return pd.DataFrame({
        "learning_rate": [d["lr"] for d in draws],
        "l2reg": [d["weight_decay"] for d in draws],
        "dropout": [d["dropout"] for d in draws],
        "init_std": [d["init_std"] for d in draws],
        "optimizer": [d["optimizer"] for d in draws],
        "w_init": [KERAS_NAMES.get(d["w_init"], d["w_init"]) for d in draws],
        "activation": [d["activation"] for d in draws],
        "train_fraction": [d["train_fraction"] for d in draws],
        "test_acc": np.linspace(0.1, 0.9, n),
    })


def _by_name(rows):
    return {r.name: r for r in rows}


def test_runs_drawn_from_the_preset_match_it_on_every_sampled_hyper_parameter():
    spec = load_spec("smallcnnzoo-cifar10")
    rows = _by_name(compare(_upstream_like(spec), spec, SMALLCNNZOO_NAMES))
    assert set(rows) == {"optimizer", "lr", "weight_decay", "dropout", "init_std", "w_init", "activation",
                         "train_fraction"}
    assert {r.verdict for r in rows.values()} == {"ok"}, [(r.name, r.detail) for r in rows.values()]
    assert rows["lr"].coverage > 0.99 and rows["weight_decay"].coverage > 0.99


def test_a_learning_rate_beyond_the_presets_range_is_outside_naming_the_value():
    spec = load_spec("smallcnnzoo-cifar10")
    t = _upstream_like(spec)
    t.loc[7, "learning_rate"] = 0.5  # the paper's first version sampled larger rates
    row = _by_name(compare(t, spec, SMALLCNNZOO_NAMES))["lr"]
    assert row.verdict == "OUTSIDE" and "1 of 3000" in row.detail and "0.5" in row.detail


def test_runs_covering_a_tenth_of_a_log_range_make_it_narrower():
    spec = load_spec("smallcnnzoo-cifar10")
    t = _upstream_like(spec)
    t["l2reg"] = np.geomspace(1e-4, 1e-2, len(t))  # 2 of the 6 decades of [1e-8, 1e-2]
    row = _by_name(compare(t, spec, SMALLCNNZOO_NAMES))["weight_decay"]
    assert row.verdict == "narrower" and abs(row.coverage - 2 / 6) < 1e-9


def test_choices_compare_by_value_whatever_the_spelling_and_unknown_ones_are_outside():
    spec = load_spec("smallcnnzoo-cifar10")
    t = _upstream_like(spec)
    rows = _by_name(compare(t, spec, SMALLCNNZOO_NAMES))
    assert rows["w_init"].verdict == "ok" and "random_normal" in rows["w_init"].zoo  # 'RandomNormal' upstream
    assert rows["train_fraction"].verdict == "ok"
    t.loc[0, "optimizer"] = "momentum"
    t["activation"] = "relu"
    rows = _by_name(compare(t, spec, SMALLCNNZOO_NAMES))
    assert rows["optimizer"].verdict == "OUTSIDE" and "momentum" in rows["optimizer"].detail
    assert rows["activation"].verdict == "narrower" and "tanh" in rows["activation"].detail


def test_a_column_the_zoo_lacks_is_reported_missing():
    spec = load_spec("smallcnnzoo-cifar10")
    rows = _by_name(compare(_upstream_like(spec).drop(columns=["dropout"]), spec, SMALLCNNZOO_NAMES))
    assert rows["dropout"].verdict == "missing"


def test_cli_compares_an_imported_small_cnn_zoo_with_its_preset(tmp_path, capsys):
    write_smallcnnzoo(tmp_path / "up", runs=4)  # fixture rates 0.1 .. 1e-4: 0.1 is beyond the preset's 5e-2
    run_import("smallcnnzoo", tar_folder(tmp_path / "up", tmp_path / "cifar10.tar.xz"), tmp_path / "zoo")
    assert main(["hparams", str(tmp_path / "zoo")]) == 1
    out = capsys.readouterr().out
    assert "against smallcnnzoo-cifar10" in out
    lr_line = next(line for line in out.splitlines() if line.startswith("lr "))
    assert "OUTSIDE" in lr_line and "[0.0001, 0.1]" in lr_line


def test_cli_without_a_spec_to_compare_with_says_how_to_name_one(tmp_path, capsys):
    write_smallcnnzoo(tmp_path / "up", runs=3)
    run_import("smallcnnzoo", tar_folder(tmp_path / "up", tmp_path / "weird.tar.xz"), tmp_path / "zoo")
    assert main(["hparams", str(tmp_path / "zoo")]) == 2
    assert "--against" in capsys.readouterr().err
    assert main(["hparams", str(tmp_path / "zoo"), "--against", "smallcnnzoo-mnist"]) == 1


def test_an_upstream_setting_that_varies_but_the_spec_does_not_sample_is_reported():
    from zoo.generate.hpcheck import SMALLCNNZOO_CONFIG

    spec = load_spec("smallcnnzoo-cifar10")
    t = _upstream_like(spec)
    t["b_init"] = ["zeros", "RandomNormal", "ones"] * (len(t) // 3)  # the spec keeps biases at zero
    t["epochs"] = 86  # constant upstream: nothing to report
    rows = _by_name(compare(t, spec, SMALLCNNZOO_NAMES, SMALLCNNZOO_CONFIG))
    assert rows["b_init"].verdict == "unmodelled" and "3 values" in rows["b_init"].detail
    assert "epochs" not in rows and rows["lr"].verdict == "ok"


def test_a_small_zoo_drawn_from_its_spec_is_not_flagged_for_the_gaps_any_small_sample_has():
    from zoo.generate.hpcheck import p_coverage_below

    spec = load_spec("smallcnnzoo-cifar10")
    for n in (3, 8, 20):
        rows = compare(_upstream_like(spec, n), spec, SMALLCNNZOO_NAMES)
        assert {r.verdict for r in rows} == {"ok"}, (n, [(r.name, r.detail) for r in rows if r.verdict != "ok"])
    # the range of n uniform draws: P(range <= c) = n c^(n-1) - (n-1) c^n, checked by simulation
    rng = np.random.default_rng(0)
    u = rng.uniform(size=(20000, 8))
    simulated = ((u.max(1) - u.min(1)) <= 0.6).mean()
    assert abs(simulated - p_coverage_below(0.6, 8)) < 0.01
