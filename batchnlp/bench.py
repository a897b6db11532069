"""`batchnlp bench`: the runner against the naive `pipeline(texts, batch_size=32)` loop, on the same
model and rows, in one process, alternating and repeated so that the ratio holds on a noisy
machine. Speed is shown by this command, never asserted by a timed test.

Model-FLOPs utilisation (MFU) counts 2 x N FLOPs per real token, N the model's non-embedding
parameters (a whole forward pass's matrix multiplies; attention scores and padding not counted,
and work batchnlp skips still counted, as model FLOPs are: a classifier's last layer run at its
first position only (model/first_position.py) reads as a higher utilisation), over the device's
peak: on CUDA the data-sheet dense fp16/bf16 figure of known cards, on a CPU the matmul rate
measured here in the same precision just before (so "of what this CPU can do").
"""

from __future__ import annotations

import json
import os
import resource
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from batchnlp.decide import plan_job
from batchnlp.engines.local import annotate
from batchnlp.job import describe_job, library_version
from batchnlp.model import source
from batchnlp.peers import for_job
from batchnlp.probe import probe_summary
from batchnlp.progress import Progress
from batchnlp.read.plan import Plan, read_shards
from batchnlp.record import Recorder
from batchnlp.session import Session, open_session
from batchnlp.spec import JobSpec
from batchnlp.stages import Stages, annotation_rows
from batchnlp.tasks.agreement import compare
from batchnlp.tasks.bench_hooks import Baseline
from batchnlp.work import Loaded, Worker
from batchnlp.write.actions import RunStarted
from batchnlp.write.commits import CommitLog
from batchnlp.write.committer import Committer
from batchnlp.write.folder import Folder
from batchnlp.write.state import OutputState, now

# Dense fp16/bf16 tensor-core peaks from the data sheets, by a name fragment of the device.
CUDA_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40": 181e12, "L4": 121e12, "A10": 125e12,
                   "V100": 125e12, "T4": 65e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, value: Any, line: str | None = None) -> None:
        self.data[key] = value
        if line:
            self.lines.append(line)


@dataclass
class Measured:
    """Timings of both sides (seconds per repeat) and the outputs of their last repeat."""

    ours: list[float]
    theirs: list[float]
    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    baseline_rows: list[dict[str, Any]] | None
    #: Other engines on the same model (batchnlp.peers), by label: seconds and their last rows.
    peers: dict[str, list[float]] = field(default_factory=dict)
    peer_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: Untimed rounds of each side before the timed ones.
    warmup: int = 0


def bench(spec: JobSpec, rows: int, baseline: str | None, check_agreement: bool, repeats: int = 3,
          batch_size: int = 32, echo: Callable[[str], None] = print, warmup: int = 1) -> Report:
    plan = plan_job(spec, rows)
    session = open_session(describe_job(spec, plan, source.resolve(spec.model), quiet=True))
    report = Report()
    _header(report, session, echo)
    reference_model = _float32_model(session)
    texts = _rows(plan).column(spec.input.text_column).to_pylist()
    naive = session.stages.task.baseline(reference_model, texts, batch_size) if baseline else None
    if baseline and naive is None:
        echo(f"  no pipeline baseline: transformers {library_version('transformers')} has no {spec.task.name} pipeline")
    peers = for_job(session, texts, echo)
    measured = measure(session.stages, naive, repeats, peers, warmup)
    report.add("rounds", {"warmup": measured.warmup, "timed": len(measured.ours)})
    _report_speed(report, session.stages, plan, measured, naive, batch_size, echo)
    exact = _run_ours(session.stages.in_float32(reference_model))[1] if check_agreement else None
    for peer in peers:
        _report_peer(report, session.stages, measured, peer, exact, echo)
    if exact is not None:
        _report_agreement(report, session.stages.task, exact, measured, echo)
    _report_resources(report, session.stages, reference_model, measured, echo)
    return report


