"""``zoo download``: fetch a catalogue entry's files, check them, import them into a zoo.

Files go through pooch (cache, progress bar, sha256 check): pooch writes each download to
a temporary file and moves it into the cache only when it is complete and its hash
matches, so a failed, truncated or tampered download leaves no file behind. Raw files
are cached in ``<root>/.cache/``; the converted zoo lands in ``<root>/<name>/``
(or ``--to DIR``) through the importers' write-then-rename.

When a card's sha256 is ``"unknown"`` (the publisher gives none), the first download's
hash is recorded beside the file (``<file>.sha256``) and reported as *not verified*;
later downloads are checked against that record.
"""
from __future__ import annotations

import shutil
import sys
import urllib.parse
from pathlib import Path

from .catalogue import UNKNOWN, Card, NetCount, SourceFile, default_root
from .errors import ZooError
from .store import MANIFEST, atomic_path, read_manifest, sha256_file


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


def fetch(f: SourceFile, cache: Path, progress: bool = True, log=_say) -> tuple[Path, str, bool]:
    """Download ``f`` into ``cache`` (or reuse a cached copy). Returns (path, sha256, verified)."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    record = cache / f"{f.name}.sha256"
    expected = f.sha256 if f.sha256 != UNKNOWN else (_read_record(record) if record.exists() else None)
    target = cache / f.name
    local = _local_path(f.url)
    if local is not None:
        _copy_local(local, target, expected)
    else:
        _pooch_get(f, cache, expected, progress)
    if f.size_bytes and target.stat().st_size != f.size_bytes:
        target.unlink()
        raise ZooError(f"{f.url}: downloaded {target.stat().st_size} bytes, the card says {f.size_bytes}; "
                       f"the file was discarded")
    sha = sha256_file(target)
    if f.sha256 != UNKNOWN:
        return target, sha, True
    if expected is None:
        with atomic_path(record) as tmp:
            tmp.write_text(f"{sha}  {f.name}\n")
        log(f"warning: {f.name}: the publisher gives no sha256, so this download was NOT verified; "
            f"its sha256 {sha} is recorded in {record} and later downloads are checked against it")
    return target, sha, False


def _read_record(path: Path) -> str:
    text = path.read_text().split()
    if not text or len(text[0]) != 64:
        raise ZooError(f"{path}: not a sha256 record; delete it to download again without verification")
    return text[0]


def _local_path(url: str) -> Path | None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme in ("", None) or (len(parsed.scheme) == 1 and url[1:3] in (":\\", ":/")):
        return Path(url)
    return None


def _copy_local(src: Path, target: Path, expected: str | None) -> None:
    if not src.is_file():
        raise ZooError(f"{src} does not exist (a local file named by the card)")
    if target.exists() and (expected is None or sha256_file(target) == expected):
        return
    with atomic_path(target) as tmp:
        shutil.copyfile(src, tmp)
        if expected is not None:
            got = sha256_file(tmp)
            if got != expected:
                raise ZooError(f"{src}: sha256 {got} does not match the expected {expected}; nothing was kept")


def _pooch_get(f: SourceFile, cache: Path, expected: str | None, progress: bool) -> None:
    import pooch
    import requests

    known = f"sha256:{expected}" if expected else None
    try:
        pooch.retrieve(f.url, known_hash=known, fname=f.name, path=cache, progressbar=progress)
    except ValueError as e:  # pooch's hash mismatch
        if "hash" not in str(e).lower():
            raise ZooError(f"{f.url}: {e}") from e
        raise ZooError(f"{f.url}: the downloaded file does not match its sha256 (expected {expected}); "
                       f"it was discarded and nothing was written. The file may have changed upstream "
                       f"or the download was corrupted; try again or check the card.") from e
    except requests.exceptions.ConnectionError as e:
        if _is_truncation(e):
            raise _truncated(f.url, e) from e
        host = urllib.parse.urlparse(f.url).netloc
        raise ZooError(f"could not reach {host} to download {f.url} (offline, or the server is down); "
                       f"nothing was written") from e
    except requests.exceptions.Timeout as e:
        raise ZooError(f"{f.url}: the server did not answer in time; nothing was written") from e
    except requests.exceptions.HTTPError as e:
        code = e.response.status_code if e.response is not None else "?"
        raise ZooError(f"{f.url}: the server answered HTTP {code}; nothing was written") from e
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as e:
        raise _truncated(f.url, e) from e
    except requests.exceptions.RequestException as e:
        raise ZooError(f"{f.url}: download failed ({type(e).__name__}: {e}); nothing was written") from e


def _is_truncation(e) -> bool:
    return "IncompleteRead" in repr(e) or "Connection broken" in repr(e)


def _truncated(url, e) -> ZooError:
    return ZooError(f"{url}: the download was cut short (connection closed before the end of the file); "
                    f"the partial file was discarded and nothing was written")


def target_for(card: Card, to=None) -> Path:
    return Path(to) if to else default_root() / card.name


def is_downloaded(card: Card, to=None) -> bool:
    return (target_for(card, to) / MANIFEST).is_file()


def download(card: Card, to=None, *, force: bool = False, progress: bool = True, log=_say) -> dict:
    """Fetch ``card``'s files and import them into a zoo at ``to`` (default ``<root>/<name>``).

    Returns the zoo's manifest. An existing zoo there is kept unless ``force``."""
    from .importers import run_import

    dest = target_for(card, to)
    if (dest / MANIFEST).is_file() and not force:
        log(f"{card.name}: already here at {dest} (pass --force to download and import again)")
        return read_manifest(dest)
    # Shared by file name, so two cards of one upstream archive (lim2024) download it once.
    cache = dest.parent / ".cache"
    fetched = []
    for f in card.files:
        log(f"{card.name}: fetching {f.url}")
        path, sha, verified = fetch(f, cache, progress=progress, log=log)
        fetched.append((path, {"url": f.url, "file": f.name, "sha256": sha, "verified": verified}))
    src = fetched[0][0] if len(fetched) == 1 else _gather(cache / f".files-{card.name}", [p for p, _ in fetched])
    log(f"{card.name}: importing ({card.format}) into {dest}")
    source = {"card": card.name, "files": [info for _, info in fetched], "licence": card.licence,
              "citation": card.citation}
    try:
        return run_import(card.format, src, dest, options=card.options, force=force, name=card.name, source=source)
    finally:
        if src != fetched[0][0]:
            shutil.rmtree(src, ignore_errors=True)


def _gather(folder: Path, paths: list[Path]) -> Path:
    """A folder holding exactly this card's files (hard links, so nothing large is copied)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for p in paths:
        try:
            (folder / p.name).hardlink_to(p)
        except OSError:
            shutil.copy2(p, folder / p.name)
    return folder


def card_for_url(url: str, sha256: str, fmt: str = "metazoo", name: str | None = None) -> Card:
    """An ad-hoc card for ``zoo download --url URL --sha256 HASH``."""
    from .catalogue import card_from_dict

    stem = urllib.parse.urlparse(url).path.rstrip("/").rsplit("/", 1)[-1] or "download"
    for suffix in (".tar.gz", ".tgz", ".tar.xz", ".tar", ".zip"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    d = {"name": (name or stem).lower(), "description": f"downloaded from {url}", "format": fmt,
         "files": [{"url": url, "sha256": sha256}], "nets": [], "licence": UNKNOWN, "citation": UNKNOWN}
    c = card_from_dict(d, where="--url/--sha256")
    return c


__all__ = ["NetCount", "card_for_url", "download", "fetch", "is_downloaded", "target_for"]
