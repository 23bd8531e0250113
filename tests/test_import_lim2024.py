"""lim2024 importer: the paper's per-net .pt files become a verified, rebuildable zoo."""
import zipfile

import numpy as np
import pytest
import torch
from hub_fixtures import (
    lim_masks,
    lim_state_dict,
    upstream_forward,
    upstream_module,
    write_lim_record,
    write_lim_zoo,
)

import zoo
from zoo.errors import ZooError
from zoo.hub.importers import run_import
from zoo.store import verify

ALL = {"resnet8": 3, "sparse_resnet8": 3, "smaller_resnet8": 2, "sigma_asym_resnet8": 3}
PARAMS = {"resnet8": (78042, 78042), "sparse_resnet8": (78042, 60634), "smaller_resnet8": (59944, 59944),
          "sigma_asym_resnet8": (78042, 78042)}


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    root = tmp_path_factory.mktemp("lim") / "record"
    return root, write_lim_record(root, ALL, nan_ids=(1,))


@pytest.mark.parametrize("kind", sorted(ALL))
def test_each_model_type_imports_as_shipped_and_rebuild_computes_what_the_upstream_module_computes(
        record, tmp_path, kind):
    root, up = record
    stored = torch.load(root / kind / "0.pt", weights_only=True)[0]["layer2.0.conv1.weight"]
    assert stored.is_contiguous(memory_format=torch.channels_last) and not stored.is_contiguous()  # as upstream saves
    m = run_import("lim2024", root, tmp_path / "zoo", options={"model_type": kind})
    assert verify(tmp_path / "zoo") == []
    z = zoo.open(tmp_path / "zoo")
    assert (z.layout.num_params, z.layout.num_trainable) == PARAMS[kind]
    assert m["source"]["model_type"] == kind and m["name"] == f"lim2024-{kind.replace('_', '-')}"
    assert m["source"]["dropped"] == [f"{kind}/1.pt"]  # net 1 has a NaN weight, as upstream's loader drops
    kept = [i for i in range(ALL[kind]) if i != 1]
    assert list(z.table["source_file"]) == [f"{kind}/{i}.pt" for i in kept]
    np.testing.assert_allclose(z.table["test_acc"], [up["accs"][kind][i] / 100 for i in kept])
    # hparams.csv joined: row i+1 <-> i.pt
    np.testing.assert_allclose(z.table["lr"], [1e-3 * (i + 1) for i in kept])
    assert list(z.table["epochs"]) == [20 + i for i in kept]
    assert z.hparam_columns == ["lr", "weight_decay", "label_smoothing", "epochs"], "what the hparams control reads"
    np.testing.assert_allclose(z.table["label_smoothing"], [0.1 * (i % 3) for i in kept])
    x = torch.randn(3, 3, 32, 32)
    for mid, i in enumerate(kept):
        want = upstream_module(kind, up["state_dicts"][kind][i])(x)
        torch.testing.assert_close(z.rebuild(mid)(x), want, rtol=1e-4, atol=1e-5)


def test_sigma_asym_nets_keep_their_own_f_matrices(record, tmp_path):
    root, up = record
    run_import("lim2024", root, tmp_path / "zoo", options={"model_type": "sigma_asym_resnet8"})
    z = zoo.open(tmp_path / "zoo")
    sds = [up["state_dicts"]["sigma_asym_resnet8"][i] for i in (0, 2)]
    assert not torch.equal(sds[0]["nonlin.F_mat"], sds[1]["nonlin.F_mat"])  # upstream: salted hash() per run
    for mid, sd in enumerate(sds):
        net = z.rebuild(mid)
        torch.testing.assert_close(net.act1.mix, sd["nonlin.F_mat"], rtol=0, atol=0)
        torch.testing.assert_close(net.layer3[0].act2.mix, sd["layer3.0.nonlin2.F_mat"], rtol=0, atol=0)


