"""argparse types for count, size and list flags: a bad value stops the command before any work, with argparse's
"argument --flag: ..." message, instead of a crash (or a silent change of meaning) minutes into a run."""

from __future__ import annotations

import argparse
import math


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
