"""Decoding a shard's prompts in a batch that stays full (continuous batching, as vLLM's
scheduler does it, on transformers' plain KV cache).

A decode step reads every weight whatever the rows (on a CPU: SmolLM2-135M's 540 MB, ~40 ms,
against ~2 ms a row), so the rows of a step should be as many as the budget holds. Rows end at
different steps (on 64 SST-2 prompts the median row ends after 23 of 64 tokens): a batch that
only loses rows decodes most of its steps half empty. Here, once a quarter of the batch has
ended, the ended rows leave (their slice of the cache with them) and as many waiting prompts of
the shard are prefilled as a group and merged in, each row's cache right-aligned and the gap
masked; every row keeps its own positions, so its tokens are those of its prompt decoded alone.

The order of work is a function of the prompts and their tokens only, so a rerun takes the
same steps and writes the same bytes. Caches with layers other than plain ones (sliding window,
quantised) are not merged: their prompts run a batch at a time, as before.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from batchnlp.tasks.decoding import grouped_positions, grow_in_place, prefill_in_groups


@dataclass
class Ending:
    """When a row ends and which tokens it may take: its end tokens, stop strings, a grammar
    (constraint.Rows), and its token budget."""

    new_tokens: int
    eos: set[int]
    stops: Sequence[str] | None = None
    tokenizer: Any = None
    grammar: Any = None
    #: (logits [rows, vocabulary]) -> the next token of each row; None: greedy (argmax)
    pick: Callable[[Any], Any] | None = None

    def ended(self, key: Any, tokens: list[int]) -> str | None:
        """Why the row ends with its newest token: "end" (end token, stop string, the grammar
        complete), "cut" (the budget spent first), or None: it goes on."""
        token = tokens[-1]
        if token in self.eos or (self.grammar is not None and self.grammar.took(key, token)):
            return "end"
        if self.stops and _stopped(self.tokenizer, tokens, self.stops):
            return "end"
        return "cut" if len(tokens) >= self.new_tokens else None


@dataclass
class Occupancy:
    """How full the decode steps ran: live rows summed over steps, prefilled positions."""

    steps: int = 0
    live: int = 0
    prefilled: int = 0
    groups: int = 0
    capacity: int = 0
    #: tokens generated (the caller counts them: it knows which it keeps)
    made: int = 0

    def figures(self) -> dict[str, Any]:
        """The part's record: decode steps, mean live rows per step, the most rows a step could
        hold, prompt groups prefilled, tokens generated; `prefilled` (positions run by the
        prompts, padding included) goes to the part's padded_tokens."""
        return {"decode_steps": self.steps, "occupancy": round(self.live / self.steps, 2) if self.steps else None,
                "batch_rows": self.capacity, "prefill_groups": self.groups, "generated_tokens": self.made,
                "prefilled": self.prefilled}


@dataclass
class _Batch:
    """The rows decoding together: their keys, next tokens, attention mask over the cache's
    positions, positions of the next token, the cache, and whether each has ended."""

    keys: list[Any]
    following: Any
    mask: Any
    lengths: Any
    cache: Any
    cache_key: str
    done: list[bool] = field(default_factory=list)

    @property
    def going(self) -> list[int]:
        return [slot for slot, d in enumerate(self.done) if not d]

    def select(self, slots: list[int]) -> None:
        import torch

        keep = torch.tensor(slots, dtype=torch.long, device=self.following.device)
        self.cache.batch_select_indices(keep)
        self.keys = [self.keys[s] for s in slots]
        self.done = [self.done[s] for s in slots]
        self.following, self.mask, self.lengths = self.following[keep], self.mask[keep], self.lengths[keep]


