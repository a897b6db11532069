"""The vLLM side of the bench's vLLM-CPU peer (`peers/vllm.py`), run as a script by the interpreter
that has vLLM, which is often another venv's: so it imports nothing of batchnlp.

Protocol, one JSON object per line: the first line on stdin is the engine's setup (model directory,
dtype, max_model_len, seed); the worker answers {"ready": vLLM's version} once the engine is up.
Each later {"prompts": [[token ids]], "max_tokens": n, "stop_token_ids": [...]} is one round:
the prefix cache emptied (a round must not start from the last round's prompts), then one
`LLM.generate` over every prompt, greedy; the answer is {"tokens": [[new token ids]]}. Any failure
answers {"error": "..."} and ends the worker. vLLM's own output goes to stderr (the peer keeps it in
a log file), so stdout carries only the protocol."""

from __future__ import annotations

import json
import os
import sys

# Python puts this script's folder first on the path, and batchnlp's peer modules there are named
# after the libraries they drive (vllm, onnxruntime, ...): vLLM's own imports must not find them.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def main() -> None:
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever vLLM prints goes to stderr, never into the protocol
    try:
        setup = json.loads(sys.stdin.readline())
        from vllm import LLM, SamplingParams

        try:
            from vllm.inputs import TokensPrompt
        except ImportError:  # older vLLM: a plain dict is the same prompt
            TokensPrompt = dict  # noqa: N806
        import vllm

        llm = LLM(model=setup["model"], dtype=setup["dtype"], max_model_len=setup["max_model_len"],
                  seed=setup.get("seed", 0))
        answers.write(json.dumps({"ready": getattr(vllm, "__version__", "?")}) + "\n")
        for line in sys.stdin:
            request = json.loads(line)
            params = SamplingParams(temperature=0, max_tokens=request["max_tokens"],
                                    stop_token_ids=request["stop_token_ids"], detokenize=False)
            llm.reset_prefix_cache()
            outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in request["prompts"]], params,
                                   use_tqdm=False)
            answers.write(json.dumps({"tokens": [list(o.outputs[0].token_ids) for o in outputs]}) + "\n")
    except Exception as e:  # the peer shows this line; vLLM's traceback stays in the log
        import traceback

        traceback.print_exc()
        answers.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
