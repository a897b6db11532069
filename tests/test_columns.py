"""Every row where it belongs (issue 17): input columns by name whatever their order in a file,
columns added, missing or retyped between nights, partial outputs, long CSV fields, symlinked
inputs and --retry-errors, each through the command line."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import batchnlp
from batchnlp.read.columns import lossless

from helpers import invoke, read_output, record


@pytest.fixture
def job(tmp_path, classifier_dir):
    (tmp_path / "inbox").mkdir()

    def make(input_format: str = "parquet", **input_keys) -> Path:
        keys = "".join(f", {k}: {v}" for k, v in input_keys.items())
        path = tmp_path / "job.yaml"
        path.write_text(f"""
input: {{path: inbox, format: {input_format}, text_column: text, id_column: id{keys}}}
task: {{name: text-classification}}
model: {{path: {classifier_dir}}}
runtime: {{dtype: float32}}
output: {{path: out, rows_per_shard: 2}}
""")
        return path

    return make


def one_line(result, *fragments):
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_parquet_files_with_columns_in_another_order_give_the_right_pairs(job, tmp_path):
    """The silent corruption of 0.2: the second file's rows came out as id=app, source=b1."""
    pq.write_table(pa.table({"id": ["a0", "a1"], "source": ["web", "web"], "text": ["good", "bad"]}),
                   tmp_path / "inbox" / "a.parquet")
    pq.write_table(pa.table({"source": ["app", "app", "app"], "id": ["b0", "b1", "b2"], "text": ["ok", "meh", "wow"]}),
                   tmp_path / "inbox" / "b.parquet")
    assert invoke("validate", job()).exit_code == 0
    assert invoke("run", job(), "-q").exit_code == 0
    table = read_output(tmp_path / "out")
    assert table.column_names[:3] == ["id", "source", "text"]
    assert list(zip(*(table.column(c).to_pylist() for c in ("id", "source", "text")))) == [
        ("a0", "web", "good"), ("a1", "web", "bad"), ("b0", "app", "ok"), ("b1", "app", "meh"), ("b2", "app", "wow")]
    assert invoke("verify", tmp_path / "out").exit_code == 0


def test_a_csv_header_in_another_order(job, tmp_path):
    (tmp_path / "inbox" / "a.csv").write_text("id,lang,text\na0,en,good\n")
    (tmp_path / "inbox" / "b.csv").write_text("text,id,lang\nbad,b0,fr\n")
    assert invoke("run", job("csv"), "-q").exit_code == 0
    table = read_output(tmp_path / "out")
    assert table.select(["id", "lang", "text"]).to_pylist() == [{"id": "a0", "lang": "en", "text": "good"},
                                                               {"id": "b0", "lang": "fr", "text": "bad"}]


def test_a_column_added_on_night_2_and_one_missing(job, tmp_path):
    """Night 2's file adds a column (nullable; night 1's rows read it as null through
    batchnlp.dataset) and lacks one that night 1 had (nulls there): exit 0, never a traceback."""
    pq.write_table(pa.table({"id": ["a0"], "stars": [5], "text": ["good"]}), tmp_path / "inbox" / "a.parquet")
    assert invoke("run", job(), "-q").exit_code == 0
    pq.write_table(pa.table({"id": ["b0"], "text": ["bad"], "lang": ["en"]}), tmp_path / "inbox" / "b.parquet")
    result = invoke("run", job(), "-q")
    assert result.exit_code == 0, result.output
    rows = batchnlp.dataset(tmp_path / "out").to_table().select(["id", "stars", "lang"]).to_pylist()
    assert rows == [{"id": "a0", "stars": 5, "lang": None}, {"id": "b0", "stars": None, "lang": "en"}]
    assert invoke("verify", tmp_path / "out").exit_code == 0


@pytest.mark.parametrize("policy", ["refuse", "ignore"])
def test_new_columns_refused_or_ignored_as_the_job_says(job, tmp_path, policy):
    pq.write_table(pa.table({"id": ["a0"], "text": ["good"]}), tmp_path / "inbox" / "a.parquet")
    assert invoke("run", job(new_columns=policy), "-q").exit_code == 0
    pq.write_table(pa.table({"id": ["b0"], "text": ["bad"], "lang": ["en"]}), tmp_path / "inbox" / "b.parquet")
    result = invoke("run", job(new_columns=policy), "-q")
    if policy == "refuse":
        one_line(result, "b.parquet", 'column "lang" is new', "input.new_columns")
        one_line(invoke("validate", job(new_columns=policy)), "b.parquet", 'column "lang" is new')
    else:
        assert result.exit_code == 0, result.output
        assert "lang" not in batchnlp.dataset(tmp_path / "out").schema.names


