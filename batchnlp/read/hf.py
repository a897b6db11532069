"""Hugging Face datasets as input: a `save_to_disk` directory (memory-mapped Arrow) or a hub
dataset id with a pinned revision and a split (streamed, never downloaded whole)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from batchnlp.errors import InputError, SpecError
from batchnlp.spec import InputSpec


def _load(spec: InputSpec) -> Any:
    import datasets

    if Path(spec.dataset).exists():
        try:
            data = datasets.load_from_disk(spec.dataset)
        except (FileNotFoundError, ValueError) as e:
            raise InputError(f"input.dataset: {spec.dataset} is not a save_to_disk directory: {e}") from None
        if isinstance(data, datasets.DatasetDict):
            if spec.split not in data:
                raise SpecError("input.split", f"{spec.dataset} holds splits {', '.join(data)}; name one")
            data = data[spec.split]
        return data
    try:
        return datasets.load_dataset(spec.dataset, revision=spec.revision, split=spec.split, streaming=True)
    except Exception as e:  # datasets raises many types for "not reachable / not found"
        raise InputError(f"input.dataset: cannot open hub dataset {spec.dataset!r} at revision "
                         f"{spec.revision!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                         "with no network, save it with save_to_disk on a machine online and point "
                         "input.dataset at that directory") from None


def plan_units(spec: InputSpec):
    from batchnlp.read.plan import Unit

    data = _load(spec)
    if hasattr(data, "__len__"):
        schema = data.features.arrow_schema
        fingerprint = getattr(data, "_fingerprint", None)
        return [Unit(str(Path(spec.dataset).resolve()), len(data))], schema, {"dataset_fingerprint": fingerprint}
    schema = data.features.arrow_schema if data.features is not None else None
    if schema is None:
        raise InputError(f"input.dataset: {spec.dataset!r} declares no features; cannot check its columns")
    return [Unit(spec.dataset, None)], schema, {"revision": spec.revision, "split": spec.split}


def iter_batches(spec: InputSpec, start: int = 0, batch_rows: int = 8192) -> Iterator[pa.RecordBatch]:
    """The dataset's rows from row `start` on (a saved dataset is sliced there; a streamed one skips)."""
    data = _load(spec)
    if hasattr(data, "__len__"):
        arrow = data.with_format("arrow")
        for begin in range(start, len(data), batch_rows):
            yield from arrow[begin:begin + batch_rows].to_batches()
        return
    schema = data.features.arrow_schema
    if start:
        data = data.skip(start)
    for rows in data.iter(batch_size=batch_rows):
        yield pa.RecordBatch.from_pydict(rows, schema=schema)
