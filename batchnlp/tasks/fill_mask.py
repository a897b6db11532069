"""Fill-mask: the most likely tokens for the one masked position of each text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from batchnlp.errors import SpecError
from batchnlp.settings import doc
from batchnlp.tasks.bench_hooks import Baseline, make_pipeline
from batchnlp.tasks.base import Feature, RowError, Task

MASK = "{mask}"
PREDICTION = pa.struct([("token_str", pa.string()), ("score", pa.float32()), ("token", pa.int64()),
                        ("sequence", pa.string())])


@dataclass(frozen=True)
class Params:
    top_k: int = doc("How many predictions a row gets.", default=5)
    targets: list[str] | None = doc("Only score these tokens (words not in the vocabulary use their first "
                                    "sub-token, as transformers does).", default=None)

    def validate(self) -> None:
        if self.top_k < 1:
            raise SpecError("task.top_k", "must be 1 or more")
        if self.targets is not None and not self.targets:
            raise SpecError("task.targets", "give at least one target, or leave it out")


class FillMask(Task):
    name = "fill-mask"
    description = ("Predict the masked token; texts use the model's mask token or a model-neutral {mask} "
                   "(AutoModelForMaskedLM).")
    model_class = "AutoModelForMaskedLM"
    fixed_columns = {"predictions": pa.list_(PREDICTION)}

    def setup(self) -> None:
        super().setup()
        if self.tokenizer.mask_token is None:
            raise SpecError("task.name", "fill-mask needs a model whose tokenizer has a mask token")
        targets = self.params.targets
        self.target_ids = None if targets is None else np.array(sorted(set(map(self._target_id, targets))))

    def _target_id(self, target: str) -> int:
        vocab = self.tokenizer.get_vocab()
        if target in vocab:
            return vocab[target]
        ids = self.tokenizer(target, add_special_tokens=False)["input_ids"]
        if not ids:
            raise SpecError("task.targets", f"{target!r} has no token in this model's vocabulary")
        return ids[0]


    def agreement_key(self, row: dict[str, Any]) -> Any:
        return row["predictions"][0]["token"]  # the top prediction

    def scores_of(self, row: dict[str, Any]) -> list[float] | None:
        # (Its head is not run in float32: it projects every position onto the vocabulary, a large
        # share of the work; the probe refuses bfloat16 where that coarsens these scores.)
        return [p["score"] for p in row["predictions"]] or None

    def baseline(self, model: Any, texts: list[str], batch_size: int) -> Baseline:
        pipe = make_pipeline("fill-mask", model, self.tokenizer)
        masked = [t.replace(MASK, self.tokenizer.mask_token) for t in texts]
        return Baseline(lambda: [{"predictions": o} for o in pipe(masked, batch_size=batch_size,
                                                                   top_k=self.params.top_k)],
                        f"pipeline (bs={batch_size}, float32)")

    def encode(self, rows: Sequence[dict[str, Any]]) -> list[list[Feature] | RowError]:
        texts = [row["text"].replace(MASK, self.tokenizer.mask_token) for row in rows]
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, return_attention_mask=False,
                             return_token_type_ids="token_type_ids" in self.tokenizer.model_input_names)
        out: list[list[Feature] | RowError] = []
        mask_id = self.tokenizer.mask_token_id
        for i, text in enumerate(texts):
            ids = enc["input_ids"][i]
            found = ids.count(mask_id)
            if found != 1:
                written = text.count(self.tokenizer.mask_token)
                where = " within max_length" if written == 1 else ""
                out.append(RowError(f"expected exactly one mask ({MASK} or {self.tokenizer.mask_token}){where}, "
                                    f"found {found}"))
                continue
            out.append([{**{k: enc[k][i] for k in enc.keys()}, "meta": ids.index(mask_id)}])
        return out

    def forward(self, model: Any, batch: dict[str, Any], meta: list[int]) -> list[Any]:
        import torch

        logits = model(**batch).logits
        rows = torch.arange(len(meta), device=logits.device)
        probs = logits[rows, torch.tensor(meta, device=logits.device)].float().softmax(dim=-1)
        if self.target_ids is not None:
            probs = probs[:, torch.as_tensor(self.target_ids, device=probs.device)]
        k = min(self.params.top_k, probs.shape[-1])
        values, indices = probs.topk(k)
        ids = batch["input_ids"].cpu().numpy()
        attention = batch["attention_mask"].cpu().numpy()
        out = []
        for row, (vals, idx) in enumerate(zip(values.cpu().numpy(), indices.cpu().numpy())):
            tokens = idx if self.target_ids is None else self.target_ids[idx]
            out.append([self._prediction(ids[row][attention[row] == 1], meta[row], int(t), float(v))
                        for t, v in zip(tokens, vals)])
        return out

    def _prediction(self, ids: np.ndarray, position: int, token: int, score: float) -> dict[str, Any]:
        filled = ids.copy()
        filled[position] = token
        return {"token_str": self.tokenizer.decode([token]), "score": score, "token": token,
                "sequence": self.tokenizer.decode(filled, skip_special_tokens=True)}

    def decode(self, row: dict[str, Any], outputs: list[Any]) -> dict[str, Any]:
        return {"predictions": outputs[0]}


TASK = FillMask
