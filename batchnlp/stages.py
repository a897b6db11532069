"""`Stages`: a job's task on a loaded model in one precision — one shard through the model, in
three stages the local engine overlaps (a Ray actor, the precision probe and `batchnlp.Annotator`
run them one after the other):

1. `prepare` (reader thread): check rows, encode them into features, sort the features into
   token-budget batches. CPU only.
2. `infer` (main thread): run the batches on the device. On CUDA out-of-memory a batch is split in
   two and retried, and the budget that worked is kept for the rest of the run.
3. `finish` (writer thread): decode each row back in input order and build the typed table.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa

from batchnlp.batch.loader import loader, token_budget_batches
from batchnlp.job import Job
from batchnlp.model.device import Placement
from batchnlp.spec import JobSpec
from batchnlp.tasks.base import RowError, Task
from batchnlp.write.parts import annotation_array, build_table



@dataclass
class Prepared:
    rows: pa.Table
    records: list[dict[str, Any]]
    errors: list[str | None]
    features: list[dict[str, Any]]
    owners: list[int]
    batches: list[list[int]]
    seconds: float
    outputs: list[Any] = field(default_factory=list)
    padded: int = 0
    batch_seconds: list[float] = field(default_factory=list)  # each batch's latency on the device
    figures: dict[str, Any] = field(default_factory=dict)  # the task's own (Task.shard_figures)


class Stages:
    """A job's task on a loaded model in one precision: a shard of rows in, the annotated table out."""

    def __init__(self, job: Job, model: Any, placement: Placement):
        self.job, self.model, self.placement = job, model, placement
        self.batch_tokens = job.spec.runtime.batch_tokens  # lowered for good after an out-of-memory error
        self.oom_splits = 0
        # Fast tokenizers must not be used from two threads at once ("Already borrowed"): the
        # reader and writer threads each get their own copy of the task and its tokenizer.
        self.encoder = _with_own_tokenizer(job.task)
        self.decoder = _with_own_tokenizer(job.task)

    @property
    def spec(self) -> JobSpec:
        return self.job.spec

    @property
    def task(self) -> Task:
        return self.job.task

    def in_float32(self, model: Any = None) -> "Stages":
        """The same job in float32 (on `model`, if given, instead of this one's): the reference for
        the precision probe and the bench's agreement check, and the probe's fallback."""
        return Stages(self.job, self.model if model is None else model, self.placement.float32())

    def __call__(self, rows: pa.Table, seed_offset: int) -> tuple[pa.Table, dict[str, Any]]:
        """All three stages in this thread (the precision probe, a Ray actor, `batchnlp.Annotator`)."""
        prepared = self.prepare(rows)
        self.infer(prepared, seed_offset)
        return self.finish(prepared)

    # -- 1. prepare ----------------------------------------------------------------------------

    def prepare(self, rows: pa.Table) -> Prepared:
        began = time.perf_counter()
        records = self.records(rows)
        errors: list[str | None] = [row_error(r) for r in records]
        valid = [i for i in range(len(records)) if errors[i] is None]
        features, owners = [], []
        for i, encoded in zip(valid, self.encoder.encode([records[i] for i in valid]) if valid else []):
            if isinstance(encoded, RowError):
                errors[i] = str(encoded)
                continue
            features.extend(encoded)
            owners.extend([i] * len(encoded))
        lengths = [self.task.batch_length(f) for f in features]
        batches = token_budget_batches(lengths, self.batch_tokens, self.spec.runtime.max_batch_size,
                                       self.task.batch_overhead_tokens(), grouped=self.task.groups_by_length)
        return Prepared(rows, records, errors, features, owners, batches, time.perf_counter() - began)

    def records(self, rows: pa.Table) -> list[dict[str, Any]]:
        """Each row as {"text", "pair"?, and each of the task's extra columns under its parameter name}."""
        columns = self.job.record_columns
        data = {key: rows.column(column).to_pylist() for key, column in columns.items()}
        return [{key: data[key][i] for key in columns} for i in range(rows.num_rows)]

    # -- 2. infer ------------------------------------------------------------------------------

    def infer(self, prepared: Prepared, seed_offset: int, on_batch: Callable[[int], None] | None = None) -> None:
        """Run the shard's batches; `on_batch(features)` after each (for progress). Generation is
        seeded with seed + seed_offset (the shard's own), so a resumed run samples the same."""
        began = time.perf_counter()
        self.task.start_shard(seed_offset)
        prepared.outputs = [None] * len(prepared.features)
        if prepared.features and self.task.streams:
            self._stream(prepared, on_batch)
        elif prepared.features:
            device = self.placement.device
            for indices, batch, meta in loader(prepared.features, prepared.batches, self.job.tokenizer,
                                               self.task.padding_side, self.spec.runtime.num_workers,
                                               pin_memory=device.type == "cuda"):
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                started = time.perf_counter()
                self._run(prepared, indices, batch, meta)
                prepared.batch_seconds.append(time.perf_counter() - started)
                if on_batch is not None:
                    on_batch(len(indices))
        prepared.seconds += time.perf_counter() - began

    def _stream(self, prepared: Prepared, on_batch: Callable[[int], None] | None) -> None:
        """A streaming task's shard: its features in the batcher's order, as many at a time as
        the budget's largest batch holds (the batch is refilled as rows end)."""
        order = [(i, prepared.features[i]) for batch in prepared.batches for i in batch]
        capacity = max(map(len, prepared.batches))
        started = time.perf_counter()
        with self.placement.context():
            for index, output in self.task.forward_stream(self.model, order, capacity):
                prepared.outputs[index] = output
                if on_batch is not None:
                    on_batch(1)
        prepared.batch_seconds.append(time.perf_counter() - started)
        prepared.figures = self.task.shard_figures()
        prepared.padded += prepared.figures.pop("prefilled", 0)

    def _run(self, prepared: Prepared, indices: list[int], batch: dict[str, Any], meta: list[Any]) -> None:
        """Run a batch, in pieces if it exceeds the (possibly lowered) budget or runs out of memory."""
        import torch

        rows, width = batch["input_ids"].shape
        if rows > 1 and rows * width > self.batch_tokens:
            self._halves(prepared, indices, batch, meta)
            return
        try:
            with self.placement.context():
                outputs = self.task.forward(self.model, batch, meta)
        except torch.cuda.OutOfMemoryError:
            if rows == 1:
                raise
            torch.cuda.empty_cache()
            self.batch_tokens = min(self.batch_tokens, rows * width // 2)
            self.oom_splits += 1
            self._halves(prepared, indices, batch, meta)
            return
        mask = batch.get("attention_mask")
        prepared.padded += self.task.padded_tokens(mask.sum(-1).tolist() if mask is not None else [width] * rows)
        for i, output in zip(indices, outputs):
            prepared.outputs[i] = output

    def _halves(self, prepared: Prepared, indices: list[int], batch: dict[str, Any], meta: list[Any]) -> None:
        half = len(indices) // 2
        for part in (slice(0, half), slice(half, None)):
            self._run(prepared, indices[part], {k: v[part] for k, v in batch.items()}, meta[part])

    # -- 3. finish -----------------------------------------------------------------------------

    def finish(self, prepared: Prepared) -> tuple[pa.Table, dict[str, Any]]:
        began = time.perf_counter()
        n, errors = prepared.rows.num_rows, prepared.errors
        per_row: dict[int, list[Any]] = {}
        for owner, output in zip(prepared.owners, prepared.outputs):
            per_row.setdefault(owner, []).append(output)
        fields = self.job.fields
        values: dict[str, list[Any]] = {f.name: [None] * n for f in fields}
        for i, row_outputs in per_row.items():
            try:
                decoded = self.decoder.decode(prepared.records[i], row_outputs)
            except RowError as e:
                errors[i] = str(e)
                for name, value in e.kept.items():
                    values[name][i] = value
                continue
            for f in fields:
                values[f.name][i] = decoded[f.name]
        columns = [annotation_array(f, values[f.name]) for f in fields]
        table = build_table(prepared.rows, self.job.schema, columns, errors)
        features = prepared.features
        max_length = self.job.max_length
        truncated = len({o for o, f in zip(prepared.owners, features) if len(f["input_ids"]) >= max_length})
        stats = {"rows": n, "features": len(features), "tokens": sum(len(f["input_ids"]) for f in features),
                 "padded_tokens": prepared.padded, "errors": sum(e is not None for e in errors),
                 "rows_at_max_length": 0 if self.task.windowed else truncated,
                 "error_rate": round(sum(e is not None for e in errors) / n, 4) if n else 0.0,
                 **latency(prepared.batch_seconds), **prepared.figures,
                 "seconds": round(prepared.seconds + time.perf_counter() - began, 4)}
        return table, stats


def latency(seconds: list[float]) -> dict[str, float | None]:
    """p50 and p95 of the batches' latencies (nearest rank), for the output's record and the logs."""
    if not seconds:
        return {"batch_seconds_p50": None, "batch_seconds_p95": None}
    ordered = sorted(seconds)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {"batch_seconds_p50": round(rank(0.5), 4), "batch_seconds_p95": round(rank(0.95), 4)}


def annotation_rows(table: pa.Table, annotator: Stages) -> list[dict[str, Any]]:
    """Each row's annotation columns (and error) under the task's own names, output.prefix removed."""
    prefix = annotator.spec.output.prefix
    names = [f.name for f in annotator.job.fields] + ["error"]
    columns = {name: table.column(prefix + name).to_pylist() for name in names}
    return [{name: columns[name][i] for name in names} for i in range(table.num_rows)]


def _with_own_tokenizer(task: Task) -> Task:
    twin = copy.copy(task)
    twin.tokenizer = copy.deepcopy(task.tokenizer)
    return twin


def row_error(record: dict[str, Any]) -> str | None:
    """The documented policy for rows that cannot be annotated: null annotations and this message."""
    for key, what in (("text", "text"), ("pair", "text pair")):
        if key not in record:
            continue
        value = record[key]
        if value is None:
            return f"null {what}"
        if isinstance(value, list):  # chat messages (Task.takes_messages)
            if not value or not any((m.get("content") or "").strip() for m in value):
                return "no messages with content"
            continue
        if not value.strip():
            return f"empty {what}"
    return None
