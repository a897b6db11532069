"""What the runner hands an engine: the job, the output's log (new or continued), the shards
already done, where to write, and the fault injection the tests asked for."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

from batchnlp.faults import NONE, Faults
from batchnlp.read.plan import ShardKey
from batchnlp.session import Job, metadata
from batchnlp.write.commits import CommitLog
from batchnlp.write.committer import Committer
from batchnlp.write.folder import Folder
from batchnlp.write.state import OutputState, Part


@dataclass
class RunContext:
    job: Job
    log: CommitLog
    out: Folder
    quiet: bool
    #: The shards committed before this run (recorded, part on disk whole).
    done: set[ShardKey] = field(default_factory=set)
    #: engine ray: the cluster to connect to (None starts a local one).
    address: str | None = None
    #: Seconds between plain progress lines when stderr is not a terminal.
    progress_interval: float = 30.0
    faults: Faults = NONE
    #: Staged before the run's first commit when the output is new (the job's fingerprint).
    fingerprint: dict[str, Any] | None = None
    #: A new output's precision decided elsewhere (a rerun takes the original's).
    pin: str | None = None
    #: Parts whose rows with an error are annotated again (--retry-errors).
    retry: list[Part] = field(default_factory=list)

    @property
    def state(self) -> OutputState:
        return self.log.state

    @property
    def pinned(self) -> str | None:
        """The precision this output settled on (None: its first run decides)."""
        return self.state.pinned.precision if self.state.job else self.pin

    def committer(self) -> Committer:
        return Committer(self.log, self.faults, self.job.plan.partial)

    def start_run(self, committer: Committer, info: dict[str, Any], probe: dict[str, Any] | None,
                  precision: str) -> None:
        """Commit the run's start: on a new output first its metadata, with the precision pinned."""
        if not self.state.job:
            self.log.stage(metadata(self.job, self.fingerprint or {}, self.out, probe, precision), first=True)
        committer.start_run({**info, "resumed_from_shards": len(self.done), "cwd": os.getcwd(), "argv": sys.argv})

    def done_rows(self) -> int:
        return self.state.rows_in(self.done)
