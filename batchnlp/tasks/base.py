"""The protocol every task follows: declare its columns, encode rows, run a batch.

The runner owns everything else (reading, sorting, batching, device, precision, writing), so a
task never moves tensors between devices nor changes precision.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import pyarrow as pa


class Task:
    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type]
    #: The transformers Auto class the model is loaded with.
    model_class: ClassVar[str]

    def __init__(self, params: Any, model_config: Any):
        self.params = params
        self.config = model_config

    def fields(self) -> list[pa.Field]:
        """The annotation columns this task adds, typed, before anything runs."""
        raise NotImplementedError

    def encode(self, tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None,
               max_length: int) -> list[dict[str, list[int]]]:
        """Token ids for each row, truncated to max_length and not padded (the collate pads)."""
        enc = tokenizer(list(texts), list(pairs) if pairs is not None else None, truncation=True,
                        max_length=max_length, padding=False, return_attention_mask=False,
                        return_token_type_ids="token_type_ids" in tokenizer.model_input_names)
        keys = list(enc.keys())
        return [{k: enc[k][i] for k in keys} for i in range(len(texts))]

    def forward(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        """Run one padded batch; return each annotation column as a list or numpy array (one item a row)."""
        raise NotImplementedError
