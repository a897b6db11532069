"""Text classification (sentiment and friends): one label and score a row, optionally the top k."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from batchnlp.errors import SpecError
from batchnlp.settings import doc
from batchnlp.tasks.bench_hooks import Baseline, make_pipeline
from batchnlp.tasks.base import Task, classifier_head


@dataclass(frozen=True)
class Params:
    top_k: int | Literal["all"] = doc(
        "1: only `label` and `score`. k > 1 or 'all': also `scores`, the k best labels.", default=1)
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = doc(
        "Turns logits into scores. Default: from the model config's problem_type, as transformers does "
        "(sigmoid for multi-label or a single logit, none for regression, else softmax).", default=None)

    def validate(self) -> None:
        if self.top_k != "all" and self.top_k < 1:
            raise SpecError("task.top_k", "must be 1 or more, or 'all'")


SCORE_ENTRY = pa.struct([("label", pa.string()), ("score", pa.float32())])


class Classification(Task):
    name = "text-classification"
    description = "One label per text (sentiment, topic, ...), with AutoModelForSequenceClassification."
    model_class = "AutoModelForSequenceClassification"

    def setup(self) -> None:
        super().setup()
        self.labels = [self.config.id2label.get(i, f"LABEL_{i}") for i in range(self.config.num_labels)]
        self.function = self.params.function_to_apply or default_function(self.config)

    @classmethod
    def columns(cls, params: Params) -> list[str]:
        return ["label", "score"] + (["scores"] if params.top_k != 1 else [])

    def column_types(self) -> dict[str, pa.DataType]:
        return {"label": pa.string(), "score": pa.float32(), "scores": pa.list_(SCORE_ENTRY)}

    def prepare(self, model: Any) -> None:
        from batchnlp.model.first_position import keep_first_position

        keep_first_position(model)  # the head reads position 0 alone

    def float32_head(self, model: Any) -> Any:
        return classifier_head(model)

    def scores_of(self, row: dict[str, Any]) -> list[float] | None:
        if row.get("scores"):
            return [entry["score"] for entry in row["scores"]]
        if self.function == "softmax" and len(self.labels) == 2:
            return [row["score"], 1 - row["score"]]  # the other label's, exactly
        return [row["score"]]

    def forward(self, model: Any, batch: dict[str, Any], meta: list[Any]) -> list[dict[str, Any]]:
        return [self.row(scores) for scores in apply_function(model(**batch).logits, self.function)]

    def row(self, scores: np.ndarray) -> dict[str, Any]:
        best = int(scores.argmax())
        out: dict[str, Any] = {"label": self.labels[best], "score": float(scores[best])}
        if self.params.top_k != 1:
            k = len(self.labels) if self.params.top_k == "all" else min(self.params.top_k, len(self.labels))
            order = np.argsort(-scores, kind="stable")[:k]
            out["scores"] = [{"label": self.labels[j], "score": float(scores[j])} for j in order]
        return out

    def baseline(self, model: Any, texts: list[str], batch_size: int) -> Baseline:
        pipe = make_pipeline("text-classification", model, self.tokenizer)
        return Baseline(lambda: [{"label": o["label"]} for o in pipe(texts, batch_size=batch_size,
                                                                      **self.truncation())],
                        f"pipeline (bs={batch_size}, float32)")


def apply_function(logits: Any, function: str) -> np.ndarray:
    """Logits (a torch tensor) to float32 scores, as numpy."""
    import torch

    logits = logits.float()
    if function == "softmax":
        logits = torch.softmax(logits, dim=-1)
    elif function == "sigmoid":
        logits = torch.sigmoid(logits)
    return logits.cpu().numpy()


def default_function(config: Any) -> str:
    """The same choice as transformers' TextClassificationPipeline."""
    if config.problem_type == "regression":
        return "none"
    if config.problem_type == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    return "softmax"


TASK = Classification