def test_a_record_with_several_types_names_them_and_the_option(record, tmp_path):
    root, _ = record
    with pytest.raises(ZooError, match=r"several model types: resnet8 \(3 files\), sigma_asym_resnet8 \(3 files\), "
                                       r"smaller_resnet8 \(2 files\), sparse_resnet8 \(3 files\).*-o model_type="):
        run_import("lim2024", root, tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()
    with pytest.raises(ZooError, match="model_type = 'wasym'; allowed: resnet8, sparse_resnet8"):
        run_import("lim2024", root, tmp_path / "zoo", options={"model_type": "wasym"})


def test_other_types_files_are_skipped_before_they_are_parsed(tmp_path):
    root = tmp_path / "rec"
    write_lim_record(root, {"resnet8": 2, "sparse_resnet8": 2}, mask_files=False)
    (root / "smaller_resnet8").mkdir()
    (root / "smaller_resnet8" / "0.pt").write_bytes(b"not a torch file at all")
    torch.save((_Payload(), 1.0), root / "sparse_resnet8" / "5.pt")
    m = run_import("lim2024", root, tmp_path / "zoo", options={"model_type": "resnet8"})
    assert m["num_models"] == 2 and not _Payload.ran


@pytest.mark.exactness
def test_upstream_mask_files_are_read_and_must_agree_with_the_nets_buffers(tmp_path):
    root = tmp_path / "rec"
    up = write_lim_record(root, {"sparse_resnet8": 2})
    m = run_import("lim2024", root, tmp_path / "ok", options={"model_type": "sparse_resnet8"})
    assert m["net"]["wasym"] == {"n_fix": 8, "n_fix_linear": 8, "kappa": 2.0, "mode": "filters"}
    z = zoo.open(tmp_path / "ok")
    mask, normal = up["masks"]["block2_conv1"]
    w = z.layer_weights(0)["layer2.0.conv1.weight"]
    np.testing.assert_array_equal(w.numpy()[mask.numpy() == 0], 2.0 * normal.numpy()[mask.numpy() == 0])
    mask2 = mask.clone()
    mask2[0, 0] = 1 - mask2[0, 0]
    torch.save((mask2, normal), root / "masks" / "sparse_resnet8_block2_conv1.pt")
    with pytest.raises(ZooError, match=r"0.pt: its mask buffers disagree with upstream's mask files"):
        run_import("lim2024", root, tmp_path / "bad", options={"model_type": "sparse_resnet8"})
    assert not (tmp_path / "bad").exists()


def test_a_standard_import_never_reads_the_mask_files(tmp_path):
    root = tmp_path / "rec"
    write_lim_record(root, {"resnet8": 2})
    (root / "masks" / "sparse_resnet8_conv_f.pt").write_bytes(b"damaged")
    assert run_import("lim2024", root, tmp_path / "zoo", options={"model_type": "resnet8"})["num_models"] == 2


@pytest.mark.exactness
def test_the_zipped_record_is_read_in_place_and_gives_the_same_zoo(tmp_path):
    root = tmp_path / "rec"
    write_lim_record(root, {"resnet8": 2, "sparse_resnet8": 3})
    zpath = tmp_path / "13883507.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                zf.write(p, f"cifar10_nets/{p.relative_to(root)}")
    run_import("lim2024", zpath, tmp_path / "from-zip", options={"model_type": "sparse_resnet8"})
    run_import("lim2024", root, tmp_path / "from-folder", options={"model_type": "sparse_resnet8"})
    a, b = zoo.open(tmp_path / "from-zip"), zoo.open(tmp_path / "from-folder")
    assert np.array_equal(a.weights(), b.weights()) and a.table.drop(columns="source_file").equals(
        b.table.drop(columns="source_file"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["13883507.zip", "from-folder", "from-zip", "rec"]


def test_a_net_without_a_row_in_hparams_csv_is_refused(tmp_path):
    root = tmp_path / "rec"
    write_lim_record(root, {"resnet8": 2})
    (root / "hparams.csv").write_text("lr,weight_decay,label_smoothing,epochs\n0.1,0.0,0.0,20\n")
    with pytest.raises(ZooError, match=r"1.pt: no row for net 1 in .*hparams.csv \(1 rows"):
        run_import("lim2024", root, tmp_path / "zoo")


class _Payload:
    ran = False

    def __reduce__(self):  # would run code if unpickled; weights_only refuses it
        return (_ran, ())


def _ran():
    _Payload.ran = True


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


@pytest.mark.exactness
def test_wasym_nets_store_effective_weights_whose_fixed_entries_equal_the_fixed_values(tmp_path):
    write_lim_zoo(tmp_path / "up", 2, wasym=True)
    m = run_import("lim2024", tmp_path / "up", tmp_path / "zoo")
    assert verify(tmp_path / "zoo") == []
    z = zoo.open(tmp_path / "zoo")
    assert m["net"]["wasym"] == {"n_fix": 8, "n_fix_linear": 8, "kappa": 2.0, "mode": "filters"}
    assert m["source"]["model_type"] == "sparse_resnet8"  # told by the mask buffers: no type folder here
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


def test_a_tensor_of_the_wrong_shape_is_refused_naming_file_and_tensor(tmp_path):
    (tmp_path / "up").mkdir()
    sd = lim_state_dict(0)
    sd["layer2.0.conv1.weight"] = torch.zeros(32, 16, 5, 5)
    torch.save((sd, 50.0), tmp_path / "up" / "net_0.pt")
    with pytest.raises(ZooError, match=r"net_0.pt.*layer2\.0\.conv1\.weight.*\(32, 16, 5, 5\).*\(32, 16, 3, 3\)"):
        run_import("lim2024", tmp_path / "up", tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["up"]


def test_a_scalar_stem_weight_is_refused_naming_the_tensor(tmp_path):
    """A 0-d `conv1.weight` (fuzz finding import_lim2024-07540d77e1: it broke the model-type
    guess with an IndexError) is a tensor of the wrong shape like any other."""
    (tmp_path / "up").mkdir()
    sd = lim_state_dict(0)
    sd["conv1.weight"] = torch.tensor(0.5)
    torch.save((sd, 50.0), tmp_path / "up" / "net_0.pt")
    with pytest.raises(ZooError, match=r"net_0.pt.*conv1\.weight"):
        run_import("lim2024", tmp_path / "up", tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()


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


def test_a_record_zip_holding_per_type_zips_is_read_without_unpacking(tmp_path):
    root = tmp_path / "rec"
    write_lim_record(root, {"resnet8": 2, "smaller_resnet8": 2}, mask_files=False)
    inner = {}
    for kind in ("resnet8", "smaller_resnet8"):
        inner[kind] = tmp_path / f"{kind}.zip"
        with zipfile.ZipFile(inner[kind], "w") as zf:
            for p in sorted((root / kind).iterdir()):
                zf.write(p, p.name)  # no folder inside: the zip's own name tells the type
    with zipfile.ZipFile(tmp_path / "files-archive.zip", "w") as zf:
        for kind, p in inner.items():
            zf.write(p, p.name)
        zf.write(root / "hparams.csv", "hparams.csv")
    m = run_import("lim2024", tmp_path / "files-archive.zip", tmp_path / "zoo",
                   options={"model_type": "smaller_resnet8"})
    assert m["num_models"] == 2 and m["source"]["hparams"].endswith("hparams.csv")
    assert list(zoo.open(tmp_path / "zoo").table["source_file"]) == ["smaller_resnet8/0.pt", "smaller_resnet8/1.pt"]
    assert not (tmp_path / ".imp.zoo.source").exists()
