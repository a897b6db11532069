"""ONNX Runtime int8 on the job's own classifier: what optimum's recipe builds for a CPU (optimum
itself pins transformers 4, so the same steps are done with onnxruntime's own tools): the model
exported with torch.onnx, onnxruntime's transformer optimiser at level 2 (fused attention, layer
norm, GELU), then dynamic int8 quantisation of the weights (QInt8, per tensor, as optimum's
avx512_vnni config); the plain export quantised the same way too. Its loop is the one optimum
users write: rows sorted by length, batches of 32, the tokenizer's padding, one `session.run` a
batch.

The export and both quantised models are built once into the model cache's `onnxruntime/`
folder, keyed by the weights' sha256 and the versions of onnxruntime and torch. Not a dependency
(`pip install onnxruntime onnx`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchnlp.tasks.bench_hooks import Baseline

#: The two quantised models, by the label the bench shows.
MODELS = {"ONNX Runtime {} O2 int8": "model_o2_int8.onnx", "ONNX Runtime {} int8": "model_int8.onnx"}


def available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def applies(config: Any) -> bool:
    """A single-label classifier (what argmax labels compare on)."""
    return getattr(config, "problem_type", None) in (None, "single_label_classification")


def built(directory: Path) -> Path:
    """The cached export and quantised models of the classifier in `directory`, built now on a miss."""
    from batchnlp.job import library_version
    from batchnlp.model import cache

    versions = {"recipe": "o2+dynamic-qint8", "onnxruntime": library_version("onnxruntime"),
                "torch": library_version("torch")}
    return cache.derived("onnxruntime", directory, versions, lambda into: _build(directory, into))


def _build(directory: Path, into: Path) -> None:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    plain = into / "model.onnx"
    dummy = (torch.ones(2, 16, dtype=torch.long), torch.ones(2, 16, dtype=torch.long))
    torch.onnx.export(model, dummy, str(plain), dynamo=False, input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], opset_version=17,
                      dynamic_axes={"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
                                    "logits": {0: "batch"}})
    optimised = into / "model_o2.onnx"
    config = model.config
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", 0)
    optimize_model(str(plain), model_type="bert", num_heads=heads, hidden_size=hidden,
                   opt_level=2).save_model_to_file(str(optimised))
    for source, name in ((optimised, "model_o2_int8.onnx"), (plain, "model_int8.onnx")):
        # The optimiser's fused operators carry no shape information: say what float tensors are.
        quantize_dynamic(str(source), str(into / name), weight_type=QuantType.QInt8, per_channel=False,
                         extra_options={"DefaultTensorType": 1})
    for path in (plain, optimised):
        path.unlink()


def sessions(directory: Path, threads: int) -> dict[str, Any]:
    """The ONNX Runtime sessions of both quantised models, by label."""
    import onnxruntime as ort

    from batchnlp.job import library_version

    folder, version = built(directory), library_version("onnxruntime")
    found = {}
    for label, name in MODELS.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        found[label.format(version)] = ort.InferenceSession(str(folder / name), options,
                                                            providers=["CPUExecutionProvider"])
    return found


def encoded(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, Any]:
    """The texts as an exported classifier takes them: padded int64 ids and mask (numpy)."""
    import numpy as np

    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def infer(session: Any) -> Any:
    """An ONNX Runtime session as `loop` calls an engine: inputs -> logits."""
    return lambda inputs: session.run(None, inputs)[0]


def loop(engine: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 32) -> Any:
    """optimum users' loop around `engine` (encoded inputs -> logits): the label index of each text."""

    def run() -> list[int]:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        labels = [0] * len(texts)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            logits = engine(encoded(tokenizer, [texts[i] for i in chunk], max_length))
            for i, label in zip(chunk, logits.argmax(-1).tolist()):
                labels[i] = label
        return labels

    return run


def peer(engine: Any, label: str, tokenizer: Any, texts: list[str], max_length: int,
         id2label: dict[int, str]) -> Baseline:
    """The bench's peer of an engine (encoded inputs -> logits) in optimum users' loop."""
    run = loop(engine, tokenizer, texts, max_length)
    return Baseline(lambda: [{"label": id2label[i]} for i in run()], label, batches_features=False)


def peers(directory: Path, texts: list[str], tokenizer: Any, max_length: int, threads: int,
          id2label: dict[int, str]) -> list[Baseline]:
    return [peer(infer(session), label, tokenizer, texts, max_length, id2label)
            for label, session in sessions(directory, threads).items()]
