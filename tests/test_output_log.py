"""The output's record as a commit log (issue 16): commits that cost the same at any size, a
competing writer that loses, checkpoints that equal the replayed log, kills during a commit and
a checkpoint, the precision pinned at the first commit, a project moved as a whole, the history,
and what other readers of the folder see."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from batchnlp.errors import OutputConflictError, RunFailed
from batchnlp.write.commits import LOG_DIR, POINTER, CommitLog, commit_name
from batchnlp.write.actions import Add, Remove, RunFinished, RunProgress, RunStarted
from batchnlp.write.committer import Committer
from batchnlp.write.folder import Folder
from batchnlp.write.state import OutputState

from helpers import invoke, read_output, record


def part(unit: int, shard: int, dtype: str = "float32") -> dict:
    return {"unit": unit, "shard": shard, "rows": 5, "bytes": 100, "sha256": "ab" * 32, "run": 1,
            "input": f"in-{unit}.csv", "start": shard * 5, "tokens": 50, "padded_tokens": 60, "errors": 1,
            "device": "cpu", "dtype": dtype}


def started_log(folder: Folder) -> CommitLog:
    log = CommitLog(folder, OutputState())
    log.stage(RunStarted("t0", "local", 1, "host"))
    return log


def commit_sizes(tmp_path: Path, parts_before: int) -> int:
    """The bytes of the commit that adds one part to an output already holding `parts_before`."""
    (tmp_path / f"out-{parts_before}").mkdir()
    log = started_log(Folder(tmp_path / f"out-{parts_before}"))
    log.commit()
    for i in range(parts_before):
        log.state.apply({"add": part(0, i)})  # as if committed earlier (the size of the state is what counts)
    version = log.commit(Add(part(1, 0)), RunProgress({"rows": 5, "seconds": 1.0}))
    return (tmp_path / f"out-{parts_before}" / commit_name(version)).stat().st_size


def test_a_commit_is_as_small_at_10000_parts_as_at_10(tmp_path):
    """A commit holds what changed, never the whole state (0.2 rewrote the whole manifest)."""
    assert commit_sizes(tmp_path, 10_000) == commit_sizes(tmp_path, 10) < 1000


def test_totals_are_carried_forward_not_summed(tmp_path):
    log = started_log(Folder(tmp_path))
    log.commit(Add(part(0, 0)), Add(part(0, 1)))
    log.commit(Add({**part(0, 1), "rows": 3, "errors": 0}))  # shard 1 redone: replaces, not adds
    log.commit(Remove(0, 0))
    assert log.state.totals["rows"] == 3 and log.state.totals["errors"] == 0 and len(log.state.parts) == 1
    assert CommitLog.read(Folder(tmp_path)).state.totals == log.state.totals


def test_a_competing_writer_loses_at_its_next_commit(tmp_path):
    started_log(Folder(tmp_path)).commit()
    first, second = CommitLog.read(Folder(tmp_path)), CommitLog.read(Folder(tmp_path))
    first.commit(Add(part(0, 0)))
    with pytest.raises(OutputConflictError, match=r"another run committed to this output while this one ran \(commit 1 exists\)"):
        second.commit(Add(part(0, 1, "bfloat16")))
    assert list(CommitLog.read(Folder(tmp_path)).state.parts) == [(0, 0)]  # the loser's part is nowhere


def test_the_state_from_a_checkpoint_equals_the_whole_log_replayed(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHNLP_CHECKPOINT_EVERY", "3")
    log = started_log(Folder(tmp_path))
    for i in range(10):
        log.commit(Add(part(0, i)), RunProgress({"rows": 5 * (i + 1)}))
    log.commit(Remove(0, 4), RunFinished("complete", "t1"))
    checkpoints = sorted(p.name for p in (tmp_path / LOG_DIR).glob("*.checkpoint.json"))
    pointer = [int(v) for v in (tmp_path / POINTER).read_text().split()]
    assert len(checkpoints) == 2 and pointer == [int(checkpoints[-1].split(".")[0]), int(checkpoints[0].split(".")[0])]
    from_checkpoint = CommitLog.read(Folder(tmp_path)).state.to_json()
    (tmp_path / POINTER).unlink()
    replayed = CommitLog.read(Folder(tmp_path)).state.to_json()
    assert from_checkpoint == replayed == log.state.to_json()
    assert replayed["totals"]["rows"] == 45 and replayed["status"] == "complete"


def test_a_part_in_another_precision_than_the_pinned_one_is_not_recorded(tmp_path):
    log = started_log(Folder(tmp_path))
    log.state.apply({"pin": {"precision": "float32"}})  # as the first commit pins it
    committer = Committer(log)
    for shard in (0, 1):  # the parts are on disk: only the precision is wrong
        (tmp_path / f"part-00000-0000{shard}.parquet").write_bytes(b"x" * 100)
    committer.record(part(0, 0), 0)
    with pytest.raises(RunFailed, match="annotated in bfloat16, but this output's precision is pinned to float32"):
        committer.record(part(0, 1, "bfloat16"), 1)
    assert list(CommitLog.read(Folder(tmp_path)).state.parts) == [(0, 0)]


# -- whole runs ----------------------------------------------------------------------------------

@pytest.fixture
def project(tmp_path, classifier_dir):
    """A project as users keep one: jobs/, inbox/ and annotated/ side by side, paths relative."""
    root = tmp_path / "project"
    (root / "jobs").mkdir(parents=True)
    (root / "inbox").mkdir()
    (root / "jobs" / "nightly.yaml").write_text(f"""
