"""Bad input, broken models and hostile output places, each through the CLI: exit status 2, one
line naming the key or file and what to do, and no existing file changed. Plus the guardrails of
the generating tasks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from helpers import TEXTS, gone, invoke, marked, printed, read_output, write_job, record


def snapshot(*directories: Path) -> dict[str, bytes]:
    """Every file's bytes (the output lock aside: a run may create it, and it holds the last pid)."""
    return {str(p): p.read_bytes() for d in directories if d.exists() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != ".batchnlp.lock"}


def one_line_error(result, *fragments: str) -> str:
    """Exit 2 and one line `error: ...`, nothing else but log lines (no traceback, no stray output)."""
    assert result.exit_code == 2, result.output
    own = printed(result.output)
    assert own.count("\n") == 1 and own.startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in own, result.output
    return own


def job_for(tmp_path, model_dir, path, task=None, **sections):
    return write_job(tmp_path, input={"path": str(path), "text_column": "text"},
                     task=task or {"name": "text-classification"}, model={"path": str(model_dir)}, **sections)


# -- silent wrong answers --------------------------------------------------------------------------

def test_an_unterminated_csv_quote_names_the_line_where_it_opened(tmp_path, classifier_dir):
    lines = ["id,text"] + [f"{i},row {i}" for i in range(1, 200)]
    lines[100] = '100,"row 100 opens a quote'
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    job = job_for(tmp_path, classifier_dir, tmp_path / "bad.csv")
    before = snapshot(tmp_path)
    one_line_error(invoke("run", job, "-q"), "bad.csv: line 101: a quoted field opens there and never closes")
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


def test_quoted_newlines_and_doubled_quotes_still_read(tmp_path, classifier_dir):
    (tmp_path / "ok.csv").write_text('id,text\n1,"two\nlines"\n2,"say ""hi"""\n3,5" screen\n')
    assert invoke("run", job_for(tmp_path, classifier_dir, tmp_path / "ok.csv"), "-q").exit_code == 0
    assert read_output(tmp_path / "out").column("text").to_pylist() == ["two\nlines", 'say "hi"', '5" screen']


def test_a_record_spanning_many_lines_is_reported(tmp_path, classifier_dir):
    """A quote that closes far too late is legal CSV: the run goes on, and the log says where."""
    lines = ["id,text", '1,"opens here'] + [f"{i},row {i}" for i in range(2, 62)] + ['62,closes here"', "63,last"]
    (tmp_path / "late.csv").write_text("\n".join(lines) + "\n")
    result = invoke("run", job_for(tmp_path, classifier_dir, tmp_path / "late.csv"), "-q")
    assert result.exit_code == 0
    assert "late.csv: line 2: one record spans 62 lines" in result.output
    assert read_output(tmp_path / "out").num_rows == 2


@pytest.fixture
def no_tokenizer(tmp_path, classifier_dir):
    directory = tmp_path / "no-tokenizer"
    directory.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(classifier_dir / name, directory / name)
    return directory


def test_a_model_without_tokenizer_files_is_refused(tmp_path, reviews_csv, no_tokenizer):
    job = job_for(tmp_path, no_tokenizer, reviews_csv)
    one_line_error(invoke("validate", job), "has no tokenizer files")
    one_line_error(invoke("run", job, "-q"), "has an empty vocabulary")
    assert not (tmp_path / "out").exists()


def test_a_model_without_the_task_head_is_refused_unless_allowed(tmp_path, reviews_csv, encoder_dir):
    job = job_for(tmp_path, encoder_dir, reviews_csv)
    one_line_error(invoke("validate", job), "is a bare BertModel with no head for text-classification")
    one_line_error(invoke("run", job, "-q"), "has no weights for classifier.bias, classifier.weight",
                   "model.allow_missing_weights: true")
    assert not (tmp_path / "out").exists()
    allowed = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                        task={"name": "text-classification"},
                        model={"path": str(encoder_dir), "allow_missing_weights": True})
    assert invoke("run", allowed, "-q").exit_code == 0


