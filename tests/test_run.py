"""Whole jobs end to end on CPU with tiny models: values, types, order, bad rows, resume, conflicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch

from batchnlp.errors import OutputConflictError, SpecError
from helpers import run
from batchnlp.spec import load_spec

from helpers import TEXTS, read_output, write_job, record


def classify_job(tmp_path, classifier_dir, reviews_csv, **overrides):
    kwargs = dict(input={"path": str(reviews_csv), "text_column": "text", "id_column": "id"},
                  task={"name": "text-classification", "top_k": "all"}, model={"path": str(classifier_dir)})
    kwargs.update(overrides)
    return write_job(tmp_path, **kwargs)


def reference_scores(model_dir, texts, max_length=128):
    """The model's own forward pass, one text at a time (no padding at all)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    out = []
    with torch.inference_mode():
        for text in texts:
            enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
            out.append(torch.softmax(model(**enc).logits[0], -1).numpy())
    return np.array(out), model.config.id2label


@pytest.mark.parametrize("budget", [64, 300, 100_000])
def test_classification_matches_forward_pass(tmp_path, classifier_dir, reviews_csv, budget):
    job = classify_job(tmp_path, classifier_dir, reviews_csv, runtime={"batch_tokens": budget})
    result = run(load_spec(job), quiet=True)
    assert result.status == "complete" and result.rows_written == len(TEXTS)
    assert result.shards_written == 3  # 12 rows, 4 per shard

    table = read_output(tmp_path / "out")
    assert table.column_names == ["id", "text", "stars", "label", "score", "scores", "error"]
    assert table.schema.field("label").type == pa.string()
    assert table.schema.field("score").type == pa.float32()
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(len(TEXTS))]  # input order restored
    assert table.column("text").to_pylist() == TEXTS

    expected, id2label = reference_scores(classifier_dir, TEXTS)
    labels = table.column("label").to_pylist()
    assert labels == [id2label[i] for i in expected.argmax(-1)]
    np.testing.assert_allclose(table.column("score").to_numpy(), expected.max(-1), atol=1e-5)
    for row, probs in zip(table.column("scores").to_pylist(), expected):
        assert [e["label"] for e in row] == [id2label[i] for i in np.argsort(-probs, kind="stable")]
        np.testing.assert_allclose([e["score"] for e in row], np.sort(probs)[::-1], atol=1e-5)
    assert table.column("error").null_count == len(TEXTS)


def test_classification_matches_transformers_pipeline(tmp_path, classifier_dir, reviews_csv):
    """The pipeline that transformers still ships is the oracle: same labels, scores to 1e-4."""
    from transformers import pipeline

    run(load_spec(classify_job(tmp_path, classifier_dir, reviews_csv,
                               task={"name": "text-classification"})), quiet=True)
    table = read_output(tmp_path / "out")
    oracle = pipeline("text-classification", model=str(classifier_dir), device="cpu")(TEXTS, batch_size=1)
    assert table.column("label").to_pylist() == [o["label"] for o in oracle]
    np.testing.assert_allclose(table.column("score").to_numpy(), [o["score"] for o in oracle], atol=1e-4)
    assert "scores" not in table.column_names  # top_k 1: label and score only


def test_embeddings_match_forward_pass(tmp_path, encoder_dir, reviews_csv):
    from transformers import AutoModel, AutoTokenizer

    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "embeddings"}, model={"path": str(encoder_dir)},
                    runtime={"batch_tokens": 100})
    run(load_spec(job), quiet=True)
    table = read_output(tmp_path / "out")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    got = np.array(table.column("embedding").to_pylist())

    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    model = AutoModel.from_pretrained(encoder_dir).eval()
    with torch.inference_mode():
        for text, vector in zip(TEXTS, got):
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
            expected = torch.nn.functional.normalize(hidden.mean(0), dim=-1).numpy()
            np.testing.assert_allclose(vector, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_cls_pooling_without_normalisation(tmp_path, encoder_dir, reviews_csv):
    from transformers import AutoModel, AutoTokenizer

    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "embeddings", "pooling": "cls", "normalize": False},
                    model={"path": str(encoder_dir)})
    run(load_spec(job), quiet=True)
    got = np.array(read_output(tmp_path / "out").column("embedding").to_pylist())
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    model = AutoModel.from_pretrained(encoder_dir).eval()
    with torch.inference_mode():
        expected = model(**tokenizer(TEXTS[3], return_tensors="pt")).last_hidden_state[0, 0].numpy()
    np.testing.assert_allclose(got[3], expected, atol=1e-5)


