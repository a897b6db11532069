"""What both engines share: the job as known before any weights load (`Job`), the model opened
with its precision settled (`Session`), the new manifest, writing one part, and recording how a
run ended (`recording`).

The chain of holders: `Job` (spec, plan, model source, config, tokenizer, task, output schema)
-> `Session` (the job, its `Annotator` on the loaded model, the precision probe). Heavy imports
(torch, transformers) happen inside the functions that need them, after the CLI has parsed.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Container, Iterator

import pyarrow as pa

from batchnlp.model.source import ResolvedModel, check_max_length
from batchnlp.read.plan import Plan, Shard, ShardKey, read_shards
from batchnlp.spec import JobSpec
from batchnlp.tasks import task_class
from batchnlp.tasks.base import Task
from batchnlp.write.manifest import Manifest, library_versions
from batchnlp.write.folder import Folder
from batchnlp.write.parts import check_collisions, output_schema

if TYPE_CHECKING:
    from batchnlp.annotator import Annotator

PROBE_ROWS = 32


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


def describe_job(spec: JobSpec, plan: Plan, resolved: ResolvedModel, quiet: bool = True) -> Job:
    # Heavy imports only now: `validate`, `--help` and the checks before this stay instant.
    from batchnlp.model import load

    if quiet:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    trust = spec.model.trust_remote_code
    config = load.load_config(resolved, trust)
    tokenizer = load.load_tokenizer(resolved, trust)
    check_max_length(spec.runtime.max_length, config.to_dict())
    task_cls = task_class(spec.task.name)
    max_length = spec.runtime.max_length or min(load.default_max_length(resolved.directory, tokenizer, config),
                                                task_cls.default_max_length or 1 << 30)
    task = task_cls(spec.task.params, config, tokenizer, max_length)
    schema = output_schema(plan.schema, task.fields(), spec.output.prefix)
    check_collisions(schema.names)
    return Job(spec, plan, resolved, config, tokenizer, task, schema, max_length)


@dataclass
class Session:
    """A job ready to annotate: model loaded once, precision settled, output schema declared."""

    job: Job
    annotator: Annotator
    probe: dict[str, Any] | None

    def run_info(self) -> dict[str, Any]:
        """This run's device, precision and batch settings, for the manifest's run entry."""
        runtime, model = self.job.spec.runtime, self.annotator.model
        return {**self.annotator.placement.describe(), "precision_probe": self.probe,
                "attention": getattr(model.config, "_attn_implementation", None),
                "batch_tokens": runtime.batch_tokens, "max_batch_size": runtime.max_batch_size,
                "num_workers": runtime.num_workers}


def open_session(job: Job, done: Container[ShardKey] = ()) -> Session:
    """Load the weights once onto the chosen device and precision; with `dtype: auto` on a bf16
    CPU, keep bfloat16 only if the probe (on the first shard not `done`) agrees with float32."""
    from batchnlp.annotator import Annotator
    from batchnlp.model import device, load

    spec = job.spec
    if spec.runtime.threads:
        import torch

        torch.set_num_threads(spec.runtime.threads)
    placement = device.choose(spec.runtime)
    model = load.load_model(job.model, job.task.model_class, placement, spec.model.trust_remote_code,
                            spec.model.allow_missing_weights)
    with placement.context():
        job.task.prepare(model)
    annotator = Annotator(job, model, placement)
    probe = None
    if placement.needs_probe:
        probe = precision_probe(annotator, done)
        if not probe["kept"]:
            annotator = annotator.in_float32()
    return Session(job, annotator, probe)


def precision_probe(annotator: Annotator, done: Container[ShardKey] = ()) -> dict[str, Any]:
    """Annotate the first rows in the chosen precision and in float32; keep the faster precision
    only if the answers agree as well as the task requires (its agreement_threshold)."""
    from batchnlp.annotator import annotation_rows

    _, table = next(read_shards(annotator.job.plan, done), (None, None))
    if table is None:  # nothing left to annotate: probe on the first shard
        _, table = next(read_shards(annotator.job.plan, ()))
    sample = table.slice(0, PROBE_ROWS)
    reference = annotator.in_float32()
    fast, _ = annotator(sample, 0)
    exact, _ = reference(sample, 0)
    task = annotator.task
    agreement = task.agreement(annotation_rows(fast, annotator), annotation_rows(exact, reference))
    return {"dtype": annotator.placement.name, "rows": sample.num_rows, "agreement": round(agreement, 5),
            "threshold": task.agreement_threshold, "kept": agreement >= task.agreement_threshold}


def new_manifest(job: Job, out: Folder, job_fingerprint: dict[str, Any]) -> Manifest:
    spec, config = job.spec, job.config
    return Manifest.new(
        out,
        job={"file": spec.source_file, "paths_as_written": spec.paths_as_written, "resolved": spec.resolved(),
             # The text as given, unless it holds storage_options (credentials stay out of the manifest).
             **({"text": None, "text_withheld": "the job holds storage_options"} if spec.has_storage_options
                else {"text": spec.source_text})},
        fingerprint=job_fingerprint,
        model={**job.model.identity, "class": job.task.model_class,
               "architecture": (config.architectures or [config.model_type])[0], "max_length": job.max_length},
        input={"kind": "dataset" if spec.input.dataset else "files", **job.plan.identity},
        output={"schema": [f"{f.name}: {f.type}" for f in job.schema]},
        libraries=library_versions(),
    )


def write_part(out: Folder, shard: Shard, table: pa.Table, stats: dict[str, Any]) -> dict[str, Any]:
    """Write a shard's part atomically; return its statistics as the manifest records them. The
    caller records it in the manifest only after this returns: the part is durable by then."""
    size, digest = out.write_table(shard.part, table)
    crash_point("part-written", shard.number)
    return {**stats, "unit": shard.unit.key, "shard": shard.number, "input": shard.unit.name, "start": shard.start,
            "bytes": size, "sha256": digest}


@contextlib.contextmanager
def recording(manifest: Manifest) -> Iterator[None]:
    """Record how the run ended in the manifest: complete, interrupted (Ctrl-C) or failed (with
    the error), and let the exception go on."""
    try:
        yield
    except KeyboardInterrupt:
        manifest.finish("interrupted")
        raise
    except BaseException as e:
        manifest.finish("failed", error=f"{type(e).__name__}: {e}")
        raise
    manifest.finish("complete")


def crash_point(name: str, number: int) -> None:
    """Fault injection for the tests: BATCHNLP_TEST_CRASH=part-written:2 SIGKILLs this process right
    after the part of shard 2 (of any file) is renamed into place, before the manifest records it;
    BATCHNLP_TEST_SIGNAL=shard-recorded:0 sends it SIGTERM, as a scheduler would."""
    point = f"{name}:{number}"
    if os.environ.get("BATCHNLP_TEST_CRASH") == point:
        os.kill(os.getpid(), signal.SIGKILL)
    wanted, _, signame = os.environ.get("BATCHNLP_TEST_SIGNAL", "").partition("@")
    if wanted == point:  # "shard-recorded:0" sends SIGTERM, "shard-recorded:0@SIGINT" SIGINT
        os.kill(os.getpid(), getattr(signal, signame or "SIGTERM"))
