"""CTranslate2 on the job's own weights, greedy, the same prompt token ids and token budget as
batchnlp: the C++ engine a user picks for int8 generation on a CPU. Its strongest form for a
shard of prompts: one `generate_batch` for all of them, the prompts' common prefix given as its
`static_prompt` (run once and kept), in int8 (weights and activations quantised: its fast
path) and in float32 (its exact path: the bench checks its texts against ours).

The model is converted once (`TransformersConverter` on the directory batchnlp loads, a GGUF's
cached conversion included) into the model cache's `ctranslate2/` folder, keyed by the weights'
sha256 and CTranslate2's version, built and published as the GGUF conversion is. Not a
dependency (`pip install ctranslate2`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchnlp.tasks.bench_hooks import Baseline, generated_rows

COMPUTE_TYPES = ("int8", "float32")


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ctranslate2") is not None


def converted(directory: Path) -> Path:
    """The CTranslate2 conversion of the model in `directory`, from the cache or built now."""
    from batchnlp.job import library_version
    from batchnlp.model import cache

    def build(into: Path) -> None:
        from ctranslate2.converters import TransformersConverter

        TransformersConverter(str(directory)).convert(str(into), force=True)

    return cache.derived("ctranslate2", directory, {"ctranslate2": library_version("ctranslate2")}, build)


def peers(directory: Path, prompts: list[list[int]], shared: int, new_tokens: int, threads: int,
          tokenizer: Any, eos: set[int], detokenize: Any) -> list[Baseline]:
    import ctranslate2

    from batchnlp.job import library_version

    path = str(converted(directory))
    version = library_version("ctranslate2")
    static = tokenizer.convert_ids_to_tokens(prompts[0][:shared]) if shared else None
    own = [tokenizer.convert_ids_to_tokens(p[shared:]) for p in prompts]
    ends = tokenizer.convert_ids_to_tokens(sorted(eos))
    baselines = []
    for compute_type in COMPUTE_TYPES:
        # Loaded for its rounds only: a generator left loaded (its own OpenMP runtime, its threads)
        # slowed the torch rounds after it by 30-50% here (9.1-9.7 s against 12.4 s; 11 s again once
        # it was deleted), so it is loaded and released around each round, untimed.
        held: dict[str, Any] = {}

        def load(compute_type: str = compute_type, held: dict[str, Any] = held) -> None:
            held["generator"] = ctranslate2.Generator(path, device="cpu", compute_type=compute_type,
                                                      intra_threads=threads)

        def generate(held: dict[str, Any] = held, load: Any = load) -> list[dict[str, Any]]:
            if "generator" not in held:  # called outside the bench's rounds
                load()
            results = held["generator"].generate_batch(own, max_length=new_tokens, sampling_topk=1,
                                                       max_batch_size=len(own), include_prompt_in_result=False,
                                                       end_token=ends, **({"static_prompt": static} if static else {}))
            return generated_rows([r.sequences_ids[0] for r in results], eos, detokenize)

        baselines.append(Baseline(generate, f"CTranslate2 {version} {compute_type}", batches_features=False,
                                  load=load, unload=held.clear))
    return baselines
