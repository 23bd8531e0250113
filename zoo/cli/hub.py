"""``zoo catalogue``, ``zoo download``, ``zoo import`` and ``zoo pack`` (prebuilt weight datasets)."""
from __future__ import annotations

from pathlib import Path

from ..errors import ZooError
from ..hub.catalogue import cards, find, load_card
from ..hub.download import card_for_url, check_card_urls, download, is_downloaded, target_for
from ..hub.importers import run_import
from ..hub.pack import pack
from ..hub.safety import Limits


def register(sub) -> None:
    """Add the hub sub-commands to the ``zoo`` parser."""
    p = sub.add_parser("catalogue", help="list the prebuilt weight datasets and which are already here",
                       description="List the catalogue of prebuilt weight datasets (datasets/cards/*.toml).")
    p.add_argument("--root", help="where downloads land (default: datasets/ of this clone, or $METAZOO_DATASETS)")
    p.add_argument("--check", action="store_true",
                   help="ask every card's URLs (HEAD or a one-byte range request) and print, per file, whether it "
                        "is reachable, its size, and whether a checksum is known (for maintainers, online)")
    p.add_argument("--mirror", metavar="URL", help="with --check: ask this base URL instead (default: $METAZOO_MIRROR if set)")
    p.set_defaults(func=cmd_catalogue)

    p = sub.add_parser("download", help="download a prebuilt weight dataset and import it as a zoo",
                       description="Download NAME's files (resuming an interrupted download, checked against the "
                                   "card's sha256/md5), and convert them into a metazoo zoo under "
                                   "datasets/NAME/ (or --to DIR).")
    p.add_argument("name", nargs="?", help="catalogue entry (see `zoo catalogue`)")
    p.add_argument("--card", help="a card file instead of a catalogue name (e.g. one written by `zoo pack`)")
    p.add_argument("--url", help="download this URL instead (needs --sha256)")
    p.add_argument("--sha256", help="sha256 of the file at --url, or 'unknown'")
    p.add_argument("--format", default="metazoo", help="importer for --url (default: metazoo, a `zoo pack` archive)")
    p.add_argument("--to", help="folder for the zoo (default: <datasets root>/NAME)")
    p.add_argument("--force", action="store_true", help="download and import again over an existing zoo")
    p.add_argument("--mirror", metavar="URL",
                   help="fetch the same file names from this base URL instead (an institutional mirror); "
                        "default: $METAZOO_MIRROR if set")
    _limit_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("import", help="convert weight files you already have into a zoo",
                       description="Run an importer on local files: FORMAT is lim2024, smallcnnzoo, modelzoos "
                                   "or metazoo; PATH a folder or an archive.")
    p.add_argument("format", help="lim2024 | smallcnnzoo | modelzoos | metazoo")
    p.add_argument("path", help="upstream folder or archive")
    p.add_argument("--out", required=True, help="folder for the new zoo")
    p.add_argument("--name", help="zoo name (default: from the format)")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="importer option, e.g. model_type=sparse_resnet8 (lim2024), epochs=all or dataset=mnist "
                        "(smallcnnzoo), epochs=10,50 (modelzoos)")
    p.add_argument("--force", action="store_true",
                   help="replace --out if it is a zoo (a folder holding anything else is never replaced)")
    _limit_argument(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("pack", help="write a release archive of a zoo and its catalogue card",
                       description="Pack a verified zoo into a tar archive plus a card (sha256, size, counts) "
                                   "that `zoo download --card` accepts.")
    p.add_argument("dir", help="the zoo folder")
    p.add_argument("--out", required=True, help="archive to write (.tar, .tar.gz, .tgz or .tar.xz)")
    p.add_argument("--url", help="where the archive will be hosted (goes into the card)")
    p.add_argument("--card", help="card file to write (default: NAME.toml beside the archive)")
    p.add_argument("--name", help="catalogue name (default: the zoo's name)")
    p.add_argument("--description", help="one-line description for the card")
    p.add_argument("--licence", default="unknown", help="licence for the card")
    p.add_argument("--citation", default="unknown", help="citation for the card")
    p.set_defaults(func=cmd_pack)


def _limit_argument(p) -> None:
    p.add_argument("--max-unpack-gb", type=float, metavar="GB",
                   help="refuse archives that expand beyond GB (default 100, or $METAZOO_MAX_UNPACK_GB); "
                        "guards against decompression bombs")


def _limits(args):
    limits = Limits.default()
    return limits.with_max_gb(args.max_unpack_gb) if args.max_unpack_gb is not None else limits


def cmd_catalogue(args) -> int:
    all_cards = cards()
    if not all_cards:
        raise ZooError("no catalogue cards found (expected datasets/cards/*.toml or an installed zoo/_catalogue)")
    if args.check:
        return _check(all_cards, args.mirror)
    rows = []
    for name, c in sorted(all_cards.items()):
        to = Path(args.root) / name if args.root else None
        nets = "; ".join(f"{n.count:,} {n.architecture} on {n.data}" for n in c.nets) or "?"
        short = c.size.split(" (")[0].split(";")[0] + (" est." if "estimate" in c.size else "")
        rows.append((name, "here" if is_downloaded(c, to) else "-", c.format, short, nets))
    widths = [max(len(r[i]) for r in rows + [("NAME", "LOCAL", "FORMAT", "SIZE", "NETS")]) for i in range(4)]
    header = ("NAME", "LOCAL", "FORMAT", "SIZE", "NETS")
    for r in [header] + rows:
        print("  ".join(v.ljust(w) for v, w in zip(r[:4], widths)) + "  " + r[4])
    for name, c in sorted(all_cards.items()):
        usable = "; ".join(f"{n.usable:,} usable" for n in c.nets if n.usable >= 0) or "usable count: at import"
        print(f"\n{name}: {c.description}\n  licence: {c.licence}; {usable}" + (f"; doi:{c.doi}" if c.doi else ""))
    return 0


def _check(all_cards, mirror) -> int:
    """Per file: reachable, size (against the card's), checksum known. Exit 1 if any
    required file is unreachable; offline (no host answers) one line and exit 2."""
    results = {name: check_card_urls(c, mirror) for name, c in sorted(all_cards.items())}
    rows = [r for rs in results.values() for r in rs]
    if rows and all(r["error"] == "ConnectionError" or (r["error"] and not r["reachable"]) for r in rows):
        hosts = sorted({r["url"].split("/")[2] for r in rows if "://" in r["url"]})
        raise ZooError(f"offline: none of the catalogue's hosts answered ({', '.join(hosts)}); "
                       f"zoo catalogue --check needs the internet (or --mirror URL)")
    bad = 0
    for name, rs in results.items():
        card = all_cards[name]
        for f, r in zip(card.files, rs):
            if r["reachable"]:
                size = "size ?" if r["size"] is None else f"{r['size']:,} bytes"
                if r["size"] is not None and f.size_bytes:
                    kind = "card: measured" if f.size_measured else "card estimate"
                    same = r["size"] == f.size_bytes
                    size += "" if same else f" ({kind} {f.size_bytes:,})"
                    if f.size_measured and not same:
                        bad += 1
                state = "reachable"
            else:
                why = r["error"] or f"HTTP {r['status']}"
                state = f"NOT reachable ({why})" + (" [optional]" if f.optional else "")
                size = "-"
                bad += 0 if f.optional else 1
            checks = ", ".join(k for k, v in (("sha256", f.sha256), ("md5", f.md5)) if v != "unknown") or "none"
            name_note = "" if f.name_confirmed or not r["reachable"] else " (file name now confirmed: set "                 "name_confirmed = true)"
            print(f"{name}  {f.name}  {state}  {size}  checksum: {checks}{name_note}")
    print(f"{len(rows)} files checked; {bad} problem(s)")
    return 1 if bad else 0


def cmd_download(args) -> int:
    given = [x for x in (args.name, args.card, args.url) if x]
    if len(given) != 1:
        raise ZooError("give exactly one of NAME, --card CARD or --url URL")
    if args.url:
        if not args.sha256:
            raise ZooError("--url needs --sha256 HASH (or --sha256 unknown to skip verification)")
        card = card_for_url(args.url, args.sha256, args.format)
    elif args.card:
        card = load_card(args.card)
    else:
        card = find(args.name)
    m = download(card, args.to, force=args.force, progress=not args.no_progress, mirror=args.mirror,
                 limits=_limits(args))

    dropped = (m.get("source") or {}).get("dropped") or []
    note = f" ({len(dropped)} upstream nets dropped; see manifest source.dropped)" if dropped else ""
    print(f"{card.name}: {m['num_models']} models, {m['num_params']} parameters each -> "
          f"{target_for(card, args.to)}{note}")
    return 0


def cmd_import(args) -> int:
    options = {}
    for o in args.option:
        if "=" not in o:
            raise ZooError(f"--option {o!r}: expected KEY=VALUE")
        k, v = o.split("=", 1)
        options[k.strip()] = v.strip()
    m = run_import(args.format, args.path, args.out, options=options, force=args.force, name=args.name,
                   limits=_limits(args))
    dropped = (m.get("source") or {}).get("dropped") or []
    note = f" ({len(dropped)} upstream nets dropped; see manifest source.dropped)" if dropped else ""
    print(f"{m['name']}: {m['num_models']} models, {m['num_params']} parameters each -> {args.out}{note}")
    return 0


def cmd_pack(args) -> int:
    out, card = pack(args.dir, args.out, url=args.url, card_path=args.card, name=args.name,
                     description=args.description, licence=args.licence, citation=args.citation)
    f = card.files[0]
    print(f"wrote {out} ({card.size}, sha256 {f.sha256})")
    print(f"card: {args.card or out.with_name(card.name + '.toml')}")
    return 0

