"""The bench's vLLM-CPU peer drives vLLM in a worker process (vLLM pins its own torch, so it lives in
a venv of its own). vLLM is not installed here: a stand-in `vllm` package on the worker's path
answers as vLLM's offline API does, and says in its tokens what it was given."""

from __future__ import annotations

import sys
import textwrap
from types import SimpleNamespace

import pytest

from batchnlp.peers import vllm

EOS = 99

FAKE = '''
import os, sys, time

__version__ = "0.0-fake"


class SamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class LLM:
    def __init__(self, model, dtype, max_model_len, seed=0):
        if os.environ.get("FAKE_VLLM_FAIL"):
            raise RuntimeError("no CPU backend for " + model)
        self.dtype, self.resets = dtype, 0

    def reset_prefix_cache(self):
        self.resets += 1

    def generate(self, prompts, params, use_tqdm=True):
        if os.environ.get("FAKE_VLLM_HANG"):
            time.sleep(60)
        print("vLLM's own chatter on stdout")
        threads = int(os.environ["OMP_NUM_THREADS"])
        space = int(os.environ["VLLM_CPU_KVCACHE_SPACE"])
        dtype = {"float32": 32, "bfloat16": 16}[self.dtype]
        assert params.kwargs["temperature"] == 0 and not use_tqdm
        out = []
        for p in prompts:
            ids = [len(p["prompt_token_ids"]), self.resets, threads, space, dtype, params.kwargs["max_tokens"]]
            ids += params.kwargs["stop_token_ids"]
            out.append(type("Output", (), {"outputs": [type("Completion", (), {"token_ids": ids})]}))
        return out
'''


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    package = tmp_path / "fake" / "vllm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(FAKE))
    (package / "inputs.py").write_text("TokensPrompt = dict\n")
    monkeypatch.setenv("PYTHONPATH", str(package.parent))
    monkeypatch.setenv(vllm.PYTHON, sys.executable)
    return package


CONFIG = SimpleNamespace(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576)


def _peers(tmp_path, echo=None, prompts=([5, 6, 7], [5, 6, 8, 9])):
    python, why = vllm.interpreter()
    assert python == sys.executable and why == ""
    return vllm.peers(python, tmp_path, CONFIG, [list(p) for p in prompts], 3, 2, {EOS},
                      lambda ids: " ".join(map(str, ids)), 512, echo or (lambda line: None))


def test_each_round_is_one_generate_over_every_prompt_from_an_empty_prefix_cache(tmp_path, fake_vllm):
    baselines = _peers(tmp_path)
    assert [b.label for b in baselines] == ["vLLM-CPU 0.0-fake float32", "vLLM-CPU 0.0-fake bfloat16"]
    assert not any(b.batches_features for b in baselines)
    float32, bfloat16 = baselines
    # prompt length, prefix-cache resets so far, threads, KV GiB, dtype, token budget; the end token
    # (the stop id vLLM was given) is left out of the text, as batchnlp leaves it out
    assert float32.call() == [{"generated_text": "3 1 2 1 32 3"}, {"generated_text": "4 1 2 1 32 3"}]
    assert float32.call() == [{"generated_text": "3 2 2 1 32 3"}, {"generated_text": "4 2 2 1 32 3"}]
    assert bfloat16.call()[1] == {"generated_text": "4 1 2 1 16 3"}


def test_an_engine_that_cannot_start_is_one_line_and_left_out(tmp_path, fake_vllm, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_FAIL", "1")
    lines: list[str] = []
    assert _peers(tmp_path, echo=lines.append) == []
    assert len(lines) == 2 and lines[0].startswith(
        f"  no vLLM float32 peer: vLLM (float32) failed to start its engine: RuntimeError: no CPU backend for {tmp_path}")
    log = lines[0].rsplit("its log: ", 1)[1].rstrip(")")
    assert "Traceback" in open(log).read()  # the whole story stays in the log


def test_a_worker_that_goes_quiet_is_stopped_at_the_limit(tmp_path, fake_vllm, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_HANG", "1")
    worker = vllm.Worker(sys.executable, {"model": str(tmp_path), "dtype": "float32", "max_model_len": 64}, 1, 1)
    with pytest.raises(vllm.PeerError, match=r"vLLM \(float32\) gave no answer within 1 s \(to generate for 2 "
                                             r"prompts\); its log: "):
        worker.generate([[1], [2]], 3, [EOS], limit=1)
    assert worker.process.poll() is not None  # killed, not left running


def test_the_interpreter_is_the_one_named_or_this_one_with_vllm(tmp_path, monkeypatch):
    monkeypatch.setenv(vllm.PYTHON, str(tmp_path / "missing" / "python"))
    assert vllm.interpreter() == (None, f"{vllm.PYTHON}={tmp_path / 'missing' / 'python'} is not a file")
    monkeypatch.delenv(vllm.PYTHON)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert vllm.interpreter() == (None, "")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    assert vllm.interpreter() == (sys.executable, "")


def test_the_kv_cache_is_sized_for_the_rounds_tokens_twice_over():
    # SmolLM2-135M: 30 layers x (keys, values) x 3 heads x 64 dims x 4 bytes = 46,080 bytes a token
    assert vllm.kv_cache_gib(CONFIG, 64 * 130, "float32") == 1
    assert vllm.kv_cache_gib(CONFIG, 100_000, "float32") == 9  # 2 x 4.29 GiB, rounded up
    assert vllm.kv_cache_gib(CONFIG, 100_000, "bfloat16") == 5


def _state(pid: int) -> str:
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]


def test_the_worker_is_suspended_between_its_rounds(tmp_path, fake_vllm):
    # idle, vLLM's threads still wake, and on 2 cores that slowed the other engines' rounds by ~12%
    worker = vllm.Worker(sys.executable, {"model": str(tmp_path), "dtype": "float32", "max_model_len": 64}, 1, 1)
    assert _state(worker.process.pid) == "T"
    assert worker.generate([[1, 2]], 3, [EOS]) == [[2, 1, 1, 1, 32, 3, EOS]]  # resumed for the round
    assert _state(worker.process.pid) == "T"
    worker.close()
    assert worker.process.poll() is not None  # a suspended worker is still killed