def test_the_hypothesis_template_is_used_by_the_embedding_method(tmp_path, reviews_csv, encoder_dir):
    scores = []
    for i, template in enumerate([None, "This review is about {}."]):
        task = {"name": "zero-shot-classification", "method": "embedding", "candidate_labels": ["price", "sound"],
                **({"hypothesis_template": template} if template else {})}
        directory = tmp_path / str(i)
        directory.mkdir()
        assert invoke("run", job_for(directory, encoder_dir, reviews_csv, task), "-q").exit_code == 0
        scores.append(read_output(directory / "out").column("scores").to_pylist())
    assert scores[0] != scores[1]


# -- tracebacks that must be one line --------------------------------------------------------------

def test_a_truncated_weight_file(tmp_path, reviews_csv, classifier_dir):
    broken = tmp_path / "broken"
    shutil.copytree(classifier_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    one_line_error(invoke("run", job_for(tmp_path, broken, reviews_csv), "-q"), "the file is damaged or truncated")


def test_max_length_beyond_the_position_table(tmp_path, reviews_csv, classifier_dir):
    job = job_for(tmp_path, classifier_dir, reviews_csv, runtime={"max_length": 4096})
    for command in ("validate", "run"):
        one_line_error(invoke(command, job), "runtime.max_length: 4096 is more than the model's 128 positions")


def test_a_job_file_that_is_not_utf8_or_not_yaml(tmp_path):
    (tmp_path / "latin.yaml").write_bytes("input: {path: café.csv}\n".encode("latin-1"))
    one_line_error(invoke("validate", tmp_path / "latin.yaml"), "not UTF-8 text", "save the job file as UTF-8")
    (tmp_path / "bad.yaml").write_text("input:\n  path: x.csv\n  text_column: [a\n")
    one_line_error(invoke("validate", tmp_path / "bad.yaml"), "bad.yaml:4:1: not valid YAML")


def test_usage_errors_are_one_line():
    one_line_error(invoke("run"), "Missing argument 'JOB'")
    one_line_error(invoke("run", "x.yaml", "--bogus"), "No such option '--bogus'")


def test_an_output_that_cannot_be_written(tmp_path, reviews_csv, classifier_dir, monkeypatch):
    from batchnlp.write import lock

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self.path))

    monkeypatch.setattr(lock.OutputLock, "__enter__", denied)
    one_line_error(invoke("run", job_for(tmp_path, classifier_dir, reviews_csv), "-q"), "cannot be written",
                   "Permission denied")


@pytest.fixture
def read_only():
    """Make a folder read-only for real: a read-only bind mount over it as root (root writes
    through permissions), its permissions otherwise; undone at the end."""
    import subprocess

    mounted, changed = [], []

    def make(folder: Path) -> None:
        if os.geteuid() == 0:
            done = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True)
            if done.returncode != 0:
                pytest.skip(f"cannot mount read-only here: {done.stderr.decode().strip()}")
            mounted.append(folder)
        else:
            for path in [folder, *folder.rglob("*")]:
                changed.append((path, path.stat().st_mode))
                path.chmod(path.stat().st_mode & ~0o222)

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)
    for path, mode in reversed(changed):
        path.chmod(mode)


def test_resuming_into_a_read_only_output_is_one_line(tmp_path, reviews_csv, classifier_dir, read_only):
    """An output on a read-only mount (an EROFS, not a PermissionError: it was a traceback)."""
    job = job_for(tmp_path, classifier_dir, reviews_csv)
    assert invoke("run", job, "-q", "--limit", "4").exit_code == 0
    before = snapshot(tmp_path / "out")
    read_only(tmp_path / "out")
    own = one_line_error(invoke("run", job, "-q"), f"output.path: {tmp_path / 'out'} cannot be written",
                         "choose another output.path")
    assert "Traceback" not in own and snapshot(tmp_path / "out") == before


