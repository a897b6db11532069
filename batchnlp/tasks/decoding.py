"""What the generating tasks (text-generation, summarization, translation) share: decoding
options, turning them into `generate` arguments, seeding, stop strings, and the `Generative` base
class (budget and seeding per shard)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from batchnlp.errors import SpecError
from batchnlp.settings import doc
from batchnlp.tasks.base import Feature, Task


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
    seed: int = doc("Seed for sampling; shard i uses seed + i, so a rerun or a resumed run samples the same "
                    "(given the same batch settings, which the manifest pins).", default=0)

    def validate(self) -> None:
        for key in ("max_new_tokens", "num_beams"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise SpecError(f"task.{key}", "must be 1 or more")
        if self.temperature is not None and self.temperature <= 0:
            raise SpecError("task.temperature", "must be above 0 (for greedy decoding set do_sample: false)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise SpecError("task.top_p", "must be in (0, 1]")


GENERATE_KEYS = [f.name for f in fields(DecodingParams) if f.name != "seed"]


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


def cut_at_stop(text: str, stops: Any) -> str:
    """Cut generated text at the first stop string (the stop string itself is left out)."""
    cut = len(text)
    for stop in stops or ():
        at = text.find(stop)
        if at >= 0:
            cut = min(cut, at)
    return text[:cut]


class Generative(Task):
    """A task that generates text: the token budget counts the tokens it will add, and shard i is
    seeded with seed + i, so a rerun or a resumed run (which restarts at a shard) samples the same."""

    # Greedy text from another precision may part ways with float32's after a near-tie; 95% of
    # texts identical is the bar.
    agreement_threshold = 0.95

    def setup(self) -> None:
        super().setup()
        self.new_tokens = new_tokens(self.params, None)

    def start_shard(self, index: int) -> None:
        seed_shard(self.params.seed, index)

    def batch_length(self, feature: Feature) -> int:
        return len(feature["input_ids"]) + self.new_tokens
