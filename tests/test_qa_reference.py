"""Question answering against transformers 4.x's pipeline, recorded (tests/data/make_qa_reference.py)
on a committed tiny random model and 29 question/context pairs (8 with contexts that span several
overlapping windows): the same answers, offsets and scores, for several settings."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from helpers import run
from batchnlp.spec import load_spec

from helpers import read_output, write_job

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "qa_pipeline_4x.json").read_text())


@pytest.mark.parametrize("name", ["top1", "top3_null", "offsets", "long_answers"])
def test_answers_equal_the_4x_pipeline(tmp_path, name):
    settings = REFERENCE[name]["settings"]
    shutil.copy(DATA / "qa_rows.csv", tmp_path / "rows.csv")
    job = write_job(tmp_path, input={"path": str(tmp_path / "rows.csv"), "text_column": "question",
                                     "text_pair_column": "context", "id_column": "id"},
                    task={"name": "question-answering", **settings}, model={"path": str(DATA / "qa_model")},
                    output={"path": str(tmp_path / "out"), "rows_per_shard": 10}, runtime={"batch_tokens": 700})
    run(load_spec(job), quiet=True)
    table = read_output(tmp_path / "out")
    with open(DATA / "qa_rows.csv", newline="") as f:
        contexts = [row["context"] for row in csv.DictReader(f)]
    top_k = settings.get("top_k", 1)
    for i, expected in enumerate(REFERENCE[name]["answers"]):
        got = table.slice(i, 1).to_pylist()[0]
        ours = got["answers"] if top_k > 1 else [{k: got[k] for k in ("answer", "score", "start", "end")}]
        assert [(a["answer"], a["start"], a["end"]) for a in ours] == \
               [(a["answer"], a["start"], a["end"]) for a in expected], (name, i)
        assert [a["score"] for a in ours] == pytest.approx([a["score"] for a in expected], abs=1e-5), (name, i)
        assert all(contexts[i][a["start"]:a["end"]] == a["answer"] for a in ours if a["answer"])


LONG = json.loads((DATA / "qa_pipeline_4x_long.json").read_text())


@pytest.mark.parametrize("window", [512, 384])
def test_a_512_window_at_the_models_own_limit_equals_the_4x_pipeline(tmp_path, window):
    """runtime.max_length 512 on a model of 512 positions (its own limit), contexts of 1,300+ tokens
    (three to five windows each), against the pipeline's max_seq_len=512 (and 384), recorded with
    transformers 4.57 (tests/data/make_qa_reference.py)."""
    shutil.copy(DATA / "qa_rows_long.csv", tmp_path / "rows.csv")
    job = write_job(tmp_path, input={"path": str(tmp_path / "rows.csv"), "text_column": "question",
                                     "text_pair_column": "context", "id_column": "id"},
                    task={"name": "question-answering"}, model={"path": str(DATA / "qa_model_512")},
                    output={"path": str(tmp_path / "out"), "rows_per_shard": 10}, runtime={"max_length": window})
    run(load_spec(job), quiet=True)
    got = read_output(tmp_path / "out").to_pylist()
    expected = [answers[0] for answers in LONG[f"window{window}"]["answers"]]
    assert [(r["answer"], r["start"], r["end"]) for r in got] == [(e["answer"], e["start"], e["end"]) for e in expected]
    assert [r["score"] for r in got] == pytest.approx([e["score"] for e in expected], abs=1e-5)

