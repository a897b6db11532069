"""The protocol every task follows: declare columns, encode rows into features, run a batch of
features, decode each row from its features' outputs.

A row becomes one or more *features* (one model input each): a QA context split into windows,
a zero-shot text paired with each label, a long NER text cut into overlapping windows. Features
of all rows of a shard are sorted by length and batched together under the token budget, so a
task with many features per row pays no per-row overhead. The runner owns everything else
(reading, sorting, batching, device, precision, writing): a task never moves tensors between
devices nor changes precision.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar, Iterator, Sequence

import pyarrow as pa

from batchnlp.tasks.bench_hooks import BenchHooks
from batchnlp.tasks.comparison import Comparison

#: A feature: the model inputs (lists of token ids) plus "meta", anything the task needs back
#: when decoding (offsets, which label, ...). The collate pads every key but "meta".
Feature = dict[str, Any]


class RowError(Exception):
    """Raised (or returned from `encode`) for one row that cannot be annotated; it lands in the
    row's `error` column instead of stopping the job. `kept`: annotation columns the row keeps
    all the same (an extraction cut short keeps its raw text, for audit)."""

    def __init__(self, message: str, kept: dict[str, Any] | None = None):
        super().__init__(message)
        self.kept = kept or {}


class Task(Comparison, BenchHooks):
    """The run protocol (encode -> forward -> decode, the annotation columns); comparing two
    annotations of the same rows is `Comparison`'s (tasks/comparison.py), the bench's naive loop
    `BenchHooks`' (tasks/bench_hooks.py)."""

    name: ClassVar[str]
    description: ClassVar[str]
    #: The module's `Params` dataclass (set by __init_subclass__).
    Params: ClassVar[type]
    #: The transformers Auto class the model is loaded with.
    model_class: ClassVar[str]
    #: Generation pads prompts on the left, so that new tokens follow every prompt directly.
    padding_side: ClassVar[str] = "right"
    #: Long inputs are split into overlapping windows rather than truncated.
    windowed: ClassVar[bool] = False
    #: The task runs a batch's inputs in groups of similar length itself (set by `prepare` where
    #: it does): padding costs it nothing, so the batcher counts a batch's cost as its tokens, and
    #: only keeps rows x longest within the budget (the memory a padded batch takes).
    groups_by_length: bool = False
    #: The longest input when runtime.max_length is not set, if shorter than the model's limit.
    default_max_length: ClassVar[int | None] = None
    #: input.text_column may hold chat messages (lists of {role, content}) instead of texts.
    takes_messages: ClassVar[bool] = False
    #: The task decodes a shard's features as one stream, in a batch it keeps full (set by
    #: `prepare` where it does): `forward_stream` then runs instead of `forward` per batch.
    streams: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A task's parameters are the `Params` dataclass of its own module (the convention every
        task module follows), so the class need not name it again."""
        super().__init_subclass__(**kwargs)
        params = getattr(sys.modules[cls.__module__], "Params", None)
        if "Params" not in cls.__dict__ and params is not None:
            cls.Params = params

    def __init__(self, params: Any, model_config: Any, tokenizer: Any, max_length: int):
        self.params = params
        self.config = model_config
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.setup()

    def setup(self) -> None:
        """Check the model and parameters together and derive what the task needs (raise SpecError
        or ModelUnavailableError); `params`, `config`, `tokenizer`, `max_length` are set."""

    @classmethod
    def model_class_of(cls, params: Any) -> str:
        """The Auto class for these parameters (a task whose class depends on them overrides this);
        known before the model's config, since converting a checkpoint needs it."""
        return cls.model_class

    @classmethod
    def extra_columns(cls, params: Any) -> dict[str, str]:
        """Input columns the task reads besides input.text_column/text_pair_column: {key: column}."""
        return {}

    @classmethod
    def needs_head(cls, params: Any) -> bool:
        """Whether the model class adds weights to a bare encoder (a checkpoint without them is refused)."""
        return cls.model_class != "AutoModel"

    @classmethod
    def check_input(cls, params: Any, input_spec: Any) -> None:
        """Spec checks that involve both the task and the input section (raise SpecError)."""

    #: The annotation columns of a task whose columns depend on nothing (else override the two below).
    fixed_columns: ClassVar[dict[str, pa.DataType]] = {}

    @classmethod
    def columns(cls, params: Any) -> list[str]:
        """The names of the annotation columns, from the parameters alone (`validate` checks them
        against the input's columns without loading the model)."""
        return list(cls.fixed_columns)

    def column_types(self) -> dict[str, pa.DataType]:
        """The type of each annotation column (may depend on the model, e.g. the embedding size)."""
        return self.fixed_columns

    def fields(self) -> list[pa.Field]:
        """The annotation columns this task adds, typed, before anything runs."""
        types = self.column_types()
        return [pa.field(name, types[name]) for name in self.columns(self.params)]

    def prepare(self, model: Any) -> None:
        """Called once after the model is loaded, inside the inference context."""

    def float32_head(self, model: Any) -> Any:
        """The module whose outputs are this task's scores (a classifier, the LM head that scores
        answers), run in float32 under bfloat16 autocast by the runner; None: none."""
        return None

    def start_shard(self, index: int) -> None:
        """Called before each shard (generation reseeds here so a resumed run samples the same)."""

    def padded_tokens(self, lengths: list[int]) -> int:
        """The positions a batch of inputs of these lengths runs through the model, padding
        included (the output's `padded_tokens`, the bench's padding efficiency)."""
        return len(lengths) * max(lengths)

    def batch_overhead_tokens(self) -> int:
        """What one more batch costs beyond its padded tokens, in tokens (the batcher cuts where
        padding plus this is least): one forward's fixed cost for most tasks."""
        return 64

    def batch_length(self, feature: Feature) -> int:
        """The length a feature is sorted and budgeted by (generation adds the tokens it will make)."""
        return len(feature["input_ids"])

    def encode(self, rows: Sequence[dict[str, Any]]) -> list[list[Feature] | RowError]:
        """Features for each row (or a RowError); default: one feature, the tokenized text (and pair)."""
        texts = [row["text"] for row in rows]
        pairs = [row["pair"] for row in rows] if rows and "pair" in rows[0] else None
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length, padding=False,
                             return_attention_mask=False,
                             return_token_type_ids="token_type_ids" in self.tokenizer.model_input_names)
        keys = list(enc.keys())
        return [[{k: enc[k][i] for k in keys}] for i in range(len(texts))]

    def forward(self, model: Any, batch: dict[str, Any], meta: list[Any]) -> Sequence[Any]:
        """Run one padded batch of features; return one output per feature."""
        raise NotImplementedError

    def forward_stream(self, model: Any, features: list[tuple[int, Feature]], capacity: int
                       ) -> Iterator[tuple[int, Any]]:
        """A streaming task's run of a shard's features (in the batcher's order, `capacity` at a
        time at most): yields (feature index, output) as each finishes."""
        raise NotImplementedError

    def shard_figures(self) -> dict[str, Any]:
        """Figures of the shard just run, for its part's record (a streaming task's occupancy)."""
        return {}

    def decode(self, row: dict[str, Any], outputs: list[Any]) -> dict[str, Any]:
        """The annotation columns of one row from its features' outputs (in feature order)."""
        return outputs[0]


def classifier_head(model: Any) -> Any:
    """The last layer of a sequence or token classifier (transformers names it `classifier` in
    BERT-like models, `score` in decoder ones), or None."""
    for name in ("classifier", "score"):
        head = getattr(model, name, None)
        if head is not None:
            return head
    return None
