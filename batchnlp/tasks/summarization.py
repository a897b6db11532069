"""Summarization with an encoder-decoder model (BART, PEGASUS, T5, ...)."""

from __future__ import annotations

from dataclasses import dataclass

from batchnlp.tasks import decoding
from batchnlp.tasks.seq2seq import Seq2Seq


@dataclass(frozen=True)
class Params(decoding.DecodingParams):
    """Unset options come from the model's generation config (e.g. distilbart-cnn's beams and lengths)."""


class Summarization(Seq2Seq):
    name = "summarization"
    description = "Summarise each text (AutoModelForSeq2SeqLM); output summary_text."
    output_column = "summary_text"

    def task_prefix(self) -> str:
        # T5 checkpoints say in their config which prefix selects the task.
        specific = (getattr(self.config, "task_specific_params", None) or {}).get("summarization", {})
        return specific.get("prefix", "") or ""


TASK = Summarization
