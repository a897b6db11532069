"""Checksums of files: sha256 for what batchnlp writes and the model weights it loads (the
output's record keeps them; `verify` and `rerun` compare them), xxh3-128 for input files (fast enough to
tell an edited file from a merely touched one on every run). Each reads a local path or an open
binary file (an object in a bucket) block by block."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import IO, Any

BLOCK = 1 << 22


def _digest(digest: Any, source: Path | str | IO[bytes]) -> Any:
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            return _digest(digest, f)
    for block in iter(lambda: source.read(BLOCK), b""):
        digest.update(block)
    return digest


def sha256(source: Path | str | IO[bytes]) -> str:
    return _digest(hashlib.sha256(), source).hexdigest()


def content_hash(source: Path | str | IO[bytes]) -> str:
    """"xxh3_128:<hex>" of the file's bytes."""
    import xxhash  # installed with `datasets`

    return f"xxh3_128:{_digest(xxhash.xxh3_128(), source).hexdigest()}"
