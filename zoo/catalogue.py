"""The catalogue of prebuilt weight datasets: one TOML card per dataset.

Cards live in ``datasets/cards/*.toml`` in a clone; a wheel ships the same files as
``zoo/_catalogue/*.toml`` (see pyproject's package-dir mapping). A card says where the
files are, their sha256 (or ``"unknown"`` when the publisher gives none), which importer
converts them, and what the zoo holds. Cards are validated when read, naming the field.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ZooError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

UNKNOWN = "unknown"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
FORMATS = ("lim2024", "smallcnnzoo", "modelzoos", "metazoo")


@dataclass(frozen=True)
class SourceFile:
    """One file to download: where from, its sha256 (or "unknown"), its size if known."""

    url: str
    sha256: str = UNKNOWN
    filename: str = ""
    size_bytes: int = 0

    @property
    def name(self) -> str:
        return self.filename or self.url.split("?")[0].rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class NetCount:
    count: int
    architecture: str
    data: str


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
    path: Path | None = field(default=None, compare=False)

    @property
    def num_nets(self) -> int:
        return sum(n.count for n in self.nets)

    def to_toml_dict(self) -> dict:
        d = asdict(self)
        d.pop("path")
        d["files"] = [{k: v for k, v in f.items() if v not in ("", 0)} for f in d["files"]]
        d["import"] = d.pop("options")
        return {k: v for k, v in d.items() if v not in ("", {}, None)}


def catalogue_dirs() -> list[Path]:
    """Where cards are read from: the wheel's copy, else the clone's ``datasets/cards``."""
    here = Path(__file__).resolve().parent
    dirs = [here / "_catalogue"]
    if _clone_root() is not None:
        dirs.append(_clone_root() / "datasets" / "cards")
    return [p for p in dirs if p.is_dir()]


def _clone_root() -> Path | None:
    """The repository root when running from a clone (editable install), else None; the
    pyproject check keeps us from mistaking site-packages' Hugging Face ``datasets`` for ours."""
    root = Path(__file__).resolve().parent.parent
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
    try:
        d = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ZooError(f"card {path} is not valid TOML: {e}") from e
    return card_from_dict(d, where=str(path), path=path)


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
        size = f.get("size_bytes", 0)
        if not isinstance(size, int) or size < 0:
            raise ZooError(f"{fw}.size_bytes = {size!r}: expected an integer >= 0")
        filename = f.get("filename", "")
        if filename and ("/" in filename or "\\" in filename or filename in (".", "..")):
            raise ZooError(f"{fw}.filename = {filename!r}: a plain file name, no folders")
        files.append(SourceFile(f["url"], sha, filename, size))
    if not files:
        raise ZooError(f"{where}: field 'files' lists no file")
    nets = []
    for i, n in enumerate(need("nets", list)):
        nw = f"{where}: nets[{i}]"
        if not isinstance(n, dict) or not isinstance(n.get("count"), int) or n["count"] < 0:
            raise ZooError(f"{nw}: needs 'count' (integer >= 0), 'architecture' and 'data'")
        nets.append(NetCount(n["count"], str(n.get("architecture", UNKNOWN)), str(n.get("data", UNKNOWN))))
    options = d.get("import", {})
    if not isinstance(options, dict):
        raise ZooError(f"{where}: [import] should be a table of importer options")
    return Card(name=name, description=need("description"), format=fmt, files=tuple(files), nets=tuple(nets),
                licence=need("licence"), citation=need("citation"), size=str(d.get("size", UNKNOWN)),
                homepage=str(d.get("homepage", "")), options={k: str(v) for k, v in options.items()},
                notes=str(d.get("notes", "")), path=path)


def write_card(path, card: Card) -> None:
    import tomli_w

    from .store import atomic_path

    with atomic_path(Path(path)) as tmp:
        tmp.write_text(tomli_w.dumps(card.to_toml_dict()))
