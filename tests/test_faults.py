"""Unattended runs under faults, through the CLI: a store that stalls, refuses, resets, answers
503 or loses an answer (a fault proxy in front of the test S3 server), a stall of the run itself,
a full staging folder, and what a cluster run must refuse. Each case checks the exit status, that
the terminal gets one line, and that the next run resumes to the output a clean run writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from fault_proxy import FaultProxy
from helpers import TEXTS, invoke, read_output, record, write_job

pytestmark = pytest.mark.s3

TASK = {"name": "text-classification"}


@pytest.fixture
def proxy(s3):
    proxy = FaultProxy(s3.endpoint)
    yield proxy
    proxy.stop()


def bucket_job(tmp_path, s3, proxy, classifier_dir, reviews_csv, read_timeout=2, **runtime):
    """A job whose output lies in a bucket reached through the proxy."""
    bucket = s3.bucket()
    options = {"endpoint_url": proxy.endpoint, "config_kwargs": {"read_timeout": read_timeout, "connect_timeout": 2}}
    out = f"s3://{bucket}/out"
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text", "id_column": "id"}, task=TASK,
                    model={"path": str(classifier_dir)},
                    output={"path": out, "rows_per_shard": 3, "storage_options": options}, runtime=runtime)
    return job, out


@pytest.fixture
def reference(tmp_path, classifier_dir, reviews_csv):
    """The same job, run on a local output with nothing in the way."""
    (tmp_path / "ref").mkdir()
    job = write_job(tmp_path / "ref", input={"path": str(reviews_csv), "text_column": "text", "id_column": "id"},
                    task=TASK, model={"path": str(classifier_dir)},
                    output={"path": str(tmp_path / "ref" / "out"), "rows_per_shard": 3})
    assert invoke("run", job, "-q").exit_code == 0
    return read_output(tmp_path / "ref" / "out").select(["id", "label", "score"])


def cli(*args, env=None, timeout=240):
    """The CLI as a scheduler starts it: its own process, signals and exit status included."""
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "batchnlp", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    done.seconds = time.monotonic() - began
    return done


def events(log):
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.parametrize("mode", ["down", "reset", "error"])  # (refuse: benchmarks/fault_cases.py)
def test_a_short_outage_mid_run_is_ridden_out(tmp_path, s3, proxy, classifier_dir, reviews_csv, reference, mode):
    """The store goes away (unreachable: connections refused; or it closes or resets them, or
    answers 503) for 4 s from the upload of part 1: every request in that time fails; the run
    waits with backoff, logs each retry with its wait, and finishes."""
    job, out = bucket_job(tmp_path, s3, proxy, classifier_dir, reviews_csv, retry_seconds=60)
    proxy.add(mode, method="PUT", path="part-00000-00001", seconds=4)
    log = tmp_path / "run.log"
    result = invoke("run", job, "-q", "--log-format", "json", "--log-file", log)
    assert result.exit_code == 0, result.output
    assert proxy.seen(mode) >= (1 if mode == "down" else 2)  # the fault really hit
    retried = [e for e in events(log) if e["event"] == "retried" and "wait_s" in e]
    if mode == "down":
        assert any("EndpointConnectionError" in e["error"] for e in retried)
    assert len(retried) >= 2 and all(e["level"] == "WARNING" and e["wait_s"] >= 0 for e in retried)
    assert "part-00000-00001" in retried[0]["what"]
    assert any(e["event"] == "retried" and "answers again" in e["message"] for e in events(log))
    assert s3.read_output(out).select(["id", "label", "score"]).equals(reference)
    assert invoke("verify", out).exit_code == 0


def test_a_store_that_never_answers_ends_the_run_within_the_retry_budget(tmp_path, s3, proxy, classifier_dir,
                                                                        reviews_csv, reference):
    """Accepts the connection, reads the request, never answers: each request times out (read
    timeout), is retried until runtime.retry_seconds, then one line and exit 2; the next run resumes."""
    job, out = bucket_job(tmp_path, s3, proxy, classifier_dir, reviews_csv, read_timeout=1, retry_seconds=4)
    proxy.add("stall", method="PUT", path="part-00000-00001", seconds=600, everything=False)
    log = tmp_path / "run.log"
    done = cli("run", job, "-q", "--log-file", log)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "part-00000-00001.parquet (put_object)" in lines[0]
    assert "the store kept failing for" in lines[0] and "ReadTimeoutError" in lines[0]
    assert "gave up after runtime.retry_seconds (4 s)" in lines[0]
    assert done.seconds < 60
    assert "failed after" in log.read_text() and record(out)["runs"][-1]["status"] == "failed"
    proxy.clear()
    again = invoke("run", job, "-q")
    assert again.exit_code == 0 and "resumed after 1 committed parts" in again.output, again.output
    assert s3.read_output(out).select(["id", "label", "score"]).equals(reference)


def test_a_store_that_takes_requests_and_never_answers_is_ended_by_its_budget_not_the_watchdog(
        tmp_path, s3, proxy, classifier_dir, reviews_csv):
    """Every request hangs (read timeout 30 s, the default; budget 3 s): the client's own timeouts
    and retries, then the run's last requests (its end in the log, the lease), each spent its full
    timeouts, and the run went past the watchdog (370 s with a budget of 30). Now no try outlives
    the budget and, once it is spent, the last requests get a few seconds: one line naming the
    budget, well before the watchdog's 120 s."""
    job, out = bucket_job(tmp_path, s3, proxy, classifier_dir, reviews_csv, read_timeout=30, retry_seconds=3,
                          stall_seconds=120)
    proxy.add("stall", method="PUT", path="part-00000-00001", seconds=600, everything=True)
    done = cli("run", job, "-q")
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "part-00000-00001.parquet (put_object)" in lines[0], done.stderr
    assert "gave up after runtime.retry_seconds (3 s)" in lines[0] and "no progress" not in lines[0]
    assert done.seconds < 60, done.seconds


