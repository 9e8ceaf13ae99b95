"""Log lines a client cannot forge: what it sent (a request id, a path) is logged with its control characters
escaped, one record to a line; the JSON lines carry the message as it was."""

from __future__ import annotations

import json
import logging
import sys

from dualhrq.runtime.logs import JsonFormatter, LineFormatter

FORGED = "x\n2026-12-04 00:00:00,000 CRITICAL forged line\r\x00\x1b[2J"


def _record(*args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("dualhrq.runtime.server", logging.ERROR, __file__, 1, "request %s failed", args, info)


def test_a_client_string_with_control_characters_stays_on_its_line():
    line = LineFormatter("%(levelname)s %(name)s: %(message)s").format(_record(FORGED))
    assert "\n" not in line and "\r" not in line and "\x00" not in line and "\x1b" not in line
    assert line == ("ERROR dualhrq.runtime.server: request x\\n2026-12-04 00:00:00,000 CRITICAL forged line\\r\\x00"
                    "\\x1b[2J failed")


def test_a_traceback_still_follows_the_line():
    text = LineFormatter("%(message)s").format(_record("r1", exc=True))
    assert text.startswith("request r1 failed\nTraceback") and text.endswith("ValueError: boom")


def test_json_lines_keep_the_message_as_sent():
    out = json.loads(JsonFormatter().format(_record(FORGED)))
    assert out["msg"] == f"request {FORGED} failed"
