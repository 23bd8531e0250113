"""End to end, as a researcher runs it: `zoo download CARD --mirror URL` of the real catalogue
cards, served on 127.0.0.1 from fixtures written the way each upstream writes its files,
then `zoo verify` and a short `metanets bench`."""
import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from hub_fixtures import (
    http_server,
    run_cli,
    tar_folder,
    write_lim_record,
    write_modelzoos,
    write_smallcnnzoo,
)

import zoo
from zoo.errors import ZooError
from zoo.hub.catalogue import card_from_dict, find
from zoo.hub.download import download


def _serve_lim(www: Path, tmp: Path, kind: str, n: int) -> None:
    """The record's per-type zip (``<type>/<i>.pt`` inside) and its hparams.csv."""
    write_lim_record(tmp / "rec", {kind: n}, nan_ids=(3,), mask_files=False)
    with zipfile.ZipFile(www / f"{kind}.zip", "w") as zf:
        for p in sorted((tmp / "rec" / kind).iterdir()):
            zf.write(p, f"{kind}/{p.name}")
    (www / "hparams.csv").write_bytes((tmp / "rec" / "hparams.csv").read_bytes())


def _bench(zoo_dir: Path, out: Path) -> dict:
    from metanets.cli import main as metanets_main

    assert metanets_main(["bench", str(zoo_dir), "--metanets", "statnn", "--seeds", "1", "--epochs", "1",
                          "--out", str(out), "--no-progress"]) == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("card_name", ["lim2024-sparse-resnet8", "lim2024-sigma-asym-resnet8",
                                       "smallcnnzoo-svhn_cropped", "modelzoos-cifar10-cnn-large-seed"])
def test_download_with_mirror_import_verify_and_bench_each_kind_of_card(tmp_path, capsys, card_name):
    www = tmp_path / "www"
    www.mkdir()
    card = find(card_name)
    if card.format == "lim2024":
        _serve_lim(www, tmp_path, card.options["model_type"], 9)
        usable = 8  # net 3 has a NaN weight
    elif card.format == "smallcnnzoo":
        write_smallcnnzoo(tmp_path / "scz", runs=9, shortened_run=4)
        tar_folder(tmp_path / "scz", www / "svhn_cropped.tar.xz", arc_root="svhn_cropped")
        usable = 8  # run 4 was cut short
    else:
        write_modelzoos(www / "cifar_large_seed.zip", nets=9, missing={5: 2})
        usable = 8  # net 5 lacks the last epoch
    dest = tmp_path / "datasets" / card_name
    with http_server(www) as base:
        assert run_cli(["download", card_name, "--mirror", base, "--to", str(dest), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert f"{card_name}: {usable} models" in out.out and "(1 upstream nets dropped;" in out.out
    assert run_cli(["verify", str(dest)]) == 0
    z = zoo.open(dest)
    src = z.manifest["source"]
    assert len(z) == usable and len(src["dropped"]) == 1 and src["card"] == card_name
    assert all(f["url"].startswith(base) for f in src["files"])
    results = _bench(dest, tmp_path / "bench")
    assert results["zoos"][0]["n_test"] == 2 and len(results["runs"]) == 1
    if card.format == "lim2024":
        assert src["hparams"] and "lr" in z.table and z.manifest["source"]["model_type"] == card.options["model_type"]


def test_the_mirror_environment_variable_is_used_when_no_flag_is_given(tmp_path, monkeypatch):
    www = tmp_path / "www"
    www.mkdir()
    write_smallcnnzoo(tmp_path / "scz", runs=3)
    tar_folder(tmp_path / "scz", www / "mnist.tar.xz", arc_root="mnist")
    with http_server(www) as base:
        monkeypatch.setenv("METAZOO_MIRROR", base + "/")
        assert run_cli(["download", "smallcnnzoo-mnist", "--to", str(tmp_path / "d" / "z"), "--no-progress"]) == 0
    assert zoo.open(tmp_path / "d" / "z").manifest["source"]["files"][0]["url"] == f"{base}/mnist.tar.xz"


def test_a_flipped_byte_in_a_served_file_is_refused(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    _serve_lim(www, tmp_path, "resnet8", 3)
    good = hashlib.sha256((www / "resnet8.zip").read_bytes()).hexdigest()
    data = bytearray((www / "resnet8.zip").read_bytes())
    data[len(data) // 2] ^= 0x80
    (www / "resnet8.zip").write_bytes(bytes(data))
    card = card_from_dict({**_as_dict(find("lim2024-resnet8")),
                           "files": [{"url": "https://zenodo.org/records/13883507/files/resnet8.zip?download=1",
                                      "filename": "resnet8.zip", "sha256": good}]})
    with http_server(www) as base:
        with pytest.raises(ZooError, match=f"resnet8.zip: the downloaded file does not match its sha256 \\(expected {good}"):
            download(card, tmp_path / "d" / "z", progress=False, log=lambda s: None, mirror=base)
    assert sorted(str(p.relative_to(tmp_path / "d")) for p in (tmp_path / "d").rglob("*")) == [".cache"]


def test_an_unknown_hash_is_recorded_at_first_download_and_checked_after(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    write_modelzoos(www / "cifar_large_seed.zip", nets=2)
    notes = []
    card = find("modelzoos-cifar10-cnn-large-seed")
    with http_server(www) as base:
        download(card, tmp_path / "d" / "mz", progress=False, log=notes.append, mirror=base)
        assert any("NOT verified" in n for n in notes)
        (tmp_path / "d" / ".cache" / "cifar_large_seed.zip").unlink()
        write_modelzoos(www / "cifar_large_seed.zip", nets=3)  # the upstream file changes
        with pytest.raises(ZooError, match="does not match its sha256"):
            download(card, tmp_path / "d" / "mz2", progress=False, log=lambda s: None, mirror=base)
    assert not (tmp_path / "d" / "mz2").exists()


def _as_dict(card) -> dict:
    return {"name": card.name, "description": card.description, "format": card.format, "licence": card.licence,
            "citation": card.citation, "nets": [], "import": dict(card.options)}
