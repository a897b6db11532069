"""Object storage, against a real S3 server (moto's, over HTTP, started by the suite) reached
through the same client users use (s3fs): inputs read from a bucket, outputs written to one,
kill -9 and resume there, the lease, and one-line errors for a bucket that is not there."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pyarrow as pa
import pytest

from helpers import TEXTS, invoke, printed, read_output, write_job, record

pytestmark = pytest.mark.s3

TASK = {"name": "text-classification"}


def objects(s3, url: str) -> list[str]:
    s3.fs.invalidate_cache()
    return sorted(p.rsplit("/", 1)[-1] for p in s3.fs.find(url.replace("s3://", ""), maxdepth=1))


def local_reference(tmp_path, s3, corpus: str, fmt: str, classifier_dir) -> pa.Table:
    """The same job on a copy of the same files on local disk."""
    s3.fs.get(corpus, str(tmp_path / "local" / "corpus") + "/", recursive=True)
    job = write_job(tmp_path / "local", input={"path": str(tmp_path / "local" / "corpus"), "format": fmt,
                                               "text_column": "text"},
                    task=TASK, model={"path": str(classifier_dir)})
    assert invoke("run", job, "-q").exit_code == 0
    return read_output(tmp_path / "local" / "out")


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_an_input_in_a_bucket_is_annotated_as_the_same_files_on_disk(tmp_path, s3, fmt, classifier_dir):
    bucket = s3.bucket()
    s3.put_texts(bucket, f"corpus/a.{fmt}", fmt, TEXTS[:7])
    s3.put_texts(bucket, f"corpus/b.{fmt}", fmt, TEXTS[7:], prefix="s")
    s3.put_texts(bucket, "corpus/_ignored.parquet", "parquet", ["not this one"])
    job = write_job(tmp_path, input={"path": f"s3://{bucket}/corpus/", "format": fmt, "text_column": "text"},
                    task=TASK, model={"path": str(classifier_dir)})
    result = invoke("run", job, "-q")
    assert result.exit_code == 0, result.output
    out = read_output(tmp_path / "out")
    assert out.column("id").to_pylist() == [f"r{i}" for i in range(7)] + [f"s{i}" for i in range(len(TEXTS) - 7)]
    reference = local_reference(tmp_path, s3, f"{bucket}/corpus/", fmt, classifier_dir)
    assert reference.num_rows == len(TEXTS)
    assert out.column("label").to_pylist() == reference.column("label").to_pylist()
    assert out.column("score").to_pylist() == reference.column("score").to_pylist()
    manifest = record(tmp_path / "out")
    assert [u["name"] for u in manifest["units"]] == [f"s3://{bucket}/corpus/a.{fmt}", f"s3://{bucket}/corpus/b.{fmt}"]
    assert all(u["version"] for u in manifest["units"])  # the ETag, so a same-second rewrite is not missed


def test_an_output_in_a_bucket_runs_verifies_and_continues_night_after_night(tmp_path, s3, classifier_dir,
                                                                           monkeypatch):
    bucket = s3.bucket()
    s3.put_texts(bucket, "inbox/a.parquet", "parquet", TEXTS[:6])
    out = f"s3://{bucket}/annotated"
    job = write_job(tmp_path, input={"path": f"s3://{bucket}/inbox/*.parquet", "text_column": "text"}, task=TASK,
                    model={"path": str(classifier_dir)}, output={"path": out, "rows_per_shard": 4})
    assert invoke("validate", job).exit_code == 0
    assert not s3.fs.find(f"{bucket}/annotated")  # validate's test write left nothing behind
    first = invoke("run", job, "-q")
    assert first.exit_code == 0 and f"{out}: wrote 6 rows in 2 parts" in first.output, first.output
    assert objects(s3, out) == ["part-00000-00000.parquet", "part-00000-00001.parquet"]  # the log lies below
    assert s3.read_output(out).column("id").to_pylist() == [f"r{i}" for i in range(6)]
    assert "ok — 2 parts, 6 rows verified, 1 input file(s) unchanged" in invoke("verify", out).output
    assert "status:    complete" in invoke("inspect", out).output
    night1 = {p: s3.fs.info(f"{bucket}/annotated/{p}")["ETag"] for p in objects(s3, out) if p.startswith("part")}

    s3.put_texts(bucket, "inbox/b.parquet", "parquet", TEXTS[6:], prefix="s")
    second = invoke("run", job, "-q")
    assert second.exit_code == 0 and "wrote 6 rows in 2 parts" in second.output and "1 new input" in second.output
    for part, etag in night1.items():
        assert s3.fs.info(f"{bucket}/annotated/{part}")["ETag"] == etag  # night 1's parts untouched
    assert s3.read_output(out).num_rows == len(TEXTS)

    from batchnlp.model import load

    monkeypatch.setattr(load, "load_model", lambda *a, **k: pytest.fail("nothing new: no model may load"))
    third = invoke("run", job, "-q")
    assert third.exit_code == 0 and "already complete (4 parts)" in third.output
    monkeypatch.undo()

    s3.fs.rm_file(f"{bucket}/annotated/part-00001-00000.parquet")
    broken = invoke("verify", out)
    assert broken.exit_code == 2 and f"{out}/part-00001-00000.parquet: listed in the output's log but missing" in broken.output
    redo = invoke("run", job, "-q")
    assert redo.exit_code == 0 and "wrote 4 rows in 1 parts" in redo.output, redo.output
    assert invoke("verify", out).exit_code == 0

    # An object rewritten with other content is refused, naming it, then annotated again on request.
    s3.put_texts(bucket, "inbox/a.parquet", "parquet", TEXTS[:6][::-1], prefix="new")
    changed = invoke("run", job, "-q")
    assert changed.exit_code == 2 and f"s3://{bucket}/inbox/a.parquet changed since it was annotated" in changed.output
    assert invoke("run", job, "-q", "--reprocess-changed").exit_code == 0
    assert s3.read_output(out).column("id").to_pylist()[:6] == [f"new{i}" for i in range(6)]
    assert invoke("verify", out).exit_code == 0


def test_kill_9_mid_run_resumes_into_the_bucket_with_every_row_once(tmp_path, s3, classifier_dir, reviews_csv):
    bucket = s3.bucket()
    out = f"s3://{bucket}/out"
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text", "id_column": "id"}, task=TASK,
                    model={"path": str(classifier_dir)}, output={"path": out, "rows_per_shard": 3})
    command = [sys.executable, "-m", "batchnlp", "run", str(job), "-q"]
    killed = subprocess.run(command, env={**os.environ, "BATCHNLP_TEST_CRASH": "part-written:2"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    # The killed run's part 2 is in the bucket, but not in the log; its lease is still there.
    assert "part-00000-00002.parquet" in objects(s3, out) and ".batchnlp.lease" in objects(s3, out)
    manifest = record(out)
    assert [s["shard"] for s in manifest["parts"]] == [0, 1]
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "resumed after 2 committed parts" in resumed.stdout, resumed.stderr
    ids = s3.read_output(out).column("id").to_pylist()
    assert ids == [f"r{i}" for i in range(len(TEXTS))]  # no row twice, none missing, in order
    assert ".batchnlp.lease" not in objects(s3, out)  # released at the end
    assert invoke("verify", out).exit_code == 0


def write_lease(s3, bucket: str, prefix: str, host: str, expires_in: float) -> None:
    s3.fs.pipe_file(f"{bucket}/{prefix}/.batchnlp.lease", json.dumps(
        {"owner": "x", "host": host, "pid": 4242, "renewed_at": time.time(), "expires_at": time.time() + expires_in}
    ).encode())


def test_a_live_lease_refuses_the_run_and_an_expired_one_is_taken_over(tmp_path, s3, classifier_dir, reviews_csv):
    bucket = s3.bucket()
    out = f"s3://{bucket}/out"
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"}, task=TASK,
                    model={"path": str(classifier_dir)}, output={"path": out, "rows_per_shard": 6})
    write_lease(s3, bucket, "out", "worker-7", expires_in=90)
    refused = invoke("run", job, "-q")
    assert refused.exit_code == 75 and refused.output.count("\n") == 1, refused.output  # busy: try later
    assert "in use by a running job (pid 4242 on worker-7; its lease expires in" in refused.output
    assert objects(s3, out) == [".batchnlp.lease"]  # nothing written
    write_lease(s3, bucket, "out", "worker-7", expires_in=-1)  # its holder stopped renewing it
    taken = invoke("run", job, "-q")
    assert taken.exit_code == 0 and "wrote 12 rows in 2 parts" in taken.output, taken.output
    assert ".batchnlp.lease" not in objects(s3, out)


def test_two_runs_taking_the_lease_together_get_it_once(s3):
    """The conditional write (If-None-Match / If-Match), not a check-then-write, decides."""
    from batchnlp.errors import OutputConflictError
    from batchnlp.write.folder import Folder
    from batchnlp.write.lock import hold

    bucket = s3.bucket()
    first, second = hold(Folder(f"s3://{bucket}/out")), hold(Folder(f"s3://{bucket}/out"))
    with first:
        with pytest.raises(OutputConflictError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
            second.__enter__()
        # A stale lease two runs both saw: only the first conditional replace wins.
        stale_etag = first.etag
        first.etag = first._put(if_match=stale_etag)
        with pytest.raises(FileExistsError):
            second._put(if_match=stale_etag)
    assert not s3.fs.exists(f"{bucket}/out/.batchnlp.lease")


def test_a_missing_bucket_is_one_line_before_the_model_loads(tmp_path, s3, classifier_dir, reviews_csv, monkeypatch):
    from batchnlp.model import load

    monkeypatch.setattr(load, "load_model", lambda *a, **k: pytest.fail("the model must not load"))
    for output, input_path in [("s3://no-such-bucket/out", str(reviews_csv)),
                               (str(tmp_path / "out"), "s3://no-such-bucket/corpus/*.csv")]:
        job = write_job(tmp_path, input={"path": input_path, "text_column": "text"}, task=TASK,
                        model={"path": str(classifier_dir)}, output={"path": output})
        for command in ("validate", "run"):
            result = invoke(command, job)
            own = printed(result.output)  # (a stderr that is no terminal gets the run's start as a log line)
            assert result.exit_code == 2 and own.count("\n") == 1, result.output
            assert own.startswith("error: ") and "no-such-bucket" in own
            assert "does not exist" in own, result.output
    assert not (tmp_path / "out").exists()


def test_a_refused_endpoint_is_one_line(tmp_path, classifier_dir, reviews_csv, s3):
    """storage_options reach fsspec (here: a port nothing listens on) and stay out of the manifest."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free once closed: nothing answers there
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "config_kwargs": {"retries": {"max_attempts": 1}}}
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"}, task=TASK,
                    model={"path": str(classifier_dir)}, output={"path": "s3://bucket/out", "storage_options": options})
    result = invoke("validate", job)
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "s3://bucket/out: " in result.output and "endpoint" in result.output


