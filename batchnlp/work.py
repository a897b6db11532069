"""The work on one shard, the same whichever engine schedules it: its rows in (a shard of the
plan read from the input, or for --retry-errors a part read back with its error rows to annotate
again), annotated by the session's `Stages`, written as a Parquet part atomically in the run's
precision (`Worker.write`), and handed back as `Written` for the run's committer to record once
it is durable (`runner.Recorder`).

The local engine runs a worker's stages on three threads (read and prepare, infer, finish and
write); a Ray actor and the retried parts call the whole of it (`Worker.__call__`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from batchnlp.faults import NONE, Faults
from batchnlp.read import columns
from batchnlp.read.plan import Shard, read_shard
from batchnlp.read.source import Unit
from batchnlp.write.committer import write_part
from batchnlp.write.folder import Folder
from batchnlp.write.state import Part

if TYPE_CHECKING:  # (the stages import torch: the runner, which builds `Retry`s, stays light)
    from batchnlp.stages import Stages


@dataclass(frozen=True)
class Retry:
    """--retry-errors: a current part whose error rows are annotated again, and its input unit."""

    part: Part
    unit: Unit


@dataclass
class Loaded:
    """A shard's rows to annotate. For a retried part: the part as stored (`stored`, in the
    output's current columns) and the positions of its error rows (`failed`), which are `rows`."""

    shard: Shard
    rows: pa.Table
    retry: Retry | None = None
    stored: pa.Table | None = None
    failed: list[int] = field(default_factory=list)

    @property
    def seed_offset(self) -> int:
        """Generation's seed offset: the shard's own (a retried part's is its shard's), so a
        resumed or retried shard samples as the first run did."""
        return self.shard.seed_offset


@dataclass
class Written:
    """A part written and durable: its statistics as a commit records them, the rows this run
    annotated in it, and for a retried part how many of those still fail."""

    stats: dict[str, Any]
    annotated: int
    retried: bool = False
    failing: int = 0


class Worker:
    """One process's model (its `Stages`) and where its parts go. `where`: what the record says
    about the machine beside the device and precision (a Ray actor's host and node)."""

    def __init__(self, stages: Stages, out: Folder, faults: Faults = NONE, where: dict[str, Any] | None = None):
        self.stages, self.out, self.faults = stages, out, faults
        placement = stages.placement
        self.precision = {"device": str(placement.device), "dtype": placement.name, **(where or {})}

    # -- rows in -------------------------------------------------------------------------------

    def planned(self, key: tuple[int, int]) -> Loaded:
        """A shard of the plan, read alone (only its unit is opened, from its row group)."""
        shard, rows = read_shard(self.stages.job.plan, key)
        return Loaded(shard, rows)

    def retried(self, retry: Retry) -> Loaded:
        """A part read back, as the output's columns are now (a column added since is null in it,
        by name), with its error rows to annotate again."""
        job, part = self.stages.job, retry.part
        stored = self.out.read_table(part.name)
        table = pa.Table.from_arrays(columns.select(stored, list(job.schema)), schema=job.schema)
        failed = pc.indices_nonzero(pc.is_valid(table.column(job.spec.output.prefix + "error"))).to_pylist()
        shard = Shard(retry.unit, part.shard, part.start, table.num_rows)
        return Loaded(shard, table.take(failed), retry, table, failed)

    # -- the whole shard here ------------------------------------------------------------------

    def __call__(self, loaded: Loaded) -> Written:
        """All of a shard's work in this thread (a Ray actor, a retried part)."""
        self.faults.check_shard(loaded.shard.unit.key, loaded.shard.number)
        table, stats = self.stages(loaded.rows, loaded.seed_offset)
        return self.write(loaded, table, stats)

    # -- the part out --------------------------------------------------------------------------

    def write(self, loaded: Loaded, table: pa.Table, stats: dict[str, Any]) -> Written:
        """Write the shard's part atomically in this worker's precision; return what the run
        records. A retried part is written whole again: same name, same rows in the same order,
        the retried rows replaced."""
        if loaded.retry is not None and not loaded.failed:
            return Written({}, 0, retried=True)  # its error rows were fixed since: nothing to write
        if loaded.retry is None:
            written = write_part(self.out, loaded.shard, table, {**stats, **self.precision}, self.faults,
                                 self.stages.job.spec.input)
            return Written(written, written["rows"])
        return self._rewrite(loaded, table)

    def _rewrite(self, loaded: Loaded, annotated: pa.Table) -> Written:
        stored, failed, part = loaded.stored, loaded.failed, loaded.retry.part
        error_column = self.stages.job.spec.output.prefix + "error"
        # Row i of the new part: row i of the old one, or, for a retried row, its new annotation.
        position = {row: stored.num_rows + j for j, row in enumerate(failed)}
        order = pa.array([position.get(i, i) for i in range(stored.num_rows)], pa.int64())
        rewritten = pa.concat_tables([stored, annotated]).take(order)
        still = rewritten.num_rows - rewritten.column(error_column).null_count
        figures = {**part.stats, "errors": still, "error_rate": round(still / rewritten.num_rows, 4),
                   "retried": len(failed), **self.precision, "rows": rewritten.num_rows}
        written = write_part(self.out, loaded.shard, rewritten, figures, self.faults, self.stages.job.spec.input)
        failing = annotated.num_rows - annotated.column(error_column).null_count
        return Written(written, len(failed), retried=True, failing=failing)
