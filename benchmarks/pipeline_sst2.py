"""The tutorial's sentiment call on SST-2 dev (872 rows), transformers' pipeline against batchnlp's
drop-in on the same model, in one process, alternating (issue 30):

    pipeline("sentiment-analysis", model=M, device=-1, batch_size=8, truncation=True)

Prints each side's seconds (median of the repeats), the speed-up, and whether every label is equal
and the largest score difference. A command, not a test: the figure goes to the closing note.

    batchnlp random-model models/distilbert-base-sst2      # DistilBERT-base's shape, random weights
    python benchmarks/pipeline_sst2.py [--model models/distilbert-base-sst2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpora" / "sst2_dev.parquet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "distilbert-base-sst2"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    import pyarrow.parquet as pq
    import torch
    from transformers import pipeline as transformers_pipeline

    from batchnlp import pipeline as batchnlp_pipeline

    texts = pq.read_table(CORPUS, columns=["text"]).column("text").to_pylist()
    warnings.simplefilter("ignore")
    sides = {"transformers": transformers_pipeline("sentiment-analysis", model=args.model, device=-1,
                                                   torch_dtype=torch.float32),
             "batchnlp": batchnlp_pipeline("sentiment-analysis", model=args.model, device=-1,
                                           torch_dtype=torch.float32)}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    results = {}
    for _ in range(args.repeats):
        for name, pipe in sides.items():  # alternating, so that a busy moment hits both
            began = time.perf_counter()
            results[name] = pipe(texts, batch_size=args.batch_size, truncation=True)
            seconds[name].append(time.perf_counter() - began)
    ours, theirs = results["batchnlp"], results["transformers"]
    same_labels = sum(a["label"] == b["label"] for a, b in zip(ours, theirs))
    worst = max(abs(a["score"] - b["score"]) for a, b in zip(ours, theirs))
    t_ours, t_theirs = statistics.median(seconds["batchnlp"]), statistics.median(seconds["transformers"])
    print(f"{len(texts)} SST-2 rows, batch_size={args.batch_size}, device=-1, float32, {torch.get_num_threads()} "
          f"threads, {args.repeats} alternating repeats")
    print(f"transformers {t_theirs:.2f} s ({len(texts) / t_theirs:.1f} rows/s); batchnlp {t_ours:.2f} s "
          f"({len(texts) / t_ours:.1f} rows/s): {t_theirs / t_ours:.2f}x")
    print(f"labels equal: {same_labels} of {len(texts)}; largest score difference {worst:.2e}")


if __name__ == "__main__":
    main()
