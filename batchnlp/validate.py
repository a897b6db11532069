"""`batchnlp validate`: everything that can be known about a job without loading weights (and
without importing torch or transformers, so it answers at once): the spec, the input files and
their columns (or a saved dataset's splits), the model's files (config, tokenizer, a head for the
task, its positions against max_length, a hub model in the cache), and the output (placement,
column names, write permission; a bucket's existence and a test write)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from batchnlp.errors import ModelUnavailableError, OutputConflictError, SpecError, UserError, collect
from batchnlp.model import source
from batchnlp.read import columns, files
from batchnlp.read.plan import check_columns
from batchnlp.spec import JobSpec
from batchnlp.storage import configure_retries, is_url
from batchnlp.tasks import task_class
from batchnlp.write.folder import Folder
from batchnlp.write.parts import check_collisions

#: Files that hold a tokenizer's vocabulary (one of them must be there).
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model", "source.spm",
                    "sentencepiece.bpe.model")


def validate(spec: JobSpec, known: Sequence[UserError] = ()) -> str:
    """A one-line summary of what the job will read. Every problem found is raised at once
    (`SpecProblems`, one line each): the input, the model and the output are checked apart, and an
    output that exists is checked against what a run would do with it (a changed input file,
    another job's output) as `run --dry-run` does. `known`: the spec's own problems (`spec` then
    has None for the sections that did not parse)."""
    configure_retries(0)  # validate answers at once: a store that fails is said, not ridden out
    problems: list[UserError] = list(known)

    def check(function: Any, *args: Any) -> Any:
        try:
            return function(*args)
        except UserError as e:
            problems.append(e)
            return None

    whole = not known  # else a job whose broken sections are None: what did parse is checked
    # A section with a problem of its own is not checked against the data too (one cause, one line).
    said = {str(getattr(p, "key", "")).split(".")[0] for p in known}
    if spec.runtime.engine == "ray" and spec.input and spec.output:
        from batchnlp.engines.ray_cluster import check_cluster_paths

        check(check_cluster_paths, spec, spec.runtime.ray_address)
    found = check(_check_input, spec) if spec.input and spec.task and "input" not in said else None
    directory = check(source.check, spec.model) if spec.model and "model" not in said else None
    if directory is not None and not spec.model.gguf_file and spec.task:
        check(_check_model_files, spec, directory)
    if spec.output and spec.task and "output" not in said:
        check(_check_output, spec, found[0] if found else None)
    if whole and not problems:
        check(_check_against_output, spec)
    collect(problems)
    cached = "" if directory is not None or not spec.model.id else " (not cached: run downloads it)"
    return f"task {spec.task.name} on {found[1]}, model {spec.model.source}{cached}, output {spec.output.path}"


def _check_against_output(spec: JobSpec) -> None:
    """What `run` would refuse about the output as it is now (the job's default policy)."""
    from batchnlp.preview import preview

    collect(preview(spec, identify_model=False).refusals)  # (another run holding it now is no problem of the job)


def _check_input(spec: JobSpec) -> tuple[list[str], str]:
    task_cls = task_class(spec.task.name)
    task_columns = task_cls.extra_columns(spec.task.params)
    if spec.input.path:
        paths = files.discover(spec.input)
        schemas = []
        for path in paths:  # every file's schema (Parquet metadata, a CSV's header and first block)
            schema = files.schema(spec.input, path)
            check_columns(spec.input, schema, str(path), task_columns, task_cls.takes_messages)
            schemas.append((str(path), schema))
        merged = columns.merge(spec.input, _output_columns(spec), schemas)
        return merged.names, f"{len(paths)} {spec.input.format or 'input'} file(s)"
    if is_url(spec.input.dataset):
        return [], f"dataset {spec.input.dataset} (columns checked when run)"
    directory = Path(spec.input.dataset)
    if not directory.is_dir():
        return [], f"hub dataset {spec.input.dataset} (columns checked when run)"
    if (directory / "dataset_dict.json").is_file():
        splits = json.loads((directory / "dataset_dict.json").read_text()).get("splits", [])
        if spec.input.split not in splits:
            raise SpecError("input.split", f"{directory} holds splits {', '.join(splits)}; name one")
        directory = directory / spec.input.split
    info = directory / "dataset_info.json"
    names = list(json.loads(info.read_text()).get("features", {})) if info.is_file() else []
    named = [spec.input.text_column, spec.input.text_pair_column, spec.input.id_column, *task_columns.values()]
    for column in filter(None, named):
        if names and column not in names:
            raise SpecError("input.text_column", f'column "{column}" not found in {directory}; columns are: '
                                                 f'{", ".join(names)}')
    return names, f"dataset {spec.input.dataset}"


def _output_columns(spec: JobSpec):
    """The input columns an existing output holds (its log's pinned schema), or None."""
    from batchnlp.write.commits import CommitLog

    try:
        log = CommitLog.read(Folder(spec.output.path, spec.output.storage_options))
    except UserError:
        return None  # the output's own check says what is wrong with it
    if log is None or not log.state.pinned.input_schema:
        return None
    return columns.deserialize(log.state.pinned.input_schema)


def _check_model_files(spec: JobSpec, directory: Path) -> None:
    config = json.loads((directory / "config.json").read_text())
    source.check_max_length(spec.runtime.max_length, config)
    if not any((directory / name).is_file() for name in VOCABULARY_FILES) and not any(directory.glob("*.model")):
        raise ModelUnavailableError(f"model: {directory} has no tokenizer files ({', '.join(VOCABULARY_FILES[:3])}, "
                                    "...); copy them from the model's repository")
    task_cls = task_class(spec.task.name)
    architectures = config.get("architectures") or []
    headless = architectures and not any("For" in a or a.endswith(("LMHeadModel", "MTModel")) for a in architectures)
    wants = task_cls.model_class_of(spec.task.params)
    if wants == "AutoModelForCausalLM" and architectures and not headless and \
            not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        method = getattr(spec.task.params, "method", None)
        raise ModelUnavailableError(f"model: {directory} is a {architectures[0]}, not a causal language model, which "
                                    f"{spec.task.name}{f' with method: {method}' if method else ''} needs (an "
                                    "...ForCausalLM checkpoint)")
    if task_cls.needs_head(spec.task.params) and headless and not spec.model.allow_missing_weights:
        raise ModelUnavailableError(
            f"model: {directory} is a bare {architectures[0]} with no head for {spec.task.name}: its answers would "
            "come from random weights; use a checkpoint trained for the task, or set model.allow_missing_weights: "
            "true (speed benchmarks only)")


def _check_output(spec: JobSpec, input_columns: list[str] | None) -> None:
    """The output's place, and its columns against the input's (None: the input could not be read)."""
    prefix = spec.output.prefix
    added = [prefix + name for name in [*task_class(spec.task.name).columns(spec.task.params), "error"]]
    if input_columns is not None:
        check_collisions([*input_columns, *added])
    if is_url(spec.output.path):
        folder = Folder(spec.output.path, spec.output.storage_options)
        folder.create()  # the bucket exists and is visible
        folder.probe_write()  # credentials that may list may still not write
        return
    place = Path(spec.output.path)
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir() or not os.access(place, os.W_OK | os.X_OK):
        raise OutputConflictError(f"output.path: {spec.output.path} cannot be written ({place} is not a writable "
                                  "directory); fix its permissions or choose another output.path")
