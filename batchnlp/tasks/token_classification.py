"""Named-entity recognition (token classification) with transformers' aggregation strategies.

A text longer than max_length is cut into overlapping windows (`stride` tokens shared). Each token
takes its scores from the window where it sits farthest from an edge (the most context on both
sides), and entities are grouped once over the whole text, so no entity is lost or split at a
window boundary. The grouping follows transformers' TokenClassificationPipeline exactly
(gather_pre_entities / aggregate / group_entities), rewritten here on plain data because
batchnlp owns its task layer; tests hold the two side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import numpy as np
import pyarrow as pa

from batchnlp.errors import SpecError
from batchnlp.settings import doc
from batchnlp.tasks.bench_hooks import Baseline, make_pipeline
from batchnlp.tasks.base import Feature, RowError, Task, classifier_head

ENTITY = pa.struct([("entity_group", pa.string()), ("score", pa.float32()), ("word", pa.string()),
                    ("start", pa.int32()), ("end", pa.int32())])


@dataclass(frozen=True)
class Params:
    aggregation_strategy: Literal["none", "simple", "first", "average", "max"] = doc(
        "As transformers: none (one entry per token, its label in entity_group), simple (group adjacent "
        "tokens of one entity), first/average/max (one label per word, from its first token, the average "
        "scores, or its most confident token, then group).", default="simple")
    ignore_labels: list[str] = doc("Labels left out of the output.", default=("O",))
    stride: int = doc("Tokens shared by consecutive windows of a text longer than max_length.", default=64)

    def validate(self) -> None:
        if self.stride < 0:
            raise SpecError("task.stride", "must be 0 or more")


class TokenClassification(Task):
    name = "token-classification"
    description = "Named entities (or any token labels) with character offsets (AutoModelForTokenClassification)."
    model_class = "AutoModelForTokenClassification"
    fixed_columns = {"entities": pa.list_(ENTITY)}
    windowed = True

    def setup(self) -> None:
        super().setup()
        if not getattr(self.tokenizer, "is_fast", False):
            raise SpecError("task.name", "token-classification needs a fast tokenizer (character offsets)")
        if self.params.stride >= self.max_length - self.tokenizer.num_special_tokens_to_add():
            raise SpecError("task.stride", f"must be below max_length ({self.max_length}) minus the special tokens")
        self.id2label = self.config.id2label
        model = getattr(self.tokenizer, "_tokenizer", None)
        self.word_aware = bool(model is not None and getattr(model.model, "continuing_subword_prefix", None))


    def float32_head(self, model: Any) -> Any:
        return classifier_head(model)

    def agreement_key(self, row: dict[str, Any]) -> Any:
        return [(e["entity_group"], e["start"], e["end"]) for e in row["entities"]]

    def baseline(self, model: Any, texts: list[str], batch_size: int) -> Baseline:
        pipe = make_pipeline("token-classification", model, self.tokenizer)
        strategy = self.params.aggregation_strategy
        return Baseline(lambda: [{"entities": [{**e, "entity_group": e.get("entity_group", e.get("entity"))}
                                               for e in o]}
                                 for o in pipe(texts, batch_size=batch_size, aggregation_strategy=strategy)],
                        f"pipeline (bs={batch_size}, float32)")

    def encode(self, rows: Sequence[dict[str, Any]]) -> list[list[Feature] | RowError]:
        enc = self.tokenizer([row["text"] for row in rows], truncation=True, max_length=self.max_length,
                             stride=self.params.stride, return_overflowing_tokens=True,
                             return_offsets_mapping=True, return_special_tokens_mask=True,
                             return_attention_mask=False,
                             return_token_type_ids="token_type_ids" in self.tokenizer.model_input_names)
        out: list[list[Feature] | RowError] = [[] for _ in rows]
        for j, i in enumerate(enc["overflow_to_sample_mapping"]):
            meta = {"offsets": enc["offset_mapping"][j], "special": enc["special_tokens_mask"][j]}
            out[i].append({"input_ids": enc["input_ids"][j], **({"token_type_ids": enc["token_type_ids"][j]}
                                                                 if "token_type_ids" in enc else {}), "meta": meta})
        return out

    def forward(self, model: Any, batch: dict[str, Any], meta: list[Any]) -> list[Any]:
        logits = model(**batch).logits.float()
        scores = logits.softmax(dim=-1).cpu().numpy()
        ids = batch["input_ids"].cpu().numpy()
        lengths = batch["attention_mask"].sum(dim=1).cpu().numpy()
        return [(ids[r, :n], scores[r, :n], m) for r, (n, m) in enumerate(zip(lengths, meta))]

    def decode(self, row: dict[str, Any], outputs: list[Any]) -> dict[str, Any]:
        tokens = merge_windows(outputs)
        pre = [self._pre_entity(row["text"], *token) for token in tokens]
        entities = self.aggregate(pre)
        ignore = set(self.params.ignore_labels)
        return {"entities": [e for e in entities if e["entity_group"] not in ignore]}

    # -- transformers' semantics ---------------------------------------------------------------

    def _pre_entity(self, text: str, token_id: int, scores: np.ndarray, start: int, end: int) -> dict[str, Any]:
        word = self.tokenizer.convert_ids_to_tokens(token_id)
        word_ref = text[start:end]
        if self.word_aware:
            is_subword = len(word) != len(word_ref)
        else:  # transformers' fallback heuristic for tokenizers that don't mark sub-words
            is_subword = start > 0 and " " not in text[start - 1:start + 1]
        if token_id == self.tokenizer.unk_token_id:
            word, is_subword = word_ref, False
        return {"word": word, "scores": scores, "start": start, "end": end, "is_subword": is_subword}

    def aggregate(self, pre: list[dict[str, Any]]) -> list[dict[str, Any]]:
        strategy = self.params.aggregation_strategy
        if strategy in ("none", "simple"):
            entities = []
            for p in pre:
                best = int(p["scores"].argmax())
                entities.append({"entity": self.id2label[best], "score": float(p["scores"][best]), "word": p["word"],
                                 "start": p["start"], "end": p["end"]})
        else:
            entities = self._aggregate_words(pre)
        if strategy == "none":
            return [{"entity_group": e["entity"], "score": e["score"], "word": e["word"], "start": e["start"],
                     "end": e["end"]} for e in entities]
        return self._group_entities(entities)

    def _aggregate_words(self, pre: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # A word is a token and the sub-word tokens after it.
        return [self._aggregate_word(word) for word in runs(pre, lambda last, p: p["is_subword"])]

    def _aggregate_word(self, group: list[dict[str, Any]]) -> dict[str, Any]:
        strategy = self.params.aggregation_strategy
        if strategy == "first":
            scores = group[0]["scores"]
        elif strategy == "max":
            scores = max(group, key=lambda p: p["scores"].max())["scores"]
        else:
            scores = np.nanmean(np.stack([p["scores"] for p in group]), axis=0)
        best = int(scores.argmax())
        return {"entity": self.id2label[best], "score": float(scores[best]),
                "word": self.tokenizer.convert_tokens_to_string([p["word"] for p in group]),
                "start": group[0]["start"], "end": group[-1]["end"]}

    def _group_entities(self, entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self._group(group) for group in runs(entities, _continues)]

    def _group(self, entities: list[dict[str, Any]]) -> dict[str, Any]:
        return {"entity_group": entities[0]["entity"].split("-", 1)[-1],
                "score": float(np.nanmean([e["score"] for e in entities])),
                "word": self.tokenizer.convert_tokens_to_string([e["word"] for e in entities]),
                "start": entities[0]["start"], "end": entities[-1]["end"]}


def runs(items: list[Any], continues: Callable[[Any, Any], bool]) -> list[list[Any]]:
    """Consecutive items grouped: an item joins the run before it when continues(last, item)."""
    out: list[list[Any]] = []
    for item in items:
        if out and continues(out[-1][-1], item):
            out[-1].append(item)
        else:
            out.append([item])
    return out


def _continues(last: dict[str, Any], entity: dict[str, Any]) -> bool:
    """An entity continues the group before it: the same type, and not tagged B- (transformers' rule)."""
    bi, tag = _tag(entity["entity"])
    return tag == _tag(last["entity"])[1] and bi != "B"


def _tag(name: str) -> tuple[str, str]:
    if name.startswith("B-"):
        return "B", name[2:]
    if name.startswith("I-"):
        return "I", name[2:]
    return "I", name  # not in B-/I- form: a continuation, as transformers assumes


def merge_windows(outputs: list[tuple[np.ndarray, np.ndarray, dict[str, Any]]]) -> list[tuple]:
    """(token id, scores, start, end) for each non-special token of the text, in order; a token seen in
    several windows keeps the scores of the window where it is farthest from an edge."""
    best: dict[tuple[int, int, int], tuple[int, tuple]] = {}
    for ids, scores, meta in outputs:
        positions = [p for p in range(len(ids)) if not meta["special"][p]]
        for rank, p in enumerate(positions):
            start, end = meta["offsets"][p]
            key = (start, end, int(ids[p]))
            margin = min(rank, len(positions) - 1 - rank)
            if key not in best or margin > best[key][0]:
                best[key] = (margin, (int(ids[p]), scores[p], start, end))
    return [token for _, token in sorted(best.values(), key=lambda item: (item[1][2], item[1][3]))]


TASK = TokenClassification