def test_a_stalled_run_is_stopped_by_the_watchdog(tmp_path, s3, proxy, classifier_dir, reviews_csv, reference):
    """A call that would wait longer than runtime.stall_seconds (here a read timeout of 60 s on a
    store that never answers): the watchdog stops the run as failed, with one line naming what it
    waited for; the JSON log ends with the error; the next run resumes."""
    job, out = bucket_job(tmp_path, s3, proxy, classifier_dir, reviews_csv, read_timeout=60, stall_seconds=3)
    proxy.add("stall", method="PUT", path="part-00000-00002", seconds=600, everything=False)
    log = tmp_path / "run.log"
    done = cli("run", job, "-q", "--log-format", "json", "--log-file", log)
    assert done.returncode == 2, done.stderr
    assert [json.loads(line)["event"] for line in done.stderr.splitlines()] == ["error"]  # JSON to its last line
    last = events(log)[-1]
    assert (last["level"], last["event"], last["exit_code"]) == ("ERROR", "error", 2)
    assert "no progress for 3 s (runtime.stall_seconds)" in last["message"]
    failed = [e for e in events(log) if e["event"] == "failed"]
    assert len(failed) == 1 and failed[0]["exit_code"] == 2 and failed[0]["rows"] == 6
    assert done.seconds < 60
    assert record(out)["runs"][-1]["status"] == "failed"
    proxy.clear()
    again = invoke("run", job, "-q")
    assert again.exit_code == 0, again.output
    assert s3.read_output(out).select(["id", "label", "score"]).equals(reference)