def test_null_empty_and_long_texts_follow_the_policy(tmp_path, classifier_dir):
    path = tmp_path / "mixed.jsonl"
    long_text = " ".join(["great"] * 1000)
    rows = [{"id": 1, "text": "good"}, {"id": 2, "text": None}, {"id": 3, "text": "   "},
            {"id": 4, "text": long_text}, {"id": 5, "text": ""}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    job = write_job(tmp_path, input={"path": str(path), "text_column": "text"},
                    task={"name": "text-classification"}, model={"path": str(classifier_dir)},
                    runtime={"max_length": 64})
    run(load_spec(job), quiet=True)
    table = read_output(tmp_path / "out")
    assert table.column("id").to_pylist() == [1, 2, 3, 4, 5]
    assert table.column("error").to_pylist() == [None, "null text", "empty text", None, "empty text"]
    assert table.column("label").to_pylist()[1:3] == [None, None]
    assert table.column("label")[3].is_valid  # long text: truncated to max_length, annotated
    expected, id2label = reference_scores(classifier_dir, [long_text], max_length=64)
    assert table.column("score")[3].as_py() == pytest.approx(float(expected.max()), abs=1e-5)
    manifest = record(tmp_path / "out")
    assert manifest["totals"]["errors"] == 3
    assert manifest["totals"]["rows_at_max_length"] == 1


def test_manifest_records_what_ran(tmp_path, classifier_dir, reviews_csv):
    run(load_spec(classify_job(tmp_path, classifier_dir, reviews_csv)), quiet=True)
    manifest = record(tmp_path / "out")
    assert manifest["status"] == "complete"
    assert manifest["model"]["source"] == "path"
    assert set(manifest["model"]["weights_sha256"]) == {"model.safetensors"}
    assert manifest["job"]["resolved"]["task"] == {"name": "text-classification", "top_k": "all",
                                                   "function_to_apply": None}
    assert "task:" in manifest["job"]["text"]
    for lib in ("python", "torch", "transformers", "tokenizers", "pyarrow", "datasets", "batchnlp"):
        assert manifest["libraries"][lib]
    import hashlib

    import xxhash

    unit = manifest["units"][0]
    assert unit["rows"] == len(TEXTS) and unit["size"] == reviews_csv.stat().st_size
    assert unit["content_hash"] == "xxh3_128:" + xxhash.xxh3_128(reviews_csv.read_bytes()).hexdigest()
    assert [(s["unit"], s["shard"], s["part"]) for s in manifest["parts"]] == [
        (0, j, f"part-00000-0000{j}.parquet") for j in range(3)]
    for shard in manifest["parts"]:
        assert shard["sha256"] == hashlib.sha256((tmp_path / "out" / shard["part"]).read_bytes()).hexdigest()
    run_entry = manifest["runs"][0]
    assert run_entry["cwd"] == os.getcwd() and run_entry["model_load_seconds"] >= 0
    assert sum(s["rows"] for s in manifest["parts"]) == len(TEXTS)
    for shard in manifest["parts"]:
        assert 0 < shard["tokens"] <= shard["padded_tokens"]
    assert manifest["runs"][0]["device"] == "cpu" and manifest["runs"][0]["weights_dtype"] == "float32"


def test_bfloat16_on_cpu_agrees_with_float32(tmp_path, classifier_dir, reviews_csv):
    run(load_spec(classify_job(tmp_path, classifier_dir, reviews_csv, runtime={"dtype": "bfloat16"})), quiet=True)
    table = read_output(tmp_path / "out")
    expected, id2label = reference_scores(classifier_dir, TEXTS)
    np.testing.assert_allclose(table.column("score").to_numpy(), expected.max(-1), atol=2e-2)
    manifest = record(tmp_path / "out")
    assert manifest["runs"][0]["autocast_dtype"] == "bfloat16"


# -- resume ------------------------------------------------------------------------------------


def run_in_subprocess(job, crash: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "BATCHNLP_TEST_CRASH": crash or ""}
    return subprocess.run([sys.executable, "-m", "batchnlp", "run", str(job), "--quiet"], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("crash", ["part-written:1", "shard-recorded:1"])
def test_killed_run_resumes_to_the_same_output(tmp_path, classifier_dir, reviews_csv, crash):
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    reference = classify_job(reference_dir, classifier_dir, reviews_csv)
    run(load_spec(reference), quiet=True)  # uninterrupted: in this process (a subprocess costs ~5 s to start)

    job = classify_job(tmp_path, classifier_dir, reviews_csv)
    killed = run_in_subprocess(job, crash)
    assert killed.returncode == -9  # really SIGKILLed, mid-run
    manifest = record(tmp_path / "out")
    assert manifest["status"] == "running"
    recorded = [s["shard"] for s in manifest["parts"]]
    assert recorded == ([0] if crash.startswith("part-written") else [0, 1])

    resumed = run_in_subprocess(job)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed after {len(recorded)} committed parts" in resumed.stdout
    assert read_output(tmp_path / "out").equals(read_output(reference_dir / "out"))
    manifest = record(tmp_path / "out")
    assert manifest["status"] == "complete" and len(manifest["runs"]) == 2
    assert [s["shard"] for s in manifest["parts"]] == [0, 1, 2]
    assert {s["run"] for s in manifest["parts"] if s["shard"] in recorded} == {1}


def test_complete_output_is_not_redone(tmp_path, classifier_dir, reviews_csv):
    spec = load_spec(classify_job(tmp_path, classifier_dir, reviews_csv))
    run(spec, quiet=True)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("part-*")}
    again = run(spec, quiet=True)
    assert again.shards_written == 0 and again.resumed_from == 3
    assert before == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("part-*")}


