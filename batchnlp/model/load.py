"""Loading a tokenizer and model from a resolved directory onto the chosen device and precision."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchnlp.errors import ModelUnavailableError
from batchnlp.model.device import Placement
from batchnlp.model.source import ResolvedModel


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    config: Any
    max_length: int


def load_config(resolved: ResolvedModel, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolved.directory, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelUnavailableError(f"model: cannot read the config in {resolved.directory}: "
                                    f"{str(e).splitlines()[0]}") from None


def load(resolved: ResolvedModel, model_class: str, placement: Placement, trust_remote_code: bool,
         max_length: int | None) -> LoadedModel:
    import transformers

    directory = resolved.directory
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
        model = getattr(transformers, model_class).from_pretrained(
            directory, trust_remote_code=trust_remote_code, dtype=placement.weights_dtype)
    except (OSError, ValueError) as e:
        raise ModelUnavailableError(f"model: cannot load {model_class} from {directory}: "
                                    f"{str(e).splitlines()[0]}") from None
    model.to(placement.device).eval()
    return LoadedModel(model, tokenizer, model.config, max_length or default_max_length(directory, tokenizer,
                                                                                        model.config))


def default_max_length(directory: Path, tokenizer: Any, config: Any) -> int:
    """The longest input the model takes: a sentence-transformers model's own max_seq_length if it
    ships one, else the smaller of the tokenizer's limit and the model's position table."""
    st_config = directory / "sentence_bert_config.json"
    if st_config.is_file():
        limit = json.loads(st_config.read_text()).get("max_seq_length")
        if isinstance(limit, int):
            return limit
    limits = [n for n in (getattr(tokenizer, "model_max_length", None),
                          getattr(config, "max_position_embeddings", None)) if isinstance(n, int) and n < 1_000_000]
    return min(limits) if limits else 512
