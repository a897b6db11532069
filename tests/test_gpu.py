"""The CUDA path: float16/bfloat16 against float32 on the same tiny models. Skipped without a GPU
(CI has none); run on a machine with one: pytest -m gpu."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import run
from batchnlp.spec import load_spec

from helpers import TEXTS, read_output, write_job

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def annotate(tmp_path, model_dir, reviews_csv, task, dtype, name):
    directory = tmp_path / name
    directory.mkdir()
    job = write_job(directory, input={"path": str(reviews_csv), "text_column": "text"}, task=task,
                    model={"path": str(model_dir)}, runtime={"device": "cuda", "dtype": dtype})
    run(load_spec(job), quiet=True)
    return read_output(directory / "out")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_classification_agrees_with_float32(tmp_path, classifier_dir, reviews_csv, dtype):
    if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bfloat16 on this GPU")
    task = {"name": "text-classification", "top_k": "all"}
    half = annotate(tmp_path, classifier_dir, reviews_csv, task, dtype, "half")
    full = annotate(tmp_path, classifier_dir, reviews_csv, task, "float32", "full")
    assert half.column("label").to_pylist() == full.column("label").to_pylist()
    np.testing.assert_allclose(half.column("score").to_numpy(), full.column("score").to_numpy(), atol=2e-2)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_embeddings_agree_with_float32(tmp_path, encoder_dir, reviews_csv, dtype):
    if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bfloat16 on this GPU")
    half = np.array(annotate(tmp_path, encoder_dir, reviews_csv, {"name": "embeddings"}, dtype, "half")
                    .column("embedding").to_pylist())
    full = np.array(annotate(tmp_path, encoder_dir, reviews_csv, {"name": "embeddings"}, "float32", "full")
                    .column("embedding").to_pylist())
    assert ((half * full).sum(1) > 0.999).all()  # both unit length: the dot product is the cosine


def test_greedy_generation_on_cuda_matches_cpu(tmp_path, causal_dir, reviews_csv):
    task = {"name": "text-generation", "max_new_tokens": 8}
    cuda = annotate(tmp_path, causal_dir, reviews_csv, task, "float32", "cuda")
    directory = tmp_path / "cpu"
    directory.mkdir()
    job = write_job(directory, input={"path": str(reviews_csv), "text_column": "text"}, task=task,
                    model={"path": str(causal_dir)}, runtime={"device": "cpu"})
    run(load_spec(job), quiet=True)
    same = sum(a == b for a, b in zip(cuda.column("generated_text").to_pylist(),
                                      read_output(directory / "out").column("generated_text").to_pylist()))
    assert same >= 0.9 * len(TEXTS)
