"""Scoring given answers by their log-likelihood after a prompt, with a causal language model:
what zero-shot classification's `method: causal-lm` is built on.

The prompts of a batch (left-padded) go through the model once; its KV cache is kept, and each
answer's tokens are then run on that cache for every prompt at once and cut off again
(`DynamicCache.crop`), so the prompt is never run twice and nothing is generated. An answer's
first token is read from the prompt's last logits, its later tokens from their own forward. The
answers' common beginning ("This review is" before each label) is run as the end of the prompt:
with labels of one token each, the prompt's forward is the only one.
Position ids count real tokens only, so a left-padded prompt sees the same positions as alone
(GPT-2's learned positions depend on it; RoPE models do not mind either way).
"""

from __future__ import annotations

import copy
import inspect
import weakref
from typing import Any, Sequence


def answer_ids(tokenizer: Any, text: str, end: Sequence[int] = ()) -> list[int]:
    """The tokens of an answer as the model would write it (no special tokens), then `end`."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + list(end)


def end_of_turn(tokenizer: Any) -> list[int]:
    """The special token a chat template puts right after the assistant's message (ChatML's
    <|im_end|>, Llama 3's <|eot_id|>), so that an answer scored with it is the whole reply, not
    its beginning ("positive" and not "positively awful"). Empty when the template has none."""
    marker = "XQXANSWERXQX"
    try:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "u"}, {"role": "assistant", "content": marker}], tokenize=False)
    except Exception:  # templates may refuse a conversation shape; then no end token is scored
        return []
    after = rendered.split(marker, 1)[1] if marker in rendered else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    special = set(tokenizer.all_special_ids)
    return [ids[0]] if ids and ids[0] in special else []


def score(model: Any, batch: dict[str, Any], answers: dict[Any, list[int]], common_counts: bool = True,
          prefix: PrefixCache | None = None) -> dict[Any, Any]:
    """{answer key: tensor [batch] of the summed log-probability of its tokens after each prompt}.
    `batch`: left-padded input_ids and attention_mask. `common_counts`: False leaves out the
    log-probability of the answers' common beginning, which is the same for every answer of a
    row (a softmax over the answers' totals does not see it), and saves its logits. `prefix`:
    the prompts' shared beginning kept from earlier batches (see PrefixCache)."""
    import torch

    ids, mask = batch["input_ids"], batch["attention_mask"].long()
    common = common_prefix(list(answers.values()))
    lead = list(answers.values())[0][:common]
    rows = ids.shape[0]
    if lead:  # every answer begins so: it is the end of each prompt, run in the prompt's forward
        ids = torch.cat([ids, ids.new_tensor(lead).expand(rows, -1)], dim=1)
        mask = torch.cat([mask, mask.new_ones(rows, len(lead))], dim=1)
    last = len(lead) + 1 if lead and common_counts else 1
    logprobs, cache, cache_key, mask = prefill(model, ids, mask, last=last, prefix=prefix)
    after = logprobs[:, -1]
    base = after.new_zeros(rows)
    if last > 1:  # position j of the last ones predicts the lead's token j
        base = logprobs[:, :-1].gather(-1, ids.new_tensor(lead).expand(rows, -1)[:, :, None]).squeeze(-1).sum(-1)
    scores = {}
    for key, tokens in answers.items():
        total, _, _ = _extend(model, tokens[common:], after, cache, cache_key, mask, keep=False)
        scores[key] = base + total
    return scores


def _extend(model: Any, tokens: list[int], after: Any, cache: Any, cache_key: str, mask: Any,
            keep: bool = True) -> tuple[Any, Any, Any]:
    """Score `tokens` after every row's cache: (summed log-probabilities [batch], the log-probabilities
    after them, the mask with them). `keep`: leave them in the cache (else it is cut back)."""
    import torch

    total = after[:, tokens[0]].clone()
    if len(tokens) == 1 and not keep:
        return total, None, mask
    rows, device = mask.shape[0], mask.device
    run = tokens if keep else tokens[:-1]  # the last token is fed only if what follows it is needed
    fed = torch.tensor(run, device=device).expand(rows, -1)
    positions = mask.sum(-1, keepdim=True) + torch.arange(len(run), device=device)
    step_mask = torch.cat([mask, mask.new_ones(rows, len(run))], dim=1)
    out = model(input_ids=fed, attention_mask=step_mask, position_ids=positions, use_cache=True, **{cache_key: cache})
    logprobs = out.logits.float().log_softmax(-1)
    following = torch.tensor(tokens[1:], device=device).expand(rows, -1)
    total += logprobs[:, :len(tokens) - 1].gather(-1, following[:, :, None]).squeeze(-1).sum(-1)
    if not keep:
        cache.crop(-len(run))  # back to the prompt alone for the next answer (negative: tokens to drop)
        return total, None, mask
    return total, logprobs[:, -1], step_mask


def common_prefix(sequences: Sequence[Sequence[int]], own: int = 1) -> int:
    """How many first tokens all sequences share, leaving each at least `own` of its own (0 for
    fewer than two: nothing to share with)."""
    if len(sequences) < 2:
        return 0
    limit = min(len(a) for a in sequences) - own
    common = 0
    while common < limit and all(a[common] == sequences[0][common] for a in sequences):
        common += 1
    return common


#: Fewer tokens than this in common and the prompts run whole (the extra forward would cost more).
MIN_SHARED = 4


class PrefixCache:
    """The KV cache of the prompts' shared beginning, kept from one batch to the next.

    Prompts made from one template share their beginning (a system prompt, the instruction
    before {text}): every batch of a job does. It runs once, for one row, the first time it is
    seen, and each later batch starts from its cache instead of running it again. Held by the task, so
    it lives as long as its model; `state` is what its tensors were computed under (the model, its
    dtype, autocast), and a cache computed under another is not used."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.cache: Any = None
        self.key = ""
        self.state: tuple = ()

    def __getstate__(self) -> dict[str, Any]:
        # A task sent to another process (Ray workers) starts with nothing kept: the cache is its
        # model's, and the model reference is a weak one, which does not pickle.
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def shared_with(self, rows: list[list[int]], own: int, state: tuple) -> int:
        """How many of the cached tokens begin every row, leaving each row `own` tokens of its own."""
        if state != self.state or not self.tokens:
            return 0
        limit = min(len(row) for row in rows) - own
        return common_prefix([self.tokens[:max(limit, 0)]] + rows, own=0)

    def keep(self, tokens: list[int], cache: Any, key: str, state: tuple) -> None:
        self.tokens, self.cache, self.key, self.state = tokens, cache, key, state

    def shorten(self, length: int) -> None:
        """Keep only the first `length` tokens: what the batches have shown they share (a lone
        row's whole prompt, kept at first, shrinks to its template's part)."""
        if length < len(self.tokens):
            self.cache.crop(length - len(self.tokens))  # negative: tokens to drop from the end
            self.tokens = self.tokens[:length]

    def repeated(self, rows: int) -> Any:
        """The cache for each of `rows` rows: the batch's to extend, the kept one unchanged. Plain
        layers get views of the kept tensors, not copies: the batch's forward concatenates its
        own tokens onto them, and that is the one copy needed (repeating them first copied a
        300-token prefix once more per row: 210 against 60 ms for 32 rows of SmolLM2)."""
        from transformers.cache_utils import DynamicLayer

        cache = copy.deepcopy(self.cache)  # its own layer objects
        for kept, layer in zip(self.cache.layers, cache.layers):
            if type(layer) is DynamicLayer and layer.is_initialized:
                layer.keys, layer.values = (t.expand(rows, *t.shape[1:]) for t in (kept.keys, kept.values))
            else:  # other kinds (sliding window, quantised) as they repeat themselves
                layer.batch_repeat_interleave(rows)
        return cache


def prefill(model: Any, ids: Any, mask: Any, last: int = 1, prefix: PrefixCache | None = None
            ) -> tuple[Any, Any, str, Any]:
    """Run the prompts, keeping their KV cache: (log-probabilities of the token after each of
    the `last` positions [batch, last, vocabulary], the cache, its keyword, the attention mask
    over the cache's positions).

    The prompts' shared beginning (often half their tokens) runs once, for one row, and its cache
    is repeated for the batch; with `prefix`, it runs once for all the batches that share it (see
    PrefixCache). Each row then runs only its own tokens, after the prefix and a gap of masked
    positions (left padding). The result is the same as running each prompt whole."""
    import torch

    # Only the last position's logits: the vocabulary projection of every prompt token would cost
    # a fifth of a small model's forward and B x length x vocabulary floats of memory.
    keep = _one_logit(model, last)
    batch, width = ids.shape
    lengths = mask.sum(-1)
    shared, cache, key = _shared_cache(model, ids, lengths, last, prefix)
    if cache is None:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **keep)
        cache, key = _cache_of(model, out)
        return out.logits[:, -last:].float().log_softmax(-1), cache, key, mask
    own = int((lengths - shared).max())
    own_mask = (torch.arange(own, device=ids.device) >= own - (lengths - shared)[:, None]).long()
    full_mask = torch.cat([mask.new_ones(batch, shared), own_mask], dim=1)
    positions = shared + (own_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids[:, width - own:], attention_mask=full_mask, position_ids=positions, use_cache=True,
                **keep, **{key: cache})
    return out.logits[:, -last:].float().log_softmax(-1), cache, key, full_mask


def _shared_cache(model: Any, ids: Any, lengths: Any, own: int, prefix: PrefixCache | None
                  ) -> tuple[int, Any, str]:
    """(how many first tokens the rows share, their KV cache repeated for each row, its keyword),
    or (0, None, "") when they share fewer than MIN_SHARED. From `prefix` when it holds them, else
    run now (one row) and kept in `prefix`. A lone row puts all but its own last tokens there: the
    next batch's prompts share their template's part of it."""
    width = ids.shape[1]
    rows = [ids[r, width - int(n):].tolist() for r, n in enumerate(lengths)]
    state = _state(model)
    kept = prefix is not None
    prefix = prefix or PrefixCache()
    shared = prefix.shared_with(rows, own, state)
    if shared < MIN_SHARED:
        shared = common_prefix(rows, own) if len(rows) > 1 else (len(rows[0]) - own) * kept
        if shared < MIN_SHARED:
            return 0, None, ""
        start = width - len(rows[0])
        head = model(input_ids=ids[:1, start:start + shared], use_cache=True, **_one_logit(model))
        prefix.keep(rows[0][:shared], *_cache_of(model, head), state)
    prefix.shorten(shared)
    return shared, prefix.repeated(len(rows)), prefix.key


def _one_logit(model: Any, last: int = 1) -> dict[str, int]:
    """The keyword that has a forward compute the logits of its `last` positions only (none where
    the model does not take it)."""
    return {"logits_to_keep": last} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def _state(model: Any) -> tuple:
    """What a KV cache computed now depends on besides the tokens: the model, its weights' dtype,
    autocast (the precision probe runs the same model under bfloat16 autocast and without)."""
    import torch

    device = model.device.type
    return (weakref.ref(model), model.dtype, torch.is_autocast_enabled(device),
            torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None)


def _cache_of(model: Any, out: Any) -> tuple[Any, str]:
    """The KV cache a forward returned, and the keyword that hands it back: transformers 5.25
    renamed `past_key_values` to `cache` (the old name warns, and goes in 5.40)."""
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = getattr(out, "cache", None)
    return (cache if cache is not None else getattr(out, "past_key_values", None)), key


def check_croppable(model: Any) -> str | None:
    """Why this model's cache cannot be cut back to the prompt (sliding-window or recurrent
    layers), or None."""
    import torch

    probe = torch.zeros(1, 2, dtype=torch.long, device=model.device)
    cache, _ = _cache_of(model, model(input_ids=probe, use_cache=True))
    if cache is None or not hasattr(cache, "crop"):
        return f"{type(model).__name__} returns no croppable KV cache"
    if getattr(cache, "is_croppable", True) is False:
        return f"{type(model).__name__}'s cache has layers (sliding window or recurrent) that cannot be cut back"
    return None
