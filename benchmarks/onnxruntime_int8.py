"""batchnlp against ONNX Runtime on the int8 sentiment workload of issue 20: the DistilBERT-base-
shaped classifier of jobs/bench/sst2_distilbert.yaml over SST-2 dev (872 rows).

The peer is what optimum's recipe builds (optimum itself pins transformers 4, so the same steps
are done here with onnxruntime's own tools): torch.onnx export, onnxruntime's transformer
optimiser at level 2 (fused attention, layer norm, GELU), then dynamic int8 quantisation of the
weights (QInt8, per tensor, as optimum's avx512_vnni config). Its loop is the one optimum users
write: rows sorted by length, batches of 32, tokenizer padding, one session.run per batch. A
plain (not optimised) int8 export is measured too. Both are `batchnlp bench`'s ONNX Runtime peers
(batchnlp/peers/onnxruntime.py), built once into the model cache. batchnlp runs its own loop (the runner, parts
written) in the job's int8. One warm-up of each, then --repeats alternating rounds; medians.
Labels are compared with batchnlp's.

    pip install onnxruntime onnx     # not project dependencies
    batchnlp random-model models/distilbert-base-sst2
    python benchmarks/onnxruntime_int8.py [--repeats 3] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "jobs" / "bench" / "sst2_distilbert.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="profile one batchnlp run (torch profiler)")
    args = parser.parse_args()

    import torch

    from batchnlp import bench
    from batchnlp.decide import plan_job
    from batchnlp.job import describe_job
    from batchnlp.model import source
    from batchnlp.peers import onnxruntime
    from batchnlp.session import open_session
    from batchnlp.spec import load_spec

    spec = load_spec(str(JOB))
    plan = plan_job(spec, None)
    session = open_session(describe_job(spec, plan, source.resolve(spec.model), quiet=True))
    annotator = session.stages
    texts = bench._rows(plan).column(spec.input.text_column).to_pylist()
    threads = torch.get_num_threads()
    # The peer's models come from the model cache (built once: batchnlp/peers/onnxruntime.py).
    sessions = onnxruntime.sessions(Path(spec.model.path), threads)
    loops = {name: onnxruntime.loop(onnxruntime.infer(s), session.job.tokenizer, texts, session.job.max_length)
             for name, s in sessions.items()}
    times: dict[str, list[float]] = {"batchnlp (int8)": [], **{name: [] for name in loops}}
    first: dict[str, float] = {}
    labels: dict[str, list] = {}
    label_of = {label: i for i, label in session.job.config.id2label.items()}
    for round_ in range(args.repeats + 1):  # round 0: the warm-up, not counted
        began = time.perf_counter()
        _, rows, _ = bench._run_ours(annotator)
        seconds = time.perf_counter() - began
        if round_:
            times["batchnlp (int8)"].append(seconds)
        else:
            first["batchnlp (int8)"] = seconds
        labels["batchnlp (int8)"] = [label_of[r["label"]] for r in rows]
        for name, loop in loops.items():
            began = time.perf_counter()
            labels[name] = loop()
            seconds = time.perf_counter() - began
            if round_:
                times[name].append(seconds)
            else:
                first[name] = seconds
    n = len(texts)
    ours = statistics.median(times["batchnlp (int8)"])
    print(f"SST-2 dev, {n} rows, {threads} threads, median of {args.repeats} alternating rounds after a warm-up")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        same = sum(a == b for a, b in zip(labels[name], labels["batchnlp (int8)"])) / n
        print(f"  {name:24} {n / median:7.1f} rows/s  {median:6.2f} s  (runs {', '.join(f'{s:.2f}' for s in seconds)})"
              f"  batchnlp's speed-up: {median / ours:.2f}x  labels as batchnlp's: {100 * same:.1f}%"
              f"  (first run of the process: {n / first[name]:.1f} rows/s)")
    if args.profile:
        profile(annotator)


def profile(annotator) -> None:
    """Where one batchnlp run's time goes: the model's own kernels against the work around them."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from batchnlp import bench

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        began = time.perf_counter()
        bench._run_ours(annotator)
        wall = time.perf_counter() - began
    events = prof.key_averages()
    print(f"profile of one run: {wall:.2f} s wall")
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    sys.exit(main())