def test_storage_options_are_used_and_never_recorded(tmp_path, s3, classifier_dir, reviews_csv, monkeypatch):
    bucket = s3.bucket()
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)  # only the job's options can reach the server now
    s3.put_texts(bucket, "in/a.jsonl", "jsonl")
    secret = "testing"
    options = {"endpoint_url": s3.endpoint, "key": "testing", "secret": secret}
    job = write_job(tmp_path, input={"path": f"s3://{bucket}/in/a.jsonl", "text_column": "text",
                                     "storage_options": options},
                    task=TASK, model={"path": str(classifier_dir)},
                    output={"path": f"s3://{bucket}/out", "storage_options": options})
    result = invoke("run", job, "-q")
    assert result.exit_code == 0, result.output
    log = "".join(s3.fs.cat_file(p).decode() for p in s3.fs.find(f"{bucket}/out/.batchnlp"))
    assert "version" in log and s3.endpoint not in log and '"secret"' not in log
    first = json.loads(s3.fs.cat_file(f"{bucket}/out/.batchnlp/log/00000000000000000000.json"))
    assert first["actions"][0]["metadata"]["job"]["text"] is None


def test_object_store_urls_are_checked_in_the_spec(tmp_path, classifier_dir, reviews_csv):
    cases = [({"path": "ftp://host/corpus.csv"}, None, "unsupported URL scheme ftp://"),
             ({"path": str(reviews_csv)}, "hf://datasets/me/out", "hf:// can be read, not written"),
             ({"path": "s3://b/corpus/*.csv"}, "s3://b/corpus/out", "is inside the input")]
    for input_part, output, message in cases:
        job = write_job(tmp_path, input={**input_part, "text_column": "text"}, task=TASK,
                        model={"path": str(classifier_dir)},
                        output={"path": output or str(tmp_path / "out")})
        result = invoke("validate", job)
        assert result.exit_code == 2 and message in result.output, result.output


