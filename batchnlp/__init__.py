"""batchnlp: offline batch NLP annotation of corpora with Hugging Face models.

The Python API (`load_job`, `run`, `inspect`, `verify`, `annotate`, `Annotator`, `pipeline`; see `batchnlp.api`) is loaded
on first use, so that `batchnlp --help` and `validate` stay instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batchnlp.errors import BatchNLPError, UserError
from batchnlp.version import __version__

__all__ = ["__version__", "Annotator", "BatchNLPError", "JobSpec", "RunResult", "UserError", "annotate", "dataset", "inspect",
           "load_job", "pipeline", "run", "verify"]
_API = {"Annotator", "JobSpec", "RunResult", "annotate", "dataset", "inspect", "load_job", "pipeline", "run", "verify"}

if TYPE_CHECKING:
    from batchnlp.api import JobSpec, RunResult, annotate, dataset, inspect, load_job, pipeline, run, verify  # noqa: F401
    from batchnlp.in_memory import Annotator  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _API:
        from batchnlp import api

        return getattr(api, name)
    raise AttributeError(f"module 'batchnlp' has no attribute {name!r}")
