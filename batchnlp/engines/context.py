"""What the runner hands an engine: the job, its manifest (new or resumed), the shards already
done and where to write."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

from batchnlp.read.plan import ShardKey
from batchnlp.session import Job
from batchnlp.write.folder import Folder
from batchnlp.write.manifest import Manifest


@dataclass
class RunContext:
    job: Job
    manifest: Manifest
    out: Folder
    quiet: bool
    #: The shards committed before this run (recorded, part on disk whole).
    done: set[ShardKey] = field(default_factory=set)
    #: engine ray: the cluster to connect to (None starts a local one).
    address: str | None = None
    #: Seconds between plain progress lines when stderr is not a terminal.
    progress_interval: float = 30.0

    def start_run(self, info: dict[str, Any]) -> None:
        self.manifest.start_run({**info, "resumed_from_shards": len(self.done), "cwd": os.getcwd(),
                                 "argv": sys.argv})

    def done_rows(self) -> int:
        return sum(s["rows"] for s in self.manifest.data["shards"] if (s["unit"], s["shard"]) in self.done)
