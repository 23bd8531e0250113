"""modelzoos importer: per-net training folders become one zoo with per-epoch checkpoints."""
import json
import zipfile

import h5py
import numpy as np
import pytest
from hub_fixtures import modelzoos_dir, write_modelzoos

import zoo
from zoo.errors import ZooError
from zoo.hub.importers import run_import
from zoo.hub.importers.common import RESERVED, column_name
from zoo.store import verify


@pytest.mark.exactness
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
        row = t.loc[modelzoos_dir(n)]
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
    assert m["source"]["dropped"] == [f"{modelzoos_dir(1)} (no checkpoint for epoch 2)"]


def test_a_net_with_nan_weights_is_kept_and_marked_diverged(tmp_path):
    write_modelzoos(tmp_path / "z.zip", nets=3, nan_net=2)
    run_import("modelzoos", tmp_path / "z.zip", tmp_path / "zoo")
    assert verify(tmp_path / "zoo") == []
    assert zoo.open(tmp_path / "zoo").table["diverged"].tolist() == [False, False, True]


def test_an_unknown_option_is_refused_naming_the_allowed_ones(tmp_path):
    write_modelzoos(tmp_path / "z.zip", nets=2)
    with pytest.raises(ZooError, match="no option 'variant'; allowed: epochs"):
        run_import("modelzoos", tmp_path / "z.zip", tmp_path / "zoo", options={"variant": "x"})


def test_hyper_parameters_come_from_result_json_config_when_params_json_is_absent(tmp_path):
    write_modelzoos(tmp_path / "a.zip", nets=3, params_json=True)
    write_modelzoos(tmp_path / "b.zip", nets=3, params_json=False)
    run_import("modelzoos", tmp_path / "a.zip", tmp_path / "za")
    run_import("modelzoos", tmp_path / "b.zip", tmp_path / "zb")
    a, b = zoo.open(tmp_path / "za").table, zoo.open(tmp_path / "zb").table
    assert list(b["optim::lr"]) == pytest.approx([1e-3, 2e-3, 3e-3]) and list(b["seed"]) == [1, 2, 3]
    assert a.drop(columns="split").equals(b.drop(columns="split"))


def test_upstream_keys_become_table_columns_hdf5_can_store(tmp_path):
    """Config keys are anyone's strings (fuzz finding import_modelzoos-471ef18fec: the keys ''
    and '\\0' gave two columns HDF5 named alike, a ValueError while writing the shard)."""
    keys = ["", "\0", ".", "..", " / ", "a/b", "test_acc", "x\ud800y", "lr\n", "optim::lr", "dé"]
    cols = {k: column_name(k, RESERVED) for k in keys}
    assert cols["a/b"] == "a.b" and cols["test_acc"] == "hp.test_acc" and cols["optim::lr"] == "optim::lr"
    assert cols["dé"] == "dé" and cols["x\ud800y"] == "xy" and cols["lr\n"] == "lr"
    assert {cols[k] for k in ("", "\0", ".", "..", " / ")} == {"unnamed"}
    with h5py.File(tmp_path / "t.h5", "w") as f:
        g = f.create_group("table")
        for c in set(cols.values()):
            g.create_dataset(c, data=[1.0])
        assert sorted(g) == sorted(set(cols.values()))


@pytest.mark.parametrize("field,bad,why", [("train_loss", [1.65], "is not a number"),
                                           ("train_loss", {"v": 1}, "is not a number"),
                                           ("train_loss", True, "is not a number"),
                                           ("train_loss", "fast", "is not a number"),
                                           ("test_acc", 1.3, r"is not an accuracy in \[0, 1\]")])
def test_a_bad_metric_is_refused_naming_archive_file_and_field(tmp_path, field, bad, why):
    """result.json lines are JSON: a metric may be any JSON value (fuzz findings
    import_modelzoos-6b78ae0eda: a list raised TypeError from float(); -c551bb4508 and
    -ff7afc9b0e: an accuracy above 1 was refused without naming the archive)."""
    good, archive = tmp_path / "good.zip", tmp_path / "bad.zip"
    write_modelzoos(good, nets=3)
    target = f"{modelzoos_dir(1)}/result.json"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(archive, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == target:
                rows = [json.loads(line) for line in data.decode().splitlines()]
                rows[-1][field] = bad
                data = ("\n".join(json.dumps(r) for r in rows) + "\n").encode()
            dst.writestr(info, data)
    with pytest.raises(ZooError, match=r"bad\.zip:.*" + modelzoos_dir(1) + rf"/result\.json epoch 2: {field} = .* {why}"):
        run_import("modelzoos", archive, tmp_path / "z")
    assert not (tmp_path / "z").exists()


@pytest.mark.exactness
@pytest.mark.parametrize("epochs", ["0", "1,2", "0,1,2"])
def test_every_epoch_is_selectable(tmp_path, epochs):
    saved = write_modelzoos(tmp_path / "z.zip", nets=2)
    m = run_import("modelzoos", tmp_path / "z.zip", tmp_path / "zoo", options={"epochs": epochs})
    chosen = [int(e) for e in epochs.split(",")]
    z = zoo.open(tmp_path / "zoo")
    assert m["source"]["epochs"] == chosen and z.checkpoints == [f"epoch_{e}" for e in chosen[:-1]] + ["final"]
    for ck, e in zip(z.checkpoints, chosen):
        np.testing.assert_array_equal(z.layer_weights(1, ck)["module_list.0.weight"].numpy(),
                                      saved[1][e]["module_list.0.weight"].numpy())
    with pytest.raises(ZooError, match=r"epochs = '7': no net has a checkpoint for epoch 7 \(available: 0, 1, 2\)"):
        run_import("modelzoos", tmp_path / "z.zip", tmp_path / "zoo2", options={"epochs": "7"})