def measure(annotator: Stages, naive: Baseline | None, repeats: int, peers: list[Baseline] = (),
            warmup: int = 0) -> Measured:
    """Alternate the sides, so a slow spell of the machine hits all alike; the first `warmup`
    rounds are run but not timed. A first round pays what a long job pays once (the allocator's
    first pages, kernels set up, a prompt prefix cached): on the generation bench, batchnlp's first
    round took 10.5 s against 8.4-8.5 for the next two, CTranslate2 int8's 10.7 against 7.9-8.2, so
    with three timed rounds the median leaned on whichever side had the slower second round."""
    measured = Measured([], [], [], {}, None, warmup=warmup)
    for index in range(warmup + repeats):
        timed = index >= warmup
        seconds, measured.rows, measured.totals = _run_ours(annotator)
        if timed:
            measured.ours.append(seconds)
        if naive is not None:
            began = time.perf_counter()
            measured.baseline_rows = naive.call()
            if timed:
                measured.theirs.append(time.perf_counter() - began)
        for peer in peers:
            if peer.load is not None:
                peer.load()
            began = time.perf_counter()
            measured.peer_rows[peer.label] = peer.call()
            if timed:
                measured.peers.setdefault(peer.label, []).append(time.perf_counter() - began)
            if peer.unload is not None:
                peer.unload()
    return measured


def _report_peer(report: Report, annotator: Stages, measured: Measured, peer: Baseline,
                 exact: list[dict[str, Any]] | None, echo: Callable[[str], None]) -> None:
    ours, theirs = statistics.median(measured.ours), statistics.median(measured.peers[peer.label])
    n, task, rows = len(measured.rows), annotator.task, measured.peer_rows[peer.label]
    same = task.agreement(measured.rows, rows)
    as_float32 = task.agreement(exact, rows) if exact is not None else None
    report.data.setdefault("peers", {})[peer.label] = {
        "seconds": measured.peers[peer.label], "rows_per_second": n / theirs, "speedup": theirs / ours,
        "agreement_with_ours": same, "agreement_with_float32": as_float32}
    echo(f"  {peer.label:28}{n / theirs:>10.1f}{'':>12}{'-':>14}{theirs:>10.2f}")
    quality = f"; with float32's: {task.describe_agreement(as_float32)}" if as_float32 is not None else ""
    report.lines.append(f"    batchnlp {theirs / ours:.2f}x its speed; its output agrees with ours: "
                        f"{task.describe_agreement(same)}{quality}")
    echo(report.lines[-1])


def _header(report: Report, session: Session, echo: Callable[[str], None]) -> None:
    import torch

    spec, placement = session.job.spec, session.stages.placement
    n = session.job.plan.total_rows
    report.add("job", spec.source_file)
    report.add("task", spec.task.name)
    report.add("rows", n)
    report.add("device", placement.describe())
    from batchnlp.model.precision import hardware

    cpu = hardware()["cpu"]  # figures differ between CPUs of one machine kind: the report says which
    report.add("cpu", cpu)
    probe = f" ({probe_summary(session.probe)})" if session.probe else ""
    kernel = placement.linear_kernel()["linear_kernel"]
    echo(f"batchnlp bench {Path(spec.source_file).name}: {spec.task.name}, {n} rows, {placement.device} "
         f"({torch.get_num_threads()} threads, {cpu}), dtype {placement.name}{probe}, linear layers {kernel}")


