"""The local engine: plan -> lock the output -> resume or start -> load the model once -> for each
shard: annotate, write the part atomically, then record it in the manifest."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchnlp.errors import OutputConflictError, SpecError
from batchnlp.model import source
from batchnlp.read.plan import Plan, make_plan, read_shards
from batchnlp.spec import JobSpec
from batchnlp.tasks import task_class
from batchnlp.write.lock import OutputLock
from batchnlp.write.manifest import MANIFEST_NAME, Manifest, library_versions
from batchnlp.write.parts import output_schema, part_name, write_atomic


@dataclass
class RunResult:
    output: Path
    status: str
    rows_written: int  # by this run
    shards_written: int
    shards_total: int | None
    resumed_from: int  # shards already committed when this run started


def fingerprint(spec: JobSpec, plan: Plan, model_identity: dict[str, Any], limit: int | None) -> dict[str, Any]:
    """What must not change for an output to be resumed. Device, batch budget and workers may change
    between runs (they change speed, not which rows map to which part); dtype and max_length may not.
    Sampling draws its random numbers batch by batch, so there the batch settings must stay too."""
    resolved = spec.resolved()
    runtime = {"dtype": spec.runtime.dtype, "max_length": spec.runtime.max_length}
    if getattr(spec.task.params, "do_sample", False):
        runtime.update(batch_tokens=spec.runtime.batch_tokens, max_batch_size=spec.runtime.max_batch_size)
    return {
        "spec": {
            "input": resolved["input"], "task": resolved["task"], "model": resolved["model"],
            "runtime": runtime,
            "output": {"rows_per_shard": spec.output.rows_per_shard, "prefix": spec.output.prefix},
        },
        "model": {k: v for k, v in model_identity.items() if k != "path"},
        "input": plan.fingerprint(),
        "limit": limit,
    }


def run(spec: JobSpec, overwrite: bool = False, limit: int | None = None, quiet: bool = False,
        engine: str | None = None, address: str | None = None) -> RunResult:
    plan = plan_job(spec, limit)
    resolved = source.resolve(spec.model)
    out = Path(spec.output.path)
    out.mkdir(parents=True, exist_ok=True)
    engine = engine or spec.runtime.engine
    with OutputLock(out):
        job_fingerprint = fingerprint(spec, plan, resolved.identity, limit)
        manifest = _existing(out, job_fingerprint, overwrite)
        if manifest is not None and manifest.status == "complete":
            return RunResult(out, "complete", 0, 0, manifest.data["totals"].get("shards"),
                             len(manifest.done_shards()))
        if engine == "ray":
            from batchnlp import ray_engine

            return ray_engine.run(spec, plan, resolved, manifest, job_fingerprint, limit, out, quiet,
                                  address or spec.runtime.ray_address)
        session = open_session(spec, plan, resolved, quiet)
        if manifest is None:
            manifest = new_manifest(session.job, out, job_fingerprint, limit)
        done = manifest.done_shards()
        manifest.start_run({"engine": "local", **session.run_info(), "resumed_from_shards": len(done)})
        return _loop(plan, manifest, session.annotator, done, out, plan.shard_count, quiet)


def plan_job(spec: JobSpec, limit: int | None = None) -> Plan:
    task_cls = task_class(spec.task.name)
    return make_plan(spec.input, spec.output.rows_per_shard, limit, task_cls.extra_columns(spec.task.params))


@dataclass
class Job:
    """What a job will produce, known before any weights load: the task, its output schema."""

    spec: JobSpec
    resolved: Any
    config: Any
    tokenizer: Any
    task: Any
    schema: Any
    max_length: int


def describe_job(spec: JobSpec, plan: Plan, resolved: Any, quiet: bool = True) -> Job:
    # Heavy imports only now: `validate`, `--help` and the checks before this stay instant.
    from batchnlp.model import load

    if quiet:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    trust = spec.model.trust_remote_code
    config = load.load_config(resolved, trust)
    tokenizer = load.load_tokenizer(resolved, trust)
    max_length = spec.runtime.max_length or load.default_max_length(resolved.directory, tokenizer, config)
    task = task_class(spec.task.name)(spec.task.params, config, tokenizer, max_length)
    schema = output_schema(plan.schema, task.fields(), spec.output.prefix)
    _check_collisions(schema.names)
    return Job(spec, resolved, config, tokenizer, task, schema, max_length)


@dataclass
class Session:
    """A job ready to annotate: model loaded once, precision settled, output schema declared."""

    job: Job
    annotator: Any
    probe: dict[str, Any] | None

    @property
    def spec(self) -> JobSpec:
        return self.job.spec

    @property
    def resolved(self) -> Any:
        return self.job.resolved

    def run_info(self) -> dict[str, Any]:
        runtime, model = self.spec.runtime, self.annotator.loaded.model
        return {**self.annotator.placement.describe(), "precision_probe": self.probe,
                "attention": getattr(model.config, "_attn_implementation", None),
                "batch_tokens": runtime.batch_tokens, "max_batch_size": runtime.max_batch_size,
                "num_workers": runtime.num_workers}


def open_session(spec: JobSpec, plan: Plan, resolved: Any, quiet: bool = True) -> Session:
    from batchnlp.annotate import Annotator, LoadedModel
    from batchnlp.model import device, load

    job = describe_job(spec, plan, resolved, quiet)
    if spec.runtime.threads:
        import torch

        torch.set_num_threads(spec.runtime.threads)
    placement = device.choose(spec.runtime)
    task = job.task
    model = load.load_model(resolved, task.model_class, placement, spec.model.trust_remote_code)
    with placement.context():
        task.prepare(model)
    loaded = LoadedModel(model, job.tokenizer, model.config, job.max_length)
    annotator = Annotator(spec, task, loaded, placement, job.schema)
    probe = None
    if placement.needs_probe:
        probe = precision_probe(annotator, plan)
        if not probe["kept"]:
            annotator = annotator.in_float32()
    return Session(job, annotator, probe)


PROBE_ROWS = 32


def precision_probe(annotator: Any, plan: Plan) -> dict[str, Any]:
    """Annotate the first rows in the chosen precision and in float32; keep the faster precision
    only if the answers agree as well as the task requires (its agreement_threshold)."""
    from batchnlp.annotate import annotation_rows

    _, table = next(read_shards(plan, set()))
    sample = table.slice(0, PROBE_ROWS)
    reference = annotator.in_float32()
    fast, _ = annotator(sample, 0)
    exact, _ = reference(sample, 0)
    task = annotator.task
    agreement = task.agreement(annotation_rows(fast, annotator), annotation_rows(exact, reference))
    return {"dtype": annotator.placement.name, "rows": sample.num_rows, "agreement": round(agreement, 5),
            "threshold": task.agreement_threshold, "kept": agreement >= task.agreement_threshold}


def new_manifest(job: Job, out: Path, job_fingerprint: dict[str, Any], limit: int | None) -> Manifest:
    spec, config = job.spec, job.config
    return Manifest.new(
        out,
        job={"file": spec.source_file, "text": spec.source_text, "resolved": spec.resolved()},
        fingerprint=job_fingerprint,
        model={**job.resolved.identity, "class": job.task.model_class,
               "architecture": (config.architectures or [config.model_type])[0], "max_length": job.max_length},
        input=job_fingerprint["input"],
        planned={"rows": job_fingerprint["input"]["total_rows"], "shards": job_fingerprint["input"].get("shards"),
                 "limit": limit},
        output={"schema": [f"{f.name}: {f.type}" for f in job.schema]},
        libraries=library_versions(),
    )


def _loop(plan: Plan, manifest: Manifest, annotate: Any, done: set[int], out: Path, shards_total: int | None,
          quiet: bool) -> RunResult:
    """Three stages overlap, one thread each: reading and tokenizing shard i+1, running the model
    on shard i, decoding and writing shard i-1. So the device never waits for I/O or the
    tokenizer, and the order of commits stays the shard order."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    done_rows = sum(s["rows"] for s in manifest.data["shards"] if s["index"] in done)
    progress = tqdm(total=plan.total_rows, initial=done_rows, unit="rows", disable=quiet, dynamic_ncols=True,
                    desc="annotating")
    shards = read_shards(plan, done)
    began = time.perf_counter()
    written = {"rows": 0, "shards": 0}

    def read_next() -> Any:
        item = next(shards, None)
        return None if item is None else (item[0], annotate.prepare(item[1]))

    def commit(shard: Any, prepared: Any) -> None:
        table, stats = annotate.finish(prepared)
        size = write_atomic(table, out / part_name(shard.index))
        _crash_point("part-written", shard.index)
        stats.update(index=shard.index, input=plan.units[shard.unit].name, start=shard.start, bytes=size)
        written["rows"] += shard.rows
        written["shards"] += 1
        manifest.record_shard(stats, run={"rows": written["rows"], "seconds": round(time.perf_counter() - began, 3),
                                          "batch_tokens_in_use": annotate.batch_tokens,
                                          "oom_splits": annotate.oom_splits})
        _crash_point("shard-recorded", shard.index)
        progress.update(shard.rows)
        progress.set_postfix(tok_s=f"{stats['tokens'] / max(stats['seconds'], 1e-9):.0f}")

    writing = None
    try:
        with ThreadPoolExecutor(1, "batchnlp-read") as reader, ThreadPoolExecutor(1, "batchnlp-write") as writer:
            reading = reader.submit(read_next)
            try:
                while (item := reading.result()) is not None:
                    reading = reader.submit(read_next)  # prefetch the next shard while this one runs
                    shard, prepared = item
                    annotate.infer(prepared, shard.index)
                    if writing is not None:
                        writing.result()  # one write in flight at most; raises the writer's error here
                    writing = writer.submit(commit, shard, prepared)
                if writing is not None:
                    writing.result()
            finally:
                if writing is not None and not writing.done():
                    writing.exception()  # let a commit in flight finish before the manifest is closed
    except KeyboardInterrupt:
        manifest.finish("interrupted")
        raise
    except BaseException as e:
        manifest.finish("failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        progress.close()
    manifest.finish("complete")
    return RunResult(out, "complete", written["rows"], written["shards"], shards_total, len(done))


def _existing(out: Path, job_fingerprint: dict[str, Any], overwrite: bool) -> Manifest | None:
    """The manifest to resume, or None to start afresh; refuses to mix two jobs in one output."""
    manifest = Manifest.load(out)
    if overwrite:
        clear(out)
        return None
    if manifest is None:
        if any(out.glob("part-*.parquet")):
            raise OutputConflictError(f"output.path: {out} holds Parquet parts but no {MANIFEST_NAME}; choose "
                                      "another output.path or pass --overwrite to replace them")
        return None
    changes = manifest.differences(job_fingerprint)
    if changes:
        shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
        raise OutputConflictError(f"output.path: {out} was started by a different job ({shown}); pass "
                                  "--overwrite to start over, or choose another output.path")
    return manifest


def clear(out: Path) -> None:
    """Remove what batchnlp wrote (parts, manifest, temporary files), nothing else."""
    for path in [*out.glob("part-*.parquet"), *out.glob(".*.tmp"), out / MANIFEST_NAME]:
        path.unlink(missing_ok=True)


def _check_collisions(output_names: list[str]) -> None:
    seen = set()
    for name in output_names:
        if name in seen:
            raise SpecError("output.prefix", f'the input already has a column "{name}", which this task adds; '
                                             'set output.prefix (e.g. "pred_") to keep both')
        seen.add(name)


def _crash_point(name: str, index: int) -> None:
    """Fault injection for the resume tests: BATCHNLP_TEST_CRASH=part-written:2 SIGKILLs this
    process right after part 2 is renamed into place (before the manifest records it)."""
    if os.environ.get("BATCHNLP_TEST_CRASH") == f"{name}:{index}":
        os.kill(os.getpid(), signal.SIGKILL)
