"""The run's record of its work, the same for every engine: each part, once durable, goes to the
committer (which makes it part of the output), moves the progress and tells the watchdog; the
parts --retry-errors rewrote are counted and reported at the end."""

from __future__ import annotations

import logging
from typing import Any

from batchnlp import watchdog
from batchnlp.log import event
from batchnlp.progress import Progress
from batchnlp.read.plan import part_name
from batchnlp.work import Written
from batchnlp.write.committer import Committer


class Recorder:
    def __init__(self, committer: Committer, progress: Progress):
        self.committer, self.progress = committer, progress
        self.retried_rows = self.failing = 0
        self.retried_parts: list[str] = []

    def record(self, written: Written, point: int, **run: Any) -> None:
        """A durable part: committed with this run's progress (`run`: figures for the run's entry,
        such as the batch budget in use); `point` names it for fault injection."""
        if not written.stats:  # a retried part with no error row left: nothing was written
            return
        stats = written.stats
        self.committer.record(stats, point, annotated=written.annotated if written.retried else None, **run)
        watchdog.committed()
        if written.retried:
            self.retried_rows += written.annotated
            self.failing += written.failing
            self.retried_parts.append(part_name((stats["unit"], stats["shard"])))
        else:
            self.progress.committed(part_name((stats["unit"], stats["shard"])), stats)

    def retried(self, parts: int) -> dict[str, Any]:
        """--retry-errors' figures for the result, once its `parts` were handed over; logged."""
        rows, failing = self.retried_rows, self.failing
        event("retry", f"retried {rows} rows with an error in {parts} parts: {rows - failing} annotated now, "
                       f"{failing} still fail", level=logging.INFO if not failing else logging.WARNING,
              retried=rows, failing=failing)
        return {"rows": rows, "failing": failing, "parts": self.retried_parts}
