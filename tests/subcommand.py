"""Run one command module's subcommands the way the CLI parses them, but with exceptions propagating (the CLI
itself turns them into exit status 2), so a test sees exactly what went wrong."""

from __future__ import annotations

import argparse
from typing import Callable


def run_subcommand(register: Callable[[argparse._SubParsersAction], None], *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="dualhrq")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)