def _report_speed(report: Report, annotator: Stages, plan: Plan, measured: Measured, naive: Baseline | None,
                  batch_size: int, echo: Callable[[str], None]) -> None:
    n, tokens, ours = plan.total_rows, measured.totals["tokens"], statistics.median(measured.ours)
    padding = measured.totals["padding_efficiency"]
    report.add("batchnlp", {"seconds": measured.ours, "rows_per_second": n / ours, "tokens_per_second": tokens / ours,
                            "padding_efficiency": padding})
    echo(f"  {'':28}{'rows/s':>10}{'tokens/s':>12}{'padding eff.':>14}{'median s':>10}")
    echo(f"  {'batchnlp (' + annotator.placement.name + ')':28}{n / ours:>10.1f}{tokens / ours:>12.0f}"
         f"{padding:>14.3f}{ours:>10.2f}")
    if naive is None:
        return
    theirs = statistics.median(measured.theirs)
    naive_padding = _naive_padding(annotator, plan, batch_size) if naive.batches_features else None
    report.add("pipeline", {"seconds": measured.theirs, "rows_per_second": n / theirs,
                            "tokens_per_second": tokens / theirs, "padding_efficiency": naive_padding,
                            "batch_size": batch_size})
    pad = f"{naive_padding:>14.3f}" if naive_padding else f"{'-':>14}"
    echo(f"  {naive.label:28}{n / theirs:>10.1f}{tokens / theirs:>12.0f}{pad}{theirs:>10.2f}")
    report.add("speedup", theirs / ours,
               f"  speed-up: {theirs / ours:.2f}x rows/s (median of {len(measured.ours)}, alternating, after "
               f"{measured.warmup} untimed)")
    echo(report.lines[-1])


def _report_agreement(report: Report, task: Any, exact: list[dict[str, Any]], measured: Measured,
                      echo: Callable[[str], None]) -> None:
    value = task.agreement(measured.rows, exact)
    report.add("agreement_float32", value, f"  agreement with batchnlp float32: {task.describe_agreement(value)} "
                                           f"(threshold {task.agreement_threshold})")
    echo(report.lines[-1])
    refused, figures = compare(task, measured.rows, exact)
    if "scores" in figures:  # the probe's view of the scores: ties, distinct values, margins
        scores = figures["scores"]
        report.add("scores_float32", scores,
                   f"  scores against float32: {scores['ties']} ties ({scores['float32_ties']}), "
                   f"{scores['distinct']} distinct ({scores['float32_distinct']}), margin error median "
                   f"{scores['margin_error_median']:g}, max {scores['margin_error_max']:g}; "
                   + (f"the precision probe would refuse: {refused}" if refused else "as fine as float32's"))
        echo(report.lines[-1])
    if measured.baseline_rows is not None:
        value = task.agreement(measured.rows, measured.baseline_rows)
        report.add("agreement_pipeline", value,
                   f"  agreement with the float32 pipeline: {task.describe_agreement(value)}")
        echo(report.lines[-1])


def _report_resources(report: Report, annotator: Stages, reference_model: Any, measured: Measured,
                      echo: Callable[[str], None]) -> None:
    import torch

    placement = annotator.placement
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report.add("peak_rss_mib", peak, f"  peak RSS of this process: {peak:.0f} MiB")
    echo(report.lines[-1])
    if placement.device.type == "cuda":
        gpu = torch.cuda.max_memory_allocated(placement.device) / 2**20
        report.add("peak_cuda_mib", gpu, f"  peak CUDA memory: {gpu:.0f} MiB")
        echo(report.lines[-1])
    mfu = _mfu(reference_model, measured.totals["tokens"] / statistics.median(measured.ours), placement)
    if mfu:
        report.add("mfu", mfu, f"  model FLOPs utilisation: {100 * mfu['mfu']:.1f}% of {mfu['peak']} "
                               f"({mfu['model_flops'] / 1e9:.0f} GFLOP/s)")
        echo(report.lines[-1])


def _rows(plan: Plan) -> pa.Table:
    return pa.concat_tables([table for _, table in read_shards(plan, ())])


def _run_ours(annotator: Stages) -> tuple[float, list[dict[str, Any]], dict[str, Any]]:
    """The local engine's own loop (overlapped stages, Parquet parts written) into a temporary directory."""
    import pyarrow.dataset as ds

    with tempfile.TemporaryDirectory(prefix="batchnlp-bench-") as tmp:
        out = Folder(tmp)
        log = CommitLog(out, OutputState())
        log.stage(RunStarted(now(), "local", os.getpid(), socket.gethostname()))
        plan = annotator.job.plan
        recorder = Recorder(Committer(log, partial=plan.partial), Progress(plan.total_rows, 0, quiet=True))
        began = time.perf_counter()
        with recorder.committer.recording():
            annotate(Worker(annotator, out), (Loaded(shard, rows) for shard, rows in read_shards(plan, ())), recorder)
        seconds = time.perf_counter() - began
        table = ds.dataset(tmp, format="parquet").to_table()
        return seconds, annotation_rows(table, annotator), log.state.summary()


