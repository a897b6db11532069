"""What the runner hands an engine: the job, its manifest (new or resumed) and where to write."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchnlp.session import Job
from batchnlp.write.manifest import Manifest


@dataclass
class RunContext:
    job: Job
    manifest: Manifest
    out: Path
    quiet: bool
    #: engine ray: the cluster to connect to (None starts a local one).
    address: str | None = None

    def done(self) -> set[int]:
        """The shards committed before this run (listed in the manifest, part on disk)."""
        return self.manifest.done_shards()

    def start_run(self, info: dict[str, Any], done: set[int]) -> None:
        self.manifest.start_run({**info, "resumed_from_shards": len(done)})
