"""Records transformers 4.x's question-answering pipeline on the tiny QA model in qa_model/ and the
questions below, for tests/test_qa_reference.py (transformers 5 has no such pipeline).

Run in an environment with transformers 4.x (the last with the pipeline), from this folder:
    python -m venv /tmp/tf4 && /tmp/tf4/bin/pip install torch "transformers>=4.44,<5"
    /tmp/tf4/bin/python make_qa_reference.py
The model was made once with transformers 5 by `tiny_models.random_qa` (committed, so both sides
load the very same weights)."""

import csv
import json
from pathlib import Path

import transformers
from transformers import pipeline

HERE = Path(__file__).parent
SETTINGS = {"top1": {}, "top3_null": {"top_k": 3, "handle_impossible_answer": True},
            "offsets": {"align_to_words": False}, "long_answers": {"max_answer_len": 30, "top_k": 2}}


def rows():
    with open(HERE / "qa_rows.csv", newline="") as f:
        return list(csv.DictReader(f))


def main():
    qa = pipeline("question-answering", model=str(HERE / "qa_model"), device="cpu")
    out = {"transformers": transformers.__version__}
    for name, settings in SETTINGS.items():
        answers = []
        for row in rows():
            result = qa(question=row["question"], context=row["context"], **settings)
            answers.append(result if isinstance(result, list) else [result])
        out[name] = {"settings": settings, "answers": answers}
    (HERE / "qa_pipeline_4x.json").write_text(json.dumps(out, indent=1))
    # A window at the model's own limit: qa_model_512 (tiny_models.random_qa(..., positions=512)) on
    # qa_rows_long.csv (each context repeated past 1,300 tokens), max_seq_len 512 and 384.
    long_qa = pipeline("question-answering", model=str(HERE / "qa_model_512"), device="cpu")
    with open(HERE / "qa_rows_long.csv", newline="") as f:
        long_rows = list(csv.DictReader(f))
    long_out = {"transformers": transformers.__version__}
    for window in (512, 384):
        answers = [long_qa(question=r["question"], context=r["context"], max_seq_len=window) for r in long_rows]
        long_out[f"window{window}"] = {"settings": {"max_seq_len": window},
                                       "answers": [a if isinstance(a, list) else [a] for a in answers]}
    (HERE / "qa_pipeline_4x_long.json").write_text(json.dumps(long_out, indent=1))


if __name__ == "__main__":
    main()
