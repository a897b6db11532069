"""What the generating tasks (text-generation, summarization, translation) share: decoding
options, turning them into `generate` arguments, seeding, stop strings, and the `Generative` base
class (budget and seeding per shard)."""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass, fields
from typing import Any, Literal, Sequence

from batchnlp.errors import SpecError
from batchnlp.settings import doc
from batchnlp.tasks.base import Feature, RowError, Task


@dataclass(frozen=True)
class DecodingParams:
    max_new_tokens: int | None = doc("Most tokens to generate (default: the model's generation config).",
                                     default=None)
    min_new_tokens: int | None = doc("Fewest tokens to generate.", default=None)
    num_beams: int | None = doc("Beam search width (1: greedy or sampling).", default=None)
    do_sample: bool = doc("Sample instead of greedy/beam search.", default=False)
    temperature: float | None = doc("Sampling temperature.", default=None)
    top_p: float | None = doc("Nucleus sampling mass.", default=None)
    top_k: int | None = doc("Sample among the k most likely tokens.", default=None)
    repetition_penalty: float | None = doc("Penalty for repeated tokens (1.0: none).", default=None)
    length_penalty: float | None = doc("Beam search: > 1 favours longer outputs.", default=None)
    no_repeat_ngram_size: int | None = doc("Never repeat an n-gram of this size.", default=None)
    seed: int = doc("Seed for sampling; each shard uses its own seed from it, so a rerun or a resumed run samples "
                    "the same (given the same batch settings, which the output's fingerprint pins).", default=0)
    blocked: list[str] | None = doc("Guardrail: regular expressions (case-insensitive) that generated text must "
                                    "not match; a matching row is flagged (column `flag`) and redacted or dropped.",
                                    default=None)
    on_blocked: Literal["redact", "drop"] = doc(
        "redact: matches become [REDACTED] and `flag` says which pattern; drop: the row gets no text and its "
        "`error` says why.", default="redact")
    max_time: float | None = doc("Guardrail: seconds one batch may generate for (transformers' max_time); rows "
                                 "cut short by it keep their text and are flagged.", default=None)

    def validate(self) -> None:
        for key in ("max_new_tokens", "num_beams"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise SpecError(f"task.{key}", "must be 1 or more")
        if self.temperature is not None and self.temperature <= 0:
            raise SpecError("task.temperature", "must be above 0 (for greedy decoding set do_sample: false)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise SpecError("task.top_p", "must be in (0, 1]")
        if self.max_time is not None and self.max_time <= 0:
            raise SpecError("task.max_time", "must be above 0 seconds")
        for i, pattern in enumerate(self.blocked or ()):
            try:
                re.compile(pattern)
            except re.error as e:
                raise SpecError(f"task.blocked[{i}]", f"not a regular expression: {e}") from None


GENERATE_KEYS = [f.name for f in fields(DecodingParams) if f.name not in ("seed", "blocked", "on_blocked")]


def generate_kwargs(params: Any) -> dict[str, Any]:
    """Options given in the spec; the rest come from the model's own generation config."""
    kwargs = {key: getattr(params, key) for key in GENERATE_KEYS if getattr(params, key) is not None}
    if not params.do_sample:
        kwargs.pop("do_sample")
        # Clear sampling knobs a model's generation config may set, so greedy/beam stays so.
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def new_tokens(params: Any, generation_config: Any) -> int:
    """Tokens a generation may add: the spec's, else the model's generation config's (for the budget)."""
    for value in (params.max_new_tokens, getattr(generation_config, "max_new_tokens", None),
                  getattr(generation_config, "max_length", None)):
        if isinstance(value, int):
            return value
    return 256


def seed_shard(seed: int, index: int) -> None:
    import torch

    torch.manual_seed(seed + index)  # seeds CUDA too


def build_prompt(tokenizer: Any, template: str, text: Any, chat_template: bool, system_prompt: str | None,
                 **slots: str) -> str:
    """The prompt for one text: `template` with {text} (and any other {slot}) filled, then, with
    `chat_template`, the user message of the model's chat template after an optional system
    message. str.replace, not format: the text and the template may hold braces of their own.

    `text` may be chat messages ([{role, content}, ...], Task.takes_messages): the template then
    fills the last user message, and the system prompt goes first unless the messages have one."""
    for name, value in slots.items():
        template = template.replace("{" + name + "}", value)
    if isinstance(text, list):
        if not chat_template:
            raise RowError("chat messages need task.chat_template: true")
        messages = [{"role": m["role"], "content": m["content"] or ""} for m in text]
        last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if last is not None:
            messages[last]["content"] = template.replace("{text}", messages[last]["content"])
        if system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system_prompt})
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    text = template.replace("{text}", text)
    if not chat_template:
        return text
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
    messages.append({"role": "user", "content": text})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prompt_ids(tokenizer: Any, rows: Sequence[dict[str, Any]], prompt: Any, chat_template: bool
               ) -> list[list[int] | RowError]:
    """Each row's prompt (`prompt(text)`) tokenized, or the RowError that row's text gives
    (messages where no chat template applies). A chat template writes its own special tokens;
    plain text gets the tokenizer's."""
    prompts: list[str | RowError] = []
    for row in rows:
        try:
            prompts.append(prompt(row["text"]))
        except RowError as e:
            prompts.append(e)
    texts = [p for p in prompts if isinstance(p, str)]
    ids = iter(tokenizer(texts, add_special_tokens=not chat_template, return_attention_mask=False)["input_ids"]
               if texts else [])
    return [next(ids) if isinstance(p, str) else p for p in prompts]


