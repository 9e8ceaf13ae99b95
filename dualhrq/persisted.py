"""Versioned JSON files, written and read one way: the checkpoint metadata, the input artifacts and the
bundle manifest are each a msgspec Struct with a ``format_version`` and ``forbid_unknown_fields``.

Reading checks the version first, so a file from another version of dualhrq gets "format N, this version
reads M" rather than a confusing complaint about a field; then the whole file is validated against its
Struct, and an error names the path of the bad field (``$.precisions[...].passed``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

import msgspec

from dualhrq.errors import ModelLoadError

T = TypeVar("T")


class _Versioned(msgspec.Struct):
    format_version: object = None


def write_record(path: Path, record: msgspec.Struct) -> None:
    """Write ``record`` as indented JSON, atomically: a crash mid-write never leaves half a file under the real
    name."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(record), indent=2) + b"\n")
    os.replace(tmp, path)


def read_record(path: Path, kind: type[T], version: int, remedy: str) -> T:
    """The ``kind`` record in ``path``. Raises ModelLoadError naming the file: missing, not JSON, another
    format version (with ``remedy``: what to do about it), or a field that does not validate."""
    if not path.is_file():
        raise ModelLoadError(f"{path.parent}: missing {path.name}")
    raw = path.read_bytes()
    try:
        found = msgspec.json.decode(raw, type=_Versioned).format_version
    except msgspec.DecodeError as e:
        raise ModelLoadError(f"{path}: not a {kind.__name__} JSON file: {e}") from None
    if found != version:
        raise ModelLoadError(f"{path}: format {found}, this version of dualhrq reads format {version}; {remedy}")
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.DecodeError as e:
        raise ModelLoadError(f"{path}: {e}") from None
