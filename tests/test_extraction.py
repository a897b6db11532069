"""task: extraction — fields under a JSON Schema, decoded under its grammar, one typed column each.

The model is a random GPT-2 (tiny_models.causal_lm): what it writes freely is garbage, so every
valid answer below is the constraint's doing (the unconstrained run of the same rows shows it)."""

import json
import os
import re
import subprocess
import sys

import pyarrow as pa
import pytest

from helpers import invoke, read_output, record, write_job

TEXTS = ["the battery of this phone lasts all day", "a good movie with great acting and a slow plot",
         "das haus ist wunderbar", "where is the capital of france? it is paris", "the quick brown fox",
         "fine", "summarize: the committee met on monday", "it is paris"]
# Short names: the tiny tokenizer (400 byte-level tokens) spends a token or more per character.
SCHEMA = {
    "type": "object",
    "properties": {
        "s": {"type": "string", "enum": ["positive", "negative", "mixed"], "description": "sentiment"},
        "a": {"type": "array", "items": {"type": "string", "maxLength": 4}, "minItems": 1, "maxItems": 2},
        "r": {"type": "integer", "minimum": 1, "maximum": 5},
        "ok": {"type": "boolean"},
        "x": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "c": {"type": "string", "pattern": "^[a-z]{2}$"},
        "n": {"type": "null"},
    },
    "required": ["s", "a", "r", "ok", "c"],
}


def extraction_job(tmp_path, causal_dir, name="job.yaml", out="out", runtime=None, **task):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    return write_job(tmp_path, input={"path": str(rows), "text_column": "text", "id_column": "id"},
                     task={"name": "extraction", "schema": SCHEMA, "prompt_template": "review: {text}",
                           "max_new_tokens": 90, **task},
                     model={"path": str(causal_dir)}, runtime={"batch_tokens": 400, **(runtime or {})},
                     output={"path": str(tmp_path / out), "rows_per_shard": 4}, name=name)


def follows_schema(row):
    assert row["s"] in ("positive", "negative", "mixed")
    assert 1 <= len(row["a"]) <= 2 and all(len(a) <= 4 for a in row["a"])
    assert 1 <= row["r"] <= 5 and isinstance(row["ok"], bool) and row["n"] is None
    assert row["x"] is None or 0 <= row["x"] <= 1
    assert re.search("^[a-z]{2}$", row["c"])
    answer = json.loads(row["raw_json"])
    assert {k: answer.get(k) for k in SCHEMA["properties"]} == {k: row[k] for k in SCHEMA["properties"]}


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, causal_dir):
    """The constrained job run once for the tests that read its output: (folder, CLI output)."""
    folder = tmp_path_factory.mktemp("extracted")
    result = invoke("run", extraction_job(folder, causal_dir), "-q")
    return folder, result


def test_every_row_is_valid_under_the_schema_or_an_error_saying_why(extracted, tmp_path, causal_dir):
    folder, result = extracted
    assert result.exit_code == 0, result.output
    table = read_output(folder / "out")
    types = {f.name: f.type for f in table.schema}
    assert types["s"] == pa.string() and types["a"] == pa.list_(pa.string()) and types["r"] == pa.int64()
    assert types["ok"] == pa.bool_() and types["x"] == pa.float64() and types["n"] == pa.null()
    assert json.loads(table.schema.field("s").metadata[b"enum"]) == ["positive", "negative", "mixed"]
    assert json.loads(table.schema.field("raw_json").metadata[b"json_schema"])["additionalProperties"] is False
    rows = table.to_pylist()
    valid = [r for r in rows if r["error"] is None]
    for row in valid:
        follows_schema(row)
    for row in rows:
        if row["error"] is not None:  # only cut rows: never an invalid answer
            assert row["error"].startswith("cut: max_new_tokens (90) reached ") and row["raw_json"]
            assert all(row[k] is None for k in SCHEMA["properties"])
    assert len(valid) >= len(rows) // 2
    parts = record(folder / "out")["parts"]
    assert all(p["decode_steps"] > 0 and p["occupancy"] > 1 and p["batch_rows"] == 3 for p in parts)

    # The same rows, free text: the random model writes no JSON at all.
    free = extraction_job(tmp_path, causal_dir, name="free.yaml", out="free", constrained=False)
    assert invoke("run", free, "-q").exit_code == 0
    errors = read_output(tmp_path / "free").column("error").to_pylist()
    assert all(e is not None and e.startswith("invalid: ") for e in errors), errors


