"""OpenVINO int8 on the job's own classifier, as OpenVINO's guide for BERT-like models builds it
(and optimum-intel's OVQuantizer, which pins transformers 4, so the steps are done here with
openvino and nncf directly): the torch model converted by `openvino.convert_model`, then NNCF's
post-training quantisation (static int8: weights and activations, activation scales calibrated
once on the first 300 of the bench's rows, `ModelType.TRANSFORMER`). It runs in the ONNX Runtime
peer's loop (optimum users' loop, `onnxruntime.loop`): rows sorted by length, batches of 32, the
tokenizer's padding, one inference a batch, on the bench's torch thread count.

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


def _build(directory: Path, calibration: list[str], tokenizer: Any, max_length: int, into: Path) -> None:
    import nncf
    import openvino as ov
    import torch
    from transformers import AutoModelForSequenceClassification

    from batchnlp.peers.onnxruntime import encoded

    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    example = {name: torch.from_numpy(array) for name, array in encoded(tokenizer, calibration[:2], max_length).items()}
    converted = ov.convert_model(model, example_input=example)
    batches = [encoded(tokenizer, calibration[i:i + 8], max_length) for i in range(0, len(calibration), 8)]
    quantised = nncf.quantize(converted, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(batches))  # NNCF counts the dataset's items: batches of 8
    ov.save_model(quantised, str(into / "model_int8.xml"))


def peers(directory: Path, texts: list[str], tokenizer: Any, max_length: int, threads: int,
          id2label: dict[int, str]) -> list[Baseline]:
    import openvino as ov

    from batchnlp.job import library_version
    from batchnlp.peers import onnxruntime

    folder = built(directory, texts, tokenizer, max_length)
    compiled = ov.Core().compile_model(str(folder / "model_int8.xml"), "CPU", {"INFERENCE_NUM_THREADS": threads})
    return [onnxruntime.peer(lambda inputs: compiled(inputs)[0], f"OpenVINO {library_version('openvino')} int8 (NNCF)",
                             tokenizer, texts, max_length, id2label)]
