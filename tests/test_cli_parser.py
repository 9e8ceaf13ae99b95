"""The CLI's parser, built at every start: without torch or onnx (the serving runtime starts without PyTorch), and
with a help text for every option of every command; and its log lines, which never land inside a progress bar."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from dualhrq.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]  # the subprocesses import this checkout's dualhrq


def test_building_the_parser_loads_neither_torch_nor_onnx():
    probe = ("import json, sys; import dualhrq.cli; dualhrq.cli.build_parser(); "
             "print(json.dumps([m for m in ('torch', 'onnx') if m in sys.modules]))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            cwd=ROOT).stdout
    assert json.loads(loaded) == []


def test_serve_help_starts_without_torch():
    # `python -m dualhrq serve --help` exits while parsing; a poisoned torch shows whether it was imported.
    probe = ("import sys, runpy; sys.modules['torch'] = None; sys.modules['onnx'] = None; "
             "sys.argv = ['dualhrq', 'serve', '--help']; runpy.run_module('dualhrq', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "usage: dualhrq serve" in done.stdout


def _options(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        elif not isinstance(action, argparse._HelpAction):
            yield " ".join(path), "/".join(action.option_strings) or action.dest, action.help


def test_every_option_of_every_command_has_help():
    missing = [f"{command} {option}" for command, option, text in _options(build_parser()) if not text]
    assert missing == []


def test_a_log_line_during_a_progress_bar_starts_a_line_of_its_own():
    import io
    import logging

    from tqdm import tqdm

    from dualhrq.cli import _BarSafeHandler

    stream = io.StringIO()
    log = logging.getLogger("dualhrq.test_bar")
    handler = _BarSafeHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        with tqdm(total=2, file=stream, mininterval=0) as bar:
            bar.update(1)
            log.warning("hello")
            bar.update(1)
    finally:
        log.removeHandler(handler)
    before = stream.getvalue().split("WARNING hello")[0]
    assert before.endswith("\r") and before.rstrip("\r").endswith(" ")  # the bar was cleared, then the line
