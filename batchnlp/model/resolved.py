"""A model as resolved for a run: its local directory and its identity for the output's record
(`model/source.py` resolves it; `model/cache.py` may stand a converted copy in for it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ResolvedModel:
    directory: Path
    identity: dict[str, Any]
    gguf_file: str | None = None
