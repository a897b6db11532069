"""One shard through the model: check rows, encode them into features, sort the features into
token-budget batches, run, and decode each row back in input order."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from batchnlp.batch.loader import loader, token_budget_batches
from batchnlp.model.device import Placement
from batchnlp.spec import JobSpec
from batchnlp.tasks.base import RowError, Task
from batchnlp.write.parts import annotation_array, build_table


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    config: Any
    max_length: int


@dataclass
class Annotator:
    spec: JobSpec
    task: Task
    loaded: LoadedModel
    placement: Placement
    schema: pa.Schema

    def __call__(self, rows: pa.Table, shard_index: int) -> tuple[pa.Table, dict[str, Any]]:
        began = time.perf_counter()
        n = rows.num_rows
        records = self.records(rows)
        errors: list[str | None] = [row_error(r) for r in records]
        valid = [i for i in range(n) if errors[i] is None]
        self.task.start_shard(shard_index)

        features, owners = [], []
        for i, encoded in zip(valid, self.task.encode([records[i] for i in valid]) if valid else []):
            if isinstance(encoded, RowError):
                errors[i] = str(encoded)
                continue
            features.extend(encoded)
            owners.extend([i] * len(encoded))

        outputs, padded = self.run_features(features)
        per_row: dict[int, list[Any]] = {}
        for owner, output in zip(owners, outputs):
            per_row.setdefault(owner, []).append(output)
        fields = self.task.fields()
        values: dict[str, list[Any]] = {f.name: [None] * n for f in fields}
        for i, row_outputs in per_row.items():
            try:
                decoded = self.task.decode(records[i], row_outputs)
            except RowError as e:
                errors[i] = str(e)
                continue
            for f in fields:
                values[f.name][i] = decoded[f.name]

        table = build_table(rows, self.schema, [annotation_array(f, values[f.name]) for f in fields], errors)
        tokens = sum(len(f["input_ids"]) for f in features)
        truncated = len({o for o, f in zip(owners, features) if len(f["input_ids"]) >= self.loaded.max_length})
        stats = {"rows": n, "features": len(features), "tokens": tokens, "padded_tokens": padded,
                 "errors": sum(e is not None for e in errors),
                 "rows_at_max_length": 0 if self.task.windowed else truncated,
                 "seconds": round(time.perf_counter() - began, 4)}
        return table, stats

    def records(self, rows: pa.Table) -> list[dict[str, Any]]:
        """Each row as {"text", "pair"?, and each of the task's extra columns under its parameter name}."""
        columns = {"text": self.spec.input.text_column}
        if self.spec.input.text_pair_column:
            columns["pair"] = self.spec.input.text_pair_column
        for key, column in self.task.extra_columns(self.task.params).items():
            columns[key.removeprefix("task.")] = column
        data = {key: rows.column(column).to_pylist() for key, column in columns.items()}
        return [{key: data[key][i] for key in columns} for i in range(rows.num_rows)]

    def run_features(self, features: list[dict[str, Any]]) -> tuple[list[Any], int]:
        """Each feature's output (in feature order) and the padded tokens that took."""
        if not features:
            return [], 0
        runtime = self.spec.runtime
        lengths = [self.task.batch_length(f) for f in features]
        batches = token_budget_batches(lengths, runtime.batch_tokens, runtime.max_batch_size)
        device = self.placement.device
        outputs: list[Any] = [None] * len(features)
        padded = 0
        for indices, batch, meta in loader(features, batches, self.loaded.tokenizer, self.task.padding_side,
                                           runtime.num_workers, pin_memory=device.type == "cuda"):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            padded += batch["input_ids"].numel()
            with self.placement.context():
                for i, output in zip(indices, self.task.forward(self.loaded.model, batch, meta)):
                    outputs[i] = output
        return outputs, padded


def row_error(record: dict[str, Any]) -> str | None:
    """The documented policy for rows that cannot be annotated: null annotations and this message."""
    for key, what in (("text", "text"), ("pair", "text pair")):
        if key not in record:
            continue
        value = record[key]
        if value is None:
            return f"null {what}"
        if not value.strip():
            return f"empty {what}"
    return None
