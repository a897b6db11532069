"""A job ready to annotate: its model loaded once onto the chosen device and precision, and that
precision settled (`open_session`; `dtype: auto`'s probe in `probe.py`). The engines open one per
process that annotates; `batchnlp.Annotator` builds its stages with the same `load_model` and
`settled`. Heavy imports (torch, transformers) happen inside the functions that need them."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Container

from batchnlp import probe as probes
from batchnlp.job import Job
from batchnlp.read.plan import ShardKey
from batchnlp.stages import Stages


@dataclass
class Session:
    """A job ready to annotate: model loaded once, precision settled, output schema declared."""

    job: Job
    stages: Stages
    probe: dict[str, Any] | None
    #: Seconds to load the weights (with the converted-model cache's lookup or conversion), and
    #: to run the precision probe after.
    load_seconds: float = 0.0
    probe_seconds: float = 0.0

    def run_info(self) -> dict[str, Any]:
        """This run's device, precision and batch settings, for its entry in the output's record."""
        from batchnlp.model import first_position

        runtime, model = self.job.spec.runtime, self.stages.model
        return {**self.stages.placement.describe(), "precision_probe": self.probe,
                "precision": self.stages.placement.name,
                "attention": getattr(model.config, "_attn_implementation", None),
                "last_layer": first_position.last_layer(model),
                "batch_tokens": runtime.batch_tokens, "max_batch_size": runtime.max_batch_size,
                "num_workers": runtime.num_workers, "model_cache": self.job.model_cache,
                "model_load_seconds": self.load_seconds, "probe_seconds": self.probe_seconds}


def open_session(job: Job, done: Container[ShardKey] = (), pinned: str | None = None) -> Session:
    """Load the weights once onto the chosen device and precision. `pinned`: the precision the
    output settled on at its first commit, used as is; else `dtype: auto` on a CPU decides from
    the hardware and this machine's calibration (`model/precision.py`), and keeps bfloat16 only if
    the probe (on the first shard not `done`) agrees with float32."""
    from batchnlp import watchdog
    from batchnlp.model import device

    began = time.perf_counter()
    spec = job.spec
    if spec.runtime.threads:
        import torch

        torch.set_num_threads(spec.runtime.threads)
    deciding = spec.runtime.dtype == "auto" and pinned is None
    with watchdog.doing("deciding the precision (this CPU's bfloat16 calibration, once per machine)") \
            if deciding else contextlib.nullcontext():
        placement = device.choose(spec.runtime, pinned)
    model = load_model(job, placement)
    loaded = time.perf_counter()
    stages, probe = settled(Stages(job, model, placement), lambda stages: probes.precision_probe(stages, done))
    converting = (job.model_cache or {}).get("seconds", 0.0)
    return Session(job, stages, probe, round(converting + loaded - began, 3), round(time.perf_counter() - loaded, 3))


def load_model(job: Job, placement: Any) -> Any:
    """The job's model on `placement`, without the task's preparation (`prepare_model`)."""
    from batchnlp.model import load

    spec = job.spec
    model = load.load_model(job.model, job.task.model_class, placement, spec.model.trust_remote_code,
                            spec.model.allow_missing_weights)
    prepare_model(job, model, placement)
    return model


def prepare_model(job: Job, model: Any, placement: Any) -> None:
    """What a loaded model needs before it annotates: the task's own preparation, and under
    bfloat16 autocast its scoring head in float32 (`device.head_in_float32`)."""
    from batchnlp.model import device

    if placement.autocast_dtype is not None:
        device.head_in_float32(job.task.float32_head(model))
    with placement.context():
        job.task.prepare(model)


def settled(stages: Stages, probe: Callable[[Stages], dict[str, Any]]) -> tuple[Stages, dict[str, Any] | None]:
    """(the stages in the precision `dtype: auto` keeps, what decided it): where the placement
    asks for a probe, `probe(stages)` runs it and float32 takes over when it refuses; else the
    record of a decision made before any row ran (or None: no decision to record)."""
    if not stages.placement.needs_probe:
        return stages, probes.decided_without_rows(stages.placement)
    found = probe(stages)
    if found["kept"]:
        return stages, found
    from batchnlp.model import kernels

    kernels.pack_linears(stages.model, stages.placement.float32())  # packed for autocast: now for float32
    return stages.in_float32(), found