def test_changed_job_is_refused_unless_overwrite(tmp_path, classifier_dir, reviews_csv):
    run(load_spec(classify_job(tmp_path, classifier_dir, reviews_csv)), quiet=True)
    changed = load_spec(classify_job(tmp_path, classifier_dir, reviews_csv, task={"name": "text-classification"}))
    with pytest.raises(OutputConflictError, match=r"task\.top_k: 'all' -> 1"):
        run(changed, quiet=True)
    result = run(changed, overwrite=True, quiet=True)
    assert result.rows_written == len(TEXTS)
    assert "scores" not in read_output(tmp_path / "out").column_names


def test_changed_input_is_refused_unless_reprocessed(tmp_path, classifier_dir, reviews_csv):
    spec = load_spec(classify_job(tmp_path, classifier_dir, reviews_csv))
    run(spec, quiet=True)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    with open(reviews_csv, "a") as f:
        f.write("r99,one more row,5\n")
    with pytest.raises(OutputConflictError, match=f"{reviews_csv} changed since it was annotated.*--reprocess-changed"):
        run(spec, quiet=True)
    assert before == {p.name: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}  # nothing touched
    result = run(spec, quiet=True, on_changed="reprocess")
    assert result.rows_written == len(TEXTS) + 1 and result.changes["changed"] == [str(reviews_csv)]
    assert read_output(tmp_path / "out").column("id").to_pylist()[-1] == "r99"


