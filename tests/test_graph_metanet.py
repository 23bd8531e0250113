"""The graph metanet's parameter graphs: every weight on exactly one edge, biases and norm
parameters on nodes, residual connections as flagged edges; batching and caching."""
import numpy as np
import torch

from metanets import data, registry, train
from metanets.data import InputInfo
from metanets.models.graph import EDGE_FLAGS, build_graph, graph_for
from zoo.generate.synthetic import make_zoo
from zoo.layout import Layout
from zoo.nets import NetConfig, WAsym, build_net


def _layout(cfg):
    return Layout.from_module(build_net(cfg, 0))


def _check_bijection(lay, g):
    """Every conv/linear entry in exactly one edge slot; every bias/norm entry on exactly one node."""
    P = lay.num_params
    weights = np.concatenate([np.arange(t.offset, t.stop) for t in lay.tensors if t.role.endswith("_weight")
                              and not t.role.startswith("norm")])
    others = np.concatenate([np.arange(t.offset, t.stop) for t in lay.tensors if t.role in ("bias", "norm_weight",
                                                                                          "norm_bias")] or [[]])
    on_edges = g.edge_param[g.edge_param < P].numpy()
    on_nodes = g.node_param[g.node_param < P].numpy()
    assert np.array_equal(np.sort(on_edges), weights)
    assert np.array_equal(np.sort(on_nodes), np.sort(others).astype(np.int64))


def test_smallcnn_graph_is_its_channels_and_kernels():
    lay = _layout(NetConfig(arch="smallcnn", in_channels=1, num_classes=10, padding="same"))
    g = build_graph(lay)
    assert g.num_nodes == 1 + 16 * 3 + 10
    assert g.num_edges == 16 + 16 * 16 * 2 + 16 * 10
    assert g.edge_param.shape[1] == 9  # a 3x3 kernel per edge; dense edges padded from 1
    assert int(g.edge_static[:, 2].sum()) == 0  # no residual edges
    _check_bijection(lay, g)


def test_resnet8_graph_has_residual_edges_and_norms_on_nodes():
    cfg = NetConfig(width=0.5, in_channels=1, num_classes=10)
    lay = _layout(cfg)
    g = build_graph(lay)
    _check_bijection(lay, g)
    # one identity edge per channel of each block's output: 8 + 16 + 32
    assert int(g.edge_static[:, 2].sum()) == 8 + 16 + 32
    res = g.edge_param[g.edge_static[:, 2] == 1]
    assert bool((res == lay.num_params).all())  # residual edges carry no weights
    # nodes: input 1; stem 8; per block conv1, conv2 (+ shortcut) outputs; fc 10
    assert g.num_nodes == 1 + 8 + (8 + 8) + (16 + 16 + 16) + (32 + 32 + 32) + 10


def test_wasym_fixed_entries_are_flagged_on_their_edges():
    cfg = NetConfig(width=0.5, in_channels=1, num_classes=10, wasym=WAsym(n_fix=2, n_fix_linear=2))
    lay = _layout(cfg)
    assert lay.fixed_mask is not None
    g = build_graph(lay)
    flags = g.edge_static[:, EDGE_FLAGS:]
    assert int(flags.sum()) == lay.num_fixed
    idx = g.edge_param[flags.bool()]
    assert bool(torch.from_numpy(lay.fixed_mask)[idx].all())


def test_graph_is_cached_per_layout_and_refuses_what_it_cannot_read():
    lay = _layout(NetConfig(width=0.25, in_channels=1, num_classes=10))
    assert graph_for(lay) is graph_for(Layout.from_dict(lay.to_dict()))
    odd = Layout.from_shapes([("a.weight", (4, 3), "linear_weight"), ("b.weight", (2, 5), "linear_weight")])
    info = InputInfo(odd, "all", odd)
    assert "takes 5 inputs but 'a.weight' gives 4" in registry.unsupported("graph", info)


def test_a_batch_is_one_graph_and_gives_each_nets_own_prediction(tmp_path):
    ws = data.load(make_zoo(tmp_path / "z", models=12, wasym=True))
    x = ws.features("train", "full")
    assert x.shape[1] == ws.info.full_layout.num_params > ws.info.num_inputs  # fixed entries put back
    fixed = torch.from_numpy(ws.info.full_layout.fixed_mask)
    torch.testing.assert_close(x[:, fixed], torch.from_numpy(ws.info.fixed_values)[fixed].expand(len(x), -1))
    model = train.build("graph", ws.info, seed=0).eval()
    with torch.no_grad():
        together = model(x[:4])
        alone = torch.cat([model(x[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert together.std() > 0


def test_sigma_asym_nets_get_the_standard_graph():
    std = build_graph(_layout(NetConfig(width=0.5, in_channels=1, num_classes=10)))
    sig = build_graph(_layout(NetConfig(width=0.5, in_channels=1, num_classes=10, activation="figlu")))
    assert torch.equal(std.edge_index, sig.edge_index) and torch.equal(std.edge_param, sig.edge_param)


def test_graph_trains_on_resnet_zoos(tmp_path):
    ws = data.load(make_zoo(tmp_path / "z", models=12))
    res = train.fit("graph", ws, lr=1e-3, epochs=2, batch_size=4)
    assert np.isfinite(res.predictions["test"]).all() and len(res.val_r2_history) == 2
