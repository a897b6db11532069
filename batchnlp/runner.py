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


def run(spec: JobSpec, overwrite: bool = False, limit: int | None = None, quiet: bool = False) -> RunResult:
    task_cls = task_class(spec.task.name)
    plan = make_plan(spec.input, spec.output.rows_per_shard, limit, task_cls.extra_columns(spec.task.params))
    resolved = source.resolve(spec.model)
    out = Path(spec.output.path)
    out.mkdir(parents=True, exist_ok=True)
    with OutputLock(out):
        job_fingerprint = fingerprint(spec, plan, resolved.identity, limit)
        manifest = _existing(out, job_fingerprint, overwrite)
        if manifest is not None and manifest.status == "complete":
            return RunResult(out, "complete", 0, 0, manifest.data["totals"].get("shards"),
                             len(manifest.done_shards()))

        # Heavy imports only now: `validate`, `--help` and the checks above stay instant.
        from batchnlp.annotate import Annotator, LoadedModel
        from batchnlp.model import device, load

        if quiet:
            import transformers

            transformers.utils.logging.disable_progress_bar()
        placement = device.choose(spec.runtime)
        trust = spec.model.trust_remote_code
        config = load.load_config(resolved, trust)
        tokenizer = load.load_tokenizer(resolved, trust)
        max_length = spec.runtime.max_length or load.default_max_length(resolved.directory, tokenizer, config)
        task = task_cls(spec.task.params, config, tokenizer, max_length)
        schema = output_schema(plan.schema, task.fields(), spec.output.prefix)
        _check_collisions(schema.names)
        model = load.load_model(resolved, task.model_class, placement, trust)
        with placement.context():
            task.prepare(model)
        loaded = LoadedModel(model, tokenizer, model.config, max_length)

        shards_total = plan.shard_count
        if manifest is None:
            manifest = Manifest.new(
                out,
                job={"file": spec.source_file, "text": spec.source_text, "resolved": spec.resolved()},
                fingerprint=job_fingerprint,
                model={**resolved.identity, "class": task.model_class,
                       "architecture": (loaded.config.architectures or [loaded.config.model_type])[0],
                       "max_length": loaded.max_length},
                input=plan.fingerprint(),
                planned={"rows": plan.total_rows, "shards": shards_total, "limit": limit},
                output={"schema": [f"{f.name}: {f.type}" for f in schema]},
                libraries=library_versions(),
            )
        done = manifest.done_shards()
        manifest.start_run({**placement.describe(), "batch_tokens": spec.runtime.batch_tokens,
                            "max_batch_size": spec.runtime.max_batch_size, "num_workers": spec.runtime.num_workers,
                            "resumed_from_shards": len(done)})
        annotate = Annotator(spec, task, loaded, placement, schema)
        return _loop(plan, manifest, annotate, done, out, shards_total, quiet)


def _loop(plan: Plan, manifest: Manifest, annotate: Any, done: set[int], out: Path, shards_total: int | None,
          quiet: bool) -> RunResult:
    from tqdm import tqdm

    done_rows = sum(s["rows"] for s in manifest.data["shards"] if s["index"] in done)
    progress = tqdm(total=plan.total_rows, initial=done_rows, unit="rows", disable=quiet, dynamic_ncols=True,
                    desc="annotating")
    rows = shards = 0
    try:
        for shard, table in read_shards(plan, done):
            began = time.perf_counter()
            annotated, stats = annotate(table, shard.index)
            size = write_atomic(annotated, out / part_name(shard.index))
            _crash_point("part-written", shard.index)
            stats.update(index=shard.index, input=plan.units[shard.unit].name, start=shard.start, bytes=size,
                         seconds=round(time.perf_counter() - began, 4))
            manifest.record_shard(stats)
            _crash_point("shard-recorded", shard.index)
            rows += shard.rows
            shards += 1
            progress.update(shard.rows)
            progress.set_postfix(tok_s=f"{stats['tokens'] / max(stats['seconds'], 1e-9):.0f}")
    except KeyboardInterrupt:
        manifest.finish("interrupted")
        raise
    except BaseException as e:
        manifest.finish("failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        progress.close()
    manifest.finish("complete")
    return RunResult(out, "complete", rows, shards, shards_total, len(done))


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