def test_only_the_listed_columns_are_kept(job, tmp_path):
    pq.write_table(pa.table({"id": ["a0"], "secret": ["x"], "source": ["web"], "text": ["good"]}),
                   tmp_path / "inbox" / "a.parquet")
    assert invoke("run", job(columns="[source]"), "-q").exit_code == 0
    assert read_output(tmp_path / "out").column_names[:3] == ["source", "text", "id"]


def test_a_type_that_cannot_be_cast_losslessly_is_refused_naming_file_column_and_types(job, tmp_path):
    """CSV types are inferred per file: night 1's `lang` was all digits (int64), night 2 has 'en'."""
    (tmp_path / "inbox" / "a.csv").write_text("id,lang,text\na0,1,good\n")
    assert invoke("run", job("csv"), "-q").exit_code == 0
    (tmp_path / "inbox" / "b.csv").write_text("id,lang,text\nb0,en,bad\n")
    for command in ("validate", "run"):
        one_line(invoke(command, job("csv"), *(["-q"] if command == "run" else [])), "b.csv", 'column "lang"',
                 "string here but int64 in the output")


def test_a_type_that_casts_losslessly_is_cast(job, tmp_path):
    pq.write_table(pa.table({"id": ["a0"], "n": pa.array([1], pa.int64()), "text": ["good"]}),
                   tmp_path / "inbox" / "a.parquet")
    pq.write_table(pa.table({"id": ["b0"], "n": pa.array([2], pa.int32()), "text": ["bad"]}),
                   tmp_path / "inbox" / "b.parquet")
    assert invoke("run", job(), "-q").exit_code == 0
    assert read_output(tmp_path / "out").column("n").to_pylist() == [1, 2]
    one_line(invoke("validate", job(type_changes="refuse")), "b.parquet", "int32 here but int64 in the output")


@pytest.mark.parametrize(("source", "target", "ok"), [
    (pa.int32(), pa.int64(), True), (pa.int64(), pa.int32(), False), (pa.int64(), pa.string(), True),
    (pa.string(), pa.int64(), False), (pa.uint32(), pa.int64(), True), (pa.int64(), pa.uint64(), False),
    (pa.int32(), pa.float64(), True), (pa.int64(), pa.float64(), False), (pa.float32(), pa.float64(), True),
    (pa.null(), pa.string(), True), (pa.timestamp("s"), pa.timestamp("ms"), True),
    (pa.timestamp("ms"), pa.timestamp("s"), False)])
def test_which_casts_lose_nothing(source, target, ok):
    assert lossless(source, target) is ok


def test_a_limited_output_is_partial_never_complete(job, tmp_path):
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(7)], "text": ["t"] * 7}), tmp_path / "inbox" / "a.parquet")
    result = invoke("run", job(), "-q", "--limit", "3")
    assert result.exit_code == 0 and "partial: run without --limit" in result.output, result.output
    assert record(tmp_path / "out")["status"] == "partial"
    assert "status:    partial (3 of 7 input rows; run without --limit" in invoke("inspect", tmp_path / "out").output
    verdict = invoke("verify", tmp_path / "out")
    assert verdict.exit_code == 2 and "status partial, not complete (3 of 7 input rows" in verdict.output
    assert batchnlp.run(batchnlp.load_job(job()), limit=3).status == "partial"
    assert batchnlp.run(batchnlp.load_job(job())).status == "complete"
    assert invoke("verify", tmp_path / "out").exit_code == 0


def test_a_csv_field_of_2_million_characters_is_annotated(job, tmp_path):
    """Python's csv module stops at 128 KiB a field: that was reported as a quote never closed."""
    (tmp_path / "inbox" / "a.csv").write_text("id,text\nr0,short\nr1," + "long " * 400_000 + "\nr2,end\n")
    result = invoke("run", job("csv"), "-q")
    assert result.exit_code == 0, result.output
    assert read_output(tmp_path / "out").column("id").to_pylist() == ["r0", "r1", "r2"]


