"""Text classification (sentiment and friends): one label and score a row, optionally the top k."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from batchnlp.errors import SpecError
from batchnlp.spec import doc
from batchnlp.tasks.base import Task


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
    Params = Params
    model_class = "AutoModelForSequenceClassification"

    def __init__(self, params: Params, model_config: Any):
        super().__init__(params, model_config)
        self.labels = [model_config.id2label.get(i, f"LABEL_{i}") for i in range(model_config.num_labels)]
        self.function = params.function_to_apply or default_function(model_config)

    def fields(self) -> list[pa.Field]:
        fields = [pa.field("label", pa.string()), pa.field("score", pa.float32())]
        if self.params.top_k != 1:
            fields.append(pa.field("scores", pa.list_(SCORE_ENTRY)))
        return fields

    def forward(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        logits = model(**batch).logits.float()
        if self.function == "softmax":
            scores = torch.softmax(logits, dim=-1)
        elif self.function == "sigmoid":
            scores = torch.sigmoid(logits)
        else:
            scores = logits
        scores = scores.cpu().numpy()
        best = scores.argmax(axis=-1)
        out: dict[str, Any] = {
            "label": [self.labels[i] for i in best],
            "score": scores[np.arange(len(best)), best].astype(np.float32),
        }
        if self.params.top_k != 1:
            k = len(self.labels) if self.params.top_k == "all" else min(self.params.top_k, len(self.labels))
            order = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
            out["scores"] = [[{"label": self.labels[j], "score": float(row[j])} for j in idx]
                             for row, idx in zip(scores, order)]
        return out


def default_function(config: Any) -> str:
    """The same choice as transformers' TextClassificationPipeline."""
    if config.problem_type == "regression":
        return "none"
    if config.problem_type == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    return "softmax"


TASK = Classification
