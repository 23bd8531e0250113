"""Catalogue, download (from a local HTTP server on 127.0.0.1), pack, and refusing bad inputs."""
import hashlib
import json
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from zoo.catalogue import cards, card_from_dict, load_card
from zoo.download import download
from zoo.errors import ZooError
from zoo.importers import run_import
from zoo.pack import pack
from zoo.safety import load_tensors, safe_extract
from zoo.store import verify

from hub_fixtures import (dead_url, http_server, run_cli, tar_folder, write_lim_zoo, write_modelzoos,
                          write_smallcnnzoo)


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _card(name, fmt, url, sha="unknown", **options):
    return card_from_dict({"name": name, "description": "test", "format": fmt, "files": [{"url": url, "sha256": sha}],
                           "nets": [{"count": 1, "architecture": "x", "data": "y"}], "licence": "x",
                           "citation": "x", "import": options})


def _leftovers(root: Path) -> list[str]:
    """Files other than finished, verified downloads: partial files, temp folders, zoos."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and not p.name.endswith(".sha256"))


# ------------------------------------------------------------- catalogue

def test_the_catalogue_lists_the_public_zoos_with_what_is_needed_to_fetch_them():
    c = cards()
    assert {"lim2024-resnet8", "lim2024-wasym-resnet8", "smallcnnzoo-cifar10", "smallcnnzoo-mnist",
            "smallcnnzoo-fashion_mnist", "smallcnnzoo-svhn_cropped", "modelzoos-cifar10-cnn-large-seed"} <= set(c)
    assert c["lim2024-wasym-resnet8"].num_nets == 10000 and c["lim2024-wasym-resnet8"].options == {"variant": "wasym"}
    assert "13883507" in c["lim2024-resnet8"].files[0].url
    for card in c.values():
        assert card.citation and card.licence and card.files and all(f.url.startswith("https://") for f in card.files)


def test_zoo_catalogue_prints_every_entry_and_whether_it_is_here(tmp_path, capsys):
    (tmp_path / "smallcnnzoo-mnist").mkdir()
    (tmp_path / "smallcnnzoo-mnist" / "manifest.json").write_text("{}")
    assert run_cli(["catalogue", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in cards():
        assert name in out
    line = next(l for l in out.splitlines() if l.startswith("smallcnnzoo-mnist "))
    assert " here " in line
    assert " here " not in next(l for l in out.splitlines() if l.startswith("smallcnnzoo-cifar10 "))


def test_a_card_with_a_bad_sha256_is_refused_naming_the_field(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('name = "x"\ndescription = "d"\nformat = "metazoo"\nlicence = "l"\ncitation = "c"\n'
                 '[[files]]\nurl = "http://h/x.tar"\nsha256 = "abc"\n[[nets]]\ncount = 1\n')
    with pytest.raises(ZooError, match=r"files\[0\]\.sha256 = 'abc'.*64 hex digits"):
        load_card(p)


# -------------------------------------------------------------- download

def test_download_imports_verifies_and_opens_each_upstream_format(tmp_path):
    serve = tmp_path / "www"
    serve.mkdir()
    write_lim_zoo(tmp_path / "lim", 2, wasym=True)
    tar_folder(tmp_path / "lim", serve / "lim.tar.gz", mode="w:gz")
    write_smallcnnzoo(tmp_path / "scz", runs=3)
    tar_folder(tmp_path / "scz", serve / "svhn_cropped.tar.xz", arc_root="svhn_cropped")
    write_modelzoos(serve / "mz.zip", nets=2)
    root = tmp_path / "datasets"
    with http_server(serve) as base:
        cases = [_card("lim", "lim2024", f"{base}/lim.tar.gz", _sha(serve / "lim.tar.gz"), variant="wasym"),
                 _card("scz", "smallcnnzoo", f"{base}/svhn_cropped.tar.xz", dataset="svhn_cropped"),
                 _card("mz", "modelzoos", f"{base}/mz.zip", _sha(serve / "mz.zip"))]
        for card in cases:
            m = download(card, root / card.name, progress=False, log=lambda s: None)
            assert verify(root / card.name) == []
            z = zoo.open(root / card.name)
            assert len(z.table) == m["num_models"] > 0 and "test_acc" in z.table and "diverged" in z.table
            assert m["source"]["card"] == card.name
    assert zoo.open(root / "lim").rebuild(0) is not None
    info = zoo.open(root / "scz").manifest["source"]["files"][0]
    assert info["verified"] is False and info["sha256"] == _sha(serve / "svhn_cropped.tar.xz")
    assert (root / ".cache" / "svhn_cropped.tar.xz.sha256").read_text().split()[0] == info["sha256"]


def test_an_unknown_hash_is_recorded_at_first_download_and_checked_after(tmp_path):
    serve = tmp_path / "www"
    serve.mkdir()
    write_modelzoos(serve / "mz.zip", nets=2)
    notes = []
    with http_server(serve) as base:
        card = _card("mz", "modelzoos", f"{base}/mz.zip")
        download(card, tmp_path / "d" / "mz", progress=False, log=notes.append)
        assert any("NOT verified" in n for n in notes)
        # the upstream file changes: the recorded hash now catches it
        (tmp_path / "d" / ".cache" / "mz.zip").unlink()
        write_modelzoos(serve / "mz.zip", nets=3)
        with pytest.raises(ZooError, match="does not match its sha256"):
            download(card, tmp_path / "d" / "mz2", progress=False, log=lambda s: None)
    assert not (tmp_path / "d" / "mz2").exists()


def test_a_wrong_hash_leaves_nothing_and_says_so(tmp_path, capsys):
    serve = tmp_path / "www"
    serve.mkdir()
    write_modelzoos(serve / "mz.zip", nets=2)
    card_path = tmp_path / "card.toml"
    with http_server(serve) as base:
        card_path.write_text(f'name = "mz"\ndescription = "d"\nformat = "modelzoos"\nlicence = "l"\ncitation = "c"\n'
                             f'[[files]]\nurl = "{base}/mz.zip"\nsha256 = "{"0" * 64}"\n[[nets]]\ncount = 2\n')
        rc = run_cli(["download", "--card", str(card_path), "--to", str(tmp_path / "d" / "mz"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not match its sha256" in err and "Traceback" not in err
    assert _leftovers(tmp_path / "d") == []


def test_a_truncated_download_leaves_nothing_and_says_so(tmp_path):
    serve = tmp_path / "www"
    serve.mkdir()
    write_modelzoos(serve / "mz.zip", nets=2)
    with http_server(serve, truncated={"mz.zip"}) as base:
        with pytest.raises(ZooError, match="cut short"):
            download(_card("mz", "modelzoos", f"{base}/mz.zip"), tmp_path / "d" / "mz", progress=False,
                     log=lambda s: None)
    assert _leftovers(tmp_path / "d") == []


def test_a_server_that_is_down_gives_a_clear_message_not_a_traceback(tmp_path, capsys):
    rc = run_cli(["download", "--url", dead_url("zoo.tar.gz"), "--sha256", "unknown",
                  "--to", str(tmp_path / "d" / "z"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "could not reach 127.0.0.1" in err and "offline" in err and "Traceback" not in err
    assert _leftovers(tmp_path / "d") == []


def test_an_http_error_names_the_status(tmp_path):
    serve = tmp_path / "www"
    serve.mkdir()
    with http_server(serve) as base:
        with pytest.raises(ZooError, match="HTTP 404"):
            download(_card("x", "metazoo", f"{base}/missing.tar"), tmp_path / "d" / "x", progress=False,
                     log=lambda s: None)


# ------------------------------------------------------------------ pack

def test_pack_output_round_trips_through_download_card(tmp_path, capsys):
    write_lim_zoo(tmp_path / "up", 3, wasym=False)
    run_import("lim2024", tmp_path / "up", tmp_path / "mine", name="my-zoo")
    serve = tmp_path / "www"
    serve.mkdir()
    with http_server(serve) as base:
        assert run_cli(["pack", str(tmp_path / "mine"), "--out", str(serve / "my-zoo.tar.gz"),
                        "--url", f"{base}/my-zoo.tar.gz", "--card", str(tmp_path / "my-zoo.toml")]) == 0
        card = load_card(tmp_path / "my-zoo.toml")
        assert card.files[0].sha256 == _sha(serve / "my-zoo.tar.gz")
        assert card.files[0].size_bytes == (serve / "my-zoo.tar.gz").stat().st_size
        assert card.num_nets == 3 and card.nets[0].architecture == "ResNet8" and card.format == "metazoo"
        assert run_cli(["download", "--card", str(tmp_path / "my-zoo.toml"), "--to", str(tmp_path / "got"),
                        "--no-progress"]) == 0
        assert run_cli(["download", "--url", f"{base}/my-zoo.tar.gz", "--sha256", card.files[0].sha256,
                        "--to", str(tmp_path / "got2"), "--no-progress"]) == 0
    for got in ("got", "got2"):
        assert verify(tmp_path / got) == []
        a, b = zoo.open(tmp_path / "mine"), zoo.open(tmp_path / got)
        assert np.array_equal(a.weights(), b.weights())
        assert a.table.equals(b.table)


def test_pack_refuses_a_zoo_that_fails_verification(tmp_path):
    write_lim_zoo(tmp_path / "up", 2, wasym=False)
    run_import("lim2024", tmp_path / "up", tmp_path / "mine")
    with open(tmp_path / "mine" / "shard-00000.h5", "r+b") as f:
        f.seek(-10, 2)
        f.write(b"corrupted!")
    with pytest.raises(ZooError, match="fails verification, so it is not packed"):
        pack(tmp_path / "mine", tmp_path / "x.tar")
    assert not (tmp_path / "x.tar").exists()


# ---------------------------------------------------------------- safety

def test_an_archive_entry_with_dotdot_is_refused_and_nothing_is_extracted(tmp_path):
    bad = tmp_path / "evil.tar.gz"
    with tarfile.open(bad, "w:gz") as tf:
        for name, data in (("ok/weights.npy", b"fine"), ("../escaped.txt", b"gotcha")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with pytest.raises(ZooError, match=r"'\.\./escaped\.txt'.*outside the target"):
        safe_extract(bad, tmp_path / "out" / "target")
    assert not (tmp_path / "out" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert list((tmp_path / "out").iterdir()) == []
    zbad = tmp_path / "evil.zip"
    with zipfile.ZipFile(zbad, "w") as zf:
        zf.writestr("a/../../escaped.txt", b"gotcha")
    with pytest.raises(ZooError, match="outside the target"):
        run_import("modelzoos", zbad, tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists() and not (tmp_path / "escaped.txt").exists()


def test_a_pt_file_carrying_a_pickled_object_that_is_not_tensors_is_refused(tmp_path):
    up = tmp_path / "up"
    write_lim_zoo(up, 1, wasym=False)
    sd, acc = torch.load(up / "net_0.pt", weights_only=True)
    torch.save((sd, acc, _NotATensor()), up / "net_1.pt")
    with pytest.raises(ZooError, match="net_1.pt: refused to load: it carries a pickled object that is not tensors"):
        load_tensors(up / "net_1.pt")
    with pytest.raises(ZooError, match="not tensors"):
        run_import("lim2024", up, tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()
    assert not _NotATensor.ran


class _NotATensor:
    ran = False

    def __reduce__(self):  # unpickling this would run code: exactly what weights_only forbids
        return (_mark_ran, ())


def _mark_ran():
    _NotATensor.ran = True
    return None


def test_import_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli(["import", "smallcnnzoo", str(tmp_path / "empty"), "--out", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err
    assert "missing weights.npy, metrics.csv(.gz), layout.csv" in err and "Traceback" not in err
    assert run_cli(["import", "nosuch", str(tmp_path / "empty"), "--out", str(tmp_path / "z")]) == 2
    assert "unknown format 'nosuch'; known: lim2024, smallcnnzoo, modelzoos, metazoo" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()


def test_the_benchmark_runs_unchanged_on_each_imported_format(tmp_path):
    from metanets.cli import main as metanets_main

    write_smallcnnzoo(tmp_path / "scz", runs=8)
    write_modelzoos(tmp_path / "mz.zip", nets=8)
    write_lim_zoo(tmp_path / "lim", 8, wasym=True)
    for fmt, src, inputs in (("smallcnnzoo", tmp_path / "scz", 238), ("modelzoos", tmp_path / "mz.zip", 98),
                             ("lim2024", tmp_path / "lim", 60634)):
        run_import(fmt, src, tmp_path / fmt)
        out = tmp_path / f"bench-{fmt}"
        assert metanets_main(["bench", str(tmp_path / fmt), "--metanets", "mlp,statnn", "--seeds", "1",
                              "--epochs", "1", "--lr", "1e-3", "--out", str(out), "--no-progress"]) == 0
        results = json.loads((out / "results.json").read_text())
        assert results["zoos"][0]["num_inputs"] == inputs and results["zoos"][0]["n_test"] == 2
        assert len(results["runs"]) == 2
