"""Zero-shot classification: score texts against labels chosen at run time.

`nli` (default) pairs each text with a hypothesis per label ("This example is {}.") and reads the
entailment logit of an NLI model, as transformers' pipeline does; the pairs are features, so they
are sorted and batched with every other pair of the shard and cost one forward each, with no
per-text overhead. `embedding` embeds each text once and each distinct label once and ranks the
labels by cosine similarity: one forward per text whatever the number of labels. `causal-lm` asks
an instruction LLM: the prompt (with `prompt_template`, `chat_template`, `system_prompt`, as
text-generation builds it) runs once, and each label is scored by its log-likelihood as the answer
on the prompt's KV cache (`likelihood.py`); every row gets one of the labels, never free text.
Scores are the softmax over the labels of the answers' total log-probabilities (with a chat
template the answer ends with its end-of-turn token: the label is the whole reply), or of their
mean per token with `label_scoring: mean`. With `multi_label`, each label is its own question
(`{label}` in the prompt) and its score is P(Yes) / (P(Yes) + P(No)) for the answer's first token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import pyarrow as pa

from batchnlp.errors import ModelUnavailableError, SpecError
from batchnlp.settings import doc
from batchnlp.tasks import decoding, likelihood
from batchnlp.tasks.bench_hooks import Baseline, make_pipeline
from batchnlp.tasks.base import Feature, RowError, Task, classifier_head
from batchnlp.tasks.embeddings import pool


PROMPT = "{text}\n\nWhich one of these labels fits it best: {labels}? Answer with the label only."
MULTI_PROMPT = "{text}\n\nIs this about {label}? Answer Yes or No."
#: causal-lm with multi_label: the answers whose likelihoods make a label's score.
YES_NO = ("Yes", "No")


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
    method: Literal["nli", "embedding", "causal-lm"] = doc(
        "nli: an NLI model (AutoModelForSequenceClassification); embedding: a sentence-embedding model "
        "(AutoModel, mean pooling); causal-lm: an instruction LLM (AutoModelForCausalLM) scoring each label "
        "as its answer.", default="nli")
    temperature: float = doc("embedding: scores are softmax(cosine / temperature) over the labels.",
                             default=0.05)
    prompt_template: str | None = doc(
        "causal-lm: the prompt made from each text: {text} marks the text, {labels} the labels joined by "
        "', ', and with multi_label {label} the one label asked about. Default: " + repr(PROMPT) + ", with "
        "multi_label " + repr(MULTI_PROMPT) + ".", default=None)
    chat_template: bool = doc("causal-lm: wrap the prompt as the user message of the model's chat template.",
                              default=False)
    system_prompt: str | None = doc("causal-lm with chat_template: a system message before the user message.",
                                    default=None)
    answer_ends_reply: bool = doc(
        "causal-lm with chat_template: the answer is the whole reply, so its end-of-turn token is scored too "
        "(\"positive\" may not be the start of \"positively awful\"); false scores the answer as the start of "
        "a longer reply, for a hypothesis_template that leads in the way the model answers (\"This review is "
        "{}\").", default=True)
    label_scoring: Literal["total", "mean"] = doc(
        "causal-lm: softmax over the labels of each answer's total log-probability (the probability of the "
        "whole answer, renormalised over the labels), or of its mean log-probability per token.",
        default="total")

    def validate(self) -> None:
        if (self.candidate_labels is None) == (self.candidate_labels_column is None):
            raise SpecError("task.candidate_labels", "give the labels (a list) or candidate_labels_column")
        if self.candidate_labels is not None and not self.candidate_labels:
            raise SpecError("task.candidate_labels", "needs at least one label")
        if self.hypothesis_template is not None and "{}" not in self.hypothesis_template:
            raise SpecError("task.hypothesis_template", "must contain {} where the label goes")
        if self.method == "embedding" and self.multi_label:
            raise SpecError("task.multi_label", "only applies to methods nli and causal-lm")
        if self.temperature <= 0:
            raise SpecError("task.temperature", "must be above 0")
        causal = self.method == "causal-lm"
        for key, value in (("prompt_template", self.prompt_template), ("chat_template", self.chat_template),
                           ("system_prompt", self.system_prompt)):
            if value and not causal:
                raise SpecError(f"task.{key}", "only applies to method: causal-lm")
        if self.system_prompt is not None and not self.chat_template:
            raise SpecError("task.system_prompt", "only applies with chat_template: true")
        if causal:
            template = self.prompt_template or (MULTI_PROMPT if self.multi_label else PROMPT)
            if "{text}" not in template:
                raise SpecError("task.prompt_template", "must contain {text} where each row's text goes")
            if self.multi_label and "{label}" not in template:
                raise SpecError("task.prompt_template", "with multi_label, must contain {label}: each label is "
                                                        "asked about on its own (answered Yes or No)")


class ZeroShot(Task):
    name = "zero-shot-classification"
    description = "Rank labels given at run time (NLI entailment, or embedding similarity)."
    fixed_columns = {"labels": pa.list_(pa.string()), "scores": pa.list_(pa.float32())}

    def setup(self) -> None:
        super().setup()
        self.model_class = self.model_class_of(self.params)
        default = "This example is {}." if self.params.method == "nli" else "{}"
        self.template = self.params.hypothesis_template or default
        self.label_vectors: dict[str, np.ndarray] = {}
        if self.params.method == "causal-lm":
            self._setup_causal()
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

    def _setup_causal(self) -> None:
        params = self.params
        if params.chat_template and not self.tokenizer.chat_template:
            raise SpecError("task.chat_template", "this model's tokenizer has no chat template")
        self.padding_side = "left"  # every prompt ends at the last position, where answers begin
        self.prompt = params.prompt_template or (MULTI_PROMPT if params.multi_label else PROMPT)
        self.end = likelihood.end_of_turn(self.tokenizer) if params.chat_template and params.answer_ends_reply else []
        self.answers: dict[str, list[int]] = {}
        if params.multi_label:
            self.answers = {a: likelihood.answer_ids(self.tokenizer, a)[:1] for a in YES_NO}
            if self.answers["Yes"] == self.answers["No"]:
                raise ModelUnavailableError("model: its tokenizer writes Yes and No with the same first token; "
                                            "multi_label with causal-lm cannot tell them apart")

    @classmethod
    def model_class_of(cls, params: Params) -> str:
        return {"embedding": "AutoModel", "causal-lm": "AutoModelForCausalLM"}.get(
            params.method, "AutoModelForSequenceClassification")

    @classmethod
    def extra_columns(cls, params: Params) -> dict[str, str]:
        return {"task.candidate_labels_column": params.candidate_labels_column} if params.candidate_labels_column \
            else {}

    @classmethod
    def needs_head(cls, params: Params) -> bool:
        return params.method != "embedding"

    def prepare(self, model: Any) -> None:
        if self.params.method == "causal-lm" and (why := likelihood.check_croppable(model)) is not None:
            raise ModelUnavailableError(f"model: method causal-lm scores labels on the prompt's KV cache, and {why}")
        if self.params.method == "nli":
            from batchnlp.model.first_position import keep_first_position

            keep_first_position(model)  # the NLI head reads position 0 alone
        self.prefix = likelihood.PrefixCache()

    def batch_length(self, feature: Feature) -> int:
        extra = 0
        if self.params.method == "causal-lm":  # each answer's tokens run on the prompt's cache
            extra = max((len(self._answer(a)) for a in feature["meta"]), default=0)
        return len(feature["input_ids"]) + extra


    def agreement_key(self, row: dict[str, Any]) -> Any:
        return row["labels"][0]  # the top label

    def scores_of(self, row: dict[str, Any]) -> list[float] | None:
        return list(row["scores"])

    def float32_head(self, model: Any) -> Any:
        # causal-lm: the LM head, whose log-probabilities of the answers are the scores (computed
        # at the scored positions only); nli: the classifier; embedding: none (cosines of vectors).
        if self.params.method == "causal-lm":
            return model.get_output_embeddings()
        return classifier_head(model) if self.params.method == "nli" else None

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
        if self.params.method == "causal-lm":
            return self._encode_prompts(rows, labels)
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

    def _encode_prompts(self, rows: Sequence[dict[str, Any]], labels: list) -> list[list[Feature] | RowError]:
        """One prompt per row (meta: the labels to score), or with multi_label one per row and label
        (meta: Yes and No)."""
        params = self.params
        prompts, owner, metas = [], [], []
        for i, (row, row_labels) in enumerate(zip(rows, labels)):
            if isinstance(row_labels, RowError):
                continue
            asks = [(label, list(YES_NO)) for label in row_labels] if params.multi_label else [("", row_labels)]
            for label, answers in asks:
                prompts.append(decoding.build_prompt(self.tokenizer, self.prompt, row["text"], params.chat_template,
                                                     params.system_prompt, labels=", ".join(row_labels),
                                                     label=label))
                owner.append(i)
                metas.append(answers)
        # A chat template writes its own special tokens; plain text gets the tokenizer's.
        enc = self.tokenizer(prompts, add_special_tokens=not params.chat_template, return_attention_mask=False)
        out: list[list[Feature] | RowError] = [lab if isinstance(lab, RowError) else [] for lab in labels]
        for ids, i, answers in zip(enc["input_ids"], owner, metas):
            room = self.max_length - max(len(self._answer(a)) for a in answers)
            # Too long a prompt loses its beginning, never its end (the question and the answer's start).
            out[i].append({"input_ids": ids[-room:], "meta": answers})
        return out

    def _answer(self, answer: str) -> list[int]:
        if answer not in self.answers:
            self.answers[answer] = likelihood.answer_ids(self.tokenizer, self.template.format(answer), self.end)
        return self.answers[answer]

    def forward(self, model: Any, batch: dict[str, Any], meta: list[Any]) -> list[Any]:
        if self.params.method == "causal-lm":
            wanted = {answer: self._answer(answer) for answers in meta for answer in answers}
            mean = self.params.label_scoring == "mean" and not self.params.multi_label
            # A softmax over totals does not see what every answer shares; a mean over each answer's tokens does.
            scored = likelihood.score(model, batch, wanted, common_counts=mean, prefix=self.prefix)
            scores = {a: s.cpu().numpy() for a, s in scored.items()}
            return [np.array([scores[a][i] / (len(wanted[a]) if mean else 1) for a in answers])
                    for i, answers in enumerate(meta)]
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
        elif self.params.method == "causal-lm":
            labels = self.labels_of(row)
            # multi_label: one feature per label, (log P(Yes), log P(No)) each
            scores = (np.array([_softmax(o)[0] for o in outputs]) if self.params.multi_label
                      else _softmax(outputs[0]))
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