def test_a_cut_answer_is_an_error_row_keeping_its_text(tmp_path, causal_dir):
    job = extraction_job(tmp_path, causal_dir, max_new_tokens=9)
    assert invoke("run", job, "-q").exit_code == 0
    for row in read_output(tmp_path / "out").to_pylist():
        assert re.fullmatch(r'cut: max_new_tokens \(9\) reached (inside|after) "(s|a)"', row["error"]), row["error"]
        assert row["raw_json"].startswith('{"s": "') and row["s"] is None and row["r"] is None
    result = invoke("report", tmp_path / "out", "-o", tmp_path / "report.html")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    assert "cut before the answer was complete: 8 of 8 rows (100.0%); invalid answers: 0" in page


def test_report_shows_each_field(extracted, tmp_path):
    folder, _ = extracted
    assert invoke("report", folder / "out", "-o", tmp_path / "report.html").exit_code == 0
    page = (tmp_path / "report.html").read_text()
    rows = [r for r in read_output(folder / "out").to_pylist() if r["error"] is None]
    for chart in ("field-s", "field-a", "field-a--items-per-row-", "field-r", "field-ok", "field-c"):
        assert f"id='chart-{chart}'" in page, chart
    # the enum's bars are the valid rows' values, counted
    for value in {r["s"] for r in rows}:
        assert f">{value}<" in page


def test_struct_column_and_sampling_under_the_grammar_reproducible(tmp_path, causal_dir):
    """`struct: true` puts the fields in one typed struct column; sampling stays under the grammar,
    and a rerun of the recorded job writes the same bytes (shard i seeded with seed + i)."""
    job = extraction_job(tmp_path, causal_dir, struct=True, do_sample=True, temperature=1.5, seed=3)
    assert invoke("run", job, "-q").exit_code == 0
    table = read_output(tmp_path / "out")
    kind = table.schema.field("extracted").type
    assert pa.types.is_struct(kind) and kind.field("r").type == pa.int64() and kind.field("a").type == pa.list_(
        pa.string())
    rows = table.to_pylist()
    valid = [r for r in rows if r["error"] is None]
    assert valid and all(r["error"].startswith("cut: ") for r in rows if r["error"])
    for row in valid:
        follows_schema({**row["extracted"], "raw_json": row["raw_json"]})
    greedy = extraction_job(tmp_path, causal_dir, name="greedy.yaml", out="greedy")
    assert invoke("run", greedy, "-q").exit_code == 0
    assert [r["raw_json"] for r in rows] != read_output(tmp_path / "greedy").column("raw_json").to_pylist()
    result = invoke("rerun", tmp_path / "out", "--to", tmp_path / "again", "-q")
    assert result.exit_code == 0 and "2 of 2 parts byte-identical" in result.output, result.output


def test_validate_names_each_unsupported_keyword_on_a_line(tmp_path, causal_dir):
    schema = {"type": "object", "properties": {
        "when": {"type": "string", "format": "date"},
        "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        "nested": {"type": "object", "properties": {"a": {"type": "string"}}},
        "n": {"type": "integer", "maximum": "five"},
        "fine": {"type": "string", "maxLength": 3}}}
    job = extraction_job(tmp_path, causal_dir, schema=schema)
    result = invoke("validate", job)
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert "error: task.schema.properties.when.format: not supported for 'string'; use `pattern` with a regular " \
           "expression (supported: const, enum, maxLength, minLength, pattern, type)" in lines, result.output
    assert 'error: task.schema.properties.either.anyOf: not supported; give one type (or [type, "null"])' in lines
    assert "error: task.schema.properties.nested.type: nested objects are not typed into columns; flatten them " \
           "into top-level properties" in lines
    assert "fine" not in result.output
    schema = {"type": "object", "properties": {"n": {"type": "integer", "maximum": "five"}}}
    result = invoke("validate", extraction_job(tmp_path, causal_dir, schema=schema))
    assert result.exit_code == 2 and "task.schema.properties.n.maximum: 'five' is not of type 'number'" in result.output


def test_killed_extraction_resumes_to_the_same_output(tmp_path, causal_dir):
    reference = extraction_job(tmp_path, causal_dir, name="reference.yaml", out="reference")
    assert invoke("run", reference, "-q").exit_code == 0
    job = extraction_job(tmp_path, causal_dir)
    killed = subprocess.run([sys.executable, "-m", "batchnlp", "run", str(job), "--quiet"], capture_output=True,
                            env={**os.environ, "BATCHNLP_TEST_CRASH": "part-written:1"}, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr  # really SIGKILLed, after its first part
    assert invoke("run", job, "-q").exit_code == 0
    assert read_output(tmp_path / "out").equals(read_output(tmp_path / "reference"))
