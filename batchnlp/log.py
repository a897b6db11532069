"""Logs that an unattended run (cron, Airflow) can use: the `logging` module, a timestamp and a
level on every line, plain text or one JSON object per line, to stderr and optionally a file.

Structured events carry their figures as fields (`event("shard", "...", rows=..., rows_per_s=...)`):
the text format prints the message, the JSON format adds the fields as keys. Other libraries'
loggers (transformers, datasets, huggingface_hub, ray) and Python warnings go to the same handlers
at WARNING and above; their progress bars are switched off when quiet or when stderr is not a
terminal (a bar piped to a file is one long line of carriage returns).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sys
from typing import Any, Iterator

LOGGER = logging.getLogger("batchnlp")
LIBRARY_LOGGERS = ("transformers", "datasets", "huggingface_hub", "ray", "ray.data", "py.warnings")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


#: The format `configure` set ("text" or "json"); whether the command's final error was printed.
FORMAT = {"value": "text"}
FINAL = {"printed": False}


def event(name: str, message: str, level: int = logging.INFO, file_only: bool = False, terminal: bool = True,
          **fields: Any) -> None:
    """A structured log line. `file_only`: for the log file alone (a run's failure, which the
    command's final line says). `terminal` False: not on a terminal, where the run's life
    (started, planned, finished) would only repeat what the command and its progress bar show;
    on a stderr that is not a terminal (cron's mail, a CI log: often the only log) it is written."""
    LOGGER.log(level, message, extra={"event": name, "fields": fields, "file_only": file_only, "terminal": terminal})


def final_error(message: str, exit_code: int) -> None:
    """The command's one-line error, on stderr as `error: ...` — as a JSON object instead with
    --log-format json, so such a log stays JSON to its last line — and in the log file too."""
    FINAL["printed"] = True
    record = LOGGER.makeRecord(LOGGER.name, logging.ERROR, "", 0, message, None, None,
                               extra={"event": "error", "fields": {"exit_code": exit_code}})
    for handler in LOGGER.handlers:
        if isinstance(handler, StderrHandler) and FORMAT["value"] != "json":
            continue
        handler.handle(record)
    if FORMAT["value"] != "json" or not any(isinstance(h, StderrHandler) for h in LOGGER.handlers):
        print(f"error: {message}", file=sys.stderr, flush=True)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{_time(record)} {record.levelname:<7} {record.getMessage()}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {"time": _time(record), "level": record.levelname, "logger": record.name,
                "event": getattr(record, "event", None), "message": record.getMessage(),
                **getattr(record, "fields", {})}
        return json.dumps(data, default=str)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is logged (click's test runner swaps it);
    `file_only` events never, lifecycle events (`terminal` False) only where stderr is not a
    terminal (with no --log-file, an unattended run's stderr is its only log)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.addFilter(lambda record: not getattr(record, "file_only", False)
                       and (getattr(record, "terminal", True) or not _is_terminal(sys.stderr)))

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _is_terminal(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def _time(record: logging.LogRecord) -> str:
    return dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds")


def configure(level: str = "INFO", file: str | None = None, fmt: str = "text", quiet: bool = False,
              file_level: str | None = None) -> None:
    """Set up batchnlp's logging for one command (called once by the CLI). `file_level`: the log
    file's own level (-q quiets the terminal, not the file: a nightly run's file keeps INFO)."""
    FORMAT["value"] = fmt
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    stderr = StderrHandler()
    stderr.setLevel(level)
    handlers: list[logging.Handler] = [stderr]
    if file:
        to_file = logging.FileHandler(file, encoding="utf-8")
        to_file.setLevel(file_level or level)
        handlers.append(to_file)
    for handler in handlers:
        handler.setFormatter(formatter)
    lowest = min(h.level for h in handlers)
    for name, logger_level in [("batchnlp", lowest), *[(n, "WARNING") for n in LIBRARY_LOGGERS]]:
        logger = logging.getLogger(name)
        logger.handlers = list(handlers)
        logger.setLevel(logger_level)
        logger.propagate = False
    logging.captureWarnings(True)
    if not bars_allowed(quiet):
        silence_library_bars()


def silence_library_bars() -> None:
    """transformers', huggingface_hub's and datasets' own progress bars (weight loading, GGUF
    dequantising, maps); set before they are imported, which read these variables then."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TQDM_DISABLE"] = "1"  # libraries that use plain tqdm (our own bar is off here anyway)


def bars_allowed(quiet: bool) -> bool:
    """Whether progress bars may be drawn: not quiet, and stderr is a terminal."""
    return not quiet and sys.stderr.isatty()


@contextlib.contextmanager
def no_load_report() -> Iterator[None]:
    """transformers logs a multi-line table of missing and unexpected weights while loading; the
    missing ones are reported by batchnlp in one line (or allowed), the unexpected ones (a head
    that the task does not use) are harmless. Its other warnings stay."""
    logger = logging.getLogger("transformers.modeling_utils")
    filter_ = _DropLoadReport()
    logger.addFilter(filter_)
    try:
        yield
    finally:
        logger.removeFilter(filter_)


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()
