"""Never hang, never go silent: one thread per run that watches its progress.

- **Heartbeat.** While nothing commits (a model load, a long batch, a store being retried), a log
  line every progress interval says what the run is doing and for how long.
- **Stall.** When the run makes no progress for `runtime.stall_seconds`, it is stopped as failed,
  with one line saying what it waited for. Progress is a tick (a batch done, a part committed, an
  object store's answer, an error too: the retries have their own budget) or the process
  computing (its CPU time advancing by 5% of a core or more): a slow model load or a long batch
  advances, a deadlock or a store that never answers does not.

Stopping: a signal to the main thread, whose handler raises `Stalled` wherever it waits (a lock,
a socket read); the run records `failed` and the CLI prints the line and exits 2. If that does not
end the process within a grace period (a thread stuck in a call that ignores signals), the line is
written and the process exits at once; the next run records the dead run as `killed` and resumes.

Module-level functions act on the run's watchdog, so the store's client and the engines tick it
without carrying it around; with no watchdog running (the Python API, a Ray actor) they do nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any, Iterator

from batchnlp.errors import USER_ERROR, UserError
from batchnlp.log import FINAL, event, final_error

#: A share of one core the process must use over a check to count as computing (the watchdog's
#: own and the heartbeat's wake-ups use far less).
BUSY_CPU_SHARE = 0.05


class Stalled(UserError):
    """The run made no progress for runtime.stall_seconds."""


class Watchdog:
    def __init__(self, stall_seconds: float, heartbeat_seconds: float, file_only: bool, exit_at_once: bool):
        self.stall_seconds, self.heartbeat_seconds = stall_seconds, heartbeat_seconds
        self.file_only, self.exit_at_once = file_only, exit_at_once
        self.began = self.last_tick = self.last_beat = time.monotonic()
        self.doing = "starting"
        self.message: str | None = None
        self._cpu = time.process_time()
        self._stop = threading.Event()
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="batchnlp-watchdog", daemon=True)
        self._main = threading.main_thread().ident

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def committed(self) -> None:
        """A part committed: progress, and the heartbeat's clock starts again."""
        self.last_tick = self.last_beat = time.monotonic()

    # -- the thread ------------------------------------------------------------------------------

    def _watch(self) -> None:
        check = max(0.05, min(5.0, self.stall_seconds / 10, self.heartbeat_seconds))
        while not self._stop.wait(check):
            now, cpu = time.monotonic(), time.process_time()
            if cpu - self._cpu >= BUSY_CPU_SHARE * check:
                self.last_tick = now  # computing: advancing, if slowly
            self._cpu = cpu
            if now - self.last_beat >= self.heartbeat_seconds:
                self.last_beat = now
                event("heartbeat", f"still {self.doing} ({now - self.began:.0f} s into the run, last progress "
                                   f"{now - self.last_tick:.0f} s ago)", seconds=round(now - self.began, 1),
                      idle_seconds=round(now - self.last_tick, 1), doing=self.doing, file_only=self.file_only)
            if now - self.last_tick >= self.stall_seconds:
                self._stalled(now - self.last_tick)
                return

    def _stalled(self, idle: float) -> None:
        self.message = (f"no progress for {idle:.0f} s (runtime.stall_seconds) while {self.doing}; the run was "
                        "stopped as failed; the committed parts are kept: run the job again to resume")
        if self._main is not None:
            signal.pthread_kill(self._main, signal.SIGUSR1)  # the handler raises Stalled in the main thread
        # A thread stuck in a call that no signal ends keeps the process alive (its pool is joined at
        # exit): past a grace period the process ends here, so a stall never becomes a hang.
        if self._ended.wait(min(60.0, max(5.0, self.stall_seconds))):
            return  # (the Python API) the run ended by itself
        if not self.exit_at_once:
            event("stalled", self.message + " (a thread is still stuck)", level=40)
            return
        if not FINAL["printed"]:
            final_error(self.message, USER_ERROR)  # a stall is one line and exit 2, as a user error
        os._exit(USER_ERROR)


_ACTIVE: list[Watchdog] = []


@contextlib.contextmanager
def watching(stall_seconds: float, heartbeat_seconds: float, file_only: bool, exit_at_once: bool = False
             ) -> Iterator[Watchdog]:
    """Watch the run in this block. `exit_at_once` (the CLI): a run that a stall does not stop
    within the grace period ends the process; the Python API only logs it (a notebook's kernel
    must live on). `file_only`: heartbeats go to the log file only (a progress bar is drawn)."""
    dog = Watchdog(stall_seconds, heartbeat_seconds, file_only, exit_at_once)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGUSR1, _raise_stalled) if in_main else None
    if not in_main:
        dog._main = None  # no signal can reach this thread: a stall is logged, and ends the process
    _ACTIVE.append(dog)
    dog._thread.start()
    try:
        yield dog
    finally:
        dog._stop.set()
        if not exit_at_once:
            dog._ended.set()
        if dog.message is None:
            dog._thread.join()
        # (else, with exit_at_once, the stalled watchdog stays: it ends a process that a stuck
        # thread keeps from ending; a daemon, it goes with a process that ends by itself)
        _ACTIVE.remove(dog)
        if in_main:
            signal.signal(signal.SIGUSR1, previous)


def _raise_stalled(signum: int, frame: Any) -> None:
    message = _ACTIVE[-1].message if _ACTIVE and _ACTIVE[-1].message else "the run stalled"
    raise Stalled(message)


def tick() -> None:
    """Progress: a batch, a commit, a store's answer."""
    for dog in _ACTIVE:
        dog.tick()


def committed() -> None:
    for dog in _ACTIVE:
        dog.committed()


@contextlib.contextmanager
def doing(what: str) -> Iterator[None]:
    """Say what the run does now, for the heartbeat and the stall's line. Threads overlap
    (reading, the model, writing): the latest to start names what the run does."""
    dogs = list(_ACTIVE)
    saved = [dog.doing for dog in dogs]
    for dog in dogs:
        dog.doing = what
        dog.tick()
    try:
        yield
    finally:
        for dog, was in zip(dogs, saved):
            if dog.doing == what:
                dog.doing = was
            dog.tick()
