"""Run by `engines/ray_cluster.py` as `python -m batchnlp.engines.ray_watcher PID...`, beside a
local Ray cluster: until the driver is gone (its pipe on stdin closes), note every second the
cluster's processes and their descendants (the raylet starts the agents and workers; once their
parent dies they are re-parented and could no longer be told apart); then, unless the driver
wrote "done", kill those still alive. A process is known by pid and start time, so a reused pid
is left alone. Standard library only: it must start fast and import nothing of Ray or torch."""

import os
import select
import signal
import sys


def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), fields[19]  # parent, start time


def descendants(roots):
    children = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent, started = stat(entry)
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append((int(entry), started))
    found, todo = set(), list(roots)
    while todo:
        process = todo.pop()
        if process not in found:
            found.add(process)
            todo.extend(children.get(process[0], []))
    return found


def main():
    known = set()
    for pid in map(int, sys.argv[1:]):
        try:
            known.add((pid, stat(pid)[1]))
        except (OSError, ValueError, IndexError):
            pass
    while not select.select([0], [], [], 1.0)[0]:
        known |= descendants(known)
    if os.read(0, 16) != b"done":
        for pid, started in known:
            try:
                if stat(pid)[1] == started:
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                pass


if __name__ == "__main__":
    main()
