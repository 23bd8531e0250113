"""The catalogue of prebuilt weight datasets: one TOML card per dataset.

Cards live in ``datasets/cards/*.toml`` in a clone; a wheel ships the same files as
``zoo/_catalogue/*.toml`` (see pyproject's package-dir mapping). A card says where the
files are (exact per-file URLs), their checksums (sha256 and/or the md5 Zenodo publishes;
``"unknown"`` when the publisher gives none), their sizes (measured or estimated), which
importer converts them, what the zoo holds (nets shipped, nets usable), its licence,
citation and DOI, and where each fact was read (``[provenance]``). Cards are validated
when read, naming the field.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import tomli_w

from ..errors import ZooError
from ..fs import atomic_path, read_toml


UNKNOWN = "unknown"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")
FORMATS = ("lim2024", "smallcnnzoo", "modelzoos", "metazoo")


@dataclass(frozen=True)
class SourceFile:
    """One file to download: where from, its checksums (or "unknown"), its size if known.

    ``size_measured``: the size was read off the server (else it is an estimate, checked
    only for the free-disk test); ``optional``: the publisher may not ship it (a 404 is
    then skipped, not an error); ``name_confirmed``: false where the file name could not
    be read offline and ``zoo catalogue --check`` must confirm it."""

    url: str
    sha256: str = UNKNOWN
    filename: str = ""
    size_bytes: int = 0
    md5: str = UNKNOWN
    size_measured: bool = False
    optional: bool = False
    name_confirmed: bool = True

    @property
    def has_checksum(self) -> bool:
        return self.sha256 != UNKNOWN or self.md5 != UNKNOWN

    @property
    def name(self) -> str:
        return self.filename or self.url.split("?")[0].rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class NetCount:
    """``count`` nets shipped, of which ``usable`` (-1: not known) survive the upstream's own
    filtering (NaN nets, runs cut short)."""

    count: int
    architecture: str
    data: str
    usable: int = -1


@dataclass(frozen=True)
class Card:
    name: str
    description: str
    format: str
    files: tuple[SourceFile, ...]
    nets: tuple[NetCount, ...]
    licence: str
    citation: str
    size: str = UNKNOWN
    homepage: str = ""
    options: dict = field(default_factory=dict)
    notes: str = ""
    doi: str = ""
    provenance: dict = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)

    @property
    def num_nets(self) -> int:
        return sum(n.count for n in self.nets)

    def to_toml_dict(self) -> dict:
        d = asdict(self)
        d.pop("path")
        defaults = asdict(SourceFile(url=""))
        d["files"] = [{k: v for k, v in f.items() if k == "url" or v != defaults[k]} for f in d["files"]]
        d["nets"] = [{k: v for k, v in n.items() if not (k == "usable" and v < 0)} for n in d["nets"]]
        d["import"] = d.pop("options")
        # required fields stay even when empty, so that what write_card writes load_card reads
        return {k: v for k, v in d.items() if v not in ("", {}, None) or k in _REQUIRED}


def catalogue_dirs() -> list[Path]:
    """Where cards are read from: the wheel's copy (package data ``zoo._catalogue``), else the
    clone's ``datasets/cards``. Found through importlib.resources, not this file's place."""
    dirs = [Path(str(resources.files("zoo") / "_catalogue"))]  # absent in a clone
    if _clone_root() is not None:
        dirs.append(_clone_root() / "datasets" / "cards")
    return [p for p in dirs if p.is_dir()]


def _clone_root() -> Path | None:
    """The repository root when running from a clone (editable install), else None; the
    pyproject check keeps us from mistaking site-packages' Hugging Face ``datasets`` for ours."""
    root = Path(str(resources.files("zoo"))).resolve().parent
    return root if (root / "pyproject.toml").is_file() and (root / "datasets" / "cards").is_dir() else None


def default_root() -> Path:
    """Where downloads land: ``$METAZOO_DATASETS``, else the clone's ``datasets/``, else ``./datasets``."""
    env = os.environ.get("METAZOO_DATASETS")
    if env:
        return Path(env)
    clone = _clone_root()
    return clone / "datasets" if clone is not None else Path.cwd() / "datasets"


def cards() -> dict[str, Card]:
    """All cards by name (the first directory wins for a name in both)."""
    out: dict[str, Card] = {}
    for d in catalogue_dirs():
        for p in sorted(d.glob("*.toml")):
            c = load_card(p)
            out.setdefault(c.name, c)
    return out