def test_a_lost_answer_to_a_conditional_write_is_recognised_not_committed_twice(tmp_path, s3, proxy, classifier_dir,
                                                                                reviews_csv, reference):
    """The store applies a commit (or the lease) but the answer is lost: the retry finds the object
    there (412) and reads it back: its own bytes, so the run goes on; the log has each commit once.
    (A run that took the 412 for a competitor would stop with 'another run committed'.)"""
    job, out = bucket_job(tmp_path, s3, proxy, classifier_dir, reviews_csv)
    proxy.add("drop-answer", method="PUT", path="/out/.batchnlp.lease")
    proxy.add("drop-answer", method="PUT", path="/out/.batchnlp/log/00000000000000000002.json")
    result = invoke("run", job, "-q")
    assert result.exit_code == 0, result.output
    assert proxy.seen("drop-answer") == 2
    state = record(out)
    assert [p["shard"] for p in state["parts"]] == [0, 1, 2, 3] and state["status"] == "complete"
    bucket = out.split("/")[2]
    commits = sorted(p.rsplit("/", 1)[-1] for p in s3.fs.find(f"{bucket}/out/.batchnlp/log/") if p.endswith(".json")
                     and "checkpoint" not in p)
    assert commits == [f"{i:020d}.json" for i in range(len(commits))]
    assert s3.read_output(out).select(["id", "label", "score"]).equals(reference)


def test_an_outage_longer_than_the_budget_is_one_line_and_the_next_run_resumes(tmp_path, s3, proxy, classifier_dir,
                                                                              reviews_csv, reference):
    job, out = bucket_job(tmp_path, s3, proxy, classifier_dir, reviews_csv, retry_seconds=3)
    proxy.add("refuse", method="PUT", path="part-00000-00002", seconds=600)  # from part 2's upload on: nothing

    done = cli("run", job, "-q")
    errors = [line for line in done.stderr.splitlines() if " WARNING " not in line]  # (the retries, logged)
    assert done.returncode == 2 and len(errors) == 1 and errors[0].startswith("error: "), done.stderr
    assert "the store kept failing for 3 s" in done.stderr and "run the job again to resume" in done.stderr
    assert record(out)["runs"][-1]["status"] == "running"  # nothing could record its end: the next run will
    proxy.clear()
    again = invoke("run", job, "-q")
    assert again.exit_code == 0 and "resumed after 2 committed parts" in again.output, again.output
    assert [run["status"] for run in record(out)["runs"]] == ["killed", "complete"]
    assert s3.read_output(out).select(["id", "label", "score"]).equals(reference)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_a_full_staging_folder_is_one_line_and_leaves_nothing(tmp_path, s3, classifier_dir):
    """TMPDIR (where a part is staged before its upload) on a 64 KiB tmpfs that a file fills but
    for one page (Python's tempfile takes a folder it can write a byte to), in a mount namespace
    of the test's own; each part is larger than that page."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("user and mount namespaces are not allowed here")
    bucket = s3.bucket()
    corpus = tmp_path / "corpus.csv"
    corpus.write_text("id,text\n" + "".join(f'r{i},"{TEXTS[i % len(TEXTS)]} number {i}"\n' for i in range(400)))
    job = write_job(tmp_path, input={"path": str(corpus), "text_column": "text"}, task=TASK,
                    model={"path": str(classifier_dir)}, output={"path": f"s3://{bucket}/out", "rows_per_shard": 200})
    staging = tmp_path / "staging"
    staging.mkdir()
    script = (f"mount -t tmpfs -o size=64k tmpfs {staging} && (head -c 61440 /dev/zero > {staging}/filler; "
              f"TMPDIR={staging} {sys.executable} -m batchnlp run {job} -q; echo \"exit $?\"; ls -A {staging})")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=240)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no space left on the device" in lines[0], done.stderr
    assert "the staging folder for uploads" in lines[0] and "(TMPDIR) is full" in lines[0]
    assert done.stdout.split() == ["exit", "2", "filler"]  # nothing else left in the staging folder
    assert not s3.fs.find(f"{bucket}/out/part-00000-00000.parquet")


def test_ray_client_addresses_and_unshared_local_paths_are_refused_at_once(tmp_path, classifier_dir, reviews_csv):
    """On an existing cluster a local output would be written to each node's own disk: refused
    before anything runs, as is ray:// (Ray Client cannot run Ray Data's executor)."""
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"}, task=TASK,
                    model={"path": str(classifier_dir)})
    client = invoke("run", job, "-q", "--engine", "ray", "--address", "ray://head:10001")
    assert client.exit_code == 2 and client.output.count("\n") == 1 and "GCS address" in client.output
    local = invoke("run", job, "-q", "--engine", "ray", "--address", "10.0.0.1:6379")
    assert local.exit_code == 2 and local.output.count("\n") == 1, local.output
    assert "input.path: " in local.output and "runtime.shared_storage: true" in local.output
    in_spec = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"}, task=TASK,
                        model={"path": str(classifier_dir)}, runtime={"engine": "ray", "ray_address": "ray://h:1"},
                        name="client.yaml")
    assert "runtime.ray_address: ray:// (Ray Client)" in invoke("validate", in_spec).output
    remote = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"}, task=TASK,
                       model={"path": str(classifier_dir)}, runtime={"engine": "ray", "ray_address": "10.0.0.1:6379"},
                       name="remote.yaml")
    refused = invoke("validate", remote)
    assert refused.exit_code == 2 and "input.path: " in refused.output and "is a local path" in refused.output
    assert not (tmp_path / "out").exists()


