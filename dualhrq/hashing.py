"""SHA-256 of files: what checkpoints, pattern libraries and bundles record and re-check. Free of torch, so the
serving path can verify artifacts without importing it."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
