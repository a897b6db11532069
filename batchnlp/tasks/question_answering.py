"""Extractive question answering: the span of the context that answers the question.

The question is `input.text_column`, the context `input.text_pair_column`. A context longer than
the window (384 tokens by default, as the pipeline) is split into windows that overlap by
`doc_stride` tokens; every window is a feature, batched with the rest of the shard. Scoring is that
of the question-answering pipeline transformers 4.x shipped (tests hold it against recorded
outputs of 4.57): per window, softmax of the start and end logits over the context tokens and
[CLS]; score = p(start) * p(end) for spans up to `max_answer_len` tokens; each span widened to
whole words (`align_to_words`); the scores of one answer text (compared ignoring case) found more
than once, in overlapping windows say, are added up; [CLS]'s score is the empty answer's, with
`handle_impossible_answer`. `start`/`end` are character offsets into the context, so
`context[start:end] == answer`. One deliberate difference: a question longer than
`max_question_len` tokens is cut to it (the pipeline fails on a question longer than its window).
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
    align_to_words: bool = doc("Widen each span to whole words, as the pipeline does (false: the tokens' own "
                               "character offsets).", default=True)

    def validate(self) -> None:
        for key in ("doc_stride", "max_answer_len", "max_question_len", "top_k"):
            if getattr(self, key) < (0 if key == "doc_stride" else 1):
                raise SpecError(f"task.{key}", "is too small")


class QuestionAnswering(Task):
    name = "question-answering"
    description = ("Extractive QA: question in input.text_column, context in input.text_pair_column "
                   "(AutoModelForQuestionAnswering).")
    model_class = "AutoModelForQuestionAnswering"
    windowed = True
    #: The pipeline's window (its max_seq_len), unless the model's limit or runtime.max_length is lower.
    default_max_length = 384

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

    @classmethod
    def columns(cls, params: Params) -> list[str]:
        return ["answer", "score", "start", "end"] + (["answers"] if params.top_k > 1 else [])

    def column_types(self) -> dict[str, pa.DataType]:
        return {"answer": pa.string(), "score": pa.float32(), "start": pa.int32(), "end": pa.int32(),
                "answers": pa.list_(ANSWER)}

    def agreement_key(self, row: dict[str, Any]) -> Any:
        return row["start"], row["end"]

    def scores_of(self, row: dict[str, Any]) -> list[float] | None:
        if row.get("answers"):
            return [answer["score"] for answer in row["answers"]]
        return [row["score"]] if row.get("score") is not None else None

    def float32_head(self, model: Any) -> Any:
        return getattr(model, "qa_outputs", None)

    def encode(self, rows: Sequence[dict[str, Any]]) -> list[list[Feature] | RowError]:
        questions = [self._question(row["text"]) for row in rows]
        enc = self.tokenizer(questions, [row["pair"] for row in rows], truncation="only_second",
                             max_length=self.max_length, stride=self.doc_stride,
                             return_overflowing_tokens=True, return_offsets_mapping=True, return_attention_mask=False,
                             return_token_type_ids="token_type_ids" in self.tokenizer.model_input_names)
        out: list[list[Feature] | RowError] = [[] for _ in rows]
        cls = self.tokenizer.cls_token_id
        for j, i in enumerate(enc["overflow_to_sample_mapping"]):
            in_context = [s == 1 for s in enc.sequence_ids(j)]
            # [CLS] stays in the softmax (its score is the empty answer's), as in the pipeline.
            allowed = [c or token == cls for c, token in zip(in_context, enc["input_ids"][j])]
            meta = {"offsets": enc["offset_mapping"][j], "in_context": in_context, "allowed": allowed,
                    "words": enc.word_ids(j)}
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
        context, params = row["pair"], self.params
        answers: list[dict[str, Any]] = []
        null_score = 1000000.0  # as the pipeline: large, lowered by each window's [CLS] score
        pre_top_k = params.top_k * 2 + 10 if params.align_to_words else params.top_k  # some spans merge
        for start_logits, end_logits, meta in outputs:
            spans, null_score = select_spans(start_logits, end_logits, np.array(meta["allowed"]), null_score,
                                             pre_top_k, params.handle_impossible_answer, params.max_answer_len)
            for s, e, score in spans:
                begin, finish = self._characters(meta, s, e)
                text = context[begin:finish]
                same = next((a for a in answers if a["answer"].lower() == text.lower()), None)
                if same is not None:
                    same["score"] += score
                else:
                    answers.append({"answer": text, "score": score, "start": begin, "end": finish})
        if params.handle_impossible_answer:
            answers.append({"answer": "", "score": null_score, "start": 0, "end": 0})
        if not answers:
            raise RowError("no answer span found in the context")
        best = sorted(answers, key=lambda a: a["score"], reverse=True)[:params.top_k]
        out = dict(best[0])
        if params.top_k > 1:
            out["answers"] = best
        return out

    def _characters(self, meta: dict[str, Any], s: int, e: int) -> tuple[int, int]:
        """The character span of tokens s..e: widened to whole words (the words' characters within
        this window), or the tokens' own offsets."""
        offsets, words = meta["offsets"], meta["words"]
        if self.params.align_to_words and words[s] is not None and words[e] is not None:
            context = meta["in_context"]
            begin = min(offsets[t][0] for t in range(len(words)) if context[t] and words[t] == words[s])
            finish = max(offsets[t][1] for t in range(len(words)) if context[t] and words[t] == words[e])
            return begin, finish
        return offsets[s][0], offsets[e][1]


def select_spans(start_logits: np.ndarray, end_logits: np.ndarray, allowed: np.ndarray, null_score: float,
                 top_k: int, handle_impossible: bool, max_answer_len: int) -> tuple[list[tuple[int, int, float]], float]:
    """One window's best (start token, end token, score) spans and the running null score, computed
    as transformers 4.x's select_starts_ends and decode_spans did (same masking, ties and order)."""
    start = _softmax(np.where(allowed, start_logits, -10000.0))
    end = _softmax(np.where(allowed, end_logits, -10000.0))
    if handle_impossible:
        null_score = min(null_score, float(start[0] * end[0]))
    start[0] = end[0] = 0.0  # the [CLS] token is never part of a span
    candidates = np.tril(np.triu(np.outer(start, end)), max_answer_len - 1)
    flat = candidates.flatten()
    if top_k == 1:
        order = np.array([np.argmax(flat)])
    elif len(flat) < top_k:
        order = np.argsort(-flat)
    else:
        order = np.argpartition(-flat, top_k)[:top_k]
        order = order[np.argsort(-flat[order])]
    starts, ends = np.unravel_index(order, candidates.shape)
    usable = np.isin(starts, allowed.nonzero()) & np.isin(ends, allowed.nonzero())
    return [(int(s), int(e), float(candidates[s, e])) for s, e in zip(starts[usable], ends[usable])], null_score


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


TASK = QuestionAnswering
