"""Summarization with an encoder-decoder model (BART, PEGASUS, T5, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batchnlp.tasks import decoding
from batchnlp.tasks.seq2seq import Seq2Seq


@dataclass(frozen=True)
class Params(decoding.DecodingParams):
    """Unset options come from the model's generation config (e.g. distilbart-cnn's beams and lengths)."""


class Summarization(Seq2Seq):
    name = "summarization"
    description = "Summarise each text (AutoModelForSeq2SeqLM); output summary_text."
    Params = Params
    output_column = "summary_text"

    def __init__(self, params: Params, model_config: Any, tokenizer: Any, max_length: int):
        super().__init__(params, model_config, tokenizer, max_length)
        # T5 checkpoints say in their config which prefix selects the task.
        specific = (getattr(model_config, "task_specific_params", None) or {}).get("summarization", {})
        self.prefix = specific.get("prefix", "") or ""


TASK = Summarization
