"""Catalogue, download (from a local HTTP server on 127.0.0.1), pack, and refusing bad inputs."""
import hashlib
import io
import json
import shutil
import tarfile
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_fixtures import (
    dead_url,
    http_server,
    run_cli,
    write_lim_zoo,
    write_modelzoos,
    write_smallcnnzoo,
)

import zoo
from zoo.errors import ZooError
from zoo.hub.catalogue import card_from_dict, cards, find, load_card
from zoo.hub.download import download
from zoo.hub.importers import run_import
from zoo.hub.pack import pack
from zoo.hub.safety import load_tensors, safe_extract
from zoo.store import verify


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

LIM_TYPES = ("resnet8", "sparse_resnet8", "smaller_resnet8", "sigma_asym_resnet8")
SCZ_RUNS = {"cifar10": 30000, "fashion_mnist": 30000, "mnist": 29997, "svhn_cropped": 29988}


def test_the_catalogue_has_a_card_per_upstream_model_type_with_exact_per_file_urls():
    c = cards()
    for t in LIM_TYPES:
        card = c[f"lim2024-{t.replace('_', '-')}"]
        assert card.options == {"model_type": t} and card.num_nets == 10000 and card.doi == "10.5281/zenodo.13883507"
        main = card.files[0]
        assert main.url == f"https://zenodo.org/records/13883507/files/{main.name}?download=1"
        assert "files-archive" not in " ".join(f.url for f in card.files)
        assert not main.name_confirmed  # left for `zoo catalogue --check` to confirm
        assert any(f.name == "hparams.csv" and f.optional for f in card.files)
    for ds, runs in SCZ_RUNS.items():
        card = c[f"smallcnnzoo-{ds}"]
        assert [f.url for f in card.files] == [f"https://storage.googleapis.com/gresearch/smallcnnzoo-dataset/{ds}.tar.xz"]
        assert card.num_nets == runs and card.licence == "CC BY 4.0" and card.options == {"dataset": ds}
    mz = c["modelzoos-cifar10-cnn-large-seed"]
    assert mz.licence == "CC-BY 4.0" and mz.doi == "10.5281/zenodo.6620868"
    for card in c.values():
        assert card.citation and card.licence and all(f.url.startswith("https://") for f in card.files)
        assert {"url", "count", "usable", "licence", "size"} <= set(card.provenance), card.name
        assert "estimate" in card.size or "measured" in card.size, card.name


def test_a_card_accepts_md5_beside_sha256_and_refuses_a_malformed_one(tmp_path):
    good = card_from_dict({"name": "x", "description": "d", "format": "metazoo", "licence": "l", "citation": "c",
                           "files": [{"url": "https://h/x.zip", "md5": "md5:" + "a" * 32}], "nets": []})
    assert good.files[0].md5 == "a" * 32 and good.files[0].sha256 == "unknown" and good.files[0].has_checksum
    with pytest.raises(ZooError, match=r"files\[0\]\.md5 = 'abc': expected 32 hex digits"):
        card_from_dict({"name": "x", "description": "d", "format": "metazoo", "licence": "l", "citation": "c",
                        "files": [{"url": "https://h/x.zip", "md5": "abc"}], "nets": []})
    with pytest.raises(ZooError, match=r"nets\[0\]\.usable = 5: expected an integer <= count \(3\)"):
        card_from_dict({"name": "x", "description": "d", "format": "metazoo", "licence": "l", "citation": "c",
                        "files": [{"url": "https://h/x.zip"}], "nets": [{"count": 3, "usable": 5}]})


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


