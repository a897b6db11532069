"""Embeddings (feature extraction): one pooled, optionally normalised vector a row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

from batchnlp.settings import doc
from batchnlp.tasks.bench_hooks import Baseline, make_pipeline
from batchnlp.tasks.base import Task


@dataclass(frozen=True)
class Params:
    pooling: Literal["mean", "cls"] = doc(
        "mean: average of the token vectors (padding excluded), as sentence-transformers; cls: first token.",
        default="mean")
    normalize: bool = doc("Scale each vector to unit length, so a dot product is the cosine similarity.",
                          default=True)


class Embeddings(Task):
    name = "embeddings"
    description = "A fixed-size vector per text from an encoder's last hidden state (AutoModel)."
    model_class = "AutoModel"
    agreement_threshold = 0.99  # mean cosine similarity to float32, not a share of rows

    def agreement(self, rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> float:
        """Mean cosine similarity between the vectors and the reference's."""
        import numpy as np

        a = np.array([r["embedding"] for r in rows if r["embedding"] is not None])
        b = np.array([r["embedding"] for r in reference if r["embedding"] is not None])
        if not len(a):
            return 1.0
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        return float(cosine.mean())

    @classmethod
    def columns(cls, params: Params) -> list[str]:
        return ["embedding"]

    def column_types(self) -> dict[str, pa.DataType]:
        return {"embedding": pa.list_(pa.float32(), self.config.hidden_size)}

    def forward(self, model: Any, batch: dict[str, Any], meta: list[Any]) -> list[dict[str, Any]]:
        vectors = pool(model(**batch).last_hidden_state, batch["attention_mask"], self.params.pooling,
                       self.params.normalize)
        return [{"embedding": v} for v in vectors]

    def describe_agreement(self, value: float) -> str:
        return f"mean cosine {value:.5f}"

    def baseline(self, model: Any, texts: list[str], batch_size: int) -> Baseline:
        import numpy as np

        pipe = make_pipeline("feature-extraction", model, self.tokenizer)
        # With batch_size > 1 the pipeline hands back each text's token vectors padded to its
        # batch's longest; averaging those would dilute the mean, so only real tokens are kept.
        lengths = [len(ids) for ids in self.tokenizer(texts, **self.truncation())["input_ids"]]

        def embed() -> list[dict[str, Any]]:
            out = []
            for tokens, length in zip(pipe(texts, batch_size=batch_size, tokenize_kwargs=self.truncation()),
                                      lengths):
                tokens = np.asarray(tokens[0])[:length]
                vector = tokens.mean(0) if self.params.pooling == "mean" else tokens[0]
                out.append({"embedding": vector / np.linalg.norm(vector) if self.params.normalize else vector})
            return out

        return Baseline(embed, f"pipeline (bs={batch_size}, float32)")


def pool(hidden: Any, attention_mask: Any, pooling: str, normalize: bool) -> Any:
    """Token vectors to one float32 numpy vector per row."""
    import torch

    hidden = hidden.float()
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
    return pooled.cpu().numpy()


TASK = Embeddings