input: {{path: ../inbox, format: csv, text_column: text, id_column: id}}
task: {{name: text-classification}}
model: {{path: {classifier_dir}}}
runtime: {{dtype: float32}}
output: {{path: ../annotated, rows_per_shard: 2}}
""")
    return root


def write_csv(path: Path, texts: list[str]) -> None:
    path.write_text("id,text\n" + "".join(f"{path.stem}{i},{t}\n" for i, t in enumerate(texts)))


def cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "batchnlp", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.parametrize("crash", ["committed:2", "checkpoint-written:1", "checkpoint-written:3"])
def test_kill_9_during_a_commit_or_a_checkpoint_resumes_to_the_same_output(project, tmp_path, crash):
    """SIGKILL right after commit 2, or with a checkpoint written but not yet pointed to: the next
    run reads the last good checkpoint and the commits after it, and ends with the output of an
    uninterrupted run, every row once."""
    write_csv(project / "inbox" / "a.csv", ["good", "bad", "fine", "love it", "awful", "ok", "meh"])
    reference = tmp_path / "reference"
    shutil.copytree(project, reference)
    # The uninterrupted reference runs in this process (a subprocess costs ~5 s to start).
    assert invoke("run", reference / "jobs" / "nightly.yaml", "-q").exit_code == 0
    every = {"BATCHNLP_CHECKPOINT_EVERY": "2"}
    killed = cli("run", project / "jobs" / "nightly.yaml", "-q", env={**every, "BATCHNLP_TEST_CRASH": crash})
    assert killed.returncode == -9, killed.stderr
    log = project / "annotated" / LOG_DIR
    if crash.startswith("checkpoint"):
        version = int(crash.split(":")[1])
        assert (log / f"{version:020d}.checkpoint.json").is_file()
        assert not (log / "_last_checkpoint").is_file() or \
            int((log / "_last_checkpoint").read_text().split()[0]) < version
    assert record(project / "annotated")["status"] == "running"
    resumed = cli("run", project / "jobs" / "nightly.yaml", "-q", env=every)
    assert resumed.returncode == 0, resumed.stderr
    assert read_output(project / "annotated").equals(read_output(reference / "annotated"))
    state = record(project / "annotated")
    assert [r["status"] for r in state["runs"]] == ["killed", "complete"]
    assert invoke("verify", project / "annotated").exit_code == 0


def pinned_probe(monkeypatch, kept: bool | None, project: Path | None = None):
    """Make `dtype: auto` probe on any CPU, with this verdict (None: the probe must not run);
    `project`: its job asks for dtype auto (the fixture's pins float32, as tests that compare
    outputs do)."""
    import batchnlp.model.precision as precision
    import batchnlp.probe as probes

    if project is not None:
        job = project / "jobs" / "nightly.yaml"
        job.write_text(job.read_text().replace("dtype: float32", "dtype: auto"))
    monkeypatch.setattr(precision, "cpu_candidate", lambda: (True, {"margin": 1.25}))

    def probe(annotator, done=()):
        if kept is None:
            pytest.fail("the precision was probed again")
        return {"dtype": "bfloat16", "rows": 2, "agreement": 1.0 if kept else 0.5, "threshold": 0.99, "kept": kept}

    monkeypatch.setattr(probes, "precision_probe", probe)


@pytest.mark.parametrize("first", [True, False])
def test_the_precision_is_pinned_at_the_first_commit(project, monkeypatch, first):
    """dtype auto is settled once per output: a later night would probe otherwise (here: the
    opposite answer), and its parts would mix precisions with the first night's."""
    job = project / "jobs" / "nightly.yaml"
    write_csv(project / "inbox" / "a.csv", ["good", "bad", "fine"])
    pinned_probe(monkeypatch, first, project)
    assert invoke("run", job, "-q").exit_code == 0
    expected = "bfloat16" if first else "float32"
    state = record(project / "annotated")
    assert state["pinned"]["precision"] == expected and state["pinned"]["probe"]["kept"] is first
    monkeypatch.undo()
    pinned_probe(monkeypatch, None)
    write_csv(project / "inbox" / "b.csv", ["love it", "awful", "ok"])
    result = invoke("run", job, "-q")
    assert result.exit_code == 0, result.output
    state = record(project / "annotated")
    assert [p["dtype"] for p in state["parts"]] == [expected] * 4
    assert [r["dtype"] for r in state["runs"]] == [expected, expected]
    assert f"precision: {expected} (pinned at the first run" in invoke("inspect", project / "annotated").output