def test_catalogue_check_asks_each_url_and_reports_reachable_size_and_checksum(tmp_path, capsys):
    serve = tmp_path / "www"
    serve.mkdir()
    (serve / "mnist.tar.xz").write_bytes(b"0123456789")
    (serve / "sparse_resnet8.zip").write_bytes(b"x" * 33)
    with http_server(serve) as base:
        rc = run_cli(["catalogue", "--check", "--mirror", base + "/"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1  # most files are not on this mirror
    line = next(l for l in out if l.startswith("smallcnnzoo-mnist  mnist.tar.xz"))
    assert "  reachable  10 bytes" in line and "card estimate 5,367,063,240" in line and "checksum: none" in line
    line = next(l for l in out if l.startswith("lim2024-sparse-resnet8  sparse_resnet8.zip"))
    assert "reachable  33 bytes" in line and "name now confirmed" in line
    assert "NOT reachable (HTTP 404)" in next(l for l in out if l.startswith("smallcnnzoo-cifar10  cifar10.tar.xz"))
    assert "[optional]" in next(l for l in out if l.startswith("lim2024-resnet8  hparams.csv"))
    assert out[-1].startswith(f"{sum(len(c.files) for c in cards().values())} files checked")


def test_catalogue_check_offline_says_so_in_one_line(capsys):
    rc = run_cli(["catalogue", "--check", "--mirror", dead_url("").rstrip("/")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "error: offline: none of the catalogue's hosts answered" in err[0]


def test_a_card_with_a_bad_sha256_is_refused_naming_the_field(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('name = "x"\ndescription = "d"\nformat = "metazoo"\nlicence = "l"\ncitation = "c"\n'
                 '[[files]]\nurl = "http://h/x.tar"\nsha256 = "abc"\n[[nets]]\ncount = 1\n')
    with pytest.raises(ZooError, match=r"files\[0\]\.sha256 = 'abc'.*64 hex digits"):
        load_card(p)


# -------------------------------------------------------------- download

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


def test_a_flipped_byte_in_a_served_file_is_refused_by_its_md5(tmp_path):
    serve = tmp_path / "www"
    serve.mkdir()
    write_modelzoos(serve / "mz.zip", nets=2)
    md5 = hashlib.md5((serve / "mz.zip").read_bytes()).hexdigest()
    data = bytearray((serve / "mz.zip").read_bytes())
    data[len(data) // 3] ^= 0x01
    (serve / "mz.zip").write_bytes(bytes(data))
    card = card_from_dict({"name": "mz", "description": "d", "format": "modelzoos", "licence": "l", "citation": "c",
                           "nets": [], "files": [{"url": "https://zenodo.org/records/1/files/mz.zip?download=1",
                                                  "filename": "mz.zip", "md5": f"md5:{md5}"}]})
    with http_server(serve) as base:
        with pytest.raises(ZooError, match=f"does not match its md5 \\(expected {md5}"):
            download(card, tmp_path / "d" / "mz", progress=False, log=lambda s: None, mirror=base)
    assert _leftovers(tmp_path / "d") == []  # no partial, no file that counts as complete, no zoo


def test_a_dropped_connection_resumes_with_a_range_request(tmp_path):
    serve = tmp_path / "www"
    serve.mkdir()
    write_modelzoos(serve / "mz.zip", nets=16)  # > 64 KiB, so some chunks arrive before the drop
    size, log, notes = (serve / "mz.zip").stat().st_size, [], []
    with http_server(serve, drop_once={"mz.zip"}, log=log) as base:
        m = download(_card("mz", "modelzoos", f"{base}/mz.zip", _sha(serve / "mz.zip")), tmp_path / "d" / "mz",
                     progress=False, log=notes.append)
    gets = [(rng, status) for method, name, rng, status in log if method == "GET"]
    assert len(gets) == 2 and gets[0] == (None, 200) and gets[1][1] == 206
    resumed_at = int(gets[1][0][len("bytes="):-1])
    assert 0 < resumed_at <= size // 2  # only the rest was fetched again
    assert any("connection lost after" in n and "resuming" in n for n in notes)
    assert m["num_models"] == 16 and verify(tmp_path / "d" / "mz") == []
    assert _sha(tmp_path / "d" / ".cache" / "mz.zip") == _sha(serve / "mz.zip")


def test_a_server_that_ignores_range_restarts_the_file_cleanly(tmp_path):
    serve = tmp_path / "www"
    serve.mkdir()
    write_modelzoos(serve / "mz.zip", nets=2)
    log, notes = [], []
    cache = tmp_path / "d" / ".cache"
    cache.mkdir(parents=True)
    (cache / "mz.zip.part").write_bytes((serve / "mz.zip").read_bytes()[:100])  # left by a killed run
    with http_server(serve, ranges=False, log=log) as base:
        download(_card("mz", "modelzoos", f"{base}/mz.zip", _sha(serve / "mz.zip")), tmp_path / "d" / "mz",
                 progress=False, log=notes.append)
    assert [(rng, status) for _, _, rng, status in log] == [("bytes=100-", 200)]
    assert any("ignores resume requests" in n for n in notes)
    assert _sha(cache / "mz.zip") == _sha(serve / "mz.zip") and not (cache / "mz.zip.part").exists()


def test_a_partial_file_from_a_killed_run_is_resumed_not_refetched(tmp_path):
    serve = tmp_path / "www"
    serve.mkdir()
    write_modelzoos(serve / "mz.zip", nets=2)
    data, log = (serve / "mz.zip").read_bytes(), []
    cache = tmp_path / "d" / ".cache"
    cache.mkdir(parents=True)
    (cache / "mz.zip.part").write_bytes(data[:1000])
    with http_server(serve, log=log) as base:
        download(_card("mz", "modelzoos", f"{base}/mz.zip", _sha(serve / "mz.zip")), tmp_path / "d" / "mz",
                 progress=False, log=lambda s: None)
    assert [(rng, status) for _, _, rng, status in log] == [("bytes=1000-", 206)]
    assert (cache / "mz.zip").read_bytes() == data


def test_a_download_cut_short_every_time_keeps_the_partial_file_and_nothing_counts_as_complete(tmp_path):
    serve = tmp_path / "www"
    serve.mkdir()
    write_modelzoos(serve / "mz.zip", nets=2)
    with http_server(serve, truncated={"mz.zip"}) as base:
        with pytest.raises(ZooError, match=r"cut short 5 times .*partial file .*mz.zip.part is kept: run the command "
                                           r"again to resume"):
            download(_card("mz", "modelzoos", f"{base}/mz.zip"), tmp_path / "d" / "mz", progress=False,
                     log=lambda s: None)
    assert _leftovers(tmp_path / "d") == [".cache/mz.zip.part"]


def test_free_disk_is_checked_before_a_download_starts(tmp_path, monkeypatch):
    serve = tmp_path / "www"
    serve.mkdir()
    write_modelzoos(serve / "mz.zip", nets=2)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: types.SimpleNamespace(total=10 ** 9, used=10 ** 9, free=100))
    log = []
    with http_server(serve, log=log) as base:
        with pytest.raises(ZooError, match=r"not enough free disk for mz.zip in .*\.cache: it needs"):
            download(_card("mz", "modelzoos", f"{base}/mz.zip"), tmp_path / "d" / "mz", progress=False,
                     log=lambda s: None)
    assert _leftovers(tmp_path / "d") == []


def test_an_unsupported_url_scheme_is_a_clear_error(tmp_path, capsys):
    rc = run_cli(["download", "--url", "ftp://example.org/zoo.tar.gz", "--sha256", "unknown",
                  "--to", str(tmp_path / "z"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "unsupported URL scheme 'ftp://'" in err and "Traceback" not in err
    rc = run_cli(["download", "smallcnnzoo-mnist", "--mirror", "ftp://mirror.example.org/zoos",
                  "--to", str(tmp_path / "z"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--mirror 'ftp://mirror.example.org/zoos/mnist.tar.xz': unsupported URL scheme" in err
    assert not (tmp_path / "z").exists()


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

@pytest.mark.exactness
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


def test_a_metazoo_archive_whose_net_does_not_build_its_layout_is_refused_and_nothing_is_kept(tmp_path):
    """The kept fuzz finding import_metazoo-13e4885394: a manifest `net` with a misspelt key
    (its shards intact) was imported, and the imported zoo could not rebuild its nets. The
    archive's architecture is now built and checked against its layout before anything is kept;
    a sound archive still imports and rebuilds."""
    write_lim_zoo(tmp_path / "up", 2, wasym=True)
    run_import("lim2024", tmp_path / "up", tmp_path / "mine")
    pack(tmp_path / "mine", tmp_path / "good.tar")
    run_import("metazoo", tmp_path / "good.tar", tmp_path / "good")
    assert zoo.open(tmp_path / "good").rebuild(0) is not None
    for what, change in (("unknown key", lambda net: net.update(asym_sexd=net.pop("asym_seed", 0))),
                         ("another width", lambda net: net.update(width=2 * net.get("width", 1.0)))):
        m = json.loads((tmp_path / "mine" / "manifest.json").read_text())
        change(m["net"])
        bad = tmp_path / "bad"
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(tmp_path / "mine", bad)
        (bad / "manifest.json").write_text(json.dumps(m))
        with tarfile.open(tmp_path / "bad.tar", "w") as tf:
            tf.add(bad, arcname="bad")
        with pytest.raises(ZooError, match=r"bad\.tar: the zoo in this archive failed verification .*key 'net'"):
            run_import("metazoo", tmp_path / "bad.tar", tmp_path / "out")
        assert not (tmp_path / "out").exists(), what


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


def test_a_foreign_folder_as_target_is_refused_before_anything_is_fetched(tmp_path, capsys):
    serve = tmp_path / "www"
    serve.mkdir()
    write_modelzoos(serve / "cifar_large_seed.zip", nets=2)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    log = []
    with http_server(serve, log=log) as base:
        rc = run_cli(["download", "modelzoos-cifar10-cnn-large-seed", "--mirror", base, "--to",
                      str(tmp_path / "mine"), "--force", "--no-progress"])
    assert rc == 2 and "holds no metazoo zoo" in capsys.readouterr().err
    assert log == [] and (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_an_optional_file_the_server_lacks_is_skipped(tmp_path):
    from hub_fixtures import write_lim_record

    serve = tmp_path / "www"
    serve.mkdir()
    write_lim_record(tmp_path / "rec", {"resnet8": 2}, hparams=False, mask_files=False)
    with zipfile.ZipFile(serve / "resnet8.zip", "w") as zf:
        for p in sorted((tmp_path / "rec" / "resnet8").iterdir()):
            zf.write(p, f"resnet8/{p.name}")
    notes = []
    with http_server(serve) as base:
        m = download(find("lim2024-resnet8"), tmp_path / "d" / "z", progress=False, log=notes.append, mirror=base)
    assert m["num_models"] == 2 and m["source"]["hparams"] is None
    assert any("hparams.csv is not on the server (optional)" in n for n in notes)


def test_a_full_disk_during_a_download_is_a_clear_error_and_keeps_the_partial_file(tmp_path, monkeypatch):
    import errno

    import zoo.hub.download as dl

    serve = tmp_path / "www"
    serve.mkdir()
    write_modelzoos(serve / "mz.zip", nets=2)

    class Full(io.BytesIO):
        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dl, "open", lambda *a, **k: Full(), raising=False)
    with http_server(serve) as base:
        with pytest.raises(ZooError, match=r"could not write .*mz.zip.part: No space left on device; the partial "
                                           r"file is kept"):
            download(_card("mz", "modelzoos", f"{base}/mz.zip"), tmp_path / "d" / "mz", progress=False,
                     log=lambda s: None)
    assert not (tmp_path / "d" / "mz").exists()