def _float32_model(session: Session) -> Any:
    """A float32 model with torch's own linear layers, for the baseline and the agreement
    reference: the session's own when it is exactly that (float32 weights, nothing packed, the whole
    last layer (model/first_position.py); CPU autocast changes no weights), else loaded again."""
    import torch

    from batchnlp.model import first_position, kernels

    annotator = session.stages
    placement = annotator.placement
    if (placement.weights_dtype == torch.float32 and kernels.decision(placement)[0] == "aten"
            and first_position.last_layer(annotator.model) == "every position"):
        return annotator.model
    from batchnlp.model import load

    job = session.job
    return load.load_model(job.model, job.task.model_class, placement.float32(), job.spec.model.trust_remote_code,
                           job.spec.model.allow_missing_weights, packed=False)


def _naive_padding(annotator: Stages, plan: Plan, batch_size: int) -> float | None:
    """Real / padded tokens of the pipeline's batches of `batch_size` features in input order (for
    zero-shot, the pipeline batches (text, hypothesis) pairs row by row, as our features are listed)."""
    prepared = annotator.prepare(_rows(plan))
    lengths = [len(f["input_ids"]) for f in prepared.features]
    padded = sum(len(lengths[i:i + batch_size]) * max(lengths[i:i + batch_size])
                 for i in range(0, len(lengths), batch_size))
    return sum(lengths) / padded if padded else None


def _mfu(model: Any, tokens_per_second: float, placement: Any) -> dict[str, Any] | None:
    import torch

    embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    non_embedding = sum(p.numel() for p in model.parameters()) - embedding
    model_flops = 2 * non_embedding * tokens_per_second
    if placement.device.type == "cuda":
        name = torch.cuda.get_device_name(placement.device)
        peak = next((v for k, v in CUDA_PEAK_FLOPS.items() if k in name), None)
        if peak is None:
            return None
        if placement.weights_dtype == torch.float32:
            peak /= 2 if "H" in name else 1  # TF32 tensor cores: half the fp16 rate on Hopper
        label = f"{name} peak {peak / 1e12:.0f} TFLOP/s"
    else:
        peak = _cpu_matmul_flops(placement)
        label = f"this CPU's measured {placement.name} matmul rate, {peak / 1e9:.0f} GFLOP/s"
    return {"mfu": model_flops / peak, "model_flops": model_flops, "peak_flops": peak, "peak": label,
            "non_embedding_parameters": non_embedding}


def _cpu_matmul_flops(placement: Any, size: int = 1024, repeats: int = 5, trials: int = 5) -> float:
    """FLOP/s of a 1024-square linear layer in the placement's precision and through the model's
    own kernel (packed oneDNN where the model's layers are packed; int8: dynamically quantised),
    measured now: the best of `trials`, as a peak is. Timed through torch's own linear and as a
    mean, it read 97 GFLOP/s on a CPU whose packed layers ran the model at 102 (an MFU of 105%)."""
    import torch

    from batchnlp.model import kernels

    layer: Any = torch.nn.Sequential(torch.nn.Linear(size, size, bias=False))
    if placement.quantize_int8:
        layer = torch.ao.quantization.quantize_dynamic(layer, {torch.nn.Linear}, dtype=torch.qint8)
    else:
        kernels.pack_linears(layer, placement)
    x = torch.randn(size, size)
    best = 0.0
    with placement.context():
        layer(x)  # warm up
        for _ in range(trials):
            began = time.perf_counter()
            for _ in range(repeats):
                layer(x)
            best = max(best, 2 * size ** 3 * repeats / (time.perf_counter() - began))
    return best


def save(report: Report, path: str) -> None:
    Path(path).write_text(json.dumps(report.data, indent=2, default=str))
