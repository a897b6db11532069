"""`batchnlp bench`: the runner against the naive `pipeline(texts, batch_size=32)` loop, on the same
model and rows, in one process, alternating and repeated so that the ratio holds on a noisy
machine. Speed is shown by this command, never asserted by a timed test.

Model-FLOPs utilisation (MFU) counts 2 x N FLOPs per real token, N the model's non-embedding
parameters (a forward pass's matrix multiplies; attention scores and padding not counted), over
the device's peak: on CUDA the data-sheet dense fp16/bf16 figure of known cards, on a CPU the
matmul rate measured here in the same precision just before (so "of what this CPU can do").
"""

from __future__ import annotations

import json
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from batchnlp.annotate import annotation_rows
from batchnlp.errors import SpecError
from batchnlp.model import source
from batchnlp.read.plan import read_shards
from batchnlp.runner import _loop, open_session, plan_job
from batchnlp.spec import JobSpec
from batchnlp.write.manifest import Manifest

# Dense fp16/bf16 tensor-core peaks from the data sheets, by a name fragment of the device.
CUDA_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40": 181e12, "L4": 121e12, "A10": 125e12,
                   "V100": 125e12, "T4": 65e12, "RTX 4090": 165e12, "RTX 3090": 71e12}
PIPELINE_TASKS = {"text-classification", "embeddings", "zero-shot-classification", "fill-mask",
                  "token-classification", "text-generation"}


@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, value: Any, line: str | None = None) -> None:
        self.data[key] = value
        if line:
            self.lines.append(line)


def bench(spec: JobSpec, rows: int, baseline: str | None, check_agreement: bool, repeats: int = 3,
          batch_size: int = 32, echo: Callable[[str], None] = print) -> Report:
    import torch

    plan = plan_job(spec, rows)
    session = open_session(spec, plan, source.resolve(spec.model), quiet=True)
    annotator = session.annotator
    task, placement = annotator.task, annotator.placement
    n = plan.total_rows
    report = Report()
    report.add("job", spec.source_file)
    report.add("task", spec.task.name)
    report.add("rows", n)
    report.add("device", placement.describe())
    probe = f", probe agreement {session.probe['agreement']}" if session.probe else ""
    echo(f"batchnlp bench {Path(spec.source_file).name}: {spec.task.name}, {n} rows, {placement.device} "
         f"({torch.get_num_threads()} threads), dtype {placement.name}{probe}")
    if baseline and spec.task.name not in PIPELINE_TASKS and task.name not in PIPELINE_TASKS:
        echo(f"  no pipeline baseline: transformers {_version('transformers')} has no {task.name} pipeline")
        baseline = None

    reference_model = _float32_model(session)
    texts = _rows(plan)
    pipe = _pipeline(session, reference_model, texts, batch_size) if baseline else None

    ours, theirs = Timing(), Timing()
    out_table = totals = base_out = None
    for _ in range(repeats):  # alternate, so a slow spell of the machine hits both sides alike
        seconds, out_table, totals = _run_ours(annotator, plan)
        ours.seconds.append(seconds)
        if pipe is not None:
            began = time.perf_counter()
            base_out = pipe()
            theirs.seconds.append(time.perf_counter() - began)

    tokens = totals["tokens"]
    report.add("batchnlp", {"seconds": ours.seconds, "rows_per_second": n / ours.median,
                            "tokens_per_second": tokens / ours.median,
                            "padding_efficiency": totals["padding_efficiency"]})
    echo(f"  {'':28}{'rows/s':>10}{'tokens/s':>12}{'padding eff.':>14}{'median s':>10}")
    echo(f"  {'batchnlp (' + placement.name + ')':28}{n / ours.median:>10.1f}{tokens / ours.median:>12.0f}"
         f"{totals['padding_efficiency']:>14.3f}{ours.median:>10.2f}")
    if pipe is not None:
        naive_padding = _naive_padding(annotator, texts, batch_size)
        report.add("pipeline", {"seconds": theirs.seconds, "rows_per_second": n / theirs.median,
                                "tokens_per_second": tokens / theirs.median, "padding_efficiency": naive_padding,
                                "batch_size": batch_size})
        label = f"pipeline (bs={batch_size}, float32)" if task.name != "text-generation" else \
            "pipeline (per prompt, float32)"
        pad = f"{naive_padding:>14.3f}" if naive_padding else f"{'-':>14}"
        echo(f"  {label:28}{n / theirs.median:>10.1f}{tokens / theirs.median:>12.0f}{pad}{theirs.median:>10.2f}")
        report.add("speedup", theirs.median / ours.median,
                   f"  speed-up: {theirs.median / ours.median:.2f}x rows/s (median of {repeats}, alternating)")
        echo(report.lines[-1])

    if check_agreement:
        reference = session.annotator.in_float32(reference_model)
        _, exact, _ = _run_ours(reference, plan)
        value = task.agreement(out_table, exact)
        report.add("agreement_float32", value,
                   f"  agreement with batchnlp float32: {_agreement_text(task, value)} "
                   f"(threshold {task.agreement_threshold})")
        echo(report.lines[-1])
        if base_out is not None:
            value = task.agreement(out_table, base_out)
            report.add("agreement_pipeline", value,
                       f"  agreement with the float32 pipeline: {_agreement_text(task, value)}")
            echo(report.lines[-1])

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report.add("peak_rss_mib", peak, f"  peak RSS of this process: {peak:.0f} MiB")
    echo(report.lines[-1])
    if placement.device.type == "cuda":
        gpu = torch.cuda.max_memory_allocated(placement.device) / 2**20
        report.add("peak_cuda_mib", gpu, f"  peak CUDA memory: {gpu:.0f} MiB")
        echo(report.lines[-1])
    mfu = _mfu(reference_model, tokens / ours.median, placement)
    if mfu:
        report.add("mfu", mfu, f"  model FLOPs utilisation: {100 * mfu['mfu']:.1f}% of {mfu['peak']} "
                               f"({mfu['model_flops'] / 1e9:.0f} GFLOP/s)")
        echo(report.lines[-1])
    return report


