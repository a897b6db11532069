"""One shard through the model: check rows, encode, sort into token-budget batches, run, and put
the results back in input order."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from batchnlp.batch.loader import loader, token_budget_batches
from batchnlp.model.device import Placement
from batchnlp.model.load import LoadedModel
from batchnlp.spec import JobSpec
from batchnlp.tasks.base import Task
from batchnlp.write.parts import annotation_array, build_table


@dataclass
class Annotator:
    spec: JobSpec
    task: Task
    loaded: LoadedModel
    placement: Placement
    schema: pa.Schema

    def __call__(self, rows: pa.Table) -> tuple[pa.Table, dict[str, Any]]:
        began = time.perf_counter()
        n = rows.num_rows
        texts = rows.column(self.spec.input.text_column).to_pylist()
        pair_column = self.spec.input.text_pair_column
        pairs = rows.column(pair_column).to_pylist() if pair_column else None
        errors = [row_error(texts[i], pairs[i] if pairs else "-") for i in range(n)]
        valid = np.array([i for i in range(n) if errors[i] is None], dtype=np.int64)

        positions, outputs, tokens, padded, at_max = [], [], 0, 0, 0
        if len(valid):
            encoded = self.task.encode(self.loaded.tokenizer, [texts[i] for i in valid],
                                       [pairs[i] for i in valid] if pairs else None, self.loaded.max_length)
            lengths = [len(e["input_ids"]) for e in encoded]
            tokens = sum(lengths)
            at_max = sum(1 for length in lengths if length >= self.loaded.max_length)
            batches = token_budget_batches(lengths, self.spec.runtime.batch_tokens, self.spec.runtime.max_batch_size)
            device = self.placement.device
            for indices, batch in loader(encoded, batches, self.loaded.tokenizer, self.spec.runtime.num_workers,
                                         pin_memory=device.type == "cuda"):
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                padded += batch["input_ids"].numel()
                with self.placement.context():
                    outputs.append(self.task.forward(self.loaded.model, batch))
                positions.append(valid[indices])

        fields = self.task.fields()
        order = np.concatenate(positions) if positions else np.zeros(0, dtype=np.int64)
        arrays = [annotation_array(f, n, order, _merge([o[f.name] for o in outputs])) for f in fields]
        table = build_table(rows, self.schema, arrays, errors)
        stats = {"rows": n, "tokens": tokens, "padded_tokens": padded, "errors": n - len(valid),
                 "rows_at_max_length": at_max, "seconds": round(time.perf_counter() - began, 4)}
        return table, stats


def row_error(text: Any, pair: Any) -> str | None:
    """The documented policy for rows that cannot be annotated: null annotations and this message."""
    for value, what in ((text, "text"), (pair, "text pair")):
        if value is None:
            return f"null {what}"
        if not value.strip():
            return f"empty {what}"
    return None


def _merge(parts: list[Any]) -> Any:
    if not parts:
        return []
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return [v for part in parts for v in part]
