"""The task registry. A task is one module in this package with one `Task` subclass.

Task modules import torch only inside their methods, so listing and validating tasks is instant.
"""

from __future__ import annotations

import importlib

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
}
ALIASES = {"sentiment": "text-classification", "feature-extraction": "embeddings", "ner": "token-classification"}


def task_names() -> list[str]:
    return sorted(_TASKS)


def task_class(name: str):
    canonical = ALIASES.get(name, name)
    if canonical not in _TASKS:
        raise SpecError("task.name", f"unknown task {name!r}; known tasks are: {', '.join(task_names())}")
    return importlib.import_module(_TASKS[canonical]).TASK
