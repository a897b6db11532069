"""The Ray engine on a local cluster (one per test session): same output as the local engine,
resume after a failure, and a clear error instead of a hang for GPUs the cluster lacks."""

from __future__ import annotations

import re

import numpy as np
import pytest

from batchnlp.errors import BatchNLPError, SpecError
from batchnlp.faults import Faults
from helpers import run
from batchnlp.spec import load_spec

from helpers import TEXTS, read_output, write_job, record

ray = pytest.importorskip("ray", reason="needs the ray extra: pip install -e '.[ray]'")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def cluster():
    from batchnlp.engines import ray_cluster

    ray_cluster.init(None, quiet=True)
    yield
    ray.shutdown()


def both_engines(tmp_path, model_dir, reviews_csv, task):
    outputs = []
    for engine in ("local", "ray"):
        directory = tmp_path / engine
        directory.mkdir()
        job = write_job(directory, input={"path": str(reviews_csv), "text_column": "text", "id_column": "id"},
                        task=task, model={"path": str(model_dir)})
        run(load_spec(job), quiet=True, engine=engine)
        outputs.append(read_output(directory / "out"))
    return outputs


def test_classification_equals_the_local_engine(tmp_path, classifier_dir, reviews_csv):
    local, on_ray = both_engines(tmp_path, classifier_dir, reviews_csv, {"name": "text-classification",
                                                                        "top_k": "all"})
    assert on_ray.column("id").to_pylist() == local.column("id").to_pylist() == [f"r{i}" for i in range(len(TEXTS))]
    assert on_ray.column("label").to_pylist() == local.column("label").to_pylist()
    np.testing.assert_allclose(on_ray.column("score").to_numpy(), local.column("score").to_numpy(), atol=1e-5)
    assert on_ray.schema == local.schema
    manifest = record(tmp_path / "ray" / "out")
    run_info = manifest["runs"][0]
    assert run_info["engine"] == "ray" and run_info["ray_version"] == ray.__version__ and run_info["actors"] >= 1
    # The same fields as a local run's entry (issue 16: a Ray entry had no device or dtype).
    local_info = record(tmp_path / "local" / "out")["runs"][0]
    for key in ("device", "dtype", "precision", "precision_probe", "probe_seconds", "batch_tokens", "max_batch_size",
                "rows", "seconds", "status", "parts_added"):
        assert key in run_info and key in local_info, key
    assert (run_info["device"], run_info["dtype"]) == (local_info["device"], local_info["dtype"]) == ("cpu", "float32")
    assert {(p["device"], p["dtype"]) for p in manifest["parts"]} == {("cpu", "float32")}
    assert manifest["status"] == "complete" and [s["shard"] for s in manifest["parts"]] == [0, 1, 2]
    assert all(len(s["sha256"]) == 64 for s in manifest["parts"])


def test_the_local_clusters_workers_run_at_the_drivers_priority():
    """Ray starts workers at nice 15: on a machine other work keeps busy, the actors of a local
    cluster got ~3% of a core each (a model load took minutes) while the local engine got its
    share. The cluster batchnlp starts runs them at the driver's own priority."""
    @ray.remote
    def niceness() -> int:
        import os

        return os.nice(0)

    import os

    assert ray.get(niceness.remote()) == os.nice(0)


def test_the_drivers_probe_records_its_load_apart(monkeypatch):
    """dtype auto on a CPU with bfloat16: the driver loads the model once to probe; the entry keeps
    that load apart from the probe's own seconds, as a local run's does (it once counted both as
    the probe's)."""
    from types import SimpleNamespace

    from batchnlp.engines import ray as ray_engine
    from batchnlp.model import device

    monkeypatch.setattr(device, "choose", lambda runtime: SimpleNamespace(needs_probe=True, name="bfloat16"))
    session = SimpleNamespace(stages=SimpleNamespace(placement=SimpleNamespace(name="float32")),
                              probe={"refused": "slower than float32"}, probe_seconds=0.7, load_seconds=2.5)
    monkeypatch.setattr(ray_engine, "open_session", lambda job, done: session)
    job = SimpleNamespace(spec=SimpleNamespace(runtime=None))
    assert ray_engine.settle_precision(job, set(), None, on_gpus=False) == (
        "float32", session.probe, {"probe_seconds": 0.7, "probe_load_seconds": 2.5})
    assert ray_engine.settle_precision(job, set(), "float32", on_gpus=False)[2]["probe_seconds"] == 0


