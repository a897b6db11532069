"""What the test modules share: the sample texts, writing a job file, reading an output back,
and invoking the CLI."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pyarrow.dataset as ds
import yaml
from click.testing import CliRunner

from batchnlp.cli import main

TEXTS = [
    "great battery, would buy again",
    "terrible. it broke after a week and the refund never came",
    "ok",
    "the story was slow but the ending was excellent and the music was great, i would recommend it to "
    "anyone who likes a good film with a long plot and great acting",
    "bad fit",
    "love it",
    "the price is very expensive for the quality of the sound",
    "fine",
    "never again",
    "the screen is fast and the coffee machine works, the shoes fit and the movie was good",
    "awful acting",
    "best product",
]


def write_job(directory: Path, *, input: dict, task: dict, model: dict, output: dict | None = None,
              runtime: dict | None = None, name: str = "job.yaml") -> Path:
    spec = {"input": input, "task": task, "model": model,
            "output": output or {"path": str(directory / "out"), "rows_per_shard": 4},
            # float32 unless a test says otherwise: most tests compare with a float32 reference,
            # and `auto` may pick bfloat16 on this CPU.
            "runtime": {"dtype": "float32", **(runtime or {})}}
    path = directory / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))  # as given: a schema's properties are in order
    return path


def read_output(directory: Path):
    """The whole annotated output, parts in order (the log and lock file are skipped)."""
    return ds.dataset(str(directory), format="parquet").to_table()


def record(output) -> dict:
    """The output's state through the public API (`batchnlp.inspect`): status, runs, parts, ..."""
    import batchnlp

    return batchnlp.inspect(output)


def invoke(*args):
    """The CLI in-process (click's runner); stdout and stderr together in `.output`."""
    return CliRunner().invoke(main, [str(a) for a in args])


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00 (DEBUG|INFO|WARNING|ERROR) ")


def printed(output: str) -> str:
    """What a command printed besides its log lines (a stderr that is not a terminal, as click's
    runner's, gets the run's life as timestamped log lines; the rest is the command's own)."""
    return "".join(line for line in output.splitlines(keepends=True) if not LOG_LINE.match(line))


def marked(mark: str) -> list[int]:
    """The processes whose environment carries BATCHNLP_TEST_MARK=`mark`: a run started with it,
    and every process it started (DataLoader workers, a local Ray cluster) inherit it."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if f"BATCHNLP_TEST_MARK={mark}".encode() in f.read():
                    found.append(int(entry))
        except OSError:
            pass
    return found


def gone(mark: str, deadline: float) -> bool:
    """Whether every marked process has exited by `deadline` (time.monotonic()). A bound on a
    condition, polled, not a sleep that a test relies on."""
    while marked(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not marked(mark)


def run(spec, **options):
    """`batchnlp.runner.run` with its options as keywords (RunOptions' fields)."""
    from batchnlp.options import RunOptions
    from batchnlp.runner import run as run_job

    return run_job(spec, RunOptions(**options))
