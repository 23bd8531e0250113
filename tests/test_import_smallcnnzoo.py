"""smallcnnzoo importer: TensorFlow-order rows become PyTorch-order runs with all checkpoints."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hub_fixtures import (
    SMALL_EPOCHS,
    SMALL_TF,
    SMALL_TF_CNN,
    keras_cnn_forward,
    tar_folder,
    tf_conv_same,
    write_smallcnnzoo,
)

import zoo
from zoo.errors import ZooError
from zoo.hub.importers import run_import
from zoo.store import metric_column, verify


def _offsets():
    out, pos = {}, 0
    for name, shape in SMALL_TF:
        out[name] = (pos, shape)
        pos += int(np.prod(shape))
    return out


@pytest.mark.exactness
def test_a_tf_kernel_becomes_the_pytorch_kernel_computing_the_same_convolution(tmp_path):
    up = write_smallcnnzoo(tmp_path / "up", runs=3)
    run_import("smallcnnzoo", tar_folder(tmp_path / "up", tmp_path / "cifar10.tar.xz"), tmp_path / "zoo")
    z = zoo.open(tmp_path / "zoo")
    start, shape = _offsets()["sequential/conv2d_1/kernel:0"]
    row = up["order"].index((1, 86))  # run 1, last checkpoint
    tf_kernel = up["weights"][row, start:start + int(np.prod(shape))].reshape(shape)
    torch_kernel = z.layer_weights(1)["conv2d_1.weight"]
    assert tuple(torch_kernel.shape) == (4, 4, 3, 3)
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 4))  # NHWC, as TensorFlow runs it
    want = tf_conv_same(x, tf_kernel.astype(np.float64))
    got = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), torch_kernel.double(), padding=1).permute(0, 2, 3, 1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)
    dense = z.layer_weights(1)["dense.weight"]
    d_start, d_shape = _offsets()["sequential/dense/kernel:0"]
    np.testing.assert_array_equal(dense.numpy().T, up["weights"][row, d_start:d_start + 40].reshape(d_shape))


def test_the_last_epoch_by_default_and_config_columns_in_the_table(tmp_path):
    write_smallcnnzoo(tmp_path / "up", runs=4)
    m = run_import("smallcnnzoo", tar_folder(tmp_path / "up", tmp_path / "mnist.tar.xz"), tmp_path / "zoo")
    assert verify(tmp_path / "zoo") == []
    z = zoo.open(tmp_path / "zoo")
    assert len(z) == 4 and z.layout.num_params == sum(int(np.prod(s)) for _, s in SMALL_TF)
    assert z.checkpoints == ["final"] and m["source"]["epochs"] == [86]
    assert m["data"] == {"name": "mnist"} and m["net"] is None
    t = z.table.set_index("run")
    for r in range(4):
        row = t.loc[f"/cns/zoo/cifar10/run_{r:04d}"]
        assert row["learning_rate"] == pytest.approx(10.0 ** -(1 + r))
        assert row["epoch"] == 86 and row["test_acc"] == pytest.approx(0.1 + 0.007 * 86 + 0.01 * r)
        assert {"w_init", "activation", "init_std", "l2reg", "train_fraction", "dropout"} <= set(row.index)
        assert {"train_acc", "train_loss", "test_loss", "diverged"} <= set(row.index)
    # what the hparams control reads: the config.* columns, never a metric or the run name
    assert {"w_init", "activation", "init_std", "l2reg", "train_fraction", "dropout", "learning_rate"} <= \
        set(z.hparam_columns) and not {"run", "epoch", "test_acc", "diverged"} & set(z.hparam_columns)


@pytest.mark.exactness
@pytest.mark.parametrize("epochs", ["all", "0,20,86", "3"])
def test_every_checkpoint_epoch_is_selectable_and_holds_that_epochs_weights(tmp_path, epochs):
    up = write_smallcnnzoo(tmp_path / "up", runs=3)
    m = run_import("smallcnnzoo", tmp_path / "up", tmp_path / "zoo", options={"epochs": epochs})
    chosen = list(SMALL_EPOCHS) if epochs == "all" else [int(e) for e in epochs.split(",")]
    z = zoo.open(tmp_path / "zoo")
    assert m["source"]["epochs"] == chosen
    assert z.checkpoints == [f"epoch_{e}" for e in chosen[:-1]] + ["final"]
    bias_start, _ = _offsets()["sequential/dense/bias:0"]
    for ck, e in zip(z.checkpoints, chosen):
        for mid in range(3):
            r = int(z.table["run"][mid].rsplit("_", 1)[1])
            src = up["weights"][up["order"].index((r, e))]
            np.testing.assert_array_equal(z.layer_weights(mid, ck)["dense.bias"].numpy(), src[bias_start:])
            assert z.table[metric_column("epoch", ck)][mid] == e


def test_an_epoch_that_is_no_checkpoint_is_refused_naming_the_available_ones(tmp_path):
    write_smallcnnzoo(tmp_path / "up", runs=2)
    with pytest.raises(ZooError, match=r"epochs = '5'.*epoch 5 is not a checkpoint.*0, 1, 2, 3, 20, 40, 60, 80, 86"):
        run_import("smallcnnzoo", tmp_path / "up", tmp_path / "zoo", options={"epochs": "5"})


def test_a_run_cut_short_by_nan_is_dropped_and_listed(tmp_path):
    write_smallcnnzoo(tmp_path / "up", runs=4, shortened_run=2)
    m = run_import("smallcnnzoo", tmp_path / "up", tmp_path / "zoo", options={"epochs": "0,20"})
    z = zoo.open(tmp_path / "zoo")
    assert len(z) == 3 and "/cns/zoo/cifar10/run_0002" not in set(z.table["run"])
    assert len(m["source"]["dropped"]) == 1 and "run_0002 (stops after epoch 20: 5 of 9" in m["source"]["dropped"][0]


def test_a_run_with_non_finite_weights_is_kept_and_marked_diverged(tmp_path):
    write_smallcnnzoo(tmp_path / "up", runs=3, diverged_run=1, gz=False)
    run_import("smallcnnzoo", tmp_path / "up", tmp_path / "zoo")
    assert verify(tmp_path / "zoo") == []
    t = zoo.open(tmp_path / "zoo").table.set_index("run")
    assert t.loc["/cns/zoo/cifar10/run_0001", "diverged"] and not t.loc["/cns/zoo/cifar10/run_0000", "diverged"]


def test_weights_that_do_not_match_the_layout_are_refused_before_anything_is_written(tmp_path):
    write_smallcnnzoo(tmp_path / "up", runs=2)
    np.save(tmp_path / "up" / "weights.npy", np.zeros((18, 100), np.float32))
    with pytest.raises(ZooError, match=r"weights.npy.*\(18, 100\).*layout.csv describes 238"):
        run_import("smallcnnzoo", tmp_path / "up", tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["up"]


def test_a_layout_whose_shape_disagrees_with_its_span_is_refused(tmp_path):
    write_smallcnnzoo(tmp_path / "up", runs=2)
    text = (tmp_path / "up" / "layout.csv").read_text().replace('"(3, 3, 1, 4)"', '"(3, 3, 2, 4)"')
    (tmp_path / "up" / "layout.csv").write_text(text)
    with pytest.raises(ZooError, match=r"conv2d/kernel.*spans 36 entries but shape \(3, 3, 2, 4\) has 72"):
        run_import("smallcnnzoo", tmp_path / "up", tmp_path / "zoo")


@pytest.mark.parametrize("dataset,colour", [("mnist", 1), ("cifar10", 3)])
def test_upstreams_cnn_rebuilds_and_computes_what_keras_computed_at_every_checkpoint(tmp_path, dataset, colour):
    """An imported zoo of upstream's CNN rebuilds (smallcnn, 'valid' padding, per-run
    activation): at epoch 0 and at the end, each net computes the Keras CNN of its
    weights.npy row. CIFAR-10 and SVHN nets were trained on one grayscale channel: the rebuilt
    net takes colour images and averages their channels first."""
    up = write_smallcnnzoo(tmp_path / "up", runs=3, layout=SMALL_TF_CNN)
    run_import("smallcnnzoo", tmp_path / "up", tmp_path / "zoo", options={"epochs": "0,86", "dataset": dataset})
    z = zoo.open(tmp_path / "zoo")
    assert z.manifest["net"]["arch"] == "smallcnn" and z.manifest["net"]["padding"] == "valid"
    x = np.random.default_rng(1).normal(size=(5, 28, 28, colour))  # NHWC
    gray = x.mean(axis=3, keepdims=True)
    for mid in z.ids:
        mid = int(mid)
        run = int(z.table["run"][mid].rsplit("_", 1)[1])
        activation = z.table["activation"][mid]
        assert activation == ("relu" if run % 3 else "tanh")
        for ck, epoch in (("epoch_0", 0), ("final", 86)):
            want = keras_cnn_forward(up["weights"][up["order"].index((run, epoch))], gray, activation)
            net = z.rebuild(mid, ck)
            with torch.no_grad():
                got = net.double()(torch.from_numpy(x).permute(0, 3, 1, 2))
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)


def test_a_layout_that_is_not_upstreams_cnn_imports_but_says_it_cannot_be_rebuilt(tmp_path):
    write_smallcnnzoo(tmp_path / "up", runs=2)  # two convs: not upstream's CNN
    run_import("smallcnnzoo", tmp_path / "up", tmp_path / "zoo")
    z = zoo.open(tmp_path / "zoo")
    assert z.manifest.get("net") is None
    with pytest.raises(ZooError, match="stores no buildable architecture"):
        z.rebuild(0)
