"""modelzoos importer: per-net training folders become one zoo with per-epoch checkpoints."""
import numpy as np
import pytest

import zoo
from zoo.errors import ZooError
from zoo.importers import run_import
from zoo.store import verify

from hub_fixtures import write_modelzoos


def test_per_net_folders_become_a_zoo_with_epochs_hyper_parameters_and_buffers(tmp_path):
    saved = write_modelzoos(tmp_path / "cifar_seed.zip", nets=4)
    m = run_import("modelzoos", tmp_path / "cifar_seed.zip", tmp_path / "zoo")
    assert verify(tmp_path / "zoo") == []
    z = zoo.open(tmp_path / "zoo")
    assert z.checkpoints == ["epoch_0", "epoch_1", "final"] and m["source"]["epochs"] == [0, 1, 2]
    assert m["net"] is None and len(z) == 4
    assert [t.name for t in z.layout.buffers] == ["module_list.1.running_mean", "module_list.1.running_var"]
    assert z.layout["module_list.1.weight"].role == "norm_weight"
    t = z.table.set_index("source_dir")
    for n in range(4):
        row = t.loc[f"zoo_cifar_seed/NN_tune_trainable_{n:05d}_seed={n}"]
        assert row["optim::lr"] == pytest.approx(1e-3 * (n + 1)) and row["model::type"] == "CNN"
        assert row["test_acc"] == pytest.approx(0.5 + 0.01 * n)
        assert row["test_acc@epoch_1"] == pytest.approx(0.3 + 0.01 * n)
        assert row["train_loss@epoch_0"] == pytest.approx(2.0)
        mid = int(row["model_id"])
        np.testing.assert_array_equal(z.layer_weights(mid, "epoch_1")["module_list.0.weight"].numpy(),
                                      saved[n][1]["module_list.0.weight"].numpy())
        np.testing.assert_array_equal(z.buffers(mid, "final")[:4], saved[n][2]["module_list.1.running_mean"].numpy())


def test_a_net_missing_a_shared_epoch_is_dropped_and_listed(tmp_path):
    write_modelzoos(tmp_path / "z.zip", nets=3, missing={1: 2})
    m = run_import("modelzoos", tmp_path / "z.zip", tmp_path / "zoo")
    assert len(zoo.open(tmp_path / "zoo")) == 2
    assert len(m["source"]["dropped"]) == 1 and "00001" in m["source"]["dropped"][0]


def test_a_net_with_nan_weights_is_kept_and_marked_diverged(tmp_path):
    write_modelzoos(tmp_path / "z.zip", nets=3, nan_net=2)
    run_import("modelzoos", tmp_path / "z.zip", tmp_path / "zoo")
    assert verify(tmp_path / "zoo") == []
    assert zoo.open(tmp_path / "zoo").table["diverged"].tolist() == [False, False, True]


def test_an_unknown_option_is_refused_naming_the_allowed_ones(tmp_path):
    write_modelzoos(tmp_path / "z.zip", nets=2)
    with pytest.raises(ZooError, match="no option 'variant'; allowed: epochs"):
        run_import("modelzoos", tmp_path / "z.zip", tmp_path / "zoo", options={"variant": "x"})
