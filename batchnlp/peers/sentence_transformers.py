"""sentence-transformers on the job's own model directory, for embeddings: what a user calls for
sentence vectors, in its fastest form on a CPU with bfloat16 instructions (the model's weights in
bfloat16; `encode` sorts the texts by length and pads each batch of 32). Only for a
sentence-transformers model folder (modules.json) with the job's mean pooling; its vectors are
compared with batchnlp float32's by cosine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchnlp.tasks.bench_hooks import Baseline


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("sentence_transformers") is not None


def applies(directory: Path, pooling: str) -> bool:
    return (directory / "modules.json").is_file() and pooling == "mean"


def peers(directory: Path, texts: list[str], max_length: int, normalize: bool) -> list[Baseline]:
    import torch
    from sentence_transformers import SentenceTransformer

    from batchnlp.job import library_version

    model = SentenceTransformer(str(directory), device="cpu", model_kwargs={"dtype": torch.bfloat16})
    model.max_seq_length = max_length

    def encode() -> list[dict[str, Any]]:
        vectors = model.encode(texts, batch_size=32, normalize_embeddings=normalize, convert_to_numpy=False)
        return [{"embedding": v.float().numpy()} for v in vectors]

    return [Baseline(encode, f"sentence-transformers {library_version('sentence_transformers')} bf16",
                     batches_features=False)]
