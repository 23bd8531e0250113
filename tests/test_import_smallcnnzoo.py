"""smallcnnzoo importer: TensorFlow-order rows become PyTorch-order runs with all checkpoints."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.errors import ZooError
from zoo.importers import run_import
from zoo.store import verify

from hub_fixtures import SMALL_TF, tar_folder, tf_conv_same, write_smallcnnzoo


def _offsets():
    out, pos = {}, 0
    for name, shape in SMALL_TF:
        out[name] = (pos, shape)
        pos += int(np.prod(shape))
    return out


def test_a_tf_kernel_becomes_the_pytorch_kernel_computing_the_same_convolution(tmp_path):
    up = write_smallcnnzoo(tmp_path / "up", runs=3)
    run_import("smallcnnzoo", tar_folder(tmp_path / "up", tmp_path / "cifar10.tar.xz"), tmp_path / "zoo")
    z = zoo.open(tmp_path / "zoo")
    start, shape = _offsets()["sequential/conv2d_1/kernel:0"]
    row = up["order"].index((1, 8))  # run 1, last checkpoint
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


def test_the_checkpoints_of_each_run_stay_together_in_step_order(tmp_path):
    up = write_smallcnnzoo(tmp_path / "up", runs=4)
    m = run_import("smallcnnzoo", tar_folder(tmp_path / "up", tmp_path / "mnist.tar.xz"), tmp_path / "zoo")
    assert verify(tmp_path / "zoo") == []
    z = zoo.open(tmp_path / "zoo")
    assert len(z) == 4 and z.layout.num_params == sum(int(np.prod(s)) for _, s in SMALL_TF)
    assert z.checkpoints == [f"ckpt_{j}" for j in range(8)] + ["final"]
    assert m["data"] == {"name": "mnist"} and m["net"] is None
    t = z.table.set_index("run")
    for r in range(4):
        row = t.loc[f"/zoo/run_{r:04d}"]
        assert row["learning_rate"] == pytest.approx(10.0 ** -(1 + r))
        assert row["test_acc"] == pytest.approx(0.1 + 0.07 * 8 + 0.01 * r)
        assert row["test_acc@ckpt_0"] == pytest.approx(0.1 + 0.01 * r)
        assert row["step"] == 860 * (r + 1) and row["step@ckpt_3"] == 30 * (r + 1)
        assert {"train_acc", "train_loss", "test_loss", "diverged", "optimizer", "l2reg"} <= set(row.index)
    # weights of run 2 at its first checkpoint: same numbers, reordered to PyTorch layout
    rid = int(z.table.index[z.table["run"] == "/zoo/run_0002"][0])
    src = up["weights"][up["order"].index((2, 0))]
    bias_start, _ = _offsets()["sequential/dense/bias:0"]
    np.testing.assert_array_equal(z.layer_weights(rid, "ckpt_0")["dense.bias"].numpy(), src[bias_start:])


def test_a_run_with_non_finite_weights_is_kept_and_marked_diverged(tmp_path):
    write_smallcnnzoo(tmp_path / "up", runs=3, diverged_run=1, gz=False)
    run_import("smallcnnzoo", tmp_path / "up", tmp_path / "zoo")
    assert verify(tmp_path / "zoo") == []
    t = zoo.open(tmp_path / "zoo").table.set_index("run")
    assert t.loc["/zoo/run_0001", "diverged"] and not t.loc["/zoo/run_0000", "diverged"]


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
