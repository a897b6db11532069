"""Row-level incremental runs (input.incremental: ids): a growing export continued by id, through
the command line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from batchnlp.stages import Stages

from helpers import invoke, read_output, record


@pytest.fixture
def export(tmp_path, classifier_dir):
    """An export file rewritten every night, and its job (ids mode)."""
    (tmp_path / "inbox").mkdir()
    job = tmp_path / "job.yaml"
    job.write_text(f"""
input: {{path: inbox, format: csv, text_column: text, id_column: id, incremental: ids}}
task: {{name: text-classification}}
model: {{path: {classifier_dir}}}
runtime: {{dtype: float32}}
output: {{path: out, rows_per_shard: 4}}
""")
    return job


def write(path, rows):
    path.write_text("id,text\n" + "".join(f"{i},{t}\n" for i, t in rows))


ROWS = [(f"e{i}", f"review number {i} is {'good' if i % 2 else 'bad'}") for i in range(40)]


def parts(out):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("part-*.parquet")}


@pytest.fixture
def seen(monkeypatch):
    texts: list[str] = []
    real = Stages.prepare
    monkeypatch.setattr(Stages, "prepare", lambda self, rows: texts.extend(rows.column("text").to_pylist())
                        or real(self, rows))
    return texts


def test_a_growing_export_annotates_exactly_the_new_ids(export, tmp_path, seen):
    write(tmp_path / "inbox" / "export.csv", ROWS[:20])
    assert invoke("run", export, "-q").exit_code == 0
    night1 = parts(tmp_path / "out")
    seen.clear()
    # Night 2: yesterday's rows plus today's, in another order, as a database dump comes.
    write(tmp_path / "inbox" / "export.csv", ROWS[30:] + ROWS[:20] + ROWS[20:30])
    result = invoke("run", export, "-q")
    assert result.exit_code == 0 and "wrote 20 rows in 5 parts" in result.output, result.output
    assert sorted(seen) == sorted(t for _, t in ROWS[20:])  # the new ids only
    assert {k: v for k, v in parts(tmp_path / "out").items() if k in night1} == night1  # bytes and mtime
    ids = read_output(tmp_path / "out").column("id").to_pylist()
    assert ids == [i for i, _ in ROWS[:20]] + [i for i, _ in ROWS[30:] + ROWS[20:30]]  # night 1's, then in file order
    assert invoke("verify", tmp_path / "out").exit_code == 0
    runs = record(tmp_path / "out")["runs"]
    assert runs[-1]["inputs"] == {"grown": ["inbox/export.csv"]} and runs[-1]["rows"] == 20
    seen.clear()
    again = invoke("run", export, "-q")
    assert again.exit_code == 0 and "nothing to do" in again.output and seen == []


def test_duplicate_ids_and_changed_texts_are_refused_in_one_line(export, tmp_path):
    write(tmp_path / "inbox" / "export.csv", ROWS[:8] + [ROWS[3]])
    result = invoke("run", export, "-q")
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "export.csv: id 'e3' appears more than once" in result.output
    assert not (tmp_path / "out" / ".batchnlp" / "log").exists()
    write(tmp_path / "inbox" / "export.csv", ROWS[:8])
    assert invoke("run", export, "-q").exit_code == 0
    write(tmp_path / "inbox" / "export.csv", ROWS[:5] + [("e5", "an edited review")] + ROWS[6:12])
    before = parts(tmp_path / "out")
    result = invoke("run", export, "-q")
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "the text of id 'e5' changed since it was annotated" in result.output and "--reprocess-changed" in result.output
    assert parts(tmp_path / "out") == before
    result = invoke("run", export, "-q", "--reprocess-changed")
    assert result.exit_code == 0, result.output
    table = read_output(tmp_path / "out")
    assert table.column("id").to_pylist() == [f"e{i}" for i in range(12)]
    assert table.column("text").to_pylist()[5] == "an edited review"


def test_a_killed_second_night_resumes_with_every_id_once(export, tmp_path):
    write(tmp_path / "inbox" / "export.csv", ROWS[:8])
    assert invoke("run", export, "-q").exit_code == 0
    write(tmp_path / "inbox" / "export.csv", ROWS[:30])
    command = [sys.executable, "-m", "batchnlp", "run", str(export), "-q"]
    killed = subprocess.run(command, env={**os.environ, "BATCHNLP_TEST_CRASH": "shard-recorded:3"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    ids = read_output(tmp_path / "out").column("id").to_pylist()
    assert ids == [i for i, _ in ROWS[:30]]
    assert invoke("verify", tmp_path / "out").exit_code == 0


def test_ids_needs_an_id_column(tmp_path, classifier_dir):
    job = tmp_path / "job.yaml"
    job.write_text(f"""
input: {{path: x.csv, text_column: text, incremental: ids}}
task: {{name: text-classification}}
model: {{path: {classifier_dir}}}
output: {{path: out}}
""")
    result = invoke("validate", job)
    assert result.exit_code == 2 and "input.incremental: ids needs input.id_column" in result.output


def test_a_row_without_an_id_is_refused_in_one_line(export, tmp_path):
    """A null (or blank) id never matches a held one: the row would be annotated again every
    night (152 rows for 150, and verify passed). Refused, naming the row; nothing is written."""
    write(tmp_path / "inbox" / "export.csv", ROWS[:3] + [("", "a review without its id")] + ROWS[3:6])
    result = invoke("run", export, "-q")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "export.csv: data row 4 has no id (input.id_column id is null or blank there)" in result.output
    assert not (tmp_path / "out" / ".batchnlp" / "log").exists()
    write(tmp_path / "inbox" / "export.csv", ROWS[:6])
    assert invoke("run", export, "-q").exit_code == 0
    write(tmp_path / "inbox" / "export.csv", ROWS[:8] + [("  ", "blank")])
    result = invoke("run", export, "-q")
    assert result.exit_code == 2 and "data row 9 has no id" in result.output, result.output
    assert len(read_output(tmp_path / "out")) == 6


def test_on_changed_skip_leaves_a_file_with_edited_texts_and_annotates_the_others(export, tmp_path):
    """output.on_changed: skip — a nightly export whose held id got another text is left as it was
    annotated (its new ids too, until someone decides); another file's rows are annotated; the
    run exits 3 with one line naming the file, and says so again the next night."""
    export.write_text(export.read_text().replace("rows_per_shard: 4}", "rows_per_shard: 4, on_changed: skip}"))
    write(tmp_path / "inbox" / "export.csv", ROWS[:8])
    assert invoke("run", export, "-q").exit_code == 0
    write(tmp_path / "inbox" / "export.csv", ROWS[:5] + [("e5", "an edited review")] + ROWS[6:12])
    write(tmp_path / "inbox" / "other.csv", ROWS[20:23])
    before = parts(tmp_path / "out")
    for night in (1, 2):
        result = invoke("run", export, "-q")
        assert result.exit_code == 3, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "inbox/export.csv changed since it was annotated and was skipped" in errors[0]
        assert {k: v for k, v in parts(tmp_path / "out").items() if k in before} == before
        ids = read_output(tmp_path / "out").column("id").to_pylist()
        assert ids == [i for i, _ in ROWS[:8]] + [i for i, _ in ROWS[20:23]]
    runs = record(tmp_path / "out")["runs"]
    assert runs[1]["inputs"] == {"new": ["inbox/other.csv"], "skipped": ["inbox/export.csv"]}
    assert runs[2]["inputs"] == {"skipped": ["inbox/export.csv"]}
