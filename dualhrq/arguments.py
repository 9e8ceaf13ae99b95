"""argparse types for count, size and list flags: a bad value stops the command before any work, with argparse's
"argument --flag: ..." message, instead of a crash (or a silent change of meaning) minutes into a run."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from dualhrq.config import MAX_PORT, tcp_port_problem


def _number(text: str, kind: type) -> int | float:
    what = "an integer" if kind is int else "a number"
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _items(text: str, example: str) -> list[str]:
    items = [w.strip() for w in text.split(",") if w.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, e.g. {example}; got {text!r}")
    return items


def names(text: str) -> list[str]:
    """A comma-separated list of names, at least one."""
    return _items(text, "onnx-fp32,onnx-int8")


def positive_ints(text: str) -> list[int]:
    """A comma-separated list of integers >= 1, at least one."""
    return [positive_int(item) for item in _items(text, "1,2,4")]


def port(text: str) -> int:
    """A TCP port number, 0..65535 (0: none)."""
    value = nonnegative_int(text)
    if value > MAX_PORT:
        raise argparse.ArgumentTypeError(f"must be <= {MAX_PORT}, got {text!r}")
    return value


def tcp_address(following: int = 0) -> Callable[[str], str]:
    """argparse type of an address whose tcp:// port (and the ``following`` ports after it, which it implies too)
    is in range: ZeroMQ would take 99999 modulo 65536 and listen on 34463."""
    def check(text: str) -> str:
        problem = tcp_port_problem(text, following)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return text

    return check


def zmq_address(text: str) -> str:
    """argparse type of --connect: an address a client connects to, tcp://HOST:PORT or ipc://PATH (ZeroMQ itself
    raises on a malformed one only at the first socket, with no flag named)."""
    scheme, _, rest = text.partition("://")
    host, _, number = rest.rpartition(":")
    if not ((scheme == "ipc" and rest) or (scheme == "tcp" and host and number.isdigit())):
        raise argparse.ArgumentTypeError(f"expected tcp://HOST:PORT or ipc://PATH, got {text!r}")
    return tcp_address()(text)
