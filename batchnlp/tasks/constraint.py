"""Constrained decoding: the tokens each row may take next, so that what it writes is JSON under
the job's schema. Built on llguidance (Microsoft's grammar engine, the one behind vLLM's and
SGLang's `guidance` backend and llama.cpp's): chosen over xgrammar and outlines-core on this CPU
with SmolLM2's tokenizer (`benchmarks/grammar_libraries.py`, docs/changelog.md) because it
compiled the review schema in 0.9 ms and filled 64 rows' masks in 1.2 ms a step (under 1% of a
decode step), refused an out-of-bounds integer at its token, and is one 3 MB wheel with no
dependencies; xgrammar's masks were faster (0.09 ms) but it pulls triton and a TVM runtime, and
outlines-core did not enforce integer bounds.

The JSON is written in one canonical shape (`{"a": 1, "b": [2, 3]}`: a space after `:` and
`,`, no other whitespace): a model cannot spend its tokens on blanks, and reruns write the same
bytes.
"""

from __future__ import annotations

import json
from typing import Any

from batchnlp.errors import ModelUnavailableError

#: llguidance's JSON options: no free whitespace, the separators a model is used to reading.
JSON_SHAPE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def grammar_of(schema: dict[str, Any]) -> str:
    import llguidance

    return llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_SHAPE)


def schema_trouble(schema: dict[str, Any]) -> str | None:
    """What the grammar compiler finds wrong with the schema (no tokenizer needed), or None."""
    import llguidance

    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar_of(schema))
    return "; ".join(messages) if failed else None


def refused(mask: Any, vocab: int) -> Any:
    """The bitmask (int32 words, bit i of word j: token 32j + i allowed) as a bool tensor [rows,
    vocab], True where a token is refused. Deliberately not llguidance.torch's
    apply_token_bitmask_inplace: its CPU path expands the bits in six tensor passes (133 ms a step
    for 64 rows x 49,152 tokens here); numpy's unpackbits does it in one (4.8 ms)."""
    import numpy as np
    import torch

    bits = np.unpackbits(mask.numpy().view(np.uint8), axis=1, bitorder="little")[:, :vocab]
    return torch.from_numpy(bits == 0)


class Grammar:
    """The schema compiled against one tokenizer: made once per loaded model, then a matcher per
    row (a matcher is the row's place in the grammar)."""

    def __init__(self, schema: dict[str, Any], tokenizer: Any, vocab_size: int, eos: set[int]):
        import llguidance
        import llguidance.hf

        # n_vocab: the model's logits may be wider than the tokenizer (padded vocabularies); the
        # extra ids are never allowed.
        try:
            self.tokens = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=sorted(eos)[0])
        except Exception as e:  # a tokenizer llguidance cannot read: said in one line, nothing decoded
            raise ModelUnavailableError(f"task.constrained: the grammar cannot be built on this model's tokenizer "
                                        f"({type(e).__name__}: {e}); set task.constrained: false to decode free "
                                        "text and check it instead") from None
        self.grammar = grammar_of(schema)
        self.vocab_size = vocab_size
        self.executor = llguidance.LLExecutor()

    def rows(self) -> "Rows":
        return Rows(self)


class Rows:
    """The matchers of the rows one decoding call runs, by row key: `begin` as a row enters,
    `restrict` before each pick, `took` after it."""

    def __init__(self, grammar: Grammar):
        self.grammar = grammar
        self.matchers: dict[Any, Any] = {}

    def begin(self, key: Any) -> None:
        import llguidance

        self.matchers[key] = llguidance.LLMatcher(self.grammar.tokens, self.grammar.grammar, log_level=0)

    def restrict(self, logits: Any, keys: list[Any], live: list[bool]) -> None:
        """Set to -inf, in place, the logits of every token a live row may not take next (rows
        that have ended ride along unmasked: their pick is thrown away)."""
        import llguidance.torch as lt

        mask = lt.allocate_token_bitmask(len(keys), self.grammar.vocab_size)  # all allowed
        pairs = [(self.matchers[key], slot) for slot, (key, on) in enumerate(zip(keys, live)) if on]
        if pairs:
            lt.fill_next_token_bitmask_par(self.grammar.executor, pairs, mask)
        logits.masked_fill_(refused(mask, logits.shape[-1]).to(logits.device, non_blocking=True), float("-inf"))

    def took(self, key: Any, token: int) -> bool:
        """Advance the row by its token; True once the grammar allows nothing more (the JSON is
        complete), so the row ends without spending a step on the end token."""
        matcher = self.matchers[key]
        if not matcher.consume_token(token):
            # Cannot happen for a token the mask allowed; said rather than written wrong.
            raise RuntimeError(f"the grammar refused token {token}: {matcher.get_error()}")
        return matcher.is_stopped()

    def end(self, key: Any) -> None:
        self.matchers.pop(key, None)
