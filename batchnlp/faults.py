"""Fault injection for the tests: kill or signal the run at a named point, or fail a Ray actor on
one shard. Production code never reads the environment for these: the CLI builds one `Faults`
from it (`from_environment`) and hands it down in the run context; the Python API uses none.

- BATCHNLP_TEST_CRASH=part-written:2 SIGKILLs the process right after the part of shard 2 (of any
  file) is in place, before a commit lists it; other points: shard-recorded:N (after the commit
  of shard N), committed:V (right after commit V of the log), checkpoint-written:V (a
  checkpoint written, not yet pointed to).
- BATCHNLP_TEST_SIGNAL=shard-recorded:0 sends SIGTERM there (`@SIGINT` for SIGINT), as a
  scheduler would.
- BATCHNLP_TEST_FAIL_SHARD=0-3 makes the Ray actor that annotates shard (0, 3) raise.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Faults:
    crash: str | None = None
    signal: str | None = None
    fail_shard: str | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "Faults":
        return cls(environ.get("BATCHNLP_TEST_CRASH") or None, environ.get("BATCHNLP_TEST_SIGNAL") or None,
                   environ.get("BATCHNLP_TEST_FAIL_SHARD") or None)

    def point(self, name: str, number: int) -> None:
        """The run reached point `name` for shard (or commit) `number`."""
        here = f"{name}:{number}"
        if self.crash == here:
            os.kill(os.getpid(), signal.SIGKILL)
        wanted, _, signame = (self.signal or "").partition("@")
        if wanted == here:
            os.kill(os.getpid(), getattr(signal, signame or "SIGTERM"))

    def check_shard(self, unit: int, shard: int) -> None:
        if self.fail_shard == f"{unit}-{shard}":
            raise RuntimeError(f"injected failure on shard {(unit, shard)}")


NONE = Faults()
