"""SHA-256 manifests (``SHA256SUMS``, in ``sha256sum -c`` format) for saved pattern artifacts.

A pattern library is loaded by the server at startup; a truncated or altered file must be refused with a clear
error rather than loaded into a silently wrong index (or a crash inside hnswlib).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dualhrq.errors import ModelLoadError
from dualhrq.hashing import sha256_file

CHECKSUMS = "SHA256SUMS"


def write_checksums(directory: Path, names: Sequence[str]) -> None:
    (directory / CHECKSUMS).write_text("".join(f"{sha256_file(directory / n)}  {n}\n" for n in names))


def verify_checksums(directory: Path, names: Sequence[str]) -> None:
    """Raise ModelLoadError unless every named file exists and matches its recorded SHA-256."""
    sums = directory / CHECKSUMS
    if not sums.is_file():
        raise ModelLoadError(f"{sums}: checksum file missing; refusing unverified files")
    expected = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        expected[name] = digest
    for name in names:
        path = directory / name
        if name not in expected:
            raise ModelLoadError(f"{sums}: no checksum for {name}")
        if not path.is_file():
            raise ModelLoadError(f"{path}: missing")
        if sha256_file(path) != expected[name]:
            raise ModelLoadError(f"{path}: SHA-256 mismatch (corrupted or modified); refusing to load it")