def decode(model: Any, prompts: Sequence[tuple[Any, list[int]]], capacity: int, ending: Ending, prefix: Any = None,
           occupancy: Occupancy | None = None, refill: bool = True) -> Iterator[tuple[Any, list[int], str]]:
    """Greedy (or `ending.pick`) decoding of the prompts, `capacity` rows at a time, refilled as
    rows end (`refill` false: the next prompts start when every row has ended): yields (key, new
    tokens, why it ended: "end" or "cut") as each row ends."""
    occupancy = occupancy if occupancy is not None else Occupancy()
    occupancy.capacity = max(occupancy.capacity, min(capacity, len(prompts)))
    waiting = deque(prompts)
    made: dict[Any, list[int]] = {}
    batch: _Batch | None = None
    while True:
        going = batch.going if batch is not None else []
        free = capacity - len(going)
        if waiting and (not going or (refill and free >= max(1, capacity // 4) and _mergeable(batch))):
            if batch is not None:
                batch.select(going)
            group = [waiting.popleft() for _ in range(min(free, len(waiting)))]
            made.update((key, []) for key, _ in group)
            fresh = _prefilled(model, group, ending, prefix, occupancy)
            yield from _record(fresh, fresh.following.tolist(), made, ending)
            batch = fresh if not going else _joined(batch, fresh)
            continue
        if not going:
            return
        if len(going) <= len(batch.keys) * 3 // 4:
            # Ended rows leave once they are a quarter of the batch: each removal copies the
            # cache, and a few ended rows riding along cost less than a copy per step.
            batch.select(going)
        occupancy.steps += 1
        occupancy.live += len(going)
        _step(model, batch, ending)
        yield from _record(batch, batch.following.tolist(), made, ending)


def greedy(model: Any, batch: dict[str, Any], new_tokens: int, eos: set[int], stops: list[str] | None,
           tokenizer: Any, prefix: Any = None) -> list[list[int]]:
    """Greedy decoding of a left-padded batch: the new tokens of each prompt, its end token
    included. What model.generate does with do_sample=False, but cheaper on a CPU:

    - the prompts' shared beginning (system prompt, instruction) runs once for all the batches
      that share it (likelihood's prefill and its PrefixCache `prefix`), and only the last
      position's logits are computed;
    - a row that has ended (end token, or a stop string in its text) leaves the batch, and its
      slice of the KV cache goes with it: the steps after it cost what the rows still running
      cost, where generate carries every row, padded, until the longest ends;
    - the prompts run in groups of similar length (`prefill_in_groups`) and decode as one batch,
      so a batch may hold prompts of any lengths without paying their padding.

    The loop is decode's with the whole batch taken at once (a shard's prompts go
    through decode itself, in a batch refilled as rows end)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    prompts = [(row, ids[row, ids.shape[1] - int(n):].tolist()) for row, n in enumerate(mask.sum(-1).tolist())]
    made: list[list[int]] = [[] for _ in prompts]
    ending = Ending(new_tokens, eos, stops, tokenizer)
    for row, tokens, _ in decode(model, prompts, len(prompts), ending, prefix):
        made[row] = tokens
    return made


def _record(batch: _Batch, tokens: list[int], made: dict[Any, list[int]], ending: Ending
            ) -> Iterator[tuple[Any, list[int], str]]:
    for slot, (key, token) in enumerate(zip(batch.keys, tokens)):
        if batch.done[slot]:
            continue
        made[key].append(token)
        why = ending.ended(key, made[key])
        if why is not None:
            batch.done[slot] = True
            if ending.grammar is not None:
                ending.grammar.end(key)
            yield key, made.pop(key), why


def _pick(logits: Any, batch: _Batch, ending: Ending) -> Any:
    if ending.grammar is not None:
        logits = logits.float()
        ending.grammar.restrict(logits, batch.keys, [not d for d in batch.done])
    return ending.pick(logits) if ending.pick is not None else logits.argmax(-1)


def _prefilled(model: Any, group: list[tuple[Any, list[int]]], ending: Ending, prefix: Any,
               occupancy: Occupancy) -> _Batch:
    """The group's prompts run (in groups of similar length) into a batch of their own, their
    first tokens picked."""
    import torch


    device = model.device
    width = max(len(ids) for _, ids in group)
    ids = torch.zeros(len(group), width, dtype=torch.long, device=device)
    mask = torch.zeros(len(group), width, dtype=torch.long, device=device)
    for row, (_, tokens) in enumerate(group):
        ids[row, width - len(tokens):] = torch.tensor(tokens, device=device)
        mask[row, width - len(tokens):] = 1
    after, cache, key, mask = prefill_in_groups(model, ids, mask, prefix)
    grow_in_place(cache, ending.new_tokens)
    occupancy.groups += 1
    # the positions the group's prompts ran (in groups of similar length), not the merged width
    occupancy.prefilled += grouped_positions([len(tokens) for _, tokens in group])
    keys = [k for k, _ in group]
    batch = _Batch(keys, None, mask, mask.sum(-1, keepdim=True), cache, key, [False] * len(group))
    if ending.grammar is not None:
        for k in keys:
            ending.grammar.begin(k)
    batch.following = _pick(after[:, -1], batch, ending)
    return batch


def _step(model: Any, batch: _Batch, ending: Ending) -> None:
    import torch

    batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.keys), 1)], dim=1)
    out = model(input_ids=batch.following[:, None], attention_mask=batch.mask, position_ids=batch.lengths,
                use_cache=True, **{batch.cache_key: batch.cache})
    batch.lengths = batch.lengths + 1
    batch.following = _pick(out.logits[:, -1], batch, ending)


def _mergeable(batch: _Batch | None) -> bool:
    from transformers.cache_utils import DynamicLayer

    layers = getattr(batch.cache, "layers", None) if batch is not None else ()
    return layers is not None and all(isinstance(layer, DynamicLayer) and type(layer).__name__ in
                                      ("DynamicLayer", "GrowingLayer") for layer in layers)


def _joined(running: _Batch, fresh: _Batch) -> _Batch:
    """One batch of both (running rows first): each side keeps only the cache positions one of its
    rows attends to (the history of rows that left goes), then both are right-aligned to the
    wider. Positions are explicit, so moving a row's cache entries changes nothing it computes."""
    import torch

    sides = []
    for side in (running, fresh):
        columns = side.mask.bool().any(0).nonzero().squeeze(-1)
        sides.append((side, columns))
    width = max(len(columns) for _, columns in sides)
    rows = len(running.keys) + len(fresh.keys)
    mask = running.mask.new_zeros(rows, width)
    at = 0
    for side, columns in sides:
        n = len(side.keys)
        mask[at:at + n, width - len(columns):] = side.mask[:, columns]
        at += n
    for i, layer in enumerate(running.cache.layers):
        for name in ("keys", "values"):
            first = getattr(layer, name)
            out = first.new_zeros(rows, *first.shape[1:-2], width, first.shape[-1])
            at = 0
            for side, columns in sides:
                n = len(side.keys)
                out[at:at + n, ..., width - len(columns):, :] = getattr(side.cache.layers[i], name)[..., columns, :]
                at += n
            setattr(layer, name, out)
        # The layer's buffer (decoding.grow_in_place) no longer holds its keys: its next update
        # makes a new one with room.
        layer._keys = layer._values = None
    return _Batch(running.keys + fresh.keys, torch.cat([running.following, fresh.following]), mask,
                  torch.cat([running.lengths, fresh.lengths]), running.cache, running.cache_key,
                  running.done + fresh.done)


def _stopped(tokenizer: Any, tokens: list[int], stops: Sequence[str]) -> bool:
    # The last few tokens suffice: a stop string ends where the newest token does, and every
    # token but a special one writes at least a character.
    text = tokenizer.decode(tokens[-(max(map(len, stops)) + 4):], skip_special_tokens=True)
    return any(stop in text for stop in stops)