def test_a_full_disk_keeps_the_committed_parts_and_resumes(tmp_path, reviews_csv, classifier_dir, monkeypatch):
    import errno

    from batchnlp.write import folder as parts

    real, calls = parts.pq.write_table, []

    def write_table(table, where, **kwargs):
        calls.append(where)
        if len(calls) == 2:
            Path(where).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(where))
        return real(table, where, **kwargs)

    monkeypatch.setattr(parts.pq, "write_table", write_table)
    job = job_for(tmp_path, classifier_dir, reviews_csv)
    one_line_error(invoke("run", job, "-q"), "no space left on the device", "the committed parts are kept")
    out = tmp_path / "out"
    manifest = record(out)
    assert manifest["status"] == "failed" and [s["shard"] for s in manifest["parts"]] == [0]
    assert sorted(p.name for p in out.iterdir() if p.name != ".batchnlp.lock") == [
        ".batchnlp", "part-00000-00000.parquet"]  # no half-written part left behind
    monkeypatch.undo()
    result = invoke("run", job, "-q")
    assert result.exit_code == 0 and "resumed after 1 committed parts" in result.output
    assert read_output(out).num_rows == len(TEXTS)


@pytest.mark.parametrize("name", [".manifest.json", ".batchnlp/log/00000000000000000000.json"])
@pytest.mark.parametrize("content", ["[1, 2]", '"text"', '{"format": 1, "shards": []}', "{not json"])
def test_a_manifest_or_log_that_is_not_one(tmp_path, reviews_csv, classifier_dir, name, content):
    """An 0.2 manifest or a commit of the log that is damaged or of another format: one line
    naming the file and --overwrite, nothing written."""
    (tmp_path / "out" / name).parent.mkdir(parents=True)
    (tmp_path / "out" / name).write_text(content)
    before = snapshot(tmp_path / "out")
    one_line_error(invoke("run", job_for(tmp_path, classifier_dir, reviews_csv), "-q"), name, "--overwrite")
    one_line_error(invoke("inspect", tmp_path / "out"), name)
    assert snapshot(tmp_path / "out") == before


def test_output_inside_the_input_folder_with_overwrite_deletes_nothing(tmp_path, classifier_dir):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("text\ngood\n")
    job = write_job(tmp_path, input={"path": str(tmp_path / "in"), "format": "csv", "text_column": "text"},
                    task={"name": "sentiment"}, model={"path": str(classifier_dir)},
                    output={"path": str(tmp_path / "in")})
    before = snapshot(tmp_path / "in")
    one_line_error(invoke("run", job, "--overwrite", "-q"), "output.path", "choose an output.path outside it")
    assert snapshot(tmp_path / "in") == before


# -- locks -------------------------------------------------------------------------------------------

def test_dataloader_workers_do_not_keep_a_killed_runs_lock(tmp_path, reviews_csv, classifier_dir):
    job = job_for(tmp_path, classifier_dir, reviews_csv, runtime={"num_workers": 2},
                  output={"path": str(tmp_path / "out"), "rows_per_shard": 4})
    mark = uuid.uuid4().hex
    env = {**os.environ, "BATCHNLP_TEST_CRASH": "shard-recorded:0", "BATCHNLP_TEST_MARK": mark}
    command = [sys.executable, "-m", "batchnlp", "run", str(job), "-q"]
    # No pipes to the killed run: its orphaned workers would hold them open until they exit.
    killed = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    assert killed.returncode == -9
    # Its workers die with it (a worker blocked on a full queue was once seen alive 17 minutes later).
    assert gone(mark, time.monotonic() + 10)
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)  # at once: no waiting for workers
    assert again.returncode == 0, again.stderr


