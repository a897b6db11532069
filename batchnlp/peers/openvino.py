"""OpenVINO int8 on the job's own classifier, as OpenVINO's guide for BERT-like models builds it
(and optimum-intel's OVQuantizer, which pins transformers 4, so the steps are done here with
openvino and nncf directly): the torch model converted by `openvino.convert_model`, then NNCF's
post-training quantisation (static int8: weights and activations, activation scales calibrated
once on the first 300 of the bench's rows, `ModelType.TRANSFORMER`). Its loop is the ONNX Runtime
peer's (optimum users' loop): rows sorted by length, batches of 32, the tokenizer's padding, one
inference a batch, on the bench's torch thread count.

Built once into the model cache's `openvino/` folder, keyed by the weights' sha256, the versions of
openvino, nncf and torch, and the calibration rows' digest. Not a dependency
(`pip install openvino nncf`)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from batchnlp.tasks.bench_hooks import Baseline

CALIBRATION_ROWS = 300


def available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("openvino", "nncf"))


def built(directory: Path, texts: list[str], tokenizer: Any, max_length: int) -> Path:
    """The cached int8 model of the classifier in `directory`, built now on a miss."""
    from batchnlp.job import library_version
    from batchnlp.model import cache

    calibration = texts[:CALIBRATION_ROWS]
    digest = hashlib.sha256("\x00".join(calibration).encode()).hexdigest()[:16]
    versions = {"recipe": "nncf-static-int8", "openvino": library_version("openvino"),
                "nncf": library_version("nncf"), "torch": library_version("torch"), "calibration": digest}
    return cache.derived("openvino", directory, versions,
                         lambda into: _build(directory, calibration, tokenizer, max_length, into))


def _inputs(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, Any]:
    import numpy as np

    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def _build(directory: Path, calibration: list[str], tokenizer: Any, max_length: int, into: Path) -> None:
    import nncf
    import openvino as ov
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    example = {name: torch.from_numpy(array) for name, array in _inputs(tokenizer, calibration[:2], max_length).items()}
    converted = ov.convert_model(model, example_input=example)
    batches = [_inputs(tokenizer, calibration[i:i + 8], max_length) for i in range(0, len(calibration), 8)]
    quantised = nncf.quantize(converted, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(batches))  # NNCF counts the dataset's items: batches of 8
    ov.save_model(quantised, str(into / "model_int8.xml"))


def peers(directory: Path, texts: list[str], tokenizer: Any, max_length: int, threads: int,
          id2label: dict[int, str]) -> list[Baseline]:
    import openvino as ov

    from batchnlp.job import library_version

    folder = built(directory, texts, tokenizer, max_length)
    compiled = ov.Core().compile_model(str(folder / "model_int8.xml"), "CPU", {"INFERENCE_NUM_THREADS": threads})

    def run() -> list[dict[str, Any]]:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        labels: list[dict[str, Any]] = [{}] * len(texts)
        for start in range(0, len(order), 32):
            chunk = order[start:start + 32]
            logits = compiled(_inputs(tokenizer, [texts[i] for i in chunk], max_length))[0]
            for i, label in zip(chunk, logits.argmax(-1).tolist()):
                labels[i] = {"label": id2label[label]}
        return labels

    return [Baseline(run, f"OpenVINO {library_version('openvino')} int8 (NNCF)", batches_features=False)]
