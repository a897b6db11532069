"""Scheduled runs: a folder where files arrive, a nightly `batchnlp run`, `verify` after each; paths
relative to the job file; logs and signals as a scheduler sees them."""

from __future__ import annotations

import json
import os
import shutil
import re
import subprocess
import sys

import pytest
from pathlib import Path

from batchnlp.stages import Stages

from helpers import invoke, read_output, record

TEXTS = {"a.csv": ["good battery", "bad screen", "fine", "love it", "awful sound"],
         "b.csv": ["great price", "slow", "never again"],
         "c.csv": ["best coffee machine", "the shoes fit"]}


def write_csv(path, texts, prefix=None):
    prefix = prefix or path.stem
    path.write_text("id,text\n" + "".join(f"{prefix}{i},{t}\n" for i, t in enumerate(texts)))


@pytest.fixture
def nightly(tmp_path, classifier_dir, monkeypatch):
    """A job in jobs/ naming ../inbox and ../annotated relative to itself; run from elsewhere."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "inbox").mkdir()
    job = tmp_path / "jobs" / "nightly.yaml"
    job.write_text(f"""
input: {{path: ../inbox, format: csv, text_column: text, id_column: id}}
task: {{name: text-classification}}
model: {{path: {classifier_dir}}}
runtime: {{dtype: float32}}
output: {{path: ../annotated, rows_per_shard: 2}}
""")
    elsewhere = tmp_path / "cron-cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # as cron runs it: relative paths resolve against the job file
    return job


@pytest.fixture
def seen(monkeypatch):
    return _watch(monkeypatch)


def parts(out):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("part-*.parquet")}


def verified(out):
    result = invoke("verify", out)
    assert result.exit_code == 0, result.output
    return result.output


def test_three_nights_a_changed_file_and_a_lost_part(nightly, seen, tmp_path, monkeypatch):
    inbox, out = tmp_path / "inbox", tmp_path / "annotated"
    # Day 1: two files.
    write_csv(inbox / "a.csv", TEXTS["a.csv"])
    write_csv(inbox / "b.csv", TEXTS["b.csv"])
    assert invoke("run", nightly, "-q").exit_code == 0
    assert read_output(out).column("text").to_pylist() == TEXTS["a.csv"] + TEXTS["b.csv"]
    assert "ok — 5 parts, 8 rows verified, 2 input file(s) unchanged" in verified(out)

    # Day 2: a third file arrives; only its rows go through the model; earlier parts untouched.
    seen.clear()
    day1 = parts(out)
    write_csv(inbox / "c.csv", TEXTS["c.csv"])
    result = invoke("run", nightly, "-q")
    assert result.exit_code == 0 and "wrote 2 rows in 1 parts" in result.output and "1 new input" in result.output
    assert seen == TEXTS["c.csv"]
    assert {k: v for k, v in parts(out).items() if k in day1} == day1
    assert read_output(out).column("text").to_pylist() == TEXTS["a.csv"] + TEXTS["b.csv"] + TEXTS["c.csv"]
    verified(out)

    # Day 3: nothing new, and a file merely touched: no model is even loaded.
    import batchnlp.model.load as load

    monkeypatch.setattr(load, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    seen.clear()
    day2 = parts(out)
    os.utime(inbox / "a.csv", ns=(1, 1))
    result = invoke("run", nightly, "-q")
    assert result.exit_code == 0 and "already complete (6 parts); nothing to do" in result.output
    assert seen == [] and parts(out) == day2
    manifest = record(out)
    assert manifest["units"][0]["mtime_ns"] == 1  # the new time is remembered: no re-hash tomorrow
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)

    # A file whose content changed is refused, naming it, with nothing changed; then reprocessed.
    before = parts(out)
    write_csv(inbox / "b.csv", ["great price", "fast", "never again", "best"], prefix="b2-")
    result = invoke("run", nightly, "-q")
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert f"{inbox / 'b.csv'} changed since it was annotated" in result.output and "--reprocess-changed" in result.output
    assert parts(out) == before
    seen = _watch(monkeypatch)
    assert invoke("run", nightly, "-q", "--reprocess-changed").exit_code == 0
    assert seen == ["great price", "fast", "never again", "best"]
    table = read_output(out)
    assert table.column("id").to_pylist() == [f"a{i}" for i in range(5)] + [f"b2-{i}" for i in range(4)] + ["c0", "c1"]
    verified(out)

    # A part deleted from the complete output: verify names it, run redoes just that part.
    (out / "part-00000-00001.parquet").unlink()
    result = invoke("verify", out)
    assert result.exit_code == 2 and "part-00000-00001.parquet: listed in the output's log but missing" in result.output
    assert ("parts:     6 of 6; 1 missing or altered on disk (part-00000-00001.parquet): run the job to redo them"
            in invoke("inspect", out).output)
    seen.clear()
    result = invoke("run", nightly, "-q")
    assert result.exit_code == 0 and "wrote 2 rows in 1 parts" in result.output
    assert seen == TEXTS["a.csv"][2:4]
    verified(out)


def _watch(monkeypatch):
    """Every text the model is asked to annotate, from now on."""
    texts: list[str] = []
    real = Stages.prepare

    def prepare(self, rows):
        texts.extend(rows.column("text").to_pylist())
        return real(self, rows)

    monkeypatch.setattr(Stages, "prepare", prepare)
    return texts


def test_removed_files_are_refused_then_kept_or_dropped(nightly, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "annotated"
    for name in ("a.csv", "c.csv"):
        write_csv(inbox / name, TEXTS[name])
    assert invoke("run", nightly, "-q").exit_code == 0
    (inbox / "c.csv").unlink()
    result = invoke("run", nightly, "-q")
    assert result.exit_code == 2 and "c.csv was annotated but no longer exists" in result.output
    assert invoke("run", nightly, "-q", "--keep-removed").exit_code == 0
    assert read_output(out).num_rows == 7
    assert invoke("run", nightly, "-q").exit_code == 0  # kept once: not asked again
    assert "note: " in verified(out)
    assert invoke("run", nightly, "-q", "--drop-removed").exit_code == 0
    assert read_output(out).column("text").to_pylist() == TEXTS["a.csv"]
    assert sorted(p.name for p in out.glob("part-*")) == [f"part-00000-0000{j}.parquet" for j in range(3)]
    verified(out)


def unattended(job, **output):
    """The job with these keys added to its output section (the unattended policy)."""
    extra = "".join(f", {k}: {v}" for k, v in output.items())
    job.write_text(job.read_text().replace("rows_per_shard: 2}", f"rows_per_shard: 2{extra}}}"))


def test_one_changed_file_does_not_stop_the_night_with_on_changed_skip(nightly, seen, tmp_path):
    """A cron job with output.on_changed: skip — one edited file and two new ones: the new files
    are annotated, the edited one keeps its earlier annotations (not a row of it is read), the run
    names it in one line and exits 3 (a monitored failure, not silence), the log has an
    `input_skipped` event, and the next night says it again until the file is restored."""
    inbox, out = tmp_path / "inbox", tmp_path / "annotated"
    unattended(nightly, on_changed="skip")
    write_csv(inbox / "a.csv", TEXTS["a.csv"])
    assert invoke("run", nightly, "-q").exit_code == 0
    before = parts(out)
    original = (inbox / "a.csv").read_text()
    write_csv(inbox / "a.csv", ["edited"] + TEXTS["a.csv"][1:] + ["one more"])
    write_csv(inbox / "b.csv", TEXTS["b.csv"])
    write_csv(inbox / "c.csv", TEXTS["c.csv"])
    seen.clear()
    log = tmp_path / "night.log"
    result = invoke("run", nightly, "-q", "--log-format", "json", "--log-file", log)
    assert result.exit_code == 3, result.output
    assert sorted(seen) == sorted(TEXTS["b.csv"] + TEXTS["c.csv"])
    said = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [e["event"] for e in said] == ["input_skipped", "error"] and said[1]["exit_code"] == 3
    assert f"input.path: {inbox / 'a.csv'} changed since it was annotated and was skipped (output.on_changed: " \
        "skip)" in said[1]["message"]
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["file"] for e in events if e["event"] == "input_skipped"] == [str(inbox / "a.csv")]
    assert [e["exit_code"] for e in events if e["event"] == "finished"] == [3]
    assert {k: v for k, v in parts(out).items() if k in before} == before
    assert read_output(out).column("text").to_pylist() == TEXTS["a.csv"] + TEXTS["b.csv"] + TEXTS["c.csv"]
    assert "a.csv: input file changed since it was annotated" in invoke("verify", out).output  # still told
    again = invoke("run", nightly, "-q")
    assert again.exit_code == 3 and "a.csv changed since it was annotated and was skipped" in again.output
    (inbox / "a.csv").write_text(original)
    assert invoke("run", nightly, "-q").exit_code == 0
    verified(out)
    assert "skipped 1 (../inbox/a.csv)" in invoke("inspect", out, "--history").output


def test_on_changed_reprocess_and_on_removed_drop_run_unattended(nightly, seen, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "annotated"
    unattended(nightly, on_changed="reprocess", on_removed="drop")
    write_csv(inbox / "a.csv", TEXTS["a.csv"])
    write_csv(inbox / "c.csv", TEXTS["c.csv"])
    assert invoke("run", nightly, "-q").exit_code == 0
    write_csv(inbox / "a.csv", ["edited"] + TEXTS["a.csv"][1:])
    (inbox / "c.csv").unlink()
    result = invoke("run", nightly, "-q")
    assert result.exit_code == 0, result.output
    assert read_output(out).column("text").to_pylist() == ["edited"] + TEXTS["a.csv"][1:]
    verified(out)


def test_an_edit_that_keeps_size_and_time_is_caught_by_verify(nightly, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "annotated"
    write_csv(inbox / "a.csv", TEXTS["a.csv"])
    assert invoke("run", nightly, "-q").exit_code == 0
    stat = (inbox / "a.csv").stat()
    (inbox / "a.csv").write_text((inbox / "a.csv").read_text().replace("good", "fine"))
    os.utime(inbox / "a.csv", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = invoke("verify", out)
    assert result.exit_code == 2 and "a.csv: input file changed since it was annotated" in result.output


def test_rerun_from_the_manifest_is_byte_identical(nightly, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "annotated"
    write_csv(inbox / "b.csv", TEXTS["b.csv"])
    assert invoke("run", nightly, "-q").exit_code == 0
    write_csv(inbox / "a.csv", TEXTS["a.csv"])  # arrives later but sorts first: it is file 1, not 0
    assert invoke("run", nightly, "-q").exit_code == 0
    nightly.unlink()  # the manifest alone is enough
    result = invoke("rerun", out, "--to", tmp_path / "again", "-q")
    assert result.exit_code == 0, result.output
    assert "5 of 5 parts byte-identical" in result.output
    (out / "part-00001-00000.parquet").write_bytes(b"not the same")
    for commit in (out / ".batchnlp" / "log").glob("*.json"):  # as if it had been written differently
        text = commit.read_text()
        data = json.loads(text)
        for action in data.get("actions", []):
            if action.get("add", {}).get("unit") == 1 and action["add"]["shard"] == 0:
                action["add"]["sha256"] = "0" * 64
                commit.write_text(json.dumps(data))
    result = invoke("rerun", out, "--to", tmp_path / "third", "-q")
    assert result.exit_code == 2 and "part-00001-00000.parquet: differs" in result.output
    assert "4 of 5 parts byte-identical" in result.output


def test_output_inside_the_input_folder_is_refused_by_validate(tmp_path, classifier_dir):
    (tmp_path / "inbox").mkdir()
    write_csv(tmp_path / "inbox" / "a.csv", TEXTS["a.csv"])
    for output in ("inbox/annotated", "inbox", "inbox/a.csv/x"):
        job = tmp_path / "job.yaml"
        job.write_text(f"input: {{path: inbox, text_column: text, format: csv}}\ntask: {{name: sentiment}}\n"
                       f"model: {{path: {classifier_dir}}}\noutput: {{path: {output}}}\n")
        result = invoke("validate", job)
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert result.output.startswith("error: output.path: ") and "choose an output.path outside it" in result.output
    job.write_text(f"input: {{path: inbox/a.csv, text_column: text}}\ntask: {{name: sentiment}}\n"
                   f"model: {{path: {classifier_dir}}}\noutput: {{path: inbox/a.csv}}\n")
    assert "is the input file" in invoke("validate", job).output


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "batchnlp", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_a_piped_run_logs_readable_lines(nightly, tmp_path):
    for name in ("a.csv", "b.csv"):
        write_csv(tmp_path / "inbox" / name, TEXTS[name])
    result = cli("run", nightly, "--log-format", "json", "--progress-interval", "0.1", "--log-file",
                 tmp_path / "run.log")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON object: no bars, no stray output
    shards = [e for e in events if e["event"] == "shard"]
    assert len(shards) == 5 and sum(e["rows"] for e in shards) == 8
    assert all({"time", "level", "rows_per_s", "tokens_per_s", "errors", "eta_s"} <= set(e) for e in shards)
    logged = (tmp_path / "run.log").read_text().splitlines()  # the same lines
    life = ("started", "planned", "model", "finished")  # the run's life: on a piped stderr too (cron's only log)
    assert logged == lines
    assert [json.loads(line)["event"] for line in logged if json.loads(line)["event"] in life] == [
        "started", "planned", "model", "finished"]
    text = cli("run", nightly, "--overwrite")
    assert text.returncode == 0
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00 (INFO|WARNING) ", line)
               for line in text.stderr.splitlines()), text.stderr


@pytest.mark.parametrize("signame, status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_stops_the_run_cleanly_and_it_resumes(nightly, tmp_path, signame, status):
    for name in ("a.csv", "b.csv"):
        write_csv(tmp_path / "inbox" / name, TEXTS[name])
    stopped = cli("run", nightly, "-q", env={"BATCHNLP_TEST_SIGNAL": f"shard-recorded:0@{signame}"})
    assert stopped.returncode == status, stopped.stderr
    assert stopped.stderr.splitlines() == [f"error: interrupted by {signame}; the committed parts are kept in "
                                           f"{tmp_path / 'annotated'}; run the same command again to resume"]
    manifest = record(tmp_path / "annotated")
    assert manifest["status"] == "interrupted" and manifest["runs"][-1]["status"] == "interrupted"
    resumed = cli("run", nightly, "-q")
    assert resumed.returncode == 0 and "resumed after" in resumed.stdout
    assert read_output(tmp_path / "annotated").column("text").to_pylist() == TEXTS["a.csv"] + TEXTS["b.csv"]


def test_a_saved_dataset_is_known_by_its_fingerprint(tmp_path, classifier_dir):
    import datasets

    def save(texts):
        datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "ds"))

    save(TEXTS["a.csv"])
    job = write_job_file(tmp_path, {"dataset": str(tmp_path / "ds"), "text_column": "text"}, classifier_dir)
    assert invoke("run", job, "-q").exit_code == 0
    result = invoke("run", job, "-q")
    assert result.exit_code == 0 and "nothing to do" in result.output
    save(TEXTS["b.csv"])
    one_line = invoke("run", job, "-q")
    assert one_line.exit_code == 2 and "changed since it was annotated" in one_line.output
    assert invoke("run", job, "-q", "--reprocess-changed").exit_code == 0
    assert read_output(tmp_path / "out").column("text").to_pylist() == TEXTS["b.csv"]


def write_job_file(tmp_path, input_section, model_dir):
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"input": input_section, "task": {"name": "sentiment"}, "model": {"path": str(model_dir)},
                               "runtime": {"dtype": "float32"}, "output": {"path": str(tmp_path / "out")}}))
    return job


def as_written_by_0_2(out: Path, name: str) -> None:
    """Turn an output into what batchnlp 0.2 left behind: one manifest (format 2, absolute paths,
    `shards`), no log. Built from the state's documented fields, as 0.2's Manifest.new wrote them."""
    state = record(out)
    job, base = state["job"], state["job"]["base"]
    fingerprint = json.loads(json.dumps(state["fingerprint"]))
    for key in job["paths_as_written"]:
        section, field = key.split(".")
        if field in fingerprint["spec"].get(section, {}):
            fingerprint["spec"][section][field] = job["resolved"][section][field]
    dropped = ("number", "parts_added", "parts_removed", "inputs")
    manifest = {
        "format": 2, "status": state["status"], "started_at": state["started_at"], "finished_at": state["finished_at"],
        "job": {k: job[k] for k in ("file", "paths_as_written", "resolved", "text")}, "fingerprint": fingerprint,
        "model": state["model"], "input": state["input"], "output": {"schema": state["pinned"]["schema"]},
        "libraries": state["libraries"],
        "units": [{**u, "name": os.path.normpath(os.path.join(base, u["name"]))} for u in state["units"]],
        "runs": [{k: v for k, v in run.items() if k not in dropped} for run in state["runs"]],
        "shards": state["parts"], "totals": state["totals"], "planned": state["planned"]}
    shutil.rmtree(out / ".batchnlp")
    (out / name).write_text(json.dumps(manifest, indent=2))


@pytest.mark.parametrize("name", [".manifest.json", "_manifest.json"])
def test_an_output_written_by_0_2_is_migrated_and_continued(nightly, tmp_path, name):
    """0.2's one rewritten manifest (or 0.1's `_manifest.json`) becomes the first commit of the log:
    nothing is redone, the next night adds its file, and the old manifest is gone."""
    inbox, out = tmp_path / "inbox", tmp_path / "annotated"
    write_csv(inbox / "a.csv", TEXTS["a.csv"])
    assert invoke("run", nightly, "-q").exit_code == 0
    as_written_by_0_2(out, name)
    assert "ok — 3 parts, 5 rows verified" in verified(out)  # read as it is, before any run migrates it
    before = parts(out)
    write_csv(inbox / "b.csv", TEXTS["b.csv"])
    result = invoke("run", nightly, "-q")
    assert result.exit_code == 0 and "wrote 3 rows in 2 parts" in result.output, result.output
    assert not (out / name).exists() and (out / ".batchnlp" / "log").is_dir()
    assert {k: v for k, v in parts(out).items() if k in before} == before
    assert "ok — 5 parts, 8 rows verified" in verified(out)
    state = record(out)
    assert state["migrated_from"] == f"{name} (format 2)" and [u["name"] for u in state["units"]] == [
        "../inbox/a.csv", "../inbox/b.csv"]  # relative to the job file's folder


def test_an_output_loads_with_datasets_by_its_directory(nightly, tmp_path):
    from datasets import load_dataset

    write_csv(tmp_path / "inbox" / "a.csv", TEXTS["a.csv"])
    write_csv(tmp_path / "inbox" / "b.csv", TEXTS["b.csv"])
    assert invoke("run", nightly, "-q").exit_code == 0
    loaded = load_dataset("parquet", data_dir=str(tmp_path / "annotated"), split="train")
    assert loaded["text"] == TEXTS["a.csv"] + TEXTS["b.csv"]  # every part once, in order; no manifest read as data
    assert set(loaded.column_names) == {"id", "text", "label", "score", "error"}