def test_a_dataloader_worker_dies_with_its_run_whatever_it_is_doing(tmp_path):
    """A worker stuck where torch's own check of its parent never runs (a full queue, a lock
    inherited mid-use across fork) must still end when the run is killed (PR_SET_PDEATHSIG)."""
    mark = uuid.uuid4().hex
    code = ("import os, time\n"
            "from batchnlp.batch.loader import tie_forks_to_parent\n"
            "tie_forks_to_parent()\n"
            "if os.fork() == 0:\n"
            "    time.sleep(600)  # a worker stuck before any code of its own runs\n"
            "    os._exit(0)\n"
            "print('forked', flush=True)\n"
            "time.sleep(600)\n")
    run = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "BATCHNLP_TEST_MARK": mark},
                           stdout=subprocess.PIPE, text=True)
    assert run.stdout.readline() == "forked\n"
    assert len(marked(mark)) == 2
    run.kill()
    run.wait()
    assert gone(mark, time.monotonic() + 10)


# -- validate knows what it can ------------------------------------------------------------------------

def test_validate_checks_splits_columns_and_the_hub_cache(tmp_path, classifier_dir, monkeypatch):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]})}).save_to_disk(str(tmp_path / "dd"))
    job = write_job(tmp_path, input={"dataset": str(tmp_path / "dd"), "text_column": "text"},
                    task={"name": "sentiment"}, model={"path": str(classifier_dir)})
    one_line_error(invoke("validate", job), "input.split", "holds splits train; name one")
    (tmp_path / "labelled.csv").write_text("text,label\ngood,x\n")
    job = job_for(tmp_path, classifier_dir, tmp_path / "labelled.csv")
    one_line_error(invoke("validate", job), 'output.prefix: the input already has a column "label"')
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    job = write_job(tmp_path, input={"path": str(tmp_path / "labelled.csv"), "text_column": "text"},
                    task={"name": "sentiment"}, model={"id": "someone/not-cached", "revision": "main"},
                    output={"path": str(tmp_path / "o"), "prefix": "p_"})
    one_line_error(invoke("validate", job), "is not in the local cache", "hf download someone/not-cached")


# -- guardrails of the generating tasks --------------------------------------------------------------

def generate(tmp_path, causal_dir, reviews_csv, **task):
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "text-generation", "max_new_tokens": 8, **task}, model={"path": str(causal_dir)})
    result = invoke("run", job, "-q", "--overwrite")
    assert result.exit_code == 0, result.output
    return read_output(tmp_path / "out")


def test_blocked_patterns_redact_or_drop_and_say_why(tmp_path, causal_dir, reviews_csv):
    plain = generate(tmp_path, causal_dir, reviews_csv).column("generated_text").to_pylist()
    pattern = "e"  # some generated texts hold it, some may not
    hit = [pattern in t.lower() for t in plain]  # the patterns are case-insensitive
    assert any(hit)
    redacted = generate(tmp_path, causal_dir, reviews_csv, blocked=[pattern])
    for text, was_hit, new, flag in zip(plain, hit, redacted.column("generated_text").to_pylist(),
                                        redacted.column("flag").to_pylist()):
        assert new == (re.sub("e", "[REDACTED]", text, flags=re.IGNORECASE) if was_hit else text)
        assert flag == ("redacted: matched 'e'" if was_hit else None)
    dropped = generate(tmp_path, causal_dir, reviews_csv, blocked=[pattern], on_blocked="drop")
    assert [t is None for t in dropped.column("generated_text").to_pylist()] == hit
    assert [e for e in dropped.column("error").to_pylist()] == [
        "blocked: the generated text matched 'e'" if h else None for h in hit]


def test_max_time_flags_rows_cut_short_and_latency_is_recorded(tmp_path, causal_dir, reviews_csv):
    table = generate(tmp_path, causal_dir, reviews_csv, max_time=1e-9, min_new_tokens=8)
    flags = table.column("flag").to_pylist()
    assert all(f and f.startswith("max_time: stopped after 1e-09 s") for f in flags), flags
    assert table.column("error").null_count == table.num_rows  # flagged, not lost
    manifest = record(tmp_path / "out")
    for shard in manifest["parts"]:
        assert 0 < shard["batch_seconds_p50"] <= shard["batch_seconds_p95"]
        assert shard["error_rate"] == 0.0
    job = yaml.safe_load((tmp_path / "job.yaml").read_text())
    assert job["task"]["max_time"] == 1e-9
