"""Extractive question answering: the span of the context that answers the question.

The question is `input.text_column`, the context `input.text_pair_column`. A context longer than
max_length is split into windows that overlap by `doc_stride` tokens; every window is a feature,
batched with the rest of the shard. The best span over all windows is kept, with character
offsets into the original context, so `context[start:end] == answer`. Scoring follows the
question-answering pipeline that transformers 4.x shipped: per window, softmax of the start and
end logits over the context tokens (and the [CLS] token when impossible answers are allowed),
score = p(start) * p(end), spans up to `max_answer_len` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from batchnlp.errors import SpecError
from batchnlp.settings import doc
from batchnlp.tasks.base import Feature, RowError, Task

ANSWER = pa.struct([("answer", pa.string()), ("score", pa.float32()), ("start", pa.int32()), ("end", pa.int32())])


@dataclass(frozen=True)
class Params:
    doc_stride: int = doc("Tokens shared by consecutive windows of a long context (at most half of max_length).",
                          default=128)
    max_answer_len: int = doc("Longest answer, in tokens.", default=15)
    max_question_len: int = doc("Questions are truncated to this many tokens (fewer if max_length needs it).",
                                default=64)
    top_k: int = doc("1: `answer`, `score`, `start`, `end`. k > 1: also `answers`, the k best spans.", default=1)
    handle_impossible_answer: bool = doc("Allow the empty answer (score of the [CLS] token), for models trained "
                                         "on SQuAD 2.0.", default=False)

    def validate(self) -> None:
        for key in ("doc_stride", "max_answer_len", "max_question_len", "top_k"):
            if getattr(self, key) < (0 if key == "doc_stride" else 1):
                raise SpecError(f"task.{key}", "is too small")


class QuestionAnswering(Task):
    name = "question-answering"
    description = ("Extractive QA: question in input.text_column, context in input.text_pair_column "
                   "(AutoModelForQuestionAnswering).")
    Params = Params
    model_class = "AutoModelForQuestionAnswering"
    windowed = True

    @classmethod
    def check_input(cls, params: Params, input_spec: Any) -> None:
        if not input_spec.text_pair_column:
            raise SpecError("input.text_pair_column", "required by question-answering: the context column "
                                                      "(input.text_column is the question)")

    def setup(self) -> None:
        super().setup()
        # As transformers did: the stride never exceeds half a window.
        self.doc_stride = min(self.params.doc_stride, self.max_length // 2)
        # Each window holds the question, 3 special tokens and more context tokens than the stride.
        self.question_cap = min(self.params.max_question_len, self.max_length - self.doc_stride - 4)
        if self.question_cap < 4:
            raise SpecError("runtime.max_length", f"{self.max_length} leaves no room for a question and the context")

    def fields(self) -> list[pa.Field]:
        fields = [pa.field("answer", pa.string()), pa.field("score", pa.float32()), pa.field("start", pa.int32()),
                  pa.field("end", pa.int32())]
        if self.params.top_k > 1:
            fields.append(pa.field("answers", pa.list_(ANSWER)))
        return fields

    def agreement_key(self, row: dict[str, Any]) -> Any:
        return row["start"], row["end"]

    def encode(self, rows: Sequence[dict[str, Any]]) -> list[list[Feature] | RowError]:
        questions = [self._question(row["text"]) for row in rows]
        enc = self.tokenizer(questions, [row["pair"] for row in rows], truncation="only_second",
                             max_length=self.max_length, stride=self.doc_stride,
                             return_overflowing_tokens=True, return_offsets_mapping=True, return_attention_mask=False,
                             return_token_type_ids="token_type_ids" in self.tokenizer.model_input_names)
        out: list[list[Feature] | RowError] = [[] for _ in rows]
        for j, i in enumerate(enc["overflow_to_sample_mapping"]):
            in_context = [s == 1 for s in enc.sequence_ids(j)]
            meta = {"offsets": enc["offset_mapping"][j], "in_context": in_context}
            inputs = {k: enc[k][j] for k in ("input_ids", "token_type_ids") if k in enc}
            out[i].append({**inputs, "meta": meta})
        return out

    def _question(self, question: str) -> str:
        ids = self.tokenizer(question, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.question_cap:
            return question
        return self.tokenizer.decode(ids[:self.question_cap])

    def forward(self, model: Any, batch: dict[str, Any], meta: list[Any]) -> list[Any]:
        out = model(**batch)
        starts = out.start_logits.float().cpu().numpy()
        ends = out.end_logits.float().cpu().numpy()
        lengths = batch["attention_mask"].sum(dim=1).cpu().numpy()
        return [(starts[r, :n], ends[r, :n], m) for r, (n, m) in enumerate(zip(lengths, meta))]

    def decode(self, row: dict[str, Any], outputs: list[Any]) -> dict[str, Any]:
        context = row["pair"]
        candidates, null_score = [], None
        for start_logits, end_logits, meta in outputs:
            spans, window_null = best_spans(start_logits, end_logits, np.array(meta["in_context"]),
                                            self.params.max_answer_len, self.params.top_k,
                                            self.params.handle_impossible_answer)
            null_score = window_null if null_score is None else min(null_score, window_null)
            for score, s, e in spans:
                begin, finish = meta["offsets"][s][0], meta["offsets"][e][1]
                candidates.append({"answer": context[begin:finish], "score": score, "start": begin, "end": finish})
        if self.params.handle_impossible_answer and null_score is not None:
            candidates.append({"answer": "", "score": null_score, "start": 0, "end": 0})
        if not candidates:
            raise RowError("no answer span found in the context")
        candidates.sort(key=lambda c: -c["score"])
        best = candidates[:self.params.top_k]
        out = dict(best[0])
        if self.params.top_k > 1:
            out["answers"] = best
        return out


def best_spans(start_logits: np.ndarray, end_logits: np.ndarray, in_context: np.ndarray, max_answer_len: int,
               top_k: int, allow_null: bool) -> tuple[list[tuple[float, int, int]], float]:
    """The top_k (score, start token, end token) spans of one window, and its null ([CLS]) score."""
    allowed = in_context.copy()
    if allow_null:
        allowed[0] = True
    start = _softmax(np.where(allowed, start_logits, -10000.0))
    end = _softmax(np.where(allowed, end_logits, -10000.0))
    null_score = float(start[0] * end[0])
    # Scores of every (start, end) pair with start <= end < start + max_answer_len, context only.
    scores = np.triu(np.tril(np.outer(start, end), max_answer_len - 1))
    scores[~in_context, :] = 0
    scores[:, ~in_context] = 0
    flat = np.argsort(-scores, axis=None, kind="stable")[:top_k]
    spans = []
    for index in flat:
        s, e = np.unravel_index(index, scores.shape)
        if scores[s, e] > 0:
            spans.append((float(scores[s, e]), int(s), int(e)))
    return spans, null_score


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


TASK = QuestionAnswering
