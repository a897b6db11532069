"""Hugging Face datasets as input: a `save_to_disk` directory (memory-mapped Arrow; one in a
bucket is fetched by `datasets` into its cache first) or a hub dataset id with a pinned revision
and a split (streamed, never downloaded whole)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa

from batchnlp.errors import InputError, SpecError
from batchnlp.read.source import Entry, Unit
from batchnlp.spec import InputSpec
from batchnlp.storage import is_url


def _load(spec: InputSpec) -> Any:
    import datasets

    if is_url(spec.dataset) or Path(spec.dataset).exists():
        try:
            data = datasets.load_from_disk(spec.dataset, storage_options=spec.storage_options)
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


class DatasetSource:
    """A Hugging Face dataset: one unit, the (split of the) dataset. The opened dataset is cached
    in the process and not pickled, so a Ray actor opens its own."""

    def __init__(self, spec: InputSpec):
        self.spec = spec
        self._data: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "_data": None}

    @property
    def data(self) -> Any:
        if self._data is None:
            self._data = _load(self.spec)
        return self._data

    @property
    def streamed(self) -> bool:
        return not hasattr(self.data, "__len__")

    def inventory(self) -> list[Entry]:
        saved = not self.streamed and not is_url(self.spec.dataset)
        return [Entry(str(Path(self.spec.dataset).resolve()) if saved else self.spec.dataset)]

    def content_hash(self, entry: Entry) -> str:
        if self.streamed:
            return f"revision:{self.spec.revision}:{self.spec.split}"
        return f"dataset_fingerprint:{getattr(self.data, '_fingerprint', None)}"

    def count(self, entry: Entry, check: Callable[[pa.Schema, str], None]) -> int | None:
        check(self.schema(), self.spec.dataset)
        return None if self.streamed else len(self.data)

    def schema(self) -> pa.Schema:
        features = self.data.features
        if features is None:
            raise InputError(f"input.dataset: {self.spec.dataset!r} declares no features; cannot check its columns")
        return features.arrow_schema

    def unit_schema(self, unit: Unit) -> pa.Schema:
        return self.schema()

    def identity(self) -> dict[str, Any]:
        return {"revision": self.spec.revision, "split": self.spec.split} if self.streamed else {}

    def iter_batches(self, unit: Unit, start: int, batch_rows: int = 8192) -> Iterator[pa.RecordBatch]:
        """The rows from row `start` on (a saved dataset is sliced there; a streamed one skips)."""
        data = self.data
        if not self.streamed:
            arrow = data.with_format("arrow")
            for begin in range(start, len(data), batch_rows):
                yield from arrow[begin:begin + batch_rows].to_batches()
            return
        schema = data.features.arrow_schema
        if start:
            data = data.skip(start)
        for rows in data.iter(batch_size=batch_rows):
            yield pa.RecordBatch.from_pydict(rows, schema=schema)
