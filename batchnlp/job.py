"""A job as known before any weights load: the spec, its plan, the model's source, config and
tokenizer, the task and the output's schema (`Job`, `describe_job`), and what the output's first
commit says about it (`metadata`). Heavy imports (transformers) happen inside `describe_job`,
after the CLI has parsed."""

from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from batchnlp.model.source import ResolvedModel, check_max_length
from batchnlp.read import columns
from batchnlp.read.plan import Plan
from batchnlp.spec import JobSpec
from batchnlp.tasks import task_class
from batchnlp.tasks.base import Task
from batchnlp.write.actions import Metadata
from batchnlp.write.parts import check_collisions, output_schema
from batchnlp.write.state import now, relative_base

LIBRARIES = ("batchnlp", "torch", "transformers", "tokenizers", "pyarrow", "datasets", "huggingface_hub",
             "safetensors", "numpy", "sentencepiece", "gguf", "accelerate")


def library_version(name: str) -> str | None:
    """An installed distribution's version (None: not installed)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that decide the output (None: not installed)."""
    return {"python": platform.python_version(), **{name: library_version(name) for name in LIBRARIES}}


@dataclass
class Job:
    """What a job will produce, known before any weights load: the task and its output schema."""

    spec: JobSpec
    plan: Plan
    model: ResolvedModel
    config: Any  # transformers.PretrainedConfig
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    task: Task
    schema: pa.Schema
    max_length: int
    #: The converted-model cache's answer (hit, seconds, entry), None when nothing needed converting.
    model_cache: dict[str, Any] | None = None
    #: The task's annotation columns, typed (`Task.fields`, asked once).
    fields: list[pa.Field] = field(default_factory=list)
    #: What each row's record holds, and from which input column: "text", "pair", and the task's
    #: extra columns under their parameter names (`Stages.records`).
    record_columns: dict[str, str] = field(default_factory=dict)


def describe_job(spec: JobSpec, plan: Plan, resolved: ResolvedModel, quiet: bool = True) -> Job:
    # Heavy imports only now: `validate`, `--help` and the checks before this stay instant.
    from batchnlp.model import cache, load

    if quiet:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    trust = spec.model.trust_remote_code
    task_cls = task_class(spec.task.name)
    resolved, model_cache = cache.converted(resolved, task_cls.model_class_of(spec.task.params), trust)
    config = load.load_config(resolved, trust)
    tokenizer = load.load_tokenizer(resolved, trust)
    check_max_length(spec.runtime.max_length, config.to_dict())
    max_length = spec.runtime.max_length or min(load.default_max_length(resolved.directory, tokenizer, config),
                                                task_cls.default_max_length or 1 << 30)
    task = task_cls(spec.task.params, config, tokenizer, max_length)
    fields = task.fields()
    schema = output_schema(plan.schema, fields, spec.output.prefix)
    check_collisions(schema.names)
    record_columns = {"text": spec.input.text_column}
    if spec.input.text_pair_column:
        record_columns["pair"] = spec.input.text_pair_column
    for key, column in task_cls.extra_columns(spec.task.params).items():
        record_columns[key.removeprefix("task.")] = column
    return Job(spec, plan, resolved, config, tokenizer, task, schema, max_length, model_cache, fields, record_columns)


def metadata(job: Job, job_fingerprint: dict[str, Any], output: str, probe: dict[str, Any] | None,
             precision: str) -> Metadata:
    """The output's first action: what the job is, and the decisions later runs keep (pinned)."""
    spec, config = job.spec, job.config
    base = spec.base_dir or None
    model = {**job.model.identity, "class": job.task.model_class,
             "architecture": (config.architectures or [config.model_type])[0], "max_length": job.max_length}
    return Metadata(
        created_at=now(),
        job={"file": spec.source_file, "paths_as_written": spec.paths_as_written, "resolved": spec.resolved(),
             # What made the resolved job differ from the file's text: --set, and ${VAR}s by name.
             "overrides": list(spec.overrides), "variables": list(spec.variables),
             "base": base, "base_from_output": relative_base(base, output),
             # The text as given, unless it holds storage_options (credentials stay out of the log).
             **({"text": None, "text_withheld": "the job holds storage_options"} if spec.has_storage_options
                else {"text": spec.source_text})},
        fingerprint=job_fingerprint,
        model=model,
        input={"kind": "dataset" if spec.input.dataset else "files", **job.plan.identity},
        libraries=library_versions(),
        pinned={"precision": precision, "probe": probe, "model": model,
                "schema": [f"{f.name}: {f.type}" for f in job.schema],
                "input_schema": columns.serialize(job.plan.schema),
                "arrow_schema": columns.serialize(job.schema)},
    )
