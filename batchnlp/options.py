"""What a run is asked to do beyond its job (`RunOptions`, resolved once against the job by the
command line and the API) and what it did (`RunResult`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, Sequence

from batchnlp.faults import NONE, Faults
from batchnlp.read.source import Unit
from batchnlp.spec import JobSpec


@dataclass(frozen=True)
class RunOptions:
    overwrite: bool = False
    #: Annotate at most this many input rows (the run ends `partial` when rows are left).
    limit: int | None = None
    #: No progress bar and no plain progress lines.
    quiet: bool = False
    #: local or ray (None: the job's runtime.engine).
    engine: Literal["local", "ray"] | None = None
    #: engine ray: the cluster to connect to (None: the job's runtime.ray_address; none starts a local one).
    address: str | None = None
    #: A file whose content changed since it was annotated: refuse, reprocess or skip (None: the
    #: job's output.on_changed; --reprocess-changed says reprocess).
    on_changed: Literal["refuse", "reprocess", "skip"] | None = None
    #: A file that was annotated and is gone: refuse, drop its parts, or keep them (None: the
    #: job's output.on_removed; --drop-removed / --keep-removed).
    on_removed: Literal["refuse", "drop", "keep"] | None = None
    #: Annotate again the rows whose annotation failed (`error` set), in place in their parts.
    retry_errors: bool = False
    #: A new output's units numbered as given (a rerun of a recorded output).
    unit_order: Sequence[Unit] = ()
    #: Seconds between plain progress lines when stderr is not a terminal.
    progress_interval: float = 30.0
    faults: Faults = NONE
    #: A new output's precision, used without a probe (a rerun takes the original's).
    pin: str | None = None
    #: A stall that does not stop the run cleanly ends the process (the command line).
    exit_at_once: bool = False

    @property
    def resolved(self) -> bool:
        """What the job decides is filled in (`for_job`)."""
        return None not in (self.engine, self.on_changed, self.on_removed)

    def for_job(self, spec: JobSpec) -> RunOptions:
        """These options with what they leave to the job filled in from it (engine, cluster
        address, the input policies): the one place a run's settings are resolved."""
        return replace(self, engine=self.engine or spec.runtime.engine,
                       address=self.address or spec.runtime.ray_address,
                       on_changed=self.on_changed or spec.output.on_changed,
                       on_removed=self.on_removed or spec.output.on_removed)


@dataclass
class RunResult:
    output: str  # the output's path or URL
    status: str
    rows_written: int  # by this run
    shards_written: int
    shards_total: int | None
    resumed_from: int  # shards already committed when this run started
    #: What the run found changed in the input and what it did about it (names by kind).
    changes: dict[str, list[str]] | None = None
    #: --retry-errors: rows annotated again, and how many of them still fail.
    retried: dict[str, Any] | None = None
    #: The output's previous run did not finish (killed, failed, interrupted): this one resumed it.
    resumed: bool = False