def test_generation_equals_the_local_engine(tmp_path, causal_dir, reviews_csv):
    local, on_ray = both_engines(tmp_path, causal_dir, reviews_csv, {"name": "text-generation", "max_new_tokens": 6})
    assert on_ray.column("generated_text").to_pylist() == local.column("generated_text").to_pylist()


def test_a_failed_ray_run_resumes_with_every_row_once(tmp_path, classifier_dir, reviews_csv, monkeypatch):
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text", "id_column": "id"},
                    task={"name": "text-classification"}, model={"path": str(classifier_dir)},
                    output={"path": str(tmp_path / "out"), "rows_per_shard": 2})
    with pytest.raises(BatchNLPError, match=r"the Ray job failed and was stopped: .*injected failure on shard \(0, 3\)"):
        run(load_spec(job), quiet=True, engine="ray", faults=Faults(fail_shard="0-3"))
    manifest = record(tmp_path / "out")
    assert manifest["status"] == "failed" and 3 not in [s["shard"] for s in manifest["parts"]]
    error = manifest["runs"][-1]["error"]  # the record gets the one clean line the terminal gets
    assert error.startswith("RunFailed: the Ray job failed and was stopped: RuntimeError: injected failure")
    assert "\n" not in error and "\x1b" not in error
    result = run(load_spec(job), quiet=True, engine="ray")
    assert result.resumed_from == len(manifest["parts"])
    table = read_output(tmp_path / "out")
    assert sorted(table.column("id").to_pylist()) == sorted(f"r{i}" for i in range(len(TEXTS)))
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(len(TEXTS))]  # parts in input order


def test_cuda_on_a_cluster_without_gpus_is_a_clear_error(tmp_path, classifier_dir, reviews_csv):
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "text-classification"}, model={"path": str(classifier_dir)},
                    runtime={"device": "cuda"})
    with pytest.raises(SpecError, match="runtime.device: cuda asked for, but the Ray cluster has no GPUs"):
        run(load_spec(job), quiet=True, engine="ray")


def test_a_failed_actor_is_one_line_on_the_command_line(tmp_path, classifier_dir, reviews_csv, monkeypatch):
    from helpers import invoke

    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "text-classification"}, model={"path": str(classifier_dir)})
    monkeypatch.setenv("BATCHNLP_TEST_FAIL_SHARD", "0-1")
    result = invoke("run", job, "--engine", "ray", "-q")
    assert result.exit_code == 1
    # Ray's own lines aside: its C++ log ("[...]") and its processes' ("(raylet) ...", "(pid=...)",
    # coloured): the raylet may say that the other actor died, when the stop reaches it mid-task.
    plain = (re.sub(r"\x1b\[[0-9;]*m", "", line) for line in result.output.splitlines())
    errors = [line for line in plain if not line.startswith(("[", "(raylet)", "(pid=", "(Actor", "(_"))]
    assert errors == ["error: the Ray job failed and was stopped: RuntimeError: injected failure on shard (0, 1); "
                      "the parts written so far are kept, and rerunning the job resumes after them"]


def test_input_and_output_in_a_bucket_need_no_shared_file_system(tmp_path, s3, classifier_dir):
    """Actors read their shard from the bucket and upload their part there; the endpoint reaches
    them through the job's storage_options (a cluster's nodes share no environment with the driver)."""
    bucket = s3.bucket()
    for name, texts in (("a", TEXTS[:7]), ("b", TEXTS[7:])):
        s3.put_texts(bucket, f"in/{name}.parquet", "parquet", texts, prefix=name)
    outputs = {}
    for engine in ("local", "ray"):
        out = f"s3://{bucket}/{engine}"
        job = write_job(tmp_path, input={"path": f"s3://{bucket}/in/*.parquet", "text_column": "text",
                                         "storage_options": s3.options()},
                        task={"name": "text-classification"}, model={"path": str(classifier_dir)},
                        output={"path": out, "rows_per_shard": 3, "storage_options": s3.options()})
        result = run(load_spec(job), quiet=True, engine=engine)
        assert result.shards_written == 5 and result.output == out
        outputs[engine] = s3.read_output(out)
        manifest = record(out)
        assert manifest["runs"][0]["engine"] == engine and manifest["status"] == "complete"
    assert outputs["ray"].column("id").to_pylist() == outputs["local"].column("id").to_pylist()
    assert outputs["ray"].column("label").to_pylist() == outputs["local"].column("label").to_pylist()