def test_second_run_on_a_locked_output_is_refused(tmp_path, classifier_dir, reviews_csv):
    from batchnlp.write.lock import OutputLock

    spec = load_spec(classify_job(tmp_path, classifier_dir, reviews_csv))
    (tmp_path / "out").mkdir()
    with OutputLock(tmp_path / "out"):
        with pytest.raises(OutputConflictError, match="in use by a running job"):
            run(spec, quiet=True)
    assert run(spec, quiet=True).status == "complete"  # the lock is gone with its holder


def test_limit_and_output_prefix(tmp_path, classifier_dir, reviews_csv):
    job = classify_job(tmp_path, classifier_dir, reviews_csv,
                       output={"path": str(tmp_path / "out"), "rows_per_shard": 4, "prefix": "pred_"})
    result = run(load_spec(job), limit=5, quiet=True)
    table = read_output(tmp_path / "out")
    assert result.rows_written == 5 and table.num_rows == 5
    assert {"pred_label", "pred_score", "pred_scores", "pred_error"} <= set(table.column_names)


def test_column_clash_needs_a_prefix(tmp_path, classifier_dir):
    path = tmp_path / "labelled.csv"
    path.write_text("text,label\ngood,x\n")
    job = write_job(tmp_path, input={"path": str(path), "text_column": "text"},
                    task={"name": "text-classification"}, model={"path": str(classifier_dir)})
    with pytest.raises(SpecError, match="output.prefix"):
        run(load_spec(job), quiet=True)
    assert not list((tmp_path / "out").glob("part-*"))


def test_parts_from_an_unknown_job_are_not_overwritten(tmp_path, classifier_dir, reviews_csv):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "part-00000.parquet").write_bytes(b"someone else's")
    with pytest.raises(OutputConflictError, match="no batchnlp log"):
        run(load_spec(classify_job(tmp_path, classifier_dir, reviews_csv)), quiet=True)
    assert (tmp_path / "out" / "part-00000.parquet").read_bytes() == b"someone else's"


def test_dataloader_workers_give_the_same_output(tmp_path, classifier_dir, reviews_csv):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run(load_spec(classify_job(tmp_path / "a", classifier_dir, reviews_csv)), quiet=True)
    run(load_spec(classify_job(tmp_path / "b", classifier_dir, reviews_csv, runtime={"num_workers": 2})), quiet=True)
    assert read_output(tmp_path / "a" / "out").equals(read_output(tmp_path / "b" / "out"))


# -- precision and memory safety -----------------------------------------------------------------


def bf16_candidate(monkeypatch, speedup: float = 2.0) -> None:
    """Make `dtype: auto` see a CPU with native bfloat16 whose calibration measured `speedup`
    (whatever this machine is: the decision after it is what these tests check)."""
    from batchnlp.model import precision

    hardware = {**precision.hardware(), "native_bf16": True}
    monkeypatch.setattr(precision, "hardware", lambda: hardware)
    monkeypatch.setattr(precision, "calibration", lambda: {"bf16_speedup": speedup, "cached": True,
                                                           "measured_at": "2026-12-07T00:00:00Z", "file": None,
                                                           "method": "test"})


def test_auto_dtype_keeps_bfloat16_when_the_probe_agrees(tmp_path, classifier_dir, reviews_csv, monkeypatch):
    from batchnlp.model.precision import native_bf16

    if not native_bf16():
        pytest.skip("this CPU has no native bfloat16")
    bf16_candidate(monkeypatch)
    run(load_spec(classify_job(tmp_path, classifier_dir, reviews_csv, runtime={"dtype": "auto"})), quiet=True)
    run_info = record(tmp_path / "out")["runs"][0]
    assert run_info["dtype"] == "bfloat16" and run_info["autocast_dtype"] == "bfloat16"
    probe = run_info["precision_probe"]
    assert probe["kept"] and probe["agreement"] >= 0.995 and probe["rows"] == 4  # the first shard's
    assert probe["calibration"]["bf16_speedup"] == 2.0 and probe["margin"] == 1.25
    assert probe["scores"]["ties"] == probe["scores"]["float32_ties"] == 0


