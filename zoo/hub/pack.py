"""``zoo pack``: a release archive of a zoo plus a ready catalogue card.

The archive is a tar (gzip/xz by suffix) holding one folder, ``<name>/``, with the
manifest and shards. The card carries the archive's sha256 and size, the counts from the
manifest, and the URL where it will be hosted, so others fetch it with
``zoo download --card CARD`` (or ``--url URL --sha256 HASH``). Only a zoo that passes
``verify`` is packed.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

from ..console import human_bytes
from ..errors import ZooError
from ..fs import atomic_path
from ..store import MANIFEST, read_manifest, sha256_file, verify
from .catalogue import Card, NetCount, SourceFile, write_card

_MODES = {".tar.gz": "w:gz", ".tgz": "w:gz", ".tar.xz": "w:xz", ".tar": "w"}


def _mode(out: Path) -> str:
    name = out.name.lower()
    for suffix, mode in _MODES.items():
        if name.endswith(suffix):
            return mode
    raise ZooError(f"--out {out}: name the archive .tar, .tar.gz, .tgz or .tar.xz")


def pack(zoo_dir, out, *, url: str | None = None, card_path=None, name: str | None = None,
         description: str | None = None, licence: str = "unknown", citation: str = "unknown") -> tuple[Path, Card]:
    """Write ``out`` (the archive) and a card beside it (or at ``card_path``); return both."""
    zoo_dir, out = Path(zoo_dir), Path(out)
    m = read_manifest(zoo_dir)
    problems = verify(zoo_dir)
    if problems:
        raise ZooError(f"{zoo_dir} fails verification, so it is not packed: " + "; ".join(problems[:5]))
    mode = _mode(out)
    name = (name or m["name"]).lower()
    files = [MANIFEST] + [s["file"] for s in m["shards"]]
    with atomic_path(out) as tmp:
        with tarfile.open(tmp, mode) as tf:
            for f in files:
                tf.add(zoo_dir / f, arcname=f"{name}/{f}", recursive=False)
    sha, size = sha256_file(out), out.stat().st_size
    net = m.get("net") or {}
    arch = _arch(net, m)
    data = (m.get("data") or {}).get("name", "unknown") if isinstance(m.get("data"), dict) else "unknown"
    card = Card(
        name=name,
        description=description or f"{m['num_models']} {arch} nets ({m['num_params']} parameters each), "
                                   f"packed with metazoo",
        format="metazoo",
        files=(SourceFile(url=url or out.resolve().as_uri(), sha256=sha, filename=out.name, size_bytes=size),),
        nets=(NetCount(int(m["num_models"]), arch, data),),
        licence=licence, citation=citation, size=human_bytes(size),
        notes="" if url else "url is this machine's file; replace it with where the archive is hosted",
    )
    card_path = Path(card_path) if card_path else out.with_name(f"{name}.toml")
    write_card(card_path, card)
    return out, card


def _arch(net: dict, m: dict) -> str:
    if not net:
        return f"custom ({m['num_params']} parameters)"
    kind = "W-Asym " if net.get("wasym") else ""
    kind += "sigma-Asym " if net.get("activation") == "figlu" else ""
    width = "" if net.get("width", 1.0) == 1.0 else f" x{net['width']}"
    return f"{kind}ResNet{net.get('depth', '?')}{width}"
