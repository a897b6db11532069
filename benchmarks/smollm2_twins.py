"""The two SmolLM2 demo jobs that ask the same question of the bundled reviews (issue 20):
`generate_smollm2.yaml` (8 free tokens) and `label_reviews_smollm2.yaml` (zero-shot with
method: causal-lm), as shipped, alternating: two rounds on the first 40 reviews, then all rows.
Per run: wall time of the whole `batchnlp run`, and from its record the annotation time, model
load, precision probe. Then, on the full outputs: how often the generated answer is exactly a
label, whether the twins agree, accuracy against the reviews' star ratings, and that the
causal-lm scores sum to 1.

    python benchmarks/smollm2_twins.py [--rounds 2] [--rows 40]

With --warm N: both jobs' annotators instead open in this one process, and N alternating rounds
of the first --rows rows run through them (the runner's shards of 50), so that each round's ratio
compares the two on the same warm process, without Python's start, the load or the first forward.

    python benchmarks/smollm2_twins.py --warm 6 [--rows 40]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOBS = ["generate_smollm2", "label_reviews_smollm2"]


def run(job: str, out: Path, limit: int | None) -> str:
    import batchnlp

    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "batchnlp", "run", str(ROOT / "jobs" / f"{job}.yaml"), "-q",
                    "--set", f"output.path={out}", *(["--limit", str(limit)] if limit else [])], check=True)
    wall = time.perf_counter() - began
    entry = batchnlp.inspect(str(out))["runs"][-1]
    probe = entry.get("precision_probe") or {}
    return (f"{job:22} {limit or 'all':>4} rows  wall {wall:5.1f} s  annotate {entry['seconds']:5.1f} s  "
            f"load {entry['model_load_seconds']:4.1f} s  probe {entry['probe_seconds']:4.1f} s "
            f"({probe.get('refused') or 'kept'})  {entry['precision']}")


def label_named(text: str) -> str | None:
    found = set(re.findall(r"positive|negative", text.lower()))
    return found.pop() if len(found) == 1 else None


def compare(generated: Path, labelled: Path) -> None:
    import batchnlp
    import pyarrow.csv as pc

    stars = {r["id"]: r["rating"] for r in pc.read_csv(ROOT / "data" / "reviews.csv").to_pylist()}
    gen = {r["id"]: r for r in batchnlp.dataset(str(generated)).to_table().to_pylist()}
    # Labels compare as lower case: the twin may write them as the model does ("Positive").
    lab = {r["id"]: {**r, "labels": [x.lower() for x in r["labels"]]}
           for r in batchnlp.dataset(str(labelled)).to_table().to_pylist()}
    exact = sum(r["generated_text"].strip().lower().strip(".!") in ("positive", "negative") for r in gen.values())
    named = {i: label_named(r["generated_text"]) for i, r in gen.items()}
    agree = sum(named[i] == lab[i]["labels"][0] for i in gen if named[i])
    rated = [i for i in gen if stars[i] != 3]

    def right(answer: dict) -> int:
        return sum(answer[i] == ("positive" if stars[i] >= 4 else "negative") for i in rated)

    print(f"generated answer exactly a label: {exact} of {len(gen)}; naming one label: "
          f"{sum(v is not None for v in named.values())}")
    print(f"the twins agree on {agree} of {sum(v is not None for v in named.values())}")
    print(f"right on the {len(rated)} rated reviews: generation {right(named)}, causal-lm "
          f"{right({i: r['labels'][0] for i, r in lab.items()})}")
    print(f"causal-lm: {sum(r['labels'][0] in ('positive', 'negative') for r in lab.values())} of {len(lab)} valid, "
          f"max |sum(scores) - 1| = {max(abs(sum(r['scores']) - 1) for r in lab.values()):.1e}")


def warm(rounds: int, rows: int) -> None:
    import statistics

    import pyarrow.csv as pc

    import batchnlp
    from batchnlp.model import source
    from batchnlp.decide import plan_job
    from batchnlp.job import describe_job
    from batchnlp.session import open_session

    annotators = {}
    for job in JOBS:
        spec = batchnlp.load_job(str(ROOT / "jobs" / f"{job}.yaml"))
        annotators[job] = open_session(describe_job(spec, plan_job(spec, None), source.resolve(spec.model),
                                                    quiet=True)).stages
    table = pc.read_csv(ROOT / "data" / "reviews.csv").slice(0, rows)
    seconds: dict[str, list[float]] = {job: [] for job in JOBS}
    for _ in range(rounds):
        for job, annotator in annotators.items():
            began = time.perf_counter()
            for start in range(0, table.num_rows, 50):  # the jobs' rows_per_shard
                annotator(table.slice(start, 50), start)
            seconds[job].append(time.perf_counter() - began)
    for job in JOBS:
        print(f"{job:22} {table.num_rows} rows, warm: {' '.join(f'{t:.2f}' for t in seconds[job])} s "
              f"(median {statistics.median(seconds[job]):.2f})")
    ratios = [b / a for a, b in zip(*seconds.values())]
    print(f"{JOBS[1]} / {JOBS[0]} per round: {' '.join(f'{r:.2f}' for r in ratios)} "
          f"(median {statistics.median(ratios):.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--warm", type=int, metavar="N", help="N alternating rounds in this process instead")
    args = parser.parse_args()
    if args.warm:
        return warm(args.warm, args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        outs = {}
        for n, limit in enumerate([args.rows] * args.rounds + [None]):
            for job in JOBS:
                outs[job] = Path(tmp) / f"{job}-{n}"
                print(run(job, outs[job], limit), flush=True)
        compare(outs[JOBS[0]], outs[JOBS[1]])


if __name__ == "__main__":
    main()
