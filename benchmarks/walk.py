"""How far the job spec travels through the package during one run, and how often it climbs back up
the layers (issue 29). Not a timing: a count, the same on any machine.

The walk: every call of a batchnlp function that receives the job spec (the `JobSpec` itself, or
a `Job` holding it) as an argument, in the order the calls happen, each named by its module. A
*move* is two consecutive calls in different modules; a *climb* is a move to a module on a higher
layer than the one before (the spec went down, then back up to the conductor or to an upper
room). The layers, top to bottom:

    0 entry points   cli, api, bench, preview, validate
    1 conductor      runner
    2 decide, engines, record
    3 the loaded job session, job, probe, work, stages (annotator), in_memory
    4 data and model tasks, model, batch, read
    5 infrastructure write, spec, settings, storage, log, watchdog, options, progress, ...

    python benchmarks/walk.py                                 # jobs/embed_reviews.yaml, this checkout
    python benchmarks/walk.py --source /tmp/old-checkout      # the same walk of another checkout

It runs the job into a fresh temporary output with the local engine (the first night: every
decision is taken), in a child process whose `batchnlp` is the one under --source.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

LAYERS = [
    ("cli", "api", "bench", "preview", "validate"),
    ("runner",),
    ("decide", "engines", "record"),
    ("session", "job", "probe", "work", "stages", "annotator", "in_memory"),
    ("tasks", "model", "batch", "read"),
]

CHILD = r"""
import json, sys
from pathlib import Path

import batchnlp
from batchnlp.spec import load_spec

spec = load_spec(sys.argv[1], [f"output.path={sys.argv[2]}"])
package = str(Path(batchnlp.__file__).parent)
walk = []


SECTIONS = {id(spec), id(spec.input), id(spec.output), id(spec.runtime), id(spec.model), id(spec.task),
            id(spec.task.params)}


from batchnlp.write.commits import CommitLog
from batchnlp.write.state import OutputState


def carries(value):
    # the spec, one of its sections, or an object that holds it (a job, a run's context, stages);
    # or the output's record the run decides against and commits to (its log, its state)
    if id(value) in SECTIONS or isinstance(value, (CommitLog, OutputState)):
        return True
    try:
        held = getattr(value, "spec", None) or getattr(getattr(value, "job", None), "spec", None)
    except Exception:
        return False
    return held is spec


def profile(frame, event, arg):
    if event != "call":
        return
    code = frame.f_code
    if not code.co_filename.startswith(package) or frame.f_globals.get("__name__") == "batchnlp.spec":
        return  # (the spec's own methods are not a move of it)
    names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
    if any(carries(frame.f_locals.get(n)) for n in names):
        module = frame.f_globals.get("__name__", "?")
        walk.append((module, code.co_name))


try:
    from batchnlp.options import RunOptions
    from batchnlp.runner import run

    options = RunOptions(quiet=True, engine="local").for_job(spec)  # as the command line resolves them
    sys.setprofile(profile)
    run(spec, options)
except ImportError:
    from batchnlp.runner import run

    sys.setprofile(profile)
    run(spec, quiet=True, engine="local")
finally:
    sys.setprofile(None)
print(json.dumps(walk))
"""


def layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else module
    for rank, names in enumerate(LAYERS):
        if part in names:
            return rank
    return len(LAYERS)


def room(module: str) -> str:
    """A module, or a sub-package as one room (write/, read/, model/, tasks/, engines/, batch/)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def figures(walk: list[tuple[str, str]]) -> dict[str, object]:
    """Moves and climbs are counted once per pair of modules (in the order first seen): the
    figures are the path's shape, not how many shards the run had."""
    modules = [module for module, _ in walk]
    moves = list(dict.fromkeys((a, b) for a, b in zip(modules, modules[1:]) if a != b))
    climbs = [(a, b) for a, b in moves if layer(b) < layer(a)]
    back_to: dict[str, int] = {}
    for _, b in climbs:
        back_to[room(b)] = back_to.get(room(b), 0) + 1
    return {"calls": len(walk), "moves": len(moves), "modules": len(set(modules)), "climbs": len(climbs),
            "climbs_back_to": dict(sorted(back_to.items(), key=lambda kv: -kv[1])), "climb_list": climbs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", default="jobs/embed_reviews.yaml")
    parser.add_argument("--source", default=str(Path(__file__).resolve().parent.parent),
                        help="the checkout whose batchnlp package is walked")
    parser.add_argument("--show", action="store_true", help="print every climb")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="batchnlp-walk-") as tmp:
        env = {**os.environ, "PYTHONPATH": args.source}
        done = subprocess.run([sys.executable, "-c", CHILD, str(Path(args.job).resolve()), str(Path(tmp) / "out")],
                              env=env, capture_output=True, text=True, cwd=tmp, check=False)
    if done.returncode != 0:
        sys.exit(done.stderr[-3000:])
    walk = [tuple(step) for step in json.loads(done.stdout.strip().splitlines()[-1])]
    found = figures(walk)
    print(f"{args.source}: {found['calls']} calls take the spec; {found['moves']} moves between "
          f"{found['modules']} modules; {found['climbs']} climbs back up, to: {found['climbs_back_to']}")
    if args.show:
        for a, b in found["climb_list"]:
            print(f"  {a} -> {b}")


if __name__ == "__main__":
    main()
