"""NFN-NP / NFN-HNP: what they read, what they refuse, and the benchmark's n/a."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metanets import bench, registry, report, train
from metanets.data import InputInfo
from metanets.errors import MetanetError
from zoo.generate.synthetic import make_zoo
from zoo.layout import Layout
from zoo.nets import NetConfig, build_net

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.hub_fixtures import http_server, tar_folder, write_smallcnnzoo  # noqa: E402


def _info(module):
    lay = Layout.from_module(module)
    return InputInfo(lay, "all", lay)


def test_nfn_variants_are_listed():
    assert {"nfn-np", "nfn-hnp", "graph"} <= set(registry.names())


def test_plain_mlp_is_read_and_its_hidden_permutation_ignored():
    mlp = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4), torch.nn.ReLU(),
                              torch.nn.Linear(4, 3))
    info = _info(mlp)
    lay = info.layout
    vec = torch.from_numpy(lay.flatten(dict(mlp.named_parameters())))
    p = torch.tensor([4, 0, 3, 1, 2])
    t = lay.unflatten(vec.clone())
    t = {k: v.clone() for k, v in t.items()}
    t["0.weight"], t["0.bias"], t["2.weight"] = t["0.weight"][p], t["0.bias"][p], t["2.weight"][:, p]
    perm = torch.from_numpy(lay.flatten(t))
    for name in ("nfn-np", "nfn-hnp"):
        model = train.build(name, info, seed=1).eval()
        out = model(torch.stack([vec, perm]))
        torch.testing.assert_close(out[0], out[1], atol=1e-5, rtol=0)
        # permuting an *input* unit is a symmetry for NP only: HNP keeps the input axis
        q = torch.tensor([1, 0, 2, 3, 4, 5])
        t2 = {k: v.clone() for k, v in lay.unflatten(vec).items()}
        t2["0.weight"] = t2["0.weight"][:, q]
        out2 = model(torch.stack([vec, torch.from_numpy(lay.flatten(t2))]))
        if name == "nfn-np":
            torch.testing.assert_close(out2[0], out2[1], atol=1e-5, rtol=0)
        else:
            assert (out2[0] - out2[1]).abs() > 1e-6


@pytest.mark.parametrize("module,why", [
    (build_net(NetConfig(width=0.25, in_channels=1, num_classes=10), 0), "residual connections"),
    (torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 10)),
     "normalisation layers"),
])
def test_nets_nfn_does_not_cover_are_refused_with_the_reason(module, why):
    info = _info(module)
    for name in ("nfn-np", "nfn-hnp"):
        reason = registry.unsupported(name, info)
        assert reason.startswith(f"{name} needs a plain CNN/MLP") and why in reason
        with pytest.raises(MetanetError, match=why):
            train.build(name, info)


def test_benchmark_shows_nfn_as_na_on_resnets_and_runs_the_rest(tmp_path):
    path = make_zoo(tmp_path / "res", models=12)
    cfg = bench.BenchConfig(metanets=("mlp", "nfn-np", "graph"), seeds=1, epochs=1, lr=1e-3, batch_size=4)
    result = bench.run([path], cfg, progress=False, log=lambda s: None)
    assert [(k["metanet"], "residual connections" in k["reason"]) for k in result["skipped"]] == [("nfn-np", True)]
    assert {r["metanet"] for r in result["runs"]} == {"mlp", "graph"}
    md = report.markdown(result)
    row = next(line for line in md.splitlines() if line.startswith("| nfn-np |"))
    assert row.count("n/a") == 2 and "n/a: nfn-np on" in md and "residual connections" in md


def test_reproduce_nfn_on_a_local_small_cnn_zoo(tmp_path, capsys):
    from scripts.reproduce_nfn import main

    write_smallcnnzoo(tmp_path / "scz", runs=12)
    serve = tmp_path / "www"
    serve.mkdir()
    tar_folder(tmp_path / "scz", serve / "cifar10.tar.xz", arc_root="cifar10")
    with http_server(serve) as base:
        rc = main(["--base-url", base, "--out", str(tmp_path / "out"), "--device", "cpu", "--epochs", "1",
                   "--seeds", "1", "--lr", "1e-3", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    for m, published in (("statnn", "0.915 ± 0.002"), ("nfn-np", "0.922 ± 0.001"), ("nfn-hnp", "0.934 ± 0.001")):
        line = next(line for line in out.splitlines() if line.startswith(f"| {m} |") and "published" not in line
                    and published in line)
        assert "n/a" not in line
    # the preset's ranges checked against the runs' hyper-parameters (fixture rates reach 0.1 > 5e-2)
    assert "preset smallcnnzoo-cifar10 against the downloaded runs' hyper-parameters: the preset differs" in out
    assert next(line for line in out.splitlines() if line.startswith("lr ")).rstrip().endswith("OUTSIDE")
    assert (tmp_path / "out" / "bench" / "results.json").is_file()
    assert np.isfinite([r["test_tau"] for r in __import__("json").loads(
        (tmp_path / "out" / "bench" / "results.json").read_text())["runs"]]).any()


def test_reproduce_nfn_reports_an_unreachable_mirror(tmp_path, capsys):
    from scripts.reproduce_nfn import main

    with http_server(tmp_path) as base:  # serves nothing
        rc = main(["--base-url", base, "--out", str(tmp_path / "out"), "--device", "cpu", "--no-progress"])
    assert rc == 2 and "reproduce_nfn: error:" in capsys.readouterr().err


def test_a_synthetic_smallcnn_zoo_has_the_small_cnn_zoo_layout_for_speed_benchmarks(tmp_path):
    import zoo
    from zoo.generate.synthetic import make_zoo

    z = zoo.open(make_zoo(tmp_path / "syn", models=12, arch="smallcnn", shard_size=6))
    assert len(z) == 12 and z.layout.num_params == 4970 and z.net_config.arch == "smallcnn"
    w = z.weights()
    assert np.isfinite(w).all() and len({tuple(np.round(r[:8], 6)) for r in w}) == 12  # 12 different nets
    with pytest.raises(ValueError, match="allowed: resnet, smallcnn"):
        make_zoo(tmp_path / "bad", models=2, arch="vgg")