def test_auto_dtype_refuses_bfloat16_without_running_the_model_where_this_cpus_calibration_is_slower(
        tmp_path, classifier_dir, reviews_csv, monkeypatch):
    """A CPU that advertises bfloat16 but multiplies slower in it than in float32 (0.56x on the
    Xeon of our CI): the calibration decides, no row runs twice, the record and `inspect` say why,
    and the run is float32."""
    from click.testing import CliRunner

    from batchnlp.stages import Stages
    from batchnlp.cli import main

    bf16_candidate(monkeypatch, 0.56)

    def no_probe_rows(*_):
        pytest.fail("the probe ran the model")
    monkeypatch.setattr(Stages, "__call__", no_probe_rows)  # the probe's way to run rows (the runner's is not)
    run(load_spec(classify_job(tmp_path, classifier_dir, reviews_csv, runtime={"dtype": "auto"})), quiet=True)
    run_info = record(tmp_path / "out")["runs"][0]
    probe = run_info["precision_probe"]
    assert run_info["dtype"] == "float32" and record(tmp_path / "out")["pinned"]["precision"] == "float32"
    assert (probe["rows"], probe["kept"], probe["calibration"]["bf16_speedup"]) == (0, False, 0.56)
    assert probe["refused"] == "bfloat16 multiplies at 0.56x float32 per core on this CPU, under the 1.25x margin"
    shown = CliRunner().invoke(main, ["inspect", str(tmp_path / "out")]).output
    assert "bfloat16 refused before any row ran: bfloat16 multiplies at 0.56x float32 per core" in shown


def test_auto_dtype_falls_back_to_float32_when_the_probe_disagrees(tmp_path, classifier_dir, reviews_csv,
                                                                   monkeypatch):
    from batchnlp.model.precision import native_bf16
    from batchnlp.tasks.classification import Classification

    if not native_bf16():
        pytest.skip("this CPU has no native bfloat16")
    monkeypatch.setattr(Classification, "agreement_threshold", 1.01)  # nothing can agree that well
    bf16_candidate(monkeypatch)
    run(load_spec(classify_job(tmp_path, classifier_dir, reviews_csv, runtime={"dtype": "auto"})), quiet=True)
    run_info = record(tmp_path / "out")["runs"][0]
    assert run_info["dtype"] == "float32" and not run_info["precision_probe"]["kept"]
    assert run_info["precision_probe"]["refused"] == "disagrees with float32"
    expected, id2label = reference_scores(classifier_dir, TEXTS)
    np.testing.assert_allclose(read_output(tmp_path / "out").column("score").to_numpy(), expected.max(-1),
                               atol=1e-5)


def test_int8_dynamic_quantisation(tmp_path, classifier_dir, reviews_csv):
    run(load_spec(classify_job(tmp_path, classifier_dir, reviews_csv, runtime={"dtype": "int8"})), quiet=True)
    run_info = record(tmp_path / "out")["runs"][0]
    assert run_info["dtype"] == "int8"
    expected, id2label = reference_scores(classifier_dir, TEXTS)
    table = read_output(tmp_path / "out")
    # Dynamic int8 on a 32-dim random model is coarse (activation ranges are taken per batch), so
    # the check is closeness on the whole, not per row; real models are checked by `bench`.
    labels = [id2label[i] for i in expected.argmax(-1)]
    assert sum(a == b for a, b in zip(table.column("label").to_pylist(), labels)) >= len(TEXTS) - 2
    assert np.abs(table.column("score").to_numpy() - expected.max(-1)).mean() < 0.05