def test_a_part_is_recorded_only_where_the_committer_sees_it(tmp_path):
    """A part reported written (by an actor on another node) but not in the output as the driver
    sees it is never counted."""
    from batchnlp.errors import RunFailed
    from batchnlp.write.commits import CommitLog
    from batchnlp.write.actions import RunStarted
    from batchnlp.write.committer import Committer
    from batchnlp.write.folder import Folder
    from batchnlp.write.state import OutputState

    folder = Folder(tmp_path / "out")
    folder.create()
    log = CommitLog(folder, OutputState())
    log.stage(RunStarted("t0", "ray", 1, "host"))
    log.commit()
    committer = Committer(log)
    stats = {"unit": 0, "shard": 0, "rows": 3, "bytes": 10, "sha256": "0" * 64, "input": "a.csv", "start": 0,
             "host": "node-2"}
    with pytest.raises(RunFailed, match=r"part-00000-00000.parquet was written on node-2 but is not there"):
        committer.record(stats, 0)
    (tmp_path / "out" / "part-00000-00000.parquet").write_bytes(b"0123456789")
    committer.record(stats, 0)
    assert list(CommitLog.read(folder).state.parts) == [(0, 0)]


def test_the_watchdog_beats_while_a_batch_computes_and_stops_a_wait_that_never_ends(monkeypatch):
    """A long batch (the process computing) is progress, with heartbeats; a wait on nothing is a
    stall, raised in the main thread where it waits."""
    import logging
    import threading

    from batchnlp import watchdog

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("batchnlp")
    monkeypatch.setattr(logger, "handlers", [handler])
    monkeypatch.setattr(logger, "level", logging.INFO)
    # A logger caches its isEnabledFor answers; setting .level does not clear them (setLevel does),
    # and an earlier `run -q` in this process leaves INFO cached as off.
    monkeypatch.setattr(logger, "_cache", {})

    with watchdog.watching(stall_seconds=0.6, heartbeat_seconds=0.2, file_only=False) as dog:
        with watchdog.doing("annotating part-00000-00000.parquet"):
            end = time.monotonic() + 1.5  # a batch that computes for 2.5 stall periods
            while time.monotonic() < end:
                sum(i * i for i in range(1000))
        assert dog.message is None
    beats = [r for r in records if getattr(r, "event", None) == "heartbeat"]
    assert len(beats) >= 3 and "still annotating part-00000-00000.parquet" in beats[0].getMessage()
    never = threading.Event()
    with pytest.raises(watchdog.Stalled, match=r"no progress for 1 s .* while waiting for the store"):
        with watchdog.watching(stall_seconds=0.6, heartbeat_seconds=10, file_only=False):
            with watchdog.doing("waiting for the store"):
                never.wait(30)