def last_user_message(messages: list[dict[str, Any]]) -> str:
    return next((m["content"] or "" for m in reversed(messages) if m["role"] == "user"), "")


def cut_at_stop(text: str, stops: Any) -> str:
    """Cut generated text at the first stop string (the stop string itself is left out)."""
    cut = len(text)
    for stop in stops or ():
        at = text.find(stop)
        if at >= 0:
            cut = min(cut, at)
    return text[:cut]


#: Generation-config settings that change which token greedy decoding picks, and the value at
#: which they do not; a model whose config sets one otherwise goes through model.generate.
_GREEDY_NEUTRAL = {"repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
                   "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,),
                   "forced_eos_token_id": (None,), "min_length": (None, 0), "min_new_tokens": (None, 0),
                   "sequence_bias": (None,), "encoder_repetition_penalty": (None, 1.0), "max_time": (None,),
                   "exponential_decay_length_penalty": (None,), "epsilon_cutoff": (None, 0.0),
                   "watermarking_config": (None,), "guidance_scale": (None, 1.0)}


def own_greedy(model: Any, params: Any) -> str | None:
    """Why batchnlp's own greedy loop cannot stand in for model.generate here (None: it can).
    It covers plain greedy decoding, one text per prompt, of a decoder-only model."""
    if params.do_sample or (params.num_beams or 1) > 1 or getattr(params, "num_return_sequences", 1) > 1:
        return "sampling or beam search"
    asked = {key: getattr(params, key) for key in ("repetition_penalty", "no_repeat_ngram_size", "min_new_tokens",
                                                   "max_time")}
    config = model.generation_config
    for key, neutral in _GREEDY_NEUTRAL.items():
        value = asked.get(key) if asked.get(key) is not None else getattr(config, key, None)
        if value not in neutral:
            return f"{key} = {value}"
    if model.config.is_encoder_decoder:
        return "an encoder-decoder model"
    return None


#: What one more prompt group costs beyond its padded tokens, in tokens (as a batch of the
#: batcher's: one forward's fixed cost).
GROUP_OVERHEAD = 64


