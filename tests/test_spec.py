"""Zoo specs: validation names the field; per-model hyper-parameters are a function of (seed, id)."""
import datetime

import numpy as np
import pytest
from conftest import write_toml

from zoo.errors import SpecError, ZooError
from zoo.generate.spec import load_spec, presets, spec_from_dict


def test_shipped_presets_load_and_include_the_papers_three():
    names = set(presets())
    assert {"lim2024-resnet8", "lim2024-wasym-resnet8", "lim2024-sigma-resnet8", "digits-resnet8",
            "digits-wasym-resnet8", "digits-sigma-resnet8"} <= names
    for n in names:
        assert load_spec(n).name == n


def test_paper_presets_sample_the_papers_distributions():
    spec = load_spec("lim2024-wasym-resnet8")
    assert spec.models == 10_000 and spec.data["source"] == "cifar10"
    hps = [spec.sample_hparams(i) for i in range(2000)]
    lr = np.array([h["lr"] for h in hps])
    wd = np.array([h["weight_decay"] for h in hps])
    ep = np.array([h["epochs"] for h in hps])
    ls = np.array([h["label_smoothing"] for h in hps])
    # lr = 0.5 * 10^-U(0, 2): log10(lr / 0.5) is uniform on [-2, 0]
    u = np.log10(lr / 0.5)
    assert u.min() >= -2 and u.max() <= 0 and abs(u.mean() + 1) < 0.05
    v = np.log10(wd)
    assert v.min() >= -5 and v.max() <= -1 and abs(v.mean() + 3) < 0.1
    assert ep.min() == 10 and ep.max() == 40, "RandInt(10, 40) includes both ends"
    assert ls.min() >= 0 and ls.max() <= 0.2
    assert {h["batch_size"] for h in hps} == {512} and {h["optimizer"] for h in hps} == {"adamw"}
    assert spec.net.wasym.n_fix == 8 and spec.net.wasym.kappa == 2.0


def test_model_hyperparameters_depend_only_on_seed_and_id(tiny_dict):
    a = spec_from_dict(tiny_dict)
    b = spec_from_dict({**tiny_dict, "models": 500})
    assert a.sample_hparams(5) == b.sample_hparams(5)
    assert a.model_seed(5) == b.model_seed(5)
    assert a.sample_hparams(5) != a.sample_hparams(6)
    c = spec_from_dict({**tiny_dict, "seed": 4})
    assert c.sample_hparams(5) != a.sample_hparams(5)


def test_fingerprint_changes_with_content_not_description(tiny_dict):
    a = spec_from_dict(tiny_dict)
    assert spec_from_dict({**tiny_dict, "description": "other words"}).fingerprint() == a.fingerprint()
    assert spec_from_dict({**tiny_dict, "models": 9}).fingerprint() != a.fingerprint()


@pytest.mark.parametrize("patch,field,allowed", [
    ({"hparams": {"lr": -0.1}}, "hparams.lr", "> 0"),
    ({"hparams": {"lr": 0}}, "hparams.lr", "> 0"),
    ({"hparams": {"lr": {"dist": "uniform", "low": -1.0, "high": 1.0}}}, "hparams.lr", "> 0"),
    ({"hparams": {"epochs": 0}}, "hparams.epochs", ">= 1"),
    ({"hparams": {"epochs": {"dist": "randint", "low": 0, "high": 3}}}, "hparams.epochs", ">= 1"),
    ({"hparams": {"optimizer": "adam"}}, "hparams.optimizer", "'adamw' or 'sgd'"),
    ({"hparams": {"lr": {"dist": "gauss", "mu": 1}}}, "hparams.lr.dist", "allowed"),
    ({"hparams": {"momentum": 1.5}}, "hparams.momentum", "[0, 1)"),
    ({"hparams": {"learning_rate": 0.1}}, "hparams.learning_rate", "unknown hyper-parameter"),
    ({"net": {"arch": "vgg"}}, "net.arch", "resnet"),
    ({"net": {"depth": 9}}, "net.depth", "6n+2"),
    ({"net": {"grayscale": datetime.datetime(1979, 5, 27)}}, "net.grayscale", "true or false"),  # TOML dates
    ({"net": {"arch": ["resnet"]}}, "net.arch", "a string"),
    ({"data": {"source": "imagenet"}}, "data.source", "digits"),
    ({"models": 0}, "models", ">= 1"),
    ({"checkpoints": [5, "final"]}, "checkpoints", "0..1"),
    ({"split": {"train": 0.9, "val": 0.2, "test": 0.1}}, "split", "sum to 1"),
])
def test_bad_spec_values_fail_naming_field_value_and_allowed(tiny_dict, patch, field, allowed):
    d = dict(tiny_dict)
    for k, v in patch.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) and isinstance(d.get(k), dict) and k != "data" else v
    if "net" in patch and "arch" not in patch["net"]:
        d["net"] = {**tiny_dict["net"], **patch["net"]}
    with pytest.raises(SpecError) as e:
        spec_from_dict(d)
    assert e.value.field == field
    assert allowed in str(e.value)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ZooError, match="lim2024-resnet8"):
        load_spec("no-such-preset")


def test_spec_file_errors_name_the_file(tmp_path, tiny_dict):
    bad = write_toml(tmp_path / "bad.toml", {**tiny_dict, "hparams": {**tiny_dict["hparams"], "lr": -1.0}})
    with pytest.raises(SpecError, match=r"hparams.lr.*bad.toml"):
        load_spec(bad)
    (tmp_path / "broken.toml").write_text("name = [unclosed")
    with pytest.raises(ZooError, match="not valid TOML"):
        load_spec(tmp_path / "broken.toml")


def test_spec_round_trips_through_its_dict(tiny_dict):
    s = spec_from_dict(tiny_dict)
    again = spec_from_dict(s.to_dict())
    assert again.fingerprint() == s.fingerprint()
    assert [again.sample_hparams(i) for i in range(4)] == [s.sample_hparams(i) for i in range(4)]