def _agreement_text(task: Any, value: float) -> str:
    return f"mean cosine {value:.5f}" if task.name == "embeddings" else f"{100 * value:.2f}% of rows"


def _version(name: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(name)


def _rows(plan: Any) -> pa.Table:
    return pa.concat_tables([table for _, table in read_shards(plan, set())])


def _run_ours(annotator: Any, plan: Any) -> tuple[float, list[dict[str, Any]], dict[str, Any]]:
    """The runner's own loop (overlapped stages, Parquet parts written) into a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="batchnlp-bench-") as tmp:
        out = Path(tmp)
        manifest = Manifest.new(out, fingerprint={})
        manifest.start_run({})
        began = time.perf_counter()
        _loop(plan, manifest, annotator, set(), out, plan.shard_count, quiet=True)
        seconds = time.perf_counter() - began
        import pyarrow.dataset as ds

        table = ds.dataset(str(out), format="parquet").to_table()
        return seconds, annotation_rows(table, annotator), manifest.data["totals"]


def _float32_model(session: Any) -> Any:
    """A float32 copy of the model for the baseline and the agreement reference: the session's own
    when its weights are float32 (CPU autocast changes no weights), else loaded again."""
    import torch

    annotator = session.annotator
    placement = annotator.placement
    if placement.weights_dtype == torch.float32 and not placement.quantize_int8:
        return annotator.loaded.model
    from batchnlp.model import load

    return load.load_model(session.resolved, annotator.task.model_class, placement.float32(),
                           session.spec.model.trust_remote_code)


def _naive_padding(annotator: Any, texts: pa.Table, batch_size: int) -> float | None:
    """Real / padded tokens of the pipeline's batches of `batch_size` features in input order (for
    zero-shot, the pipeline batches (text, hypothesis) pairs row by row, as our features are listed)."""
    if annotator.task.name not in ("text-classification", "embeddings", "fill-mask", "token-classification",
                                   "zero-shot-classification"):
        return None
    prepared = annotator.prepare(texts)
    lengths = [len(f["input_ids"]) for f in prepared.features]
    padded = sum(len(lengths[i:i + batch_size]) * max(lengths[i:i + batch_size])
                 for i in range(0, len(lengths), batch_size))
    return sum(lengths) / padded if padded else None


def _pipeline(session: Any, model: Any, table: pa.Table, batch_size: int) -> Callable[[], list[dict[str, Any]]]:
    """The naive loop for this task, as a call returning rows in batchnlp's column layout."""
    import warnings

    import numpy as np
    from transformers import pipeline

    warnings.filterwarnings("ignore", message=".*pipelines sequentially on GPU.*")
    spec, a = session.spec, session.annotator
    task, params, tokenizer = a.task, spec.task.params, a.loaded.tokenizer
    texts = table.column(spec.input.text_column).to_pylist()
    device = a.placement.device
    truncate = {"truncation": True, "max_length": a.loaded.max_length}

    def make(name: str) -> Any:
        return pipeline(name, model=model, tokenizer=tokenizer, device=device)

    if task.name == "text-classification":
        pipe = make("text-classification")
        return lambda: [{"label": o["label"]} for o in pipe(texts, batch_size=batch_size, **truncate)]
    if task.name == "embeddings":
        pipe = make("feature-extraction")
        # With batch_size > 1 the pipeline hands back each text's token vectors padded to its
        # batch's longest; averaging those would dilute the mean, so only real tokens are kept.
        lengths = [len(ids) for ids in tokenizer(texts, **truncate)["input_ids"]]

        def embed() -> list[dict[str, Any]]:
            out = []
            for tokens, length in zip(pipe(texts, batch_size=batch_size, tokenize_kwargs=truncate), lengths):
                tokens = np.asarray(tokens[0])[:length]
                vector = tokens.mean(0) if params.pooling == "mean" else tokens[0]
                out.append({"embedding": vector / np.linalg.norm(vector) if params.normalize else vector})
            return out

        return embed
    if task.name == "zero-shot-classification":
        if params.candidate_labels is None or params.method != "nli":
            raise SpecError("task", "the zero-shot bench baseline needs candidate_labels and method: nli")
        pipe = make("zero-shot-classification")
        return lambda: [{"labels": o["labels"]} for o in pipe(
            texts, candidate_labels=list(params.candidate_labels), hypothesis_template=params.hypothesis_template,
            multi_label=params.multi_label, batch_size=batch_size)]
    if task.name == "fill-mask":
        pipe = make("fill-mask")
        masked = [t.replace("{mask}", tokenizer.mask_token) for t in texts]
        return lambda: [{"predictions": o} for o in pipe(masked, batch_size=batch_size, top_k=params.top_k)]
    if task.name == "token-classification":
        pipe = make("token-classification")
        return lambda: [{"entities": [{**e, "entity_group": e.get("entity_group", e.get("entity"))} for e in o]}
                        for o in pipe(texts, batch_size=batch_size, aggregation_strategy=params.aggregation_strategy)]
    pipe = make("text-generation")

    def generate() -> list[dict[str, Any]]:
        from batchnlp.tasks.decoding import cut_at_stop

        out = []
        for text in texts:  # the tutorial loop: one prompt at a time
            prompt = params.prompt_template.replace("{text}", text)
            if params.chat_template:
                prompt = ([{"role": "system", "content": params.system_prompt}] if params.system_prompt else []) + [
                    {"role": "user", "content": prompt}]
            result = pipe(prompt, max_new_tokens=task.new_tokens, do_sample=False, return_full_text=False)
            generated = result[0]["generated_text"]
            if isinstance(generated, list):  # chat input: the conversation, the reply last
                generated = generated[-1]["content"]
            out.append({"generated_text": cut_at_stop(generated, params.stop)})
        return out

    return generate


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


def _cpu_matmul_flops(placement: Any, size: int = 1024, repeats: int = 10) -> float:
    """FLOP/s of a 1024-square linear layer in the placement's precision (int8: dynamically
    quantised, as the model's), measured now."""
    import torch

    layer = torch.nn.Linear(size, size, bias=False)
    if placement.quantize_int8:
        layer = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(layer), {torch.nn.Linear},
                                                       dtype=torch.qint8)
    x = torch.randn(size, size)
    with placement.context():
        layer(x)  # warm up
        began = time.perf_counter()
        for _ in range(repeats):
            layer(x)
    return 2 * size ** 3 * repeats / (time.perf_counter() - began)


def save(report: Report, path: str) -> None:
    Path(path).write_text(json.dumps(report.data, indent=2, default=str))