def test_an_input_replaced_by_a_symlink_to_the_same_bytes_is_the_same_input(job, tmp_path):
    (tmp_path / "inbox" / "a.csv").write_text("id,text\nr0,good\nr1,bad\n")
    assert invoke("run", job("csv"), "-q").exit_code == 0
    (tmp_path / "store").mkdir()
    (tmp_path / "inbox" / "a.csv").rename(tmp_path / "store" / "a.csv")
    os.symlink(tmp_path / "store" / "a.csv", tmp_path / "inbox" / "a.csv")
    result = invoke("run", job("csv"), "-q")
    assert result.exit_code == 0 and "nothing to do" in result.output, result.output
    assert invoke("verify", tmp_path / "out").exit_code == 0
    (tmp_path / "store" / "b.csv").write_text("id,text\nr2,fine\n")
    os.symlink(tmp_path / "store" / "b.csv", tmp_path / "inbox" / "b.csv")  # a new file, linked in
    assert invoke("run", job("csv"), "-q").exit_code == 0
    assert read_output(tmp_path / "out").column("id").to_pylist() == ["r0", "r1", "r2"]


def test_retry_errors_annotates_exactly_the_error_rows_again_in_place(job, tmp_path, monkeypatch):
    import batchnlp.stages as annotator

    texts = ["good", "flaky one", "bad", "ok", "flaky two", "fine", ""]
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(7)], "text": texts}), tmp_path / "inbox" / "a.parquet")
    real = annotator.row_error
    monkeypatch.setattr(annotator, "row_error", lambda r: "service unavailable" if "flaky" in (r["text"] or "")
                        else real(r))
    assert invoke("run", job(), "-q").exit_code == 0
    before = read_output(tmp_path / "out")
    assert before.column("error").to_pylist() == [None, "service unavailable", None, None, "service unavailable",
                                                  None, "empty text"]
    untouched = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("part-*")}
    monkeypatch.undo()
    seen = []
    real_prepare = annotator.Stages.prepare
    monkeypatch.setattr(annotator.Stages, "prepare",
                        lambda self, rows: seen.extend(rows.column("text").to_pylist()) or real_prepare(self, rows))
    result = invoke("run", job(), "-q", "--retry-errors")
    assert result.exit_code == 0, result.output
    assert "retried 3 rows with an error in 3 parts: 2 annotated now, 1 still fail" in result.output
    assert seen == ["flaky one", "flaky two", ""]  # exactly the error rows
    after = read_output(tmp_path / "out")
    assert after.column("id").to_pylist() == before.column("id").to_pylist()  # in place, same order
    assert after.column("error").to_pylist() == [None] * 6 + ["empty text"]
    assert all(label is not None for label in after.column("label").to_pylist()[:6])
    kept = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("part-*")}
    assert kept["part-00000-00001.parquet"] == untouched["part-00000-00001.parquet"]  # no error rows: untouched
    assert invoke("verify", tmp_path / "out").exit_code == 0
    assert record(tmp_path / "out")["runs"][-1]["rows"] == 3


@pytest.mark.parametrize("damage", ["missing", "garbled", "truncated"])
def test_retry_errors_with_a_missing_or_damaged_part_annotates_it_whole(job, tmp_path, monkeypatch, damage):
    """--retry-errors where a part holding error rows is gone, or damaged (garbage of the same size,
    or cut short): it was a traceback. The part's shard is annotated whole again, the other error
    rows are retried in place, and the output verifies."""
    import batchnlp.stages as annotator

    texts = ["good", "flaky one", "bad", "ok", "flaky two", "fine"]
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(6)], "text": texts}), tmp_path / "inbox" / "a.parquet")
    real = annotator.row_error
    monkeypatch.setattr(annotator, "row_error", lambda r: "service unavailable" if "flaky" in (r["text"] or "")
                        else real(r))
    assert invoke("run", job(), "-q").exit_code == 0
    monkeypatch.undo()
    part = tmp_path / "out" / "part-00000-00000.parquet"  # rows r0 r1: "flaky one" failed
    if damage == "missing":
        part.unlink()
    elif damage == "garbled":
        part.write_bytes(b"\0" * part.stat().st_size)
    else:
        part.write_bytes(part.read_bytes()[:100])
    result = invoke("run", job(), "-q", "--retry-errors")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    after = read_output(tmp_path / "out")
    assert after.column("id").to_pylist() == [f"r{i}" for i in range(6)]
    assert after.column("error").to_pylist() == [None] * 6
    assert invoke("verify", tmp_path / "out").exit_code == 0
