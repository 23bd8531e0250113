"""The ``zoo`` command line: generate, inspect, verify and fetch weight datasets.

The commands on zoos (generate, info, verify, merge, status, check-hparams) are in
:mod:`zoo.cli.zoos`, those of the hub (list, download, import, pack) in :mod:`zoo.cli.hub`.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import ZooError
from ..analyze import cli as analyze_cli
from . import hub, zoos


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ZooError as e:
        print(f"zoo {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.
        return 0
    except KeyboardInterrupt:
        print(f"zoo {args.command}: interrupted; finished work is kept (rerun to resume)", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo",
        description="metazoo: generate, inspect and download weight-space model zoos.",
        epilog="Run 'zoo COMMAND --help' for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    zoos.register(sub)
    hub.register(sub)
    analyze_cli.register(sub)
    return parser

