"""Log lines that a client cannot forge: plain text with the message's control characters escaped, or one JSON
object per line with any `extra={...}` fields of the record."""

from __future__ import annotations

import json
import logging
import re
import time

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # a newline, a carriage return, a NUL, an escape sequence


class LineFormatter(logging.Formatter):
    """One record, one line (a traceback follows as ever): a request id, an instrument or a path that a client
    sent is logged with its control characters escaped (\\n, \\x00), so that it cannot start a line of its own."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _CONTROL.sub(lambda m: repr(m.group())[1:-1], record.message)
        return super().formatMessage(record)


_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "pid": record.process,
               "msg": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def use_json_logs() -> None:
    """Switch every root handler (as the CLI set them up) to JSON lines."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO)
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter())