def test_a_run_whose_lease_was_taken_over_stops_at_its_next_write(s3):
    from batchnlp.errors import OutputConflictError
    from batchnlp.write.folder import Folder
    from batchnlp.write.lock import hold

    bucket = s3.bucket()
    folder = Folder(f"s3://{bucket}/out")
    with hold(folder) as lease:
        folder.write_bytes("a", b"1")  # while the lease is ours, writes go through
        write_lease(s3, bucket, "out", "worker-7", expires_in=90)  # another run took it as expired
        lease.renew()
        with pytest.raises(OutputConflictError, match="another run took over this output"):
            folder.write_bytes("b", b"2")
    assert objects(s3, f"s3://{bucket}/out") == [".batchnlp.lease", "a"]  # theirs is left alone


def test_rerun_from_a_bucket_into_a_bucket_is_byte_identical(tmp_path, s3, classifier_dir, reviews_csv):
    bucket = s3.bucket()
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"}, task=TASK,
                    model={"path": str(classifier_dir)}, output={"path": f"s3://{bucket}/out", "rows_per_shard": 5})
    assert invoke("run", job, "-q").exit_code == 0
    result = invoke("rerun", f"s3://{bucket}/out", "--to", f"s3://{bucket}/again", "-q")
    assert result.exit_code == 0 and "3 of 3 parts byte-identical" in result.output, result.output
    taken = invoke("rerun", f"s3://{bucket}/out", "--to", f"s3://{bucket}/again", "-q")
    assert taken.exit_code == 2 and "is not empty" in taken.output


