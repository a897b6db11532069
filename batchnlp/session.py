"""What both engines share: the job as known before any weights load (`Job`, `describe_job`
loads its config and tokenizer), the model opened with its precision settled (`Session`,
`open_session`), and the output's first action (`metadata`). Writing and recording parts is
`write/committer.py`'s.

The chain of holders: `Job` (spec, plan, model source, config, tokenizer, task, output schema)
-> `Session` (the job, its `Annotator` on the loaded model, the precision probe). Heavy imports
(torch, transformers) happen inside the functions that need them, after the CLI has parsed.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Container

import pyarrow as pa

from batchnlp.model.source import ResolvedModel, check_max_length
from batchnlp.read import columns
from batchnlp.read.plan import Plan, ShardKey, read_shards
from batchnlp.spec import JobSpec
from batchnlp.tasks import task_class
from batchnlp.tasks.base import Task
from batchnlp.write.folder import Folder
from batchnlp.write.state import now, relative_base
from batchnlp.write.parts import check_collisions, output_schema

if TYPE_CHECKING:
    from batchnlp.annotator import Annotator

#: The precision probe's rows: the first rows to do, at most this many and this many tokens (as
#: the batcher counts them: generation adds the tokens it will make), so its cost is bounded by
#: the job, not by the night (two forwards of at most 4,096 tokens).
PROBE_ROWS = 32
PROBE_TOKENS = 4096
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
class RunResult:
    output: str  # the output's path or URL
    status: str
    rows_written: int  # by this run
    shards_written: int
    shards_total: int | None
    resumed_from: int  # shards already committed when this run started
    #: What the run found changed in the input and what it did about it (names by kind).
    changes: dict[str, list[str]] | None = None
    #: --retry-errors: rows annotated again, and how many of them still fail.
    retried: dict[str, Any] | None = None
    #: The output's previous run did not finish (killed, failed, interrupted): this one resumed it.
    resumed: bool = False


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
    schema = output_schema(plan.schema, task.fields(), spec.output.prefix)
    check_collisions(schema.names)
    return Job(spec, plan, resolved, config, tokenizer, task, schema, max_length, model_cache)


@dataclass
class Session:
    """A job ready to annotate: model loaded once, precision settled, output schema declared."""

    job: Job
    annotator: Annotator
    probe: dict[str, Any] | None
    #: Seconds to load the weights (with the converted-model cache's lookup or conversion), and
    #: to run the precision probe after.
    load_seconds: float = 0.0
    probe_seconds: float = 0.0

    def run_info(self) -> dict[str, Any]:
        """This run's device, precision and batch settings, for its entry in the output's record."""
        runtime, model = self.job.spec.runtime, self.annotator.model
        return {**self.annotator.placement.describe(), "precision_probe": self.probe,
                "precision": self.annotator.placement.name,
                "attention": getattr(model.config, "_attn_implementation", None),
                "batch_tokens": runtime.batch_tokens, "max_batch_size": runtime.max_batch_size,
                "num_workers": runtime.num_workers, "model_cache": self.job.model_cache,
                "model_load_seconds": self.load_seconds, "probe_seconds": self.probe_seconds}


def open_session(job: Job, done: Container[ShardKey] = (), pinned: str | None = None) -> Session:
    """Load the weights once onto the chosen device and precision. `pinned`: the precision the
    output settled on at its first commit, used as is; else `dtype: auto` on a CPU decides from
    the hardware and this machine's calibration (`model/precision.py`), and keeps bfloat16 only if
    the probe (on the first shard not `done`) agrees with float32."""
    from batchnlp import watchdog
    from batchnlp.annotator import Annotator
    from batchnlp.model import device, load

    began = time.perf_counter()
    spec = job.spec
    if spec.runtime.threads:
        import torch

        torch.set_num_threads(spec.runtime.threads)
    deciding = spec.runtime.dtype == "auto" and pinned is None
    with watchdog.doing("deciding the precision (this CPU's bfloat16 calibration, once per machine)") \
            if deciding else contextlib.nullcontext():
        placement = device.choose(spec.runtime, pinned)
    model = load.load_model(job.model, job.task.model_class, placement, spec.model.trust_remote_code,
                            spec.model.allow_missing_weights)
    prepare_model(job, model, placement)
    annotator = Annotator(job, model, placement)
    loaded = time.perf_counter()
    probe = decided_without_rows(placement)
    if placement.needs_probe:
        probe = precision_probe(annotator, done)
        if not probe["kept"]:
            annotator = annotator.in_float32()
    converting = (job.model_cache or {}).get("seconds", 0.0)
    return Session(job, annotator, probe, round(converting + loaded - began, 3),
                   round(time.perf_counter() - loaded, 3))


def prepare_model(job: Job, model: Any, placement: Any) -> None:
    """What a loaded model needs before it annotates: the task's own preparation, and under
    bfloat16 autocast its scoring head in float32 (`device.head_in_float32`)."""
    from batchnlp.model import device

    if placement.autocast_dtype is not None:
        device.head_in_float32(job.task.float32_head(model))
    with placement.context():
        job.task.prepare(model)


def decided_without_rows(placement: Any) -> dict[str, Any] | None:
    """`dtype: auto` on a CPU that float32 won before any row ran (no native bfloat16, or its
    calibration under the margin): the record says so, and why. None otherwise."""
    if placement.decision is None or placement.needs_probe:
        return None
    return {"dtype": "bfloat16", "rows": 0, "kept": False, "refused": placement.decision["refused"],
            **{k: v for k, v in placement.decision.items() if k != "refused"}}


def precision_probe(annotator: Annotator, done: Container[ShardKey] = ()) -> dict[str, Any]:
    """Annotate the first rows in the chosen precision and in float32; keep the faster precision
    only if the answers agree as well as the task requires (`tasks/agreement.py`)."""
    _, table = next(read_shards(annotator.job.plan, done), (None, None))
    if table is None:  # nothing left to annotate: probe on the first shard
        _, table = next(read_shards(annotator.job.plan, ()))
    return probe_on(annotator, table)


def probe_rows(annotator: Annotator, table: pa.Table) -> tuple[pa.Table, int]:
    """The probe's rows: the first of `table`, at most PROBE_ROWS and PROBE_TOKENS (at least one
    row), and their tokens as the batcher counts them."""
    sample = table.slice(0, PROBE_ROWS)
    prepared = annotator.prepare(sample)
    per_row = [0] * sample.num_rows
    for owner, feature in zip(prepared.owners, prepared.features):
        per_row[owner] += annotator.task.batch_length(feature)
    rows, tokens = 0, 0
    while rows < len(per_row) and (rows == 0 or tokens + per_row[rows] <= PROBE_TOKENS):
        tokens += per_row[rows]
        rows += 1
    return sample.slice(0, rows), tokens


def probe_on(annotator: Annotator, table: pa.Table) -> dict[str, Any]:
    """The precision probe on the first rows of `table`: the faster precision is kept if its
    answers agree with float32's as well as the task requires — labels, and scores' resolution
    and margins (`tasks/agreement.py`). No timing decides it: that was settled for this machine
    before (`model/precision.py`), so a loaded machine decides as a quiet one does. Its seconds
    are recorded, not used."""
    from batchnlp import watchdog
    from batchnlp.annotator import annotation_rows
    from batchnlp.tasks.agreement import compare

    task = annotator.task
    sample, tokens = probe_rows(annotator, table)
    reference = annotator.in_float32()
    with watchdog.doing(f"checking {annotator.placement.name} against float32 on the first {sample.num_rows} rows "
                        f"({tokens} tokens; the precision probe)"):
        began = time.perf_counter()
        exact, _ = reference(sample, 0)
        fast, _ = annotator(sample, 0)
        seconds = time.perf_counter() - began
    refused, figures = compare(task, annotation_rows(fast, annotator), annotation_rows(exact, reference))
    return {"dtype": annotator.placement.name, "threshold": task.agreement_threshold, "rows": sample.num_rows,
            "tokens": tokens, **figures, "kept": refused is None, "refused": refused, "seconds": round(seconds, 3),
            **(annotator.placement.decision or {})}


def probe_summary(probe: dict[str, Any]) -> str:
    """One line on what `dtype: auto` found, for `inspect` and `bench`."""
    if not probe.get("rows"):
        return f"{probe.get('dtype')} refused before any row ran: {probe.get('refused')}"
    verdict = f"{probe.get('dtype')} kept" if probe.get("kept") else f"{probe.get('dtype')} refused, {probe.get('refused')}"
    return f"{verdict}; probe agreement {probe.get('agreement')} on {probe.get('rows')} rows"


def metadata(job: Job, job_fingerprint: dict[str, Any], out: Folder, probe: dict[str, Any] | None,
             precision: str) -> dict[str, Any]:
    """The output's first action: what the job is, and the decisions later runs keep (pinned)."""
    spec, config = job.spec, job.config
    base = spec.base_dir or None
    model = {**job.model.identity, "class": job.task.model_class,
             "architecture": (config.architectures or [config.model_type])[0], "max_length": job.max_length}
    return {"metadata": {
        "created_at": now(),
        "job": {"file": spec.source_file, "paths_as_written": spec.paths_as_written, "resolved": spec.resolved(),
                # What made the resolved job differ from the file's text: --set, and ${VAR}s by name.
                "overrides": list(spec.overrides), "variables": list(spec.variables),
                "base": base, "base_from_output": relative_base(base, str(out)),
                # The text as given, unless it holds storage_options (credentials stay out of the log).
                **({"text": None, "text_withheld": "the job holds storage_options"} if spec.has_storage_options
                   else {"text": spec.source_text})},
        "fingerprint": job_fingerprint,
        "model": model,
        "input": {"kind": "dataset" if spec.input.dataset else "files", **job.plan.identity},
        "libraries": library_versions(),
        "pinned": {"precision": precision, "probe": probe, "model": model,
                   "schema": [f"{f.name}: {f.type}" for f in job.schema],
                   "input_schema": columns.serialize(job.plan.schema),
                   "arrow_schema": columns.serialize(job.schema)},
    }}
