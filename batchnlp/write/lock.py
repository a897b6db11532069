"""One run per output directory, enforced with an advisory file lock. The kernel drops the lock
when the process dies, even by SIGKILL, so a crashed run never leaves a stale lock behind.

An flock belongs to the open file, which a forked child (a DataLoader worker) shares: the lock
would outlive a killed run for as long as its workers linger. So a forked child closes its copy
of every lock this process holds, at once (`os.register_at_fork`)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from batchnlp.errors import OutputBusyError
from batchnlp.write.folder import Folder
from batchnlp.write.lease import Lease

LOCK_NAME = ".batchnlp.lock"
_HELD: set[int] = set()  # descriptors of the locks this process holds


def _close_inherited_locks() -> None:
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


class OutputLock:
    def __init__(self, directory: Path):
        self.path = directory / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> "OutputLock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 64).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            self.fd = None
            raise OutputBusyError(f"output.path: {self.path.parent} is in use by a running job (pid "
                                      f"{holder}); wait for it to finish or choose another output.path") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        _HELD.add(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            _HELD.discard(self.fd)
            os.close(self.fd)  # closing releases the lock
            self.fd = None


def hold(folder: Folder) -> Any:
    """One run per output, as a context manager: an flock on a local disk, a lease object in a
    bucket (which every write of the folder then checks)."""
    if folder.local:
        return OutputLock(folder.directory)
    lease = Lease(folder)
    folder.guard(lease)
    return lease


def held(folder: Folder) -> bool:
    """Another live run holds the output now."""
    if folder.local:
        return is_locked(folder.directory)
    return Lease(folder).held_by_another() is not None


def is_locked(directory: Path) -> bool:
    path = directory / LOCK_NAME
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
