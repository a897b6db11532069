"""`dtype: auto`'s check on the job's own rows: the faster precision is kept only where its answers
agree with float32's as well as the task requires (`tasks/agreement.py`), on at most PROBE_ROWS
rows and PROBE_TOKENS tokens. No timing decides it (that is `model/precision.py`'s calibration,
once per machine); its seconds are recorded, not used."""

from __future__ import annotations

import time
from typing import Any, Container

import pyarrow as pa

from batchnlp.read.plan import ShardKey, read_shards
from batchnlp.stages import Stages, annotation_rows

#: The precision probe's rows: the first rows to do, at most this many and this many tokens (as
#: the batcher counts them: generation adds the tokens it will make), so its cost is bounded by
#: the job, not by the night (two forwards of at most 4,096 tokens).
PROBE_ROWS = 32
PROBE_TOKENS = 4096


def decided_without_rows(placement: Any) -> dict[str, Any] | None:
    """`dtype: auto` on a CPU that float32 won before any row ran (no native bfloat16, or its
    calibration under the margin): the record says so, and why. None otherwise."""
    if placement.decision is None or placement.needs_probe:
        return None
    return {"dtype": "bfloat16", "rows": 0, "kept": False, "refused": placement.decision["refused"],
            **{k: v for k, v in placement.decision.items() if k != "refused"}}


def precision_probe(annotator: Stages, done: Container[ShardKey] = ()) -> dict[str, Any]:
    """Annotate the first rows in the chosen precision and in float32; keep the faster precision
    only if the answers agree as well as the task requires (`tasks/agreement.py`)."""
    _, table = next(read_shards(annotator.job.plan, done), (None, None))
    if table is None:  # nothing left to annotate: probe on the first shard
        _, table = next(read_shards(annotator.job.plan, ()))
    return probe_on(annotator, table)


def probe_rows(annotator: Stages, table: pa.Table) -> tuple[pa.Table, int]:
    """The probe's rows: the first of `table`, at most PROBE_ROWS and PROBE_TOKENS (at least one
    row), and their tokens as the batcher counts them."""
    sample = table.slice(0, PROBE_ROWS)
    prepared = annotator.prepare(sample)
    per_row = [0] * sample.num_rows
    for owner, feature in zip(prepared.owners, prepared.features):
        per_row[owner] += annotator.task.batch_length(feature)
    rows, tokens = 0, 0
    while rows < len(per_row) and (rows == 0 or tokens + per_row[rows] <= PROBE_TOKENS):
        tokens += per_row[rows]
        rows += 1
    return sample.slice(0, rows), tokens


def probe_on(annotator: Stages, table: pa.Table) -> dict[str, Any]:
    """The precision probe on the first rows of `table`: the faster precision is kept if its
    answers agree with float32's as well as the task requires — labels, and scores' resolution
    and margins (`tasks/agreement.py`). No timing decides it: that was settled for this machine
    before (`model/precision.py`), so a loaded machine decides as a quiet one does. Its seconds
    are recorded, not used."""
    from batchnlp import watchdog
    from batchnlp.tasks.agreement import compare

    task = annotator.task
    sample, tokens = probe_rows(annotator, table)
    reference = annotator.in_float32()
    with watchdog.doing(f"checking {annotator.placement.name} against float32 on the first {sample.num_rows} rows "
                        f"({tokens} tokens; the precision probe)"):
        began = time.perf_counter()
        exact, _ = reference(sample, 0)
        fast, _ = annotator(sample, 0)
        seconds = time.perf_counter() - began
    refused, figures = compare(task, annotation_rows(fast, annotator), annotation_rows(exact, reference))
    return {"dtype": annotator.placement.name, "threshold": task.agreement_threshold, "rows": sample.num_rows,
            "tokens": tokens, **figures, "kept": refused is None, "refused": refused, "seconds": round(seconds, 3),
            **(annotator.placement.decision or {})}


def probe_summary(probe: dict[str, Any]) -> str:
    """One line on what `dtype: auto` found, for `inspect` and `bench`."""
    if not probe.get("rows"):
        return f"{probe.get('dtype')} refused before any row ran: {probe.get('refused')}"
    verdict = f"{probe.get('dtype')} kept" if probe.get("kept") else f"{probe.get('dtype')} refused, {probe.get('refused')}"
    return f"{verdict}; probe agreement {probe.get('agreement')} on {probe.get('rows')} rows"
