"""``zoo download``: fetch a catalogue entry's files, check them, import them into a zoo.

Published zoos are several GB, so a download

* resumes: bytes arrive in ``<cache>/<file>.part``; a rerun (or an automatic retry after a
  dropped connection, at most :data:`ATTEMPTS` in one run) asks for the rest with an HTTP
  ``Range`` request, and starts again from zero when the server ignores ``Range``;
* checks the free disk before it starts, and shows a progress bar (bytes, rate, ETA);
* is verified at the end against the card's sha256 and/or md5 (Zenodo publishes md5). Only
  a verified file is renamed to ``<cache>/<file>``, the one name that counts as complete; a
  mismatch deletes the partial file, so nothing damaged is ever reused.

When a card gives no checksum (Google's bucket publishes none) the first download's
sha256 is recorded in ``<file>.sha256`` and reported as *not verified*; later downloads
are checked against it. ``--mirror URL`` (or ``$METAZOO_MIRROR``) fetches the same file
names from another base URL. The converted zoo lands in ``<root>/<name>/`` (or ``--to
DIR``) through the importers' write-then-rename.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import urllib.parse
from pathlib import Path

import requests

from .. import console
from ..errors import ZooError
from ..fs import atomic_path
from ..store import MANIFEST, read_manifest
from .catalogue import Card, SourceFile, UNKNOWN, card_from_dict, default_root
from .importers import run_import
from .importers.common import claim_output

#: Connection attempts per file in one run (each resumes where the last stopped).
ATTEMPTS = 5
MIRROR_ENV = "METAZOO_MIRROR"
_SCHEMES = ("http", "https", "file")
_TIMEOUT = (15, 120)  # connect, read (seconds)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


def source_url(f: SourceFile, mirror: str | None = None) -> str:
    """Where to fetch ``f``: its own URL, or the same file name under ``mirror``."""
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    url = f"{mirror.rstrip('/')}/{urllib.parse.quote(f.name)}" if mirror else f.url
    check_url(url, "--mirror" if mirror else "url")
    return url


def check_url(url: str, what: str = "url") -> None:
    parsed = urllib.parse.urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme in _SCHEMES or scheme == "" or (len(scheme) == 1 and url[1:3] in (":\\", ":/")):
        if scheme in ("http", "https") and not parsed.netloc:
            raise ZooError(f"{what} {url!r} names no host")
        return
    raise ZooError(f"{what} {url!r}: unsupported URL scheme '{scheme}://' (metazoo downloads http://, https:// "
                   f"and file:// URLs, or local paths)")


def fetch(f: SourceFile, cache: Path, progress: bool = True, log=_say, mirror: str | None = None):
    """Download ``f`` into ``cache`` (or reuse a verified copy). Returns (path, sha256, verified),
    or None for an optional file the server does not have."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    url = source_url(f, mirror)
    record = cache / f"{f.name}.sha256"
    want_sha = f.sha256 if f.sha256 != UNKNOWN else (_read_record(record) if record.exists() else None)
    target, part = cache / f.name, cache / f"{f.name}.part"
    if target.exists():
        if want_sha is not None and _hashes(target, f.md5 != UNKNOWN)[0] == want_sha:
            return target, want_sha, f.has_checksum
        target.unlink()  # unverifiable or damaged: fetch again
    local = _local_path(url)
    if local is not None:
        if not local.is_file():
            if f.optional:
                return None
            raise ZooError(f"{local} does not exist (a local file named by the card)")
        shutil.copyfile(local, part)
    elif not _http_get(url, part, f, progress, log):
        return None
    sha, md5 = _hashes(part, f.md5 != UNKNOWN)
    for algo, got, want in (("sha256", sha, want_sha), ("md5", md5, f.md5 if f.md5 != UNKNOWN else None)):
        if want is not None and got != want:
            part.unlink()
            raise ZooError(f"{url}: the downloaded file does not match its {algo} (expected {want}, got {got}); "
                           f"it was discarded and nothing was written. The file may have changed upstream or "
                           f"the download was corrupted; try again or check the card.")
    if f.size_measured and f.size_bytes and part.stat().st_size != f.size_bytes:
        size = part.stat().st_size
        part.unlink()
        raise ZooError(f"{url}: downloaded {size} bytes, the card says {f.size_bytes}; the file was discarded")
    os.replace(part, target)
    if f.has_checksum:
        return target, sha, True
    if want_sha is None:
        with atomic_path(record) as tmp:
            tmp.write_text(f"{sha}  {f.name}\n")
        log(f"warning: {f.name}: the publisher gives no checksum, so this download was NOT verified; "
            f"its sha256 {sha} is recorded in {record} and later downloads are checked against it")
    return target, sha, False


