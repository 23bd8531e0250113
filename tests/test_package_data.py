"""The presets and catalogue cards are found through importlib.resources, from a clone and
from an installed wheel: a module moving one folder deeper must not silently lose them."""
import ast
import os
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest

from zoo.generate.spec import presets
from zoo.hub.catalogue import cards

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (ROOT / "zoo" / "presets").glob("*.toml"))
CARDS = sorted(p.name for p in (ROOT / "datasets" / "cards").glob("*.toml"))


def test_presets_and_cards_are_found_through_importlib_resources():
    assert PRESETS and sorted(presets()) == PRESETS
    assert sorted(p.name[:-5] for p in (resources.files("zoo") / "presets").iterdir() if p.name.endswith(".toml")) \
        == PRESETS
    assert len(cards()) == len(CARDS) > 0


def test_pyproject_lists_every_package():
    text = (ROOT / "pyproject.toml").read_text()
    listed = ast.literal_eval(text.split("\npackages = ", 1)[1].split("]", 1)[0] + "]")
    found = sorted(".".join(p.parent.relative_to(ROOT).parts) for pkg in ("zoo", "metanets")
                   for p in (ROOT / pkg).rglob("__init__.py"))
    assert sorted(set(listed) - {"zoo._catalogue"}) == found


@pytest.mark.slow
def test_an_installed_wheel_finds_its_presets_and_cards(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "wheel"), str(ROOT)], capture_output=True, text=True)
    if build.returncode:
        pytest.skip(f"no wheel could be built here: {build.stderr.strip()[-300:]}")
    wheel = next((tmp_path / "wheel").glob("metazoo-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n for n in names if n.startswith("zoo/presets/")) == sorted(f"zoo/presets/{p}.toml" for p in PRESETS)
    assert sorted(n for n in names if n.startswith("zoo/_catalogue/") and n.endswith(".toml")) \
        == [f"zoo/_catalogue/{c}" for c in CARDS]
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)  # what pip install puts in site-packages
    check = ("from zoo.generate.spec import presets; from zoo.hub.catalogue import cards, catalogue_dirs; "
             "import zoo; assert zoo.__file__.startswith(%r), zoo.__file__; "
             "print(len(presets()), len(cards()), catalogue_dirs())" % str(site))
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("METAZOO_DATASETS", None)
    r = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    n_presets, n_cards, dirs = r.stdout.split(" ", 2)
    assert (int(n_presets), int(n_cards)) == (len(PRESETS), len(CARDS))
    assert str(site / "zoo" / "_catalogue") in dirs