def test_a_project_moved_as_a_whole_continues_with_nothing_to_do(project, tmp_path, monkeypatch):
    """A new checkout, a renamed folder, another mount: same job, same inputs, nothing redone;
    verify finds the inputs in their new place; rerun from the moved output is byte-identical."""
    write_csv(project / "inbox" / "a.csv", ["good", "bad", "fine"])
    assert invoke("run", project / "jobs" / "nightly.yaml", "-q").exit_code == 0
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.move(project, moved)
    import batchnlp.model.load as load

    monkeypatch.setattr(load, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    result = invoke("run", moved / "jobs" / "nightly.yaml", "-q")
    assert result.exit_code == 0 and "already complete (2 parts); nothing to do" in result.output, result.output
    verified = invoke("verify", moved / "annotated")
    assert verified.exit_code == 0 and "1 input file(s) unchanged" in verified.output, verified.output
    monkeypatch.undo()
    again = invoke("rerun", moved / "annotated", "--to", tmp_path / "again", "-q")
    assert again.exit_code == 0 and "2 of 2 parts byte-identical" in again.output, again.output


def test_three_nights_rerun_byte_identical_in_the_pinned_precision(project, tmp_path, monkeypatch):
    """Three nights (a file each, one changed and reprocessed), dtype auto pinned to bfloat16:
    rerun makes the same bytes, part by part, without probing again."""
    job = project / "jobs" / "nightly.yaml"
    pinned_probe(monkeypatch, True, project)
    write_csv(project / "inbox" / "a.csv", ["good", "bad", "fine"])
    assert invoke("run", job, "-q").exit_code == 0
    monkeypatch.undo()
    pinned_probe(monkeypatch, None)
    write_csv(project / "inbox" / "b.csv", ["love it", "awful"])
    assert invoke("run", job, "-q").exit_code == 0
    write_csv(project / "inbox" / "a.csv", ["good", "bad", "fine", "the best"])
    write_csv(project / "inbox" / "c.csv", ["meh"])
    assert invoke("run", job, "-q", "--reprocess-changed").exit_code == 0
    again = invoke("rerun", project / "annotated", "--to", tmp_path / "again", "-q")
    assert again.exit_code == 0 and "4 of 4 parts byte-identical" in again.output, again.output
    assert {p["dtype"] for p in record(tmp_path / "again")["parts"]} == {"bfloat16"}


def test_the_history_says_what_each_night_did(project, monkeypatch):
    job = project / "jobs" / "nightly.yaml"
    pinned_probe(monkeypatch, False, project)
    write_csv(project / "inbox" / "a.csv", ["good", "bad", "fine"])
    write_csv(project / "inbox" / "b.csv", ["love it"])
    assert invoke("run", job, "-q").exit_code == 0
    write_csv(project / "inbox" / "a.csv", ["good", "bad", "fine", "new"])
    (project / "inbox" / "b.csv").unlink()
    assert invoke("run", job, "-q", "--reprocess-changed", "--drop-removed").exit_code == 0
    assert invoke("run", job, "-q").exit_code == 0
    runs = record(project / "annotated")["runs"]
    assert [(r["parts_added"], r["parts_removed"], r["rows"]) for r in runs] == [(3, 0, 4), (2, 3, 4), (0, 0, 0)]
    assert runs[1]["inputs"] == {"changed": ["../inbox/a.csv"], "dropped": ["../inbox/b.csv"]}
    lines = invoke("inspect", project / "annotated", "--history").output.splitlines()
    assert len(lines) == 3 and all(" complete" in line for line in lines)
    assert "2 parts added (4 rows), 3 removed; inputs: changed 1" in lines[1] and "dropped 1" in lines[1]


def test_readers_see_exactly_the_current_rows(project):
    """After --reprocess-changed and --drop-removed, pyarrow, pandas and datasets read the folder as
    exactly the current rows: no dropped or replaced part is left among them, no log read as data."""
    import pandas as pd
    from datasets import load_dataset

    job = project / "jobs" / "nightly.yaml"
    write_csv(project / "inbox" / "a.csv", ["good", "bad", "fine"])
    write_csv(project / "inbox" / "b.csv", ["love it", "awful"])
    write_csv(project / "inbox" / "c.csv", ["meh"])
    assert invoke("run", job, "-q").exit_code == 0
    write_csv(project / "inbox" / "a.csv", ["great"])
    (project / "inbox" / "c.csv").unlink()
    assert invoke("run", job, "-q", "--reprocess-changed", "--drop-removed").exit_code == 0
    out = project / "annotated"
    expected = ["a0", "b0", "b1"]
    assert ds.dataset(str(out), format="parquet").to_table().column("id").to_pylist() == expected
    assert pd.read_parquet(out)["id"].tolist() == expected
    assert load_dataset("parquet", data_dir=str(out), split="train")["id"] == expected
    assert sorted(p.name for p in out.glob("*.parquet")) == ["part-00000-00000.parquet", "part-00001-00000.parquet"]


def test_a_migrated_commit_log_reads_the_same_through_inspect_json(project, monkeypatch):
    """`inspect --json` prints the documented state (the same as batchnlp.inspect)."""
    pinned_probe(monkeypatch, False, project)
    write_csv(project / "inbox" / "a.csv", ["good", "bad", "fine"])
    assert invoke("run", project / "jobs" / "nightly.yaml", "-q").exit_code == 0
    printed = json.loads(invoke("inspect", project / "annotated", "--json").output)
    assert printed == json.loads(json.dumps(record(project / "annotated")))
    assert set(printed) == {"format", "version", "status", "started_at", "finished_at", "job", "fingerprint", "model",
                            "input", "libraries", "pinned", "planned", "units", "runs", "parts", "totals",
                            "migrated_from"}
    assert printed["format"] == 3 and [u["name"] for u in printed["units"]] == ["../inbox/a.csv"]
    assert pa.Table.from_pylist(printed["parts"]).num_rows == 2


def removed_at_the_second_part(monkeypatch, folder: Path) -> None:
    """`folder` deleted (shutil.rmtree) as the run writes its second part."""
    import batchnlp.work as work

    real = work.write_part
    calls = []

    def write_part(out, shard, *args, **kwargs):
        calls.append(shard.number)
        if len(calls) == 2:
            shutil.rmtree(folder)
        return real(out, shard, *args, **kwargs)

    monkeypatch.setattr(work, "write_part", write_part)


def test_an_output_removed_under_a_run_is_never_complete(project, monkeypatch):
    """The output folder deleted while a run writes: one line, exit 2, never `complete` (0.2 exited
    0 saying it wrote every part while most were gone)."""
    write_csv(project / "inbox" / "a.csv", ["good", "bad", "fine", "love it", "awful"])
    removed_at_the_second_part(monkeypatch, project / "annotated")
    result = invoke("run", project / "jobs" / "nightly.yaml", "-q")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "vanished while this run wrote it" in result.output and "not complete" in result.output
    monkeypatch.undo()
    assert invoke("run", project / "jobs" / "nightly.yaml", "-q").exit_code == 0
    assert read_output(project / "annotated").num_rows == 5


def test_a_part_removed_before_the_run_ends_keeps_it_from_complete(tmp_path):
    """The check before `complete`: a part this run recorded and no longer in the folder."""
    log = started_log(Folder(tmp_path))
    committer = Committer(log)
    (tmp_path / "part-00000-00000.parquet").write_bytes(b"x" * 100)
    committer.record(part(0, 0), 0)
    (tmp_path / "part-00000-00000.parquet").unlink()
    with pytest.raises(OutputConflictError, match="part-00000-00000.parquet and 0 more parts are gone"):
        with committer.recording():
            pass
    assert CommitLog.read(Folder(tmp_path)).state.status == "failed"


@pytest.mark.parametrize("garbage", [b"not a number", b"\xff\xfe 7"])
def test_a_garbled_checkpoint_pointer_is_passed_over(project, garbage, monkeypatch):
    """`_last_checkpoint` holding garbage made run, inspect and verify crash with a traceback. A
    checkpoint only saves replaying the commits: the state is read from them (a warning says so),
    and the next checkpoint is written over it."""
    job = project / "jobs" / "nightly.yaml"
    monkeypatch.setenv("BATCHNLP_CHECKPOINT_EVERY", "2")
    write_csv(project / "inbox" / "a.csv", ["good", "bad", "fine", "love it", "awful"])
    assert invoke("run", job, "-q").exit_code == 0
    out = project / "annotated"
    before = record(out)
    (out / POINTER).write_bytes(garbage)
    for command in (["inspect", out], ["inspect", out, "--json"], ["verify", out]):
        shown = invoke(*command)
        assert shown.exit_code == 0 and "Traceback" not in shown.output, shown.output
    assert record(out) == before
    write_csv(project / "inbox" / "b.csv", ["meh", "great"])
    result = invoke("run", job, "-q")
    assert result.exit_code == 0, result.output
    assert "not a checkpoint's number; the output's state is read from its commits" in result.output
    assert read_output(out).column("id").to_pylist() == ["a0", "a1", "a2", "a3", "a4", "b0", "b1"]
    assert invoke("verify", out).exit_code == 0
    assert int((out / POINTER).read_text().split()[0]) == record(out)["version"]  # a good one again


def test_a_damaged_checkpoint_is_passed_over_for_the_commits(project, monkeypatch):
    job = project / "jobs" / "nightly.yaml"
    write_csv(project / "inbox" / "a.csv", ["good", "bad", "fine", "love it", "awful"])
    monkeypatch.setenv("BATCHNLP_CHECKPOINT_EVERY", "2")
    assert invoke("run", job, "-q").exit_code == 0
    out = project / "annotated"
    before = record(out)
    version = int((out / POINTER).read_text().split()[0])
    (out / LOG_DIR / f"{version:020d}.checkpoint.json").write_text('{"format": 3, "version": ')
    assert record(out) == before and invoke("verify", out).exit_code == 0


def test_a_log_deleted_under_a_run_is_not_made_again(project, monkeypatch):
    """`rm -r` of the output while a run commits: the log folder goes first, the run's next commit
    must not make it again (it would hold commit N without 0..N-1: an orphan that the output's
    next run collides with, "another run committed"). The run stops in one line; once the folder
    is gone the next run starts afresh, every row once."""
    out = project / "annotated"
    write_csv(project / "inbox" / "a.csv", ["good", "bad", "fine", "love it", "awful"])
    removed_at_the_second_part(monkeypatch, out / ".batchnlp")  # rm -r, halfway: the log gone, parts not yet
    result = invoke("run", project / "jobs" / "nightly.yaml", "-q")
    assert result.exit_code == 2 and "vanished while this run wrote it" in result.output, result.output
    assert not (out / LOG_DIR).exists()
    monkeypatch.undo()
    shutil.rmtree(out)  # rm -r, finished
    assert invoke("run", project / "jobs" / "nightly.yaml", "-q").exit_code == 0
    assert read_output(out).column("id").to_pylist() == ["a0", "a1", "a2", "a3", "a4"]


def test_an_orphan_commit_left_by_a_deleted_output_does_not_block_the_next_run(project):
    """A folder holding only a stray commit (no first commit, no part): what an older batchnlp
    left when the output was deleted mid-run. The next run was refused as "another run
    committed"; it now clears the stray log and starts afresh."""
    out = project / "annotated"
    (out / LOG_DIR).mkdir(parents=True)
    (out / LOG_DIR / "00000000000000000003.json").write_text('{"format": 3, "version": 3, "actions": []}')
    write_csv(project / "inbox" / "a.csv", ["good", "bad", "fine", "love it", "awful"])
    result = invoke("run", project / "jobs" / "nightly.yaml", "-q")
    assert result.exit_code == 0, result.output
    assert read_output(out).column("id").to_pylist() == ["a0", "a1", "a2", "a3", "a4"]
    assert invoke("verify", out).exit_code == 0 and record(out)["runs"][0]["status"] == "complete"
