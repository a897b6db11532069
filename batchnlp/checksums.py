"""Checksums of files: sha256 for what batchnlp writes and the model weights it loads (the
manifest records them; `verify` and `rerun` compare them), xxh3-128 for input files (fast enough to
tell an edited file from a merely touched one on every run)."""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 1 << 22


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def content_hash(path: Path) -> str:
    """"xxh3_128:<hex>" of the file's bytes."""
    import xxhash  # installed with `datasets`

    digest = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            digest.update(block)
    return f"xxh3_128:{digest.hexdigest()}"
