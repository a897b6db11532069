"""The output's commit log: numbered commit files written once, and a checkpoint now and then, as
Delta Lake's `_delta_log` does it.

    OUT/.batchnlp/log/00000000000000000000.json             commit 0: the job, pinned decisions, run 1 started
    OUT/.batchnlp/log/00000000000000000001.json             commit 1: part-00000-00000 added
    ...
    OUT/.batchnlp/log/00000000000000000400.checkpoint.json  the whole state after commit 400
    OUT/.batchnlp/log/_last_checkpoint                      "400"

- A commit is a small JSON record of actions (`write/state.py` applies them): its size and cost do
  not depend on how much the output already holds. It is created only if its number is free
  (`Folder.create_bytes`): a competing writer that read the same state loses at its next commit.
- A checkpoint holds the state after a commit, so reading the state never replays the whole log;
  it is written whole under a new name and only then pointed to, so a kill at any moment leaves
  the last good checkpoint and the commits after it. Checkpoints come every `interval()` commits,
  more seldom as the output grows (a tenth of its parts, 50 to 1,000), so their cost per commit
  stays flat; the one before the previous is deleted.
- The folder starts with a dot: pyarrow, pandas, DuckDB globs, Spark and
  `datasets.load_dataset("parquet", data_dir=OUT)` skip it, so readers see the parts alone.
- Commits are never deleted: the history stays readable (`batchnlp inspect OUT --history`).

Deliberately not delta-rs (`deltalake`): a Delta table owns its data files (its writer names
and writes them, readers must consult the log to know which files are current, and a removed
file stays on disk until `vacuum`), while batchnlp's parts are named by shard, written by its own
workers with their sha256, and must be exactly the folder's Parquet files for readers that know
nothing of a log. What batchnlp needs of a log (create-if-absent commits, checkpoints, typed
actions) is this module's two hundred lines.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable

from batchnlp.errors import OutputConflictError
from batchnlp.log import event
from batchnlp.write.actions import Action
from batchnlp.write.folder import Folder
from batchnlp.write.state import FORMAT_VERSION, OutputState, now

LOG_DIR = ".batchnlp/log"
POINTER = f"{LOG_DIR}/_last_checkpoint"
MIN_INTERVAL, MAX_INTERVAL = 50, 1000


def commit_name(version: int) -> str:
    return f"{LOG_DIR}/{version:020d}.json"


def checkpoint_name(version: int) -> str:
    return f"{LOG_DIR}/{version:020d}.checkpoint.json"


def _dumps(data: Any) -> bytes:
    # Compact: with `indent`, Python's json falls back to its pure-Python encoder (5-10x slower).
    return json.dumps(data, separators=(",", ":"), default=str).encode()


class CommitLog:
    """The log of one output and the state it adds up to. `pending` actions ride along with the
    next commit (the plan and the job's metadata go with the run's first commit: a run that fails
    before it starts leaves nothing behind)."""

    def __init__(self, folder: Folder, state: OutputState, checkpointed: int | None = None,
                 on_point: Callable[[str, int], None] | None = None, older: int | None = None):
        self.folder = folder
        self.state = state
        self.pending: list[dict[str, Any]] = []
        self.checkpointed = checkpointed  # the version of the last checkpoint (None: none yet)
        self.older = older  # the checkpoint before it, deleted once a newer one is pointed to
        self.on_point = on_point or (lambda name, number: None)  # fault injection (tests)
        #: No commit of this log exists yet: the next one may make the log's folder (never later:
        #: one made again while `rm -r` empties the output would hold an orphan commit).
        self.fresh = state.version < 0

    # -- reading ------------------------------------------------------------------------------

    @classmethod
    def read(cls, folder: Folder) -> "CommitLog | None":
        """The state: the last checkpoint, then every commit after it (None: no log here)."""
        state, checkpointed, older = cls._checkpoint(folder)
        version = state.version
        while (data := folder.read_bytes(commit_name(version + 1))) is not None:
            commit = cls._parse(folder, commit_name(version + 1), data)
            for action in commit["actions"]:
                state.apply(action)
            version = state.version = commit["version"]
        if version < 0:
            return None
        return cls(folder, state, checkpointed, older=older)

    @classmethod
    def _checkpoint(cls, folder: Folder) -> tuple[OutputState, int | None, int | None]:
        """(the state of the last checkpoint, its version, the version of the one before it). The
        pointer reads "400 300": the last checkpoint and the one kept before it."""
        pointer = folder.read_bytes(POINTER)
        if pointer is None:
            return OutputState(), None, None
        try:
            version, *before = (int(token) for token in pointer.decode().split())
        except (UnicodeDecodeError, ValueError):
            return cls._replayed(folder, f"{POINTER} holds {pointer[:40]!r}, not a checkpoint's number")
        data = folder.read_bytes(checkpoint_name(version))
        if data is None:  # deleted by hand: replay the whole log instead
            return OutputState(), None, None
        try:
            parsed = json.loads(data)
        except ValueError:  # (UnicodeDecodeError too)
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("format"), int) and parsed["format"] > FORMAT_VERSION:
            cls._parse(folder, checkpoint_name(version), data)  # "upgrade batchnlp"
        try:
            state = OutputState.from_json(parsed) if isinstance(parsed, dict) and \
                parsed.get("format") == FORMAT_VERSION and parsed.get("version") == version else None
        except (ValueError, KeyError, TypeError, AttributeError):
            state = None
        if state is None:
            return cls._replayed(folder, f"{checkpoint_name(version)} is not a readable checkpoint")
        return state, version, (before[0] if before else None)

    @staticmethod
    def _replayed(folder: Folder, problem: str) -> tuple[OutputState, None, None]:
        """A checkpoint only saves replaying the commits, which are the record: a damaged one (or
        its pointer) is passed over, the state read from commit 0, and the next checkpoint
        written over it."""
        event("log", f"{folder}: {problem}; the output's state is read from its commits instead",
              level=logging.WARNING, output=str(folder))
        return OutputState(), None, None

    @staticmethod
    def _parse(folder: Folder, name: str, data: bytes) -> dict[str, Any]:
        try:
            parsed = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise OutputConflictError(f"{folder / name}: not readable ({e}); the output's log is damaged: use "
                                      "--overwrite to start this output over") from None
        if not isinstance(parsed, dict) or "version" not in parsed:
            raise OutputConflictError(f"{folder / name}: not a batchnlp commit or checkpoint; the output's log is "
                                      "damaged: use --overwrite to start this output over")
        if parsed.get("format") != FORMAT_VERSION:
            newer = isinstance(parsed.get("format"), int) and parsed["format"] > FORMAT_VERSION
            raise OutputConflictError(f"{folder / name}: log format {parsed.get('format')}, this batchnlp reads "
                                      f"{FORMAT_VERSION}; " + ("upgrade batchnlp" if newer else
                                                               "use --overwrite to start this output over"))
        return parsed

    # -- writing ------------------------------------------------------------------------------

    def stage(self, *actions: Action, first: bool = False) -> None:
        """Apply actions to the state now and write them with the next commit (`first`: ahead of
        those staged already). What this process decides from the state (which shards are done)
        must see them at once; a run that fails before its first commit leaves no trace."""
        written = [action.to_json() for action in actions]
        for action in written:
            self.state.apply(action)
        self.pending = [*written, *self.pending] if first else [*self.pending, *written]

    def commit(self, *actions: Action) -> int:
        """Write the staged actions and these as the next commit. These are applied first: an action
        the state cannot take fails here, before it is written (the log stays readable)."""
        written = [action.to_json() for action in actions]
        actions_list = [*self.pending, *written]
        for action in written:
            self.state.apply(action)
        version = self.state.version + 1
        body = _dumps({"format": FORMAT_VERSION, "version": version, "at": now(), "actions": actions_list})
        try:
            self.folder.create_bytes(commit_name(version), body, new_folder=self.fresh)
        except FileExistsError:
            raise OutputConflictError(f"output.path: {self.folder}: another run committed to this output while this "
                                      f"one ran (commit {version} exists); this run stopped, its committed parts "
                                      "are kept") from None
        self.pending = []
        self.fresh = False
        self.state.version = version
        self.on_point("committed", version)
        if version - (self.checkpointed if self.checkpointed is not None else -1) >= interval(len(self.state.parts)):
            self.checkpoint()
        return version

    def checkpoint(self) -> None:
        """Write the whole state under the current version, then point to it; the checkpoint two
        back goes (the one before keeps a reader that read the old pointer going)."""
        version = self.state.version
        self.folder.write_bytes(checkpoint_name(version), _dumps(self.state.to_json()))
        self.on_point("checkpoint-written", version)
        previous = self.checkpointed
        self.folder.write_bytes(POINTER, f"{version} {previous if previous is not None else ''}".strip().encode())
        if self.older is not None:
            self.folder.remove(checkpoint_name(self.older))
        self.older, self.checkpointed = previous, version


def interval(parts: int) -> int:
    """Commits between checkpoints: a tenth of the parts, so a checkpoint's cost (which grows
    with the state) spread over the commits after it stays flat; BATCHNLP_CHECKPOINT_EVERY sets it."""
    every = os.environ.get("BATCHNLP_CHECKPOINT_EVERY")
    if every:
        return max(1, int(every))
    return max(MIN_INTERVAL, min(MAX_INTERVAL, parts // 10))
