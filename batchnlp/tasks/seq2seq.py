"""What summarization and translation share: an encoder-decoder model (BART, T5, Marian, mBART,
NLLB, ...) generating one text per row with `generate`."""

from __future__ import annotations

from typing import Any, Sequence

import pyarrow as pa

from batchnlp.tasks import decoding
from batchnlp.tasks.base import Feature, RowError


class Seq2Seq(decoding.Generative):
    model_class = "AutoModelForSeq2SeqLM"
    output_column: str

    def setup(self) -> None:
        super().setup()
        self.prefix = self.task_prefix()
        self.generate_extra = self.generate_options()

    def task_prefix(self) -> str:
        """Prepended to each text (T5's "summarize: ", "translate English to German: ")."""
        return ""

    def generate_options(self) -> dict[str, Any]:
        """Extra `generate` arguments, e.g. forced_bos_token_id for the target language."""
        return {}

    def prepare(self, model: Any) -> None:
        self.new_tokens = decoding.new_tokens(self.params, model.generation_config)

    @classmethod
    def columns(cls, params: Any) -> list[str]:
        return [cls.output_column] + (["flag"] if cls.guarded(params) else [])

    def column_types(self) -> dict[str, pa.DataType]:
        return {self.output_column: pa.string(), "flag": pa.string()}

    def encode(self, rows: Sequence[dict[str, Any]]) -> list[list[Feature] | RowError]:
        enc = self.tokenizer([self.prefix + row["text"] for row in rows], truncation=True,
                             max_length=self.max_length, return_attention_mask=False)
        return [[{"input_ids": ids, "meta": None}] for ids in enc["input_ids"]]

    def forward(self, model: Any, batch: dict[str, Any], meta: list[Any]) -> list[Any]:
        # The decoder's sequences start with its start token; the rest is new.
        sequences, flags = self.generate(model, batch, 1, **decoding.generate_kwargs(self.params),
                                         **self.generate_extra)
        return list(zip(self.tokenizer.batch_decode(sequences, skip_special_tokens=True), flags))

    def decode(self, row: dict[str, Any], outputs: list[Any]) -> dict[str, Any]:
        text, flag = outputs[0]
        (text,), flag = self.guard([text], [flag])
        return {self.output_column: text, "flag": flag}
