"""The task registry. A task is one module in this package with one `Task` subclass.

Task modules import torch only inside their methods, so listing and validating tasks is instant.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from batchnlp.errors import SpecError

# name -> module; modules are imported on first use.
_TASKS = {
    "text-classification": "batchnlp.tasks.classification",
    "embeddings": "batchnlp.tasks.embeddings",
    "zero-shot-classification": "batchnlp.tasks.zero_shot",
    "question-answering": "batchnlp.tasks.question_answering",
    "fill-mask": "batchnlp.tasks.fill_mask",
    "token-classification": "batchnlp.tasks.token_classification",
    "text-generation": "batchnlp.tasks.text_generation",
    "summarization": "batchnlp.tasks.summarization",
    "translation": "batchnlp.tasks.translation",
    "extraction": "batchnlp.tasks.extraction",
}
#: transformers' pipeline names for the same tasks (and batchnlp's older short ones), as the
#: tutorials type them: `pipeline("sentiment-analysis")`, `pipeline("ner")`.
ALIASES = {"sentiment-analysis": "text-classification", "sentiment": "text-classification",
           "ner": "token-classification", "feature-extraction": "embeddings"}
#: `translation_en_to_de`: the translation task with its two languages in the name.
TRANSLATION_NAME = re.compile(r"^translation_([A-Za-z][\w-]*?)_to_([A-Za-z][\w-]*)$")


def task_names() -> list[str]:
    return sorted(_TASKS)


def canonical(name: str) -> tuple[str, dict[str, Any]]:
    """(the registry's name for a task name as typed, the parameters the name implies: a
    `translation_en_to_de` sets src_lang en and tgt_lang de)."""
    if (match := TRANSLATION_NAME.match(name)) is not None:
        return "translation", {"src_lang": match.group(1), "tgt_lang": match.group(2)}
    return ALIASES.get(name, name), {}


def task_class(name: str):
    known, _ = canonical(name)
    if known not in _TASKS:
        aliases = ", ".join(f"{alias} ({target})" for alias, target in ALIASES.items())
        raise SpecError("task.name", f"unknown task {name!r}; known tasks are: {', '.join(task_names())}; also "
                                     f"accepted: {aliases}, translation_XX_to_YY (translation from XX to YY)")
    return importlib.import_module(_TASKS[known]).TASK
