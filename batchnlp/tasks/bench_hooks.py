"""What `batchnlp bench` asks of a task beyond the run: the naive loop a user would write with
transformers' pipeline on the same model (`baseline`), with the tokenizer arguments that truncate
as batchnlp does (`truncation`). A task without a pipeline in transformers returns no baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class Baseline:
    """The naive loop a user would write for a task with transformers' pipeline, for `batchnlp bench`:
    `call()` annotates the texts and returns one row per text in batchnlp's column layout."""

    call: Callable[[], list[dict[str, Any]]]
    label: str
    #: The pipeline batches the task's features in input order (so its padding can be computed).
    batches_features: bool = True
    #: Called before and after each timed `call`, untimed: for an engine that must not stay loaded
    #: while the others run (an idle CTranslate2 generator slowed batchnlp's next rounds by 30-50%).
    load: Callable[[], None] | None = None
    unload: Callable[[], None] | None = None


def generated_rows(sequences: list[list[int]], eos: set[int], detokenize: Callable[[list[int]], str]
                   ) -> list[dict[str, Any]]:
    """An engine's generated token ids as text-generation rows, its end tokens left out (an engine
    may return the stop token it was given; batchnlp's texts never hold it)."""
    return [{"generated_text": detokenize([t for t in ids if t not in eos])} for ids in sequences]


def make_pipeline(name: str, model: Any, tokenizer: Any) -> Any:
    """transformers' pipeline for `name` on an already loaded model (the bench's float32 twin)."""
    import warnings

    from transformers import pipeline

    warnings.filterwarnings("ignore", message=".*pipelines sequentially on GPU.*")
    return pipeline(name, model=model, tokenizer=tokenizer, device=model.device)


class BenchHooks:
    """The bench's hooks (a mixin of `Task`: `tokenizer` and `max_length` are the task's)."""

    tokenizer: Any
    max_length: int

    def baseline(self, model: Any, texts: list[str], batch_size: int) -> Baseline | None:
        """The naive pipeline loop on `model` and `texts` (None: transformers has no pipeline for it)."""
        return None

    def truncation(self) -> dict[str, Any]:
        """The pipeline's tokenizer arguments that truncate as batchnlp does."""
        return {"truncation": True, "max_length": self.max_length}