def test_refused_credentials_are_one_line_before_the_model_loads(tmp_path, s3, classifier_dir, reviews_csv,
                                                                 monkeypatch):
    """The server checks signatures now (moto with authentication on): the test's keys are unknown
    to it, as a wrong or expired key would be to S3."""
    import moto.settings

    from batchnlp.model import load

    bucket = s3.bucket()
    monkeypatch.setattr(load, "load_model", lambda *a, **k: pytest.fail("the model must not load"))
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    for output, input_path in [(f"s3://{bucket}/out", str(reviews_csv)),
                               (str(tmp_path / "out"), f"s3://{bucket}/corpus/*.csv")]:
        job = write_job(tmp_path, input={"path": input_path, "text_column": "text"}, task=TASK,
                        model={"path": str(classifier_dir)}, output={"path": output})
        for command in ("validate", "run"):
            result = invoke(command, job)
            assert result.exit_code == 2 and printed(result.output).count("\n") == 1, result.output
            assert "access was refused: check the credentials" in printed(result.output), result.output


def test_a_competing_writer_of_the_log_in_a_bucket_loses_at_its_next_commit(s3):
    """In a bucket a commit is a PUT with If-None-Match: *: of two writers of one commit number
    exactly one wins, even past a lost lease (planted bug: a plain PUT lets both 'win')."""
    from batchnlp.errors import OutputConflictError
    from batchnlp.write.actions import Add, RunStarted
    from batchnlp.write.commits import CommitLog
    from batchnlp.write.folder import Folder
    from batchnlp.write.state import OutputState

    bucket = s3.bucket()
    first = CommitLog(Folder(f"s3://{bucket}/out"), OutputState())
    first.stage(RunStarted("t0", "local", 1, "host"))
    first.commit()
    second = CommitLog.read(Folder(f"s3://{bucket}/out"))
    part = {"unit": 0, "shard": 0, "rows": 1, "bytes": 1, "sha256": "0" * 64, "run": 1, "input": "a", "start": 0}
    first.commit(Add(part))
    with pytest.raises(OutputConflictError, match=r"another run committed to this output while this one ran"):
        second.commit(Add({**part, "shard": 1}))
    assert list(CommitLog.read(Folder(f"s3://{bucket}/out")).state.parts) == [(0, 0)]
