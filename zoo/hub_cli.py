"""``zoo catalogue``, ``zoo download``, ``zoo import`` and ``zoo pack`` (prebuilt weight datasets)."""
from __future__ import annotations

from .errors import ZooError


def register(sub) -> None:
    """Add the hub sub-commands to the ``zoo`` parser."""
    p = sub.add_parser("catalogue", help="list the prebuilt weight datasets and which are already here",
                       description="List the catalogue of prebuilt weight datasets (datasets/cards/*.toml).")
    p.add_argument("--root", help="where downloads land (default: datasets/ of this clone, or $METAZOO_DATASETS)")
    p.set_defaults(func=cmd_catalogue)

    p = sub.add_parser("download", help="download a prebuilt weight dataset and import it as a zoo",
                       description="Download NAME's files (checked against their sha256), and convert them "
                                   "into a metazoo zoo under datasets/NAME/ (or --to DIR).")
    p.add_argument("name", nargs="?", help="catalogue entry (see `zoo catalogue`)")
    p.add_argument("--card", help="a card file instead of a catalogue name (e.g. one written by `zoo pack`)")
    p.add_argument("--url", help="download this URL instead (needs --sha256)")
    p.add_argument("--sha256", help="sha256 of the file at --url, or 'unknown'")
    p.add_argument("--format", default="metazoo", help="importer for --url (default: metazoo, a `zoo pack` archive)")
    p.add_argument("--to", help="folder for the zoo (default: <datasets root>/NAME)")
    p.add_argument("--force", action="store_true", help="download and import again over an existing zoo")
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
                   help="importer option, e.g. variant=wasym (lim2024), dataset=mnist (smallcnnzoo), "
                        "epochs=10,50 (modelzoos)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
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


def cmd_catalogue(args) -> int:
    from pathlib import Path

    from .catalogue import cards
    from .download import is_downloaded

    all_cards = cards()
    if not all_cards:
        raise ZooError("no catalogue cards found (expected datasets/cards/*.toml or an installed zoo/_catalogue)")
    rows = []
    for name, c in sorted(all_cards.items()):
        to = Path(args.root) / name if args.root else None
        nets = "; ".join(f"{n.count:,} {n.architecture} on {n.data}" for n in c.nets) or "?"
        rows.append((name, "here" if is_downloaded(c, to) else "-", c.format, c.size, nets))
    widths = [max(len(r[i]) for r in rows + [("NAME", "LOCAL", "FORMAT", "SIZE", "NETS")]) for i in range(4)]
    header = ("NAME", "LOCAL", "FORMAT", "SIZE", "NETS")
    for r in [header] + rows:
        print("  ".join(v.ljust(w) for v, w in zip(r[:4], widths)) + "  " + r[4])
    for name, c in sorted(all_cards.items()):
        print(f"\n{name}: {c.description}")
    return 0


def cmd_download(args) -> int:
    from .catalogue import find, load_card
    from .download import card_for_url, download

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
    m = download(card, args.to, force=args.force, progress=not args.no_progress)
    from .download import target_for

    print(f"{card.name}: {m['num_models']} models, {m['num_params']} parameters each -> {target_for(card, args.to)}")
    return 0


def cmd_import(args) -> int:
    from .importers import run_import

    options = {}
    for o in args.option:
        if "=" not in o:
            raise ZooError(f"--option {o!r}: expected KEY=VALUE")
        k, v = o.split("=", 1)
        options[k.strip()] = v.strip()
    m = run_import(args.format, args.path, args.out, options=options, force=args.force, name=args.name)
    dropped = (m.get("source") or {}).get("dropped") or []
    note = f" ({len(dropped)} upstream nets dropped; see manifest source.dropped)" if dropped else ""
    print(f"{m['name']}: {m['num_models']} models, {m['num_params']} parameters each -> {args.out}{note}")
    return 0


def cmd_pack(args) -> int:
    from .pack import pack

    out, card = pack(args.dir, args.out, url=args.url, card_path=args.card, name=args.name,
                     description=args.description, licence=args.licence, citation=args.citation)
    f = card.files[0]
    print(f"wrote {out} ({card.size}, sha256 {f.sha256})")
    print(f"card: {args.card or out.with_name(card.name + '.toml')}")
    return 0