def prefill_in_groups(model: Any, ids: Any, mask: Any, prefix: Any = None) -> tuple[Any, Any, str, Any]:
    """likelihood.prefill of a left-padded batch, its prompts run in groups of similar length (cut
    where padding plus a forward's fixed cost is least, as the batcher cuts batches), then their
    KV caches merged into one, each row's tokens right-aligned and the gap before them masked.

    Each decode step reads every weight whatever the rows (on a CPU: SmolLM2-135M's 540 MB, ~40
    ms, against ~2 ms a row), so prompts are best decoded together; but run together, short
    prompts padded to the longest cost its length. Grouped, the prompts cost their own lengths and
    the steps are taken once for all: 40 reviews made 3 batches of 1, 8 and 31 rows and 21
    decode steps, and now make one batch and 7. Caches with layers other than plain ones (sliding
    window, quantised) are not merged: the batch then runs as one group."""
    import torch
    from transformers.cache_utils import DynamicLayer

    from batchnlp.tasks import likelihood

    lengths = mask.sum(-1)
    groups = length_groups(lengths.tolist())
    if len(groups) == 1:
        return likelihood.prefill(model, ids, mask, prefix=prefix)
    parts = []
    for rows in groups:
        index = torch.tensor(rows, device=ids.device)
        width = int(lengths[index].max())
        parts.append((index, *likelihood.prefill(model, ids[index, -width:], mask[index, -width:], prefix=prefix)))
        if len(parts) == 1 and not all(type(layer) is DynamicLayer and layer.is_initialized
                                       for layer in parts[0][2].layers):
            return likelihood.prefill(model, ids, mask, prefix=prefix)  # seen on the first group: one wasted
    return _merged(parts, ids.shape[0])


def grouped_positions(lengths: list[int]) -> int:
    """The positions prompts of these lengths run when prefilled in groups of similar length
    (`prefill_in_groups`): what greedy generation records as its padded_tokens."""
    return sum(len(rows) * max(lengths[i] for i in rows) for rows in length_groups(lengths))


def length_groups(lengths: list[int]) -> list[list[int]]:
    """The groups of rows (indices) a batch of prompts of these lengths prefills in."""
    from batchnlp.batch.loader import token_budget_batches

    return token_budget_batches(lengths, batch_tokens=len(lengths) * max(lengths), max_batch_size=len(lengths),
                                overhead_tokens=GROUP_OVERHEAD)


def _merged(parts: list[tuple], rows: int) -> tuple[Any, Any, str, Any]:
    """prefill's (log-probabilities, cache, keyword, mask) for the whole batch from its groups'
    (row indices, then prefill's four): each row's cache and mask right-aligned to the widest."""
    width = max(group_mask.shape[1] for *_, group_mask in parts)
    first_logprobs, merged, key, first_mask = parts[0][1:]
    after = first_logprobs.new_empty(rows, *first_logprobs.shape[1:])
    mask = first_mask.new_zeros(rows, width)
    for index, logprobs, _, _, group_mask in parts:
        after[index] = logprobs
        mask[index, width - group_mask.shape[1]:] = group_mask
    for i, layer in enumerate(merged.layers):
        for name in ("keys", "values"):
            # zeros, not empty: a masked position's weight is 0, and 0 x NaN would still be NaN
            first = getattr(layer, name)
            out = first.new_zeros(rows, *first.shape[1:-2], width, first.shape[-1])
            for index, _, cache, _, group_mask in parts:
                out[index, ..., width - group_mask.shape[1]:, :] = getattr(cache.layers[i], name)
            setattr(layer, name, out)
    return after, merged, key, mask


def grow_in_place(cache: Any, room: int) -> None:
    """Make the cache's plain layers write new tokens into preallocated room instead of
    concatenating (transformers' DynamicLayer copies the whole cache at every step: 10% of a
    64-row decode of SmolLM2 here). Other layer kinds (sliding window, quantised) are left as
    they are."""
    from transformers.cache_utils import DynamicLayer

    for layer in getattr(cache, "layers", ()):
        if type(layer) is DynamicLayer:
            layer.__class__ = _growing_layer()
            layer.room = room