def _hashes(path: Path, with_md5: bool) -> tuple[str, str | None]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False) if with_md5 else None
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            sha.update(block)
            if md5 is not None:
                md5.update(block)
    return sha.hexdigest(), (md5.hexdigest() if md5 is not None else None)


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


def _http_get(url: str, part: Path, f: SourceFile, progress: bool, log) -> bool:
    """Fill ``part`` with the whole body of ``url``, resuming what is there. False: an optional
    file the server does not have."""
    host = urllib.parse.urlparse(url).netloc
    for attempt in range(1, ATTEMPTS + 1):
        have = part.stat().st_size if part.exists() else 0
        try:
            with requests.get(url, headers={"Range": f"bytes={have}-"} if have else {}, stream=True,
                              timeout=_TIMEOUT) as r:
                if r.status_code == 416 and have:  # nothing after `have`: the partial file is stale
                    part.unlink()
                    continue
                if r.status_code == 404 and f.optional:
                    return False
                r.raise_for_status()
                resumed = have > 0 and r.status_code == 206 and \
                    r.headers.get("Content-Range", "").startswith(f"bytes {have}-")
                if have and not resumed:
                    log(f"{f.name}: the server ignores resume requests; downloading from the start")
                    have = 0
                length = int(r.headers.get("Content-Length", 0) or 0)
                total = have + length if length else (f.size_bytes or None)
                check_free_disk(part.parent, (total or 0) - have, f.name)
                try:
                    with open(part, "ab" if have else "wb") as out, \
                            console.progress(total, enabled=progress, desc=f.name, unit="B", initial=have,
                                             unit_scale=True, unit_divisor=1024, leave=False) as bar:
                        for chunk in r.iter_content(1 << 16):  # small: a lost connection loses < 64 KiB
                            out.write(chunk)
                            bar.update(len(chunk))
                except OSError as e:
                    if isinstance(e, requests.exceptions.RequestException):
                        raise
                    raise ZooError(f"could not write {part}: {e.strerror or e}; the partial file is kept: free "
                                   f"space (or fix the folder) and run the command again to resume") from e
                if length and part.stat().st_size < have + length:
                    raise requests.exceptions.ChunkedEncodingError("connection closed before the end")
                return True
        except requests.exceptions.HTTPError as e:
            code = e.response.status_code if e.response is not None else "?"
            raise ZooError(f"{url}: the server answered HTTP {code}; nothing was written") from e
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError,
                requests.exceptions.Timeout) as e:
            got = part.stat().st_size if part.exists() else 0
            if got == 0 and isinstance(e, requests.exceptions.ConnectionError) and not _is_truncation(e):
                raise ZooError(f"could not reach {host} to download {url} (offline, or the server is down); "
                               f"nothing was written") from e
            if attempt == ATTEMPTS:
                raise ZooError(f"{url}: the download was cut short {ATTEMPTS} times (connection lost after "
                               f"{got:,} bytes); the partial file {part} is kept: run the command again to "
                               f"resume") from e
            log(f"{f.name}: connection lost after {got:,} bytes; resuming (attempt {attempt + 1} of {ATTEMPTS})")
        except requests.exceptions.RequestException as e:
            raise ZooError(f"{url}: download failed ({type(e).__name__}: {e}); nothing was written") from e
    raise ZooError(f"{url}: the server kept answering 'range not satisfiable'; delete {part} and retry")


def _is_truncation(e) -> bool:
    return "IncompleteRead" in repr(e) or "Connection broken" in repr(e)


