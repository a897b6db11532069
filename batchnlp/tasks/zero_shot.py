"""Zero-shot classification: score texts against labels chosen at run time.

`nli` (default) pairs each text with a hypothesis per label ("This example is {}.") and reads the
entailment logit of an NLI model, as transformers' pipeline does; the pairs are features, so they
are sorted and batched with every other pair of the shard and cost one forward each, with no
per-text overhead. `embedding` embeds each text once and each distinct label once and ranks the
labels by cosine similarity: one forward per text whatever the number of labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import pyarrow as pa

from batchnlp.errors import ModelUnavailableError, SpecError
from batchnlp.settings import doc
from batchnlp.tasks.base import Baseline, Feature, RowError, Task, make_pipeline
from batchnlp.tasks.embeddings import pool


@dataclass(frozen=True)
class Params:
    candidate_labels: list[str] | None = doc("The labels, the same for every row.", default=None)
    candidate_labels_column: str | None = doc(
        "Instead: a column holding each row's labels (a list, or one string of comma-separated labels).",
        default=None)
    hypothesis_template: str | None = doc(
        "The text each label becomes; {} is replaced by the label. Default: 'This example is {}.' for nli "
        "(the hypothesis), the label itself for embedding.", default=None)
    multi_label: bool = doc("nli: score each label on its own (entailment vs contradiction) instead of "
                            "softmaxing over the labels.", default=False)
    method: Literal["nli", "embedding"] = doc(
        "nli: an NLI model (AutoModelForSequenceClassification); embedding: a sentence-embedding model "
        "(AutoModel, mean pooling).", default="nli")
    temperature: float = doc("embedding: scores are softmax(cosine / temperature) over the labels.",
                             default=0.05)

    def validate(self) -> None:
        if (self.candidate_labels is None) == (self.candidate_labels_column is None):
            raise SpecError("task.candidate_labels", "give the labels (a list) or candidate_labels_column")
        if self.candidate_labels is not None and not self.candidate_labels:
            raise SpecError("task.candidate_labels", "needs at least one label")
        if self.hypothesis_template is not None and "{}" not in self.hypothesis_template:
            raise SpecError("task.hypothesis_template", "must contain {} where the label goes")
        if self.method == "embedding" and self.multi_label:
            raise SpecError("task.multi_label", "only applies to method: nli")
        if self.temperature <= 0:
            raise SpecError("task.temperature", "must be above 0")


class ZeroShot(Task):
    name = "zero-shot-classification"
    description = "Rank labels given at run time (NLI entailment, or embedding similarity)."
    fixed_columns = {"labels": pa.list_(pa.string()), "scores": pa.list_(pa.float32())}

    def setup(self) -> None:
        super().setup()
        self.model_class = "AutoModel" if self.params.method == "embedding" else "AutoModelForSequenceClassification"
        default = "{}" if self.params.method == "embedding" else "This example is {}."
        self.template = self.params.hypothesis_template or default
        self.label_vectors: dict[str, np.ndarray] = {}
        if self.params.method == "nli":
            self.entailment = _label_index(self.config, "entail")
            if self.entailment is None:
                raise ModelUnavailableError(
                    f"model: zero-shot classification with method nli needs an NLI model with an entailment label; "
                    f"this one has {list(self.config.label2id)} (or use method: embedding with a sentence-embedding "
                    "model)")
            # transformers' convention when no label is named so: the first (or last) logit.
            self.contradiction = _label_index(self.config, "contra")
            if self.contradiction is None:
                self.contradiction = -1 if self.entailment == 0 else 0

    @classmethod
    def extra_columns(cls, params: Params) -> dict[str, str]:
        return {"task.candidate_labels_column": params.candidate_labels_column} if params.candidate_labels_column \
            else {}

    @classmethod
    def needs_head(cls, params: Params) -> bool:
        return params.method == "nli"


    def agreement_key(self, row: dict[str, Any]) -> Any:
        return row["labels"][0]  # the top label

    def labels_of(self, row: dict[str, Any]) -> list[str]:
        if self.params.candidate_labels is not None:
            return list(self.params.candidate_labels)
        value = row["candidate_labels_column"]
        labels = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value or [])
        labels = [label for label in labels if label]
        if not labels:
            raise RowError("no candidate labels")
        return labels

    def encode(self, rows: Sequence[dict[str, Any]]) -> list[list[Feature] | RowError]:
        labels = []
        for row in rows:
            try:
                labels.append(self.labels_of(row))
            except RowError as e:
                labels.append(e)
        if self.params.method == "embedding":
            texts = super().encode(rows)
            return [lab if isinstance(lab, RowError) else [{**f, "meta": lab} for f in feats]
                    for feats, lab in zip(texts, labels)]
        # One (text, hypothesis) feature per label; the text is truncated, never the hypothesis.
        firsts, seconds, owner = [], [], []
        for i, (row, row_labels) in enumerate(zip(rows, labels)):
            if isinstance(row_labels, RowError):
                continue
            for label in row_labels:
                firsts.append(row["text"])
                seconds.append(self.template.format(label))
                owner.append(i)
        enc = self.tokenizer(firsts, seconds, truncation="only_first", max_length=self.max_length,
                             return_attention_mask=False,
                             return_token_type_ids="token_type_ids" in self.tokenizer.model_input_names)
        out: list[list[Feature] | RowError] = [lab if isinstance(lab, RowError) else [] for lab in labels]
        for j, i in enumerate(owner):
            out[i].append({**{k: enc[k][j] for k in enc.keys()}, "meta": None})
        return out

    def forward(self, model: Any, batch: dict[str, Any], meta: list[Any]) -> list[Any]:
        if self.params.method == "nli":
            return list(model(**batch).logits.float().cpu().numpy())
        texts = pool(model(**batch).last_hidden_state, batch["attention_mask"], "mean", True)
        self._embed_labels(model, {label for labels in meta for label in labels}, batch["input_ids"].device)
        out = []
        for vector, labels in zip(texts, meta):
            similarity = np.array([self.label_vectors[label] @ vector for label in labels]) / self.params.temperature
            out.append((labels, _softmax(similarity)))
        return out

    def _embed_labels(self, model: Any, labels: set[str], device: Any) -> None:
        missing = sorted(labels - set(self.label_vectors))
        if missing:
            texts = [self.template.format(label) for label in missing]
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(device)
            vectors = pool(model(**enc).last_hidden_state, enc["attention_mask"], "mean", True)
            self.label_vectors.update(zip(missing, vectors))

    def decode(self, row: dict[str, Any], outputs: list[Any]) -> dict[str, Any]:
        if self.params.method == "embedding":
            labels, scores = outputs[0]
        else:
            labels = self.labels_of(row)
            logits = np.stack(outputs)
            # A single label is scored on its own (entailment vs contradiction), as transformers does.
            if self.params.multi_label or len(labels) == 1:
                pair = logits[:, [self.contradiction, self.entailment]]
                scores = _softmax(pair, axis=-1)[:, 1]
            else:
                scores = _softmax(logits[:, self.entailment])
        order = np.argsort(-scores, kind="stable")
        return {"labels": [labels[i] for i in order], "scores": [float(scores[i]) for i in order]}

    def baseline(self, model: Any, texts: list[str], batch_size: int) -> Baseline:
        params = self.params
        if params.candidate_labels is None or params.method != "nli":
            raise SpecError("task", "the zero-shot bench baseline needs candidate_labels and method: nli")
        pipe = make_pipeline("zero-shot-classification", model, self.tokenizer)
        return Baseline(lambda: [{"labels": o["labels"]} for o in pipe(
            texts, candidate_labels=list(params.candidate_labels), hypothesis_template=self.template,
            multi_label=params.multi_label, batch_size=batch_size)], f"pipeline (bs={batch_size}, float32)")


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _label_index(config: Any, prefix: str) -> int | None:
    for label, index in config.label2id.items():
        if label.lower().startswith(prefix):
            return int(index)
    return None


TASK = ZeroShot