@functools.cache
def _growing_layer() -> type:
    # The class subclasses transformers' own, so it is made on first use (no import at start).
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """keys and values are views of buffers with room to grow; an update writes in place. A
        batch_select_indices or crop (the base class's) leaves keys outside the buffer or shorter,
        which the next update sees and handles (new buffer, or writing over the cut tokens)."""

        room = 0

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            import torch

            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            used, added = self.get_seq_length(), key_states.shape[-2]
            buffer = getattr(self, "_keys", None)
            if (buffer is None or buffer.shape[0] != key_states.shape[0] or used + added > buffer.shape[-2]
                    or (used and self.keys.data_ptr() != buffer.data_ptr())):
                shape = (*key_states.shape[:-2], used + added + max(self.room, added), key_states.shape[-1])
                self._keys = torch.empty(shape, dtype=key_states.dtype, device=key_states.device)
                self._values = torch.empty(shape, dtype=value_states.dtype, device=value_states.device)
                if used:
                    self._keys[..., :used, :] = self.keys
                    self._values[..., :used, :] = self.values
            self._keys[..., used:used + added, :] = key_states
            self._values[..., used:used + added, :] = value_states
            self.keys, self.values = self._keys[..., :used + added, :], self._values[..., :used + added, :]
            return self.keys, self.values

        def batch_select_indices(self, indices: Any) -> None:
            if getattr(self, "_keys", None) is None:  # rows left before the first update: no buffer yet
                return super().batch_select_indices(indices)
            # one copy, room included (the base class's would leave keys outside the buffer)
            used = self.get_seq_length()
            self._keys, self._values = self._keys[indices], self._values[indices]
            self.keys, self.values = self._keys[..., :used, :], self._values[..., :used, :]

    return GrowingLayer


def eos_ids(model: Any) -> set[int]:
    """The tokens that end a generated text, by the model's generation config (one id or a list)."""
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos]) - {None}


class Generative(Task):
    """A task that generates text: the token budget counts the tokens it will add, and shard i is
    seeded with seed + i, so a rerun or a resumed run (which restarts at a shard) samples the same."""

    # Greedy text from another precision may part ways with float32's after a near-tie; 95% of
    # texts identical is the bar.
    agreement_threshold = 0.95

    def setup(self) -> None:
        super().setup()
        self.new_tokens = new_tokens(self.params, None)
        self.patterns = [re.compile(p, re.IGNORECASE) for p in self.params.blocked or ()]

    @staticmethod
    def guarded(params: Any) -> bool:
        """Whether the guardrails are on, and so the `flag` column is there."""
        return bool(params.blocked) or params.max_time is not None

    def generate(self, model: Any, batch: dict[str, Any], prompt_tokens: int, **kwargs: Any) -> tuple[Any, list]:
        """model.generate, and per sequence a flag when max_time cut it short (no end token, fewer
        tokens than asked). `prompt_tokens`: leading positions of each sequence that are not new."""
        began = time.perf_counter()
        sequences = model.generate(**batch, **kwargs)
        flags: list[str | None] = [None] * len(sequences)
        limit = self.params.max_time
        if limit is not None and time.perf_counter() - began >= limit:
            new = sequences[:, prompt_tokens:]
            eos = eos_ids(model)
            real = (new != self.tokenizer.pad_token_id).sum(dim=1).tolist()
            for i, row in enumerate(new.tolist()):
                if not eos & set(row) and real[i] < self.new_tokens:
                    flags[i] = f"max_time: stopped after {limit} s with {real[i]} of {self.new_tokens} tokens"
        return sequences, flags

    def guard(self, texts: list[str], flags: list[str | None]) -> tuple[list[str], str | None]:
        """Apply the blocked patterns to a row's texts: (texts, the row's flag or None); with
        on_blocked: drop, a match raises RowError (the row keeps no text)."""
        reasons = [f for f in flags if f]
        for pattern in self.patterns:
            if any(pattern.search(t) for t in texts):
                if self.params.on_blocked == "drop":
                    raise RowError(f"blocked: the generated text matched {pattern.pattern!r}")
                texts = [pattern.sub("[REDACTED]", t) for t in texts]
                reasons.append(f"redacted: matched {pattern.pattern!r}")
        return texts, "; ".join(dict.fromkeys(reasons)) or None

    def start_shard(self, index: int) -> None:
        seed_shard(self.params.seed, index)

    def batch_length(self, feature: Feature) -> int:
        return len(feature["input_ids"]) + self.new_tokens

    def batch_overhead_tokens(self) -> int:
        # A batch runs a forward per new token, and on a CPU each step reads every weight whatever
        # the batch: ~50 tokens' compute for SmolLM2-135M (540 MB at ~10 GB/s against 0.27 GFLOP a
        # token). Counted at 32 a step, 64 SST-2 prompts go in one batch instead of five: 2.1x faster.
        return 32 * self.new_tokens
