"""--retry-errors: the rows whose annotation failed (`error` set: a transient failure, a limit
since raised, a model since fixed) are annotated again, in place. Each part holding such rows is
read back, its error rows go through the same annotator (in the output's pinned precision), and
the part is written again whole — same name, same rows in the same order, the retried rows
replaced — then committed like any part. Rows that fail again keep their (new) error."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batchnlp.annotator import Annotator
from batchnlp.engines.context import RunContext
from batchnlp.log import event
from batchnlp.read import columns
from batchnlp.read.plan import SEED_STRIDE, Shard
from batchnlp.write.committer import Committer, write_part
from batchnlp.write.state import Part, unit_of


def retry_errors(ctx: RunContext, annotator: Annotator, committer: Committer) -> dict[str, Any]:
    """Annotate again the error rows of `ctx.retry`'s parts; {rows retried, still failing}."""
    retried = failing = 0
    for part in ctx.retry:
        tried, still = _retry_part(ctx, annotator, committer, part)
        retried, failing = retried + tried, failing + still
    event("retry", f"retried {retried} rows with an error in {len(ctx.retry)} parts: {retried - failing} annotated "
                   f"now, {failing} still fail", level=20 if not failing else 30, retried=retried, failing=failing)
    return {"rows": retried, "failing": failing, "parts": [p.name for p in ctx.retry]}


def _retry_part(ctx: RunContext, annotator: Annotator, committer: Committer, part: Part) -> tuple[int, int]:
    schema = ctx.job.schema
    error_column = ctx.job.spec.output.prefix + "error"
    stored = ctx.out.read_table(part.name)
    # The part as the output's columns are now (a column added since is null in it), by name.
    table = pa.Table.from_arrays(columns.select(stored, list(schema)), schema=schema)
    failed = pc.indices_nonzero(pc.is_valid(table.column(error_column))).to_pylist()
    if not failed:
        return 0, 0
    annotated, _ = annotator(table.take(failed), part.unit * SEED_STRIDE + part.shard)
    # Row i of the new part: row i of the old one, or, for a retried row, its new annotation.
    position = {row: table.num_rows + j for j, row in enumerate(failed)}
    order = pa.array([position.get(i, i) for i in range(table.num_rows)], pa.int64())
    rewritten = pa.concat_tables([table, annotated]).take(order)
    still = rewritten.num_rows - rewritten.column(error_column).null_count
    unit = unit_of(ctx.state.units[part.unit], ctx.state.job.get("base"))
    figures = {**part.stats, "errors": still, "error_rate": round(still / rewritten.num_rows, 4),
               "retried": len(failed), "device": str(annotator.placement.device), "dtype": annotator.placement.name}
    shard = Shard(unit, part.shard, part.start, rewritten.num_rows)
    written = write_part(ctx.out, shard, rewritten, {**figures, "rows": rewritten.num_rows}, ctx.faults,
                         ctx.job.spec.input)
    committer.record(written, part.shard, annotated=len(failed))
    return len(failed), annotated.num_rows - annotated.column(error_column).null_count
