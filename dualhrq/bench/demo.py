"""`dualhrq demo`: the system end to end on the bundled data."""

from __future__ import annotations

import argparse

from dualhrq.cli import main as cli_main


def run_demo(args: argparse.Namespace) -> int:
    print("== parameter budget of the full model (config/hrm_27m.yaml)")
    rc = cli_main(["params", "--config", "config/hrm_27m.yaml", "--strict"])
    print("\n== forward pass of the tiny model")
    return rc or cli_main(["bench", "forward", "--config", "config/hrm_tiny.yaml", "--runs", "20"])
