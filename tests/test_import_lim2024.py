"""lim2024 importer: the paper's per-net .pt files become a verified, rebuildable zoo."""
import numpy as np
import pytest
import torch

import zoo
from zoo.errors import ZooError
from zoo.importers import run_import
from zoo.store import verify

from hub_fixtures import lim_masks, lim_state_dict, upstream_forward, write_lim_zoo


def test_standard_nets_import_with_accuracy_as_fraction_and_rebuild_computes_the_same(tmp_path):
    accs = write_lim_zoo(tmp_path / "up", 3, wasym=False)
    run_import("lim2024", tmp_path / "up", tmp_path / "zoo")
    assert verify(tmp_path / "zoo") == []
    z = zoo.open(tmp_path / "zoo")
    assert len(z) == 3 and z.layout.num_params == 78042 and z.fixed_values is None
    assert z.checkpoints == ["final"]
    np.testing.assert_allclose(z.table["test_acc"], np.array(accs) / 100)
    assert not z.table["diverged"].any()
    x = torch.randn(2, 3, 32, 32)
    for i in range(3):
        sd = torch.load(tmp_path / "up" / f"net_{i}.pt", weights_only=True)[0]
        torch.testing.assert_close(z.rebuild(i)(x), upstream_forward(sd, x), rtol=1e-4, atol=1e-5)


def test_wasym_nets_store_effective_weights_whose_fixed_entries_equal_the_fixed_values(tmp_path):
    write_lim_zoo(tmp_path / "up", 2, wasym=True)
    m = run_import("lim2024", tmp_path / "up", tmp_path / "zoo")
    assert verify(tmp_path / "zoo") == []
    z = zoo.open(tmp_path / "zoo")
    assert m["net"]["wasym"] == {"n_fix": 8, "n_fix_linear": 8, "kappa": 2.0, "mode": "filters"}
    assert z.layout.num_trainable == 60634  # the paper's count for the W-Asym ResNet8
    fixed = z.layout.fixed_mask
    w = z.weights()
    assert np.array_equal(w[:, fixed], np.broadcast_to(z.fixed_values[fixed], w[:, fixed].shape))
    masks = lim_masks()
    stem_mask, stem_normal = masks["conv1"]
    np.testing.assert_array_equal(z.layer_weights(0)["conv1.weight"].numpy(), 2.0 * stem_normal.numpy())
    assert (stem_mask == 0).all()  # the 3-channel stem is fully fixed
    x = torch.randn(2, 3, 32, 32)
    sd = torch.load(tmp_path / "up" / "net_1.pt", weights_only=True)[0]
    torch.testing.assert_close(z.rebuild(1)(x), upstream_forward(sd, x), rtol=1e-4, atol=1e-5)


def test_nets_with_nan_weights_are_dropped_as_in_the_paper(tmp_path):
    write_lim_zoo(tmp_path / "up", 4, wasym=False, nan_ids=(2,))
    m = run_import("lim2024", tmp_path / "up", tmp_path / "zoo")
    z = zoo.open(tmp_path / "zoo")
    assert len(z) == 3 and "net_2.pt" not in set(z.table["source_file"])
    assert m["source"]["dropped"] == ["net_2.pt"]
    assert np.isfinite(z.weights()).all()


def test_variant_selects_one_zoo_from_a_folder_holding_both(tmp_path):
    write_lim_zoo(tmp_path / "up" / "resnet", 2, wasym=False)
    write_lim_zoo(tmp_path / "up" / "wasym", 3, wasym=True, start_seed=10)
    with pytest.raises(ZooError, match="variant=standard or variant=wasym"):
        run_import("lim2024", tmp_path / "up", tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()
    run_import("lim2024", tmp_path / "up", tmp_path / "std", options={"variant": "standard"})
    run_import("lim2024", tmp_path / "up", tmp_path / "asym", options={"variant": "wasym"})
    assert len(zoo.open(tmp_path / "std")) == 2 and len(zoo.open(tmp_path / "asym")) == 3


def test_a_tensor_of_the_wrong_shape_is_refused_naming_file_and_tensor(tmp_path):
    (tmp_path / "up").mkdir()
    sd = lim_state_dict(0)
    sd["layer2.0.conv1.weight"] = torch.zeros(32, 16, 5, 5)
    torch.save((sd, 50.0), tmp_path / "up" / "net_0.pt")
    with pytest.raises(ZooError, match=r"net_0.pt.*layer2\.0\.conv1\.weight.*\(32, 16, 5, 5\).*\(32, 16, 3, 3\)"):
        run_import("lim2024", tmp_path / "up", tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["up"]


def test_an_accuracy_outside_0_100_is_refused(tmp_path):
    (tmp_path / "up").mkdir()
    torch.save((lim_state_dict(0), 140.0), tmp_path / "up" / "net_0.pt")
    with pytest.raises(ZooError, match=r"net_0.pt.*140.0.*\[0, 100\]"):
        run_import("lim2024", tmp_path / "up", tmp_path / "zoo")


def test_masks_that_differ_between_nets_are_refused(tmp_path):
    (tmp_path / "up").mkdir()
    torch.save((lim_state_dict(0, lim_masks(0)), 50.0), tmp_path / "up" / "net_0.pt")
    torch.save((lim_state_dict(1, lim_masks(1)), 50.0), tmp_path / "up" / "net_1.pt")
    with pytest.raises(ZooError, match="masks differ"):
        run_import("lim2024", tmp_path / "up", tmp_path / "zoo")