def find(name: str) -> Card:
    all_cards = cards()
    if name not in all_cards:
        raise ZooError(f"no catalogue entry {name!r}; known: {', '.join(sorted(all_cards)) or 'none'} "
                       f"(see `zoo catalogue`, or pass --card FILE)")
    return all_cards[name]


def load_card(path) -> Card:
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"card {path} does not exist")
    return card_from_dict(read_toml(path, "card"), where=str(path), path=path)


#: Fields a card must have (card_from_dict's ``need``).
_REQUIRED = ("name", "format", "files", "nets", "description", "licence", "citation")


def card_from_dict(d: dict, where: str = "card", path: Path | None = None) -> Card:
    def need(key, kind=str):
        if key not in d:
            raise ZooError(f"{where}: field '{key}' is missing")
        v = d[key]
        if not isinstance(v, kind):
            raise ZooError(f"{where}: field '{key}' = {v!r} should be a {kind.__name__}")
        return v

    name = need("name")
    if not _NAME.match(name):
        raise ZooError(f"{where}: field 'name' = {name!r}: use lower-case letters, digits, '-', '_' or '.'")
    fmt = need("format")
    if fmt not in FORMATS:
        raise ZooError(f"{where}: field 'format' = {fmt!r}; allowed: {', '.join(FORMATS)}")
    files = []
    for i, f in enumerate(need("files", list)):
        fw = f"{where}: files[{i}]"
        if not isinstance(f, dict) or not isinstance(f.get("url"), str) or not f["url"]:
            raise ZooError(f"{fw}: needs a 'url' string")
        sha = str(f.get("sha256", UNKNOWN)).lower()
        if sha != UNKNOWN and not _SHA.match(sha):
            raise ZooError(f"{fw}.sha256 = {f.get('sha256')!r}: expected 64 hex digits or \"unknown\"")
        md5 = str(f.get("md5", UNKNOWN)).lower()
        md5 = md5.removeprefix("md5:")  # Zenodo's API writes "md5:<hex>"
        if md5 != UNKNOWN and not _MD5.match(md5):
            raise ZooError(f"{fw}.md5 = {f.get('md5')!r}: expected 32 hex digits (or md5:<hex>) or \"unknown\"")
        size = f.get("size_bytes", 0)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ZooError(f"{fw}.size_bytes = {size!r}: expected an integer >= 0")
        filename = f.get("filename", "")
        if not isinstance(filename, str):
            raise ZooError(f"{fw}.filename = {filename!r}: expected a file name (a string)")
        if filename and ("/" in filename or "\\" in filename or filename in (".", "..")):
            raise ZooError(f"{fw}.filename = {filename!r}: a plain file name, no folders")
        flags = {}
        for key in ("size_measured", "optional", "name_confirmed"):
            if key in f and not isinstance(f[key], bool):
                raise ZooError(f"{fw}.{key} = {f[key]!r}: expected true or false")
            if key in f:
                flags[key] = f[key]
        files.append(SourceFile(f["url"], sha, filename, size, md5, **flags))
    if not files:
        raise ZooError(f"{where}: field 'files' lists no file")
    nets = []
    for i, n in enumerate(need("nets", list)):
        nw = f"{where}: nets[{i}]"
        if not isinstance(n, dict) or not isinstance(n.get("count"), int) or n["count"] < 0:
            raise ZooError(f"{nw}: needs 'count' (integer >= 0), 'architecture' and 'data'")
        usable = n.get("usable", -1)
        if not isinstance(usable, int) or isinstance(usable, bool) or usable > n["count"]:
            raise ZooError(f"{nw}.usable = {usable!r}: expected an integer <= count ({n['count']})")
        nets.append(NetCount(n["count"], str(n.get("architecture", UNKNOWN)), str(n.get("data", UNKNOWN)), usable))
    options = d.get("import", {})
    if not isinstance(options, dict):
        raise ZooError(f"{where}: [import] should be a table of importer options")
    provenance = d.get("provenance", {})
    if not isinstance(provenance, dict) or not all(isinstance(v, str) for v in provenance.values()):
        raise ZooError(f"{where}: [provenance] should be a table of fact = \"where it was read\" lines")
    return Card(name=name, description=need("description"), format=fmt, files=tuple(files), nets=tuple(nets),
                licence=need("licence"), citation=need("citation"), size=str(d.get("size", UNKNOWN)) or UNKNOWN,
                homepage=str(d.get("homepage", "")), options={k: str(v) for k, v in options.items()},
                notes=str(d.get("notes", "")), doi=str(d.get("doi", "")), provenance=dict(provenance), path=path)


def write_card(path, card: Card) -> None:
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(tomli_w.dumps(card.to_toml_dict()))