def test_out_of_memory_splits_the_batch_and_keeps_the_safe_budget(tmp_path, classifier_dir, reviews_csv,
                                                                  monkeypatch):
    from batchnlp.tasks.classification import Classification

    (tmp_path / "a").mkdir()
    run(load_spec(classify_job(tmp_path / "a", classifier_dir, reviews_csv)), quiet=True)

    forward = Classification.forward

    def small_memory(self, model, batch, meta):
        if batch["input_ids"].numel() > 60:  # as if the device held 60 tokens at most
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(self, model, batch, meta)

    monkeypatch.setattr(Classification, "forward", small_memory)
    (tmp_path / "b").mkdir()
    run(load_spec(classify_job(tmp_path / "b", classifier_dir, reviews_csv)), quiet=True)
    split, whole = read_output(tmp_path / "b" / "out"), read_output(tmp_path / "a" / "out")
    assert split.column("id").to_pylist() == whole.column("id").to_pylist()  # no row lost or repeated
    assert split.column("label").to_pylist() == whole.column("label").to_pylist()
    np.testing.assert_allclose(split.column("score").to_numpy(), whole.column("score").to_numpy(), atol=1e-5)
    run_info = record(tmp_path / "b" / "out")["runs"][0]
    assert run_info["oom_splits"] > 0 and run_info["batch_tokens_in_use"] <= 60 < run_info["batch_tokens"]


def test_a_recorded_part_deleted_from_disk_is_redone_on_resume(tmp_path, classifier_dir, reviews_csv):
    """done_shards must check the part file: a part listed in the manifest but gone is not done."""
    job = classify_job(tmp_path, classifier_dir, reviews_csv)
    assert run_in_subprocess(job, "shard-recorded:1").returncode == -9  # parts 0 and 1 recorded
    (tmp_path / "out" / "part-00000-00000.parquet").unlink()
    resumed = run_in_subprocess(job)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed after 1 committed parts" in resumed.stdout
    table = read_output(tmp_path / "out")
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(len(TEXTS))]


def test_a_limited_output_continues_to_a_larger_limit_and_the_whole_input(tmp_path, classifier_dir, reviews_csv):
    """--limit 5 annotates shard 1 cut at one row; --limit 9 redoes that shard whole and adds the
    next; no limit adds the rest. The parts written first stay as they were."""
    spec = load_spec(classify_job(tmp_path, classifier_dir, reviews_csv))
    assert run(spec, limit=5, quiet=True).rows_written == 5
    first = (tmp_path / "out" / "part-00000-00000.parquet").read_bytes()
    result = run(spec, limit=9, quiet=True)
    assert (result.rows_written, result.resumed_from) == (5, 1)  # shard 1 whole (4 rows) and 1 row of shard 2
    assert run(spec, quiet=True).rows_written == 4  # shard 2 whole
    assert (tmp_path / "out" / "part-00000-00000.parquet").read_bytes() == first
    reference = tmp_path / "reference"
    reference.mkdir()
    run(load_spec(classify_job(reference, classifier_dir, reviews_csv)), quiet=True)
    assert read_output(tmp_path / "out").equals(read_output(reference / "out"))


@pytest.mark.parametrize("do_sample", [True, False])
def test_batch_settings_are_pinned_for_sampling_only(tmp_path, causal_dir, reviews_csv, do_sample):
    """Sampling draws random numbers batch by batch: another budget would sample other texts."""
    task = {"name": "text-generation", "max_new_tokens": 3, "do_sample": do_sample}
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"}, task=task,
                    model={"path": str(causal_dir)}, runtime={"batch_tokens": 4096})
    run(load_spec(job), limit=4, quiet=True)
    for runtime in ({"batch_tokens": 512}, {"max_batch_size": 2}):
        changed = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"}, task=task,
                            model={"path": str(causal_dir)}, runtime=runtime, name="changed.yaml")
        if do_sample:
            with pytest.raises(OutputConflictError, match=f"runtime.{next(iter(runtime))}"):
                run(load_spec(changed), limit=4, quiet=True)
        else:
            assert run(load_spec(changed), limit=4, quiet=True).status == "partial"  # 4 of 12 rows
