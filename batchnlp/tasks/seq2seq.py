"""What summarization and translation share: an encoder-decoder model (BART, T5, Marian, mBART,
NLLB, ...) generating one text per row with `generate`."""

from __future__ import annotations

from typing import Any, Sequence

import pyarrow as pa

from batchnlp.tasks import decoding
from batchnlp.tasks.base import Feature, RowError, Task


class Seq2Seq(Task):
    model_class = "AutoModelForSeq2SeqLM"
    agreement_threshold = 0.95  # share of texts identical to float32's, as for text-generation
    output_column: str
    #: Prepended to each text (T5's "summarize: ", "translate English to German: ").
    prefix = ""
    #: Extra `generate` arguments, e.g. forced_bos_token_id for the target language.
    generate_extra: dict[str, Any]

    def __init__(self, params: Any, model_config: Any, tokenizer: Any, max_length: int):
        super().__init__(params, model_config, tokenizer, max_length)
        self.generate_extra = {}
        self.new_tokens = decoding.new_tokens(params, None)

    def prepare(self, model: Any) -> None:
        self.new_tokens = decoding.new_tokens(self.params, model.generation_config)

    def fields(self) -> list[pa.Field]:
        return [pa.field(self.output_column, pa.string())]

    def start_shard(self, index: int) -> None:
        decoding.seed_shard(self.params.seed, index)

    def batch_length(self, feature: Feature) -> int:
        return len(feature["input_ids"]) + self.new_tokens

    def encode(self, rows: Sequence[dict[str, Any]]) -> list[list[Feature] | RowError]:
        enc = self.tokenizer([self.prefix + row["text"] for row in rows], truncation=True,
                             max_length=self.max_length, return_attention_mask=False)
        return [[{"input_ids": ids, "meta": None}] for ids in enc["input_ids"]]

    def forward(self, model: Any, batch: dict[str, Any], meta: list[Any]) -> list[Any]:
        sequences = model.generate(**batch, **decoding.generate_kwargs(self.params), **self.generate_extra)
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=True)

    def decode(self, row: dict[str, Any], outputs: list[Any]) -> dict[str, Any]:
        return {self.output_column: outputs[0]}