def test_a_growing_export_by_id_into_a_bucket_on_both_engines(tmp_path, s3, classifier_dir):
    """input.incremental: ids with the output in a bucket: its id indexes and selections live under
    .batchnlp/ids/, which the upload staged without its sub-folder (a traceback on the first
    night, on both engines). Two nights, each engine: every id once, in order."""
    import batchnlp

    bucket = s3.bucket()
    for engine in ("local", "ray"):
        out = f"s3://{bucket}/{engine}"
        s3.put_texts(bucket, f"{engine}-in/export.parquet", "parquet", TEXTS[:5])
        job = write_job(tmp_path, input={"path": f"s3://{bucket}/{engine}-in/*.parquet", "text_column": "text",
                                         "id_column": "id", "incremental": "ids", "storage_options": s3.options()},
                        task={"name": "text-classification"}, model={"path": str(classifier_dir)},
                        output={"path": out, "rows_per_shard": 2, "storage_options": s3.options()})
        assert run(load_spec(job), quiet=True, engine=engine).rows_written == 5
        s3.put_texts(bucket, f"{engine}-in/export.parquet", "parquet", TEXTS[:9])  # night 2: grown
        assert run(load_spec(job), quiet=True, engine=engine).rows_written == 4
        assert s3.read_output(out).column("id").to_pylist() == [f"r{i}" for i in range(9)]
        assert batchnlp.verify(out) == []


def test_a_killed_driver_takes_its_cluster_along_and_q_is_quiet(tmp_path, classifier_dir, reviews_csv):
    """kill -9 of the driver: the local cluster it started (GCS, raylet, agents, workers) is gone
    within seconds, not the minute Ray's agents take on their own. Then a -q rerun prints its one
    line and nothing else (no line of Ray's C++ core on stderr)."""
    import os
    import subprocess
    import sys
    import time
    import uuid

    from helpers import gone

    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "text-classification"}, model={"path": str(classifier_dir)},
                    output={"path": str(tmp_path / "out"), "rows_per_shard": 4})
    command = [sys.executable, "-m", "batchnlp", "run", str(job), "--engine", "ray", "-q"]
    mark = uuid.uuid4().hex
    env = {**os.environ, "BATCHNLP_TEST_CRASH": "shard-recorded:0", "BATCHNLP_TEST_MARK": mark}
    killed = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    assert killed.returncode == -9
    deadline = time.monotonic() + 20  # a bound on a condition, not a sleep: Ray's own clean-up takes 60-90 s
    assert gone(mark, deadline)
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert again.stdout.count("\n") == 1 and "resumed after 1 committed parts" in again.stdout, again.stdout


def test_retry_errors_runs_on_the_ray_engine(tmp_path, classifier_dir, monkeypatch):
    """--retry-errors on Ray (it was refused there: the retried parts had a path of their own, on
    the local engine only): the actors annotate exactly the error rows again, in place, the parts
    without error rows stay byte for byte, and the output verifies."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import batchnlp
    import batchnlp.stages as stages

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    texts = ["good", "flaky one", "bad", "ok", "flaky two", "fine", ""]
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(7)], "text": texts}), inbox / "a.parquet")
    job = load_spec(write_job(tmp_path, input={"path": str(inbox), "text_column": "text", "id_column": "id"},
                              task={"name": "text-classification"}, model={"path": str(classifier_dir)},
                              output={"path": str(tmp_path / "out"), "rows_per_shard": 2}))
    real = stages.row_error  # a transient failure, in this process only: the local engine's first night
    monkeypatch.setattr(stages, "row_error", lambda r: "service unavailable" if "flaky" in (r["text"] or "")
                        else real(r))
    run(job, quiet=True, engine="local")
    monkeypatch.undo()
    before = read_output(tmp_path / "out")
    assert before.column("error").to_pylist().count("service unavailable") == 2
    untouched = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("part-*")}

    result = run(job, quiet=True, engine="ray", retry_errors=True)
    assert (result.retried["rows"], result.retried["failing"]) == (3, 1)  # "" stays an error row
    assert sorted(result.retried["parts"]) == ["part-00000-00000.parquet", "part-00000-00002.parquet",
                                               "part-00000-00003.parquet"]
    after = read_output(tmp_path / "out")
    assert after.column("id").to_pylist() == before.column("id").to_pylist()  # in place, same order
    assert after.column("error").to_pylist() == [None] * 6 + ["empty text"]
    assert after.column("label").to_pylist()[0] == before.column("label").to_pylist()[0]
    kept = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("part-*")}
    assert kept["part-00000-00001.parquet"] == untouched["part-00000-00001.parquet"]  # no error rows: untouched
    last = record(tmp_path / "out")["runs"][-1]
    assert last["engine"] == "ray" and last["rows"] == 3 and last["status"] == "complete"
    assert batchnlp.verify(tmp_path / "out") == []
