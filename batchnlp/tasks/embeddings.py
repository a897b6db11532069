"""Embeddings (feature extraction): one pooled, optionally normalised vector a row; or, with
`pooling: none`, every token's vector, as transformers' feature-extraction pipeline gives them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

from batchnlp.settings import doc
from batchnlp.tasks.bench_hooks import Baseline, make_pipeline
from batchnlp.tasks.base import Task


@dataclass(frozen=True)
class Params:
    pooling: Literal["mean", "cls", "none"] = doc(
        "mean: average of the token vectors (padding excluded), as sentence-transformers; cls: first token; "
        "none: every token's vector (special tokens included), as transformers' feature-extraction pipeline.",
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

        pairs = [(np.ravel(a["embedding"]), np.ravel(b["embedding"])) for a, b in zip(rows, reference)
                 if a["embedding"] is not None and b["embedding"] is not None]  # (token vectors: one row's all)
        if not pairs:
            return 1.0
        return float(np.mean([a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in pairs]))

    @classmethod
    def columns(cls, params: Params) -> list[str]:
        return ["embedding"]

    def column_types(self) -> dict[str, pa.DataType]:
        vector = pa.list_(pa.float32(), self.config.hidden_size)
        return {"embedding": pa.list_(vector) if self.params.pooling == "none" else vector}

    def forward(self, model: Any, batch: dict[str, Any], meta: list[Any]) -> list[dict[str, Any]]:
        hidden, mask = model(**batch).last_hidden_state, batch["attention_mask"]
        if self.params.pooling == "none":  # each row's real tokens (batches are padded on the right)
            tokens = pool(hidden, mask, "none", self.params.normalize)
            return [{"embedding": t[:n].tolist()} for t, n in zip(tokens, mask.sum(-1).tolist())]
        return [{"embedding": v} for v in pool(hidden, mask, self.params.pooling, self.params.normalize)]

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
                vector = {"mean": tokens.mean(0), "cls": tokens[0]}.get(self.params.pooling, tokens)
                norm = np.linalg.norm(vector, axis=-1, keepdims=True)
                out.append({"embedding": vector / norm if self.params.normalize else vector})
            return out

        return Baseline(embed, f"pipeline (bs={batch_size}, float32)")


def pool(hidden: Any, attention_mask: Any, pooling: str, normalize: bool) -> Any:
    """Token vectors to one float32 numpy vector per row (pooling none: the token vectors)."""
    import torch

    hidden = hidden.float()
    if pooling == "none":
        pooled = hidden
    elif pooling == "cls":
        pooled = hidden[:, 0]
    else:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
    return pooled.cpu().numpy()


TASK = Embeddings