def check_free_disk(folder: Path, need: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if need > free:
        raise ZooError(f"not enough free disk for {what} in {folder}: it needs {need / 1e9:.2f} GB more, "
                       f"{free / 1e9:.2f} GB are free; free some space or download elsewhere (--to DIR)")


def target_for(card: Card, to=None) -> Path:
    return Path(to) if to else default_root() / card.name


def is_downloaded(card: Card, to=None) -> bool:
    return (target_for(card, to) / MANIFEST).is_file()


def download(card: Card, to=None, *, force: bool = False, progress: bool = True, log=_say,
             mirror: str | None = None, limits=None) -> dict:
    """Fetch ``card``'s files and import them into a zoo at ``to`` (default ``<root>/<name>``).

    Returns the zoo's manifest. An existing zoo there is kept unless ``force``."""
    dest = target_for(card, to)
    if (dest / MANIFEST).is_file() and not force:
        log(f"{card.name}: already here at {dest} (pass --force to download and import again)")
        return read_manifest(dest)
    claim_output(dest, force)  # refused before gigabytes are fetched, not after
    for f in card.files:
        source_url(f, mirror)  # an unsupported URL is refused before anything is fetched
    # Shared by file name, so cards of one upstream record download a shared file once.
    cache = dest.parent / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    # Sizes the card measured must fit; an estimate only warns (the server's Content-Length
    # is checked again before each file).
    todo = [f for f in card.files if not (cache / f.name).exists()]
    check_free_disk(cache, sum(f.size_bytes for f in todo if f.size_measured), f"{card.name}'s files")
    estimate, free = sum(f.size_bytes for f in todo), shutil.disk_usage(cache).free
    if estimate > free:
        log(f"warning: {card.name}: the card estimates {estimate / 1e9:.1f} GB to download, {free / 1e9:.1f} GB "
            f"are free in {cache}")
    fetched = []
    for f in card.files:
        log(f"{card.name}: fetching {source_url(f, mirror)}")
        got = fetch(f, cache, progress=progress, log=log, mirror=mirror)
        if got is None:
            log(f"{card.name}: {f.name} is not on the server (optional); going on without it")
            continue
        path, sha, verified = got
        fetched.append((path, {"url": source_url(f, mirror), "file": f.name, "sha256": sha, "verified": verified}))
    src = fetched[0][0] if len(fetched) == 1 else _gather(cache / f".files-{card.name}", [p for p, _ in fetched])
    log(f"{card.name}: importing ({card.format}) into {dest}")
    source = {"card": card.name, "files": [info for _, info in fetched], "licence": card.licence,
              "citation": card.citation, "doi": card.doi or None}
    return run_import(card.format, src, dest, options=card.options, force=force, name=card.name, source=source,
                      limits=limits)


def _gather(folder: Path, paths: list[Path]) -> Path:
    """A folder holding exactly this card's files (hard links, so nothing large is copied).
    Kept after the import so an interrupted import resumes on the same files."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for p in paths:
        try:
            (folder / p.name).hardlink_to(p)
        except OSError:
            shutil.copy2(p, folder / p.name)
    return folder


def check_card_urls(card: Card, mirror: str | None = None) -> list[dict]:
    """Ask the server about each of ``card``'s files (HEAD, else a one-byte range request):
    one dict per file with ``url``, ``reachable``, ``status``, ``size`` (bytes or None)."""
    rows = []
    for f in card.files:
        url = source_url(f, mirror)
        row = {"file": f.name, "url": url, "reachable": False, "status": None, "size": None, "error": None}
        local = _local_path(url)
        if local is not None:
            row.update(reachable=local.is_file(), size=local.stat().st_size if local.is_file() else None)
            rows.append(row)
            continue
        try:
            r = requests.head(url, allow_redirects=True, timeout=_TIMEOUT)
            if r.status_code >= 400 or not r.headers.get("Content-Length"):
                r = requests.get(url, headers={"Range": "bytes=0-0"}, stream=True, timeout=_TIMEOUT)
                r.close()
            row["status"] = r.status_code
            row["reachable"] = r.status_code < 400
            total = r.headers.get("Content-Range", "").rpartition("/")[2] if r.status_code == 206 else \
                r.headers.get("Content-Length")
            row["size"] = int(total) if total and total.isdigit() else None
        except requests.exceptions.RequestException as e:
            row["error"] = type(e).__name__
        rows.append(row)
    return rows


def card_for_url(url: str, sha256: str, fmt: str = "metazoo", name: str | None = None) -> Card:
    """An ad-hoc card for ``zoo download --url URL --sha256 HASH``."""
    check_url(url, "--url")
    stem = urllib.parse.urlparse(url).path.rstrip("/").rsplit("/", 1)[-1] or "download"
    for suffix in (".tar.gz", ".tgz", ".tar.xz", ".tar", ".zip"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    d = {"name": (name or stem).lower(), "description": f"downloaded from {url}", "format": fmt,
         "files": [{"url": url, "sha256": sha256}], "nets": [], "licence": UNKNOWN, "citation": UNKNOWN}
    return card_from_dict(d, where="--url/--sha256")


__all__ = ["card_for_url", "check_card_urls", "download", "fetch", "is_downloaded", "source_url", "target_for"]
