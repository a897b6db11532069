"""Benchmarks of the output's record (issue 16): what a commit costs as the output grows, a
4,000-part run, a folder of 10,000 small files, run start against 100k parts, and the memory of a
--limit read of a large Parquet file. Timings, not tests: run by hand, figures to the closing note.

    python benchmarks/output_log.py commit [--sizes 1000,10000,100000]
    python benchmarks/output_log.py run --rows 20000 --rows-per-shard 5 [--before REV]
    python benchmarks/output_log.py files --files 10000
    python benchmarks/output_log.py start --parts 100000
    python benchmarks/output_log.py limit-rss --mb 325
    python benchmarks/output_log.py growing --rows 20000              (issue 17: night 2 of a growing export)
    python benchmarks/output_log.py ids-lookup --ids 10000000         (issue 17: the seen-id lookup at 10M ids)

`--before REV` also runs the same job with batchnlp at REV (a git worktree), in the same script
run, so the two are compared on the same machine at the same time. A tiny classifier (the tests'
builder) keeps the model from dominating: what is measured is batchnlp's own cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpora"
sys.path.insert(0, str(ROOT / "tests"))


def tiny_classifier(directory: Path) -> Path:
    from tiny_models import sentiment_classifier

    return sentiment_classifier(directory)


def texts(n: int) -> list[str]:
    """AG News texts (repeated as needed), or synthetic ones where the corpus is not beside us."""
    path = next(CORPUS.glob("ag_news*.parquet"), None)
    if path is None:
        return [f"text number {i} about markets and sport" for i in range(n)]
    column = pq.read_table(path).column("text").to_pylist()
    return [column[i % len(column)] for i in range(n)]


def job_file(directory: Path, model: Path, inputs: str, rows_per_shard: int, fmt: str = "parquet") -> Path:
    import yaml

    job = {"input": {"path": inputs, "text_column": "text", "id_column": "id", "format": fmt},
           "task": {"name": "text-classification"}, "model": {"path": str(model)},
           "runtime": {"dtype": "float32", "max_length": 64},
           "output": {"path": str(directory / "out"), "rows_per_shard": rows_per_shard}}
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def batchnlp(args: list[str], pythonpath: str | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """`python -m batchnlp ARGS`, from a neutral folder: `-m` puts the working directory first on
    the path, which would import this checkout's batchnlp over PYTHONPATH's."""
    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "batchnlp", *args], env=env, capture_output=True, text=True,
                          cwd=tempfile.gettempdir())
    if done.returncode != 0:
        raise SystemExit(f"batchnlp {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - began, done


def worktree(rev: str) -> str:
    path = Path(tempfile.gettempdir()) / f"batchnlp-{rev}"
    if not path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev], check=True,
                       capture_output=True)
    return str(path)


def intervals(out: Path) -> dict[str, float]:
    """From the parts' modification times (the same for any version): the mean interval between
    consecutive parts over parts 100-400 and over the last 300, and their ratio."""
    times = sorted(p.stat().st_mtime_ns for p in out.glob("part-*.parquet"))
    gaps = [(b - a) / 1e6 for a, b in zip(times, times[1:])]
    early, late = statistics.mean(gaps[100:400]), statistics.mean(gaps[-300:])
    return {"parts": len(times), "ms_between_parts_100_400": round(early, 2), "ms_between_parts_last_300":
            round(late, 2), "ratio": round(late / early, 2)}


# -- commit cost at a size ----------------------------------------------------------------------

def synthetic_part(unit: int, shard: int, run: int = 1) -> dict:
    return {"unit": unit, "shard": shard, "rows": 5, "bytes": 4321, "sha256": "ab" * 32, "run": run,
            "input": f"/data/in/file-{unit:05d}.parquet", "start": shard * 5, "features": 5, "tokens": 120,
            "padded_tokens": 130, "errors": 0, "rows_at_max_length": 0, "error_rate": 0.0,
            "batch_seconds_p50": 0.01, "batch_seconds_p95": 0.02, "seconds": 0.05, "device": "cpu",
            "dtype": "float32"}


def synthetic_log(folder: str, parts: int):
    """A log whose state holds `parts` parts (as if committed earlier), not yet checkpointed."""
    from batchnlp.write.commits import CommitLog
    from batchnlp.write.folder import Folder
    from batchnlp.write.state import OutputState

    state = OutputState()
    state.apply({"run_started": {"started_at": "now", "engine": "local"}})
    for i in range(parts):
        state.apply({"add": synthetic_part(i // 1000, i % 1000)})
    state.version = 0
    (Path(folder) / ".batchnlp" / "log").mkdir(parents=True)  # as its first commit made it
    return CommitLog(Folder(folder), state, checkpointed=None)


def commit_cost(sizes: list[int], before: str | None) -> None:
    from batchnlp.write.actions import Add, RunProgress
    from batchnlp.write.commits import interval

    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            log = synthetic_log(tmp, size)
            began = time.perf_counter()
            log.checkpoint()  # as a long-lived output has one
            checkpoint_ms = (time.perf_counter() - began) * 1e3
            n, began = 200, time.perf_counter()
            for i in range(n):
                log.commit(Add(synthetic_part(10_000, i)), RunProgress({"rows": 5 * i, "seconds": i}))
            seconds = (time.perf_counter() - began) / n
            sizes_written = [p.stat().st_size for p in (Path(tmp) / ".batchnlp" / "log").glob("0*[0-9].json")]
            checkpoints = list((Path(tmp) / ".batchnlp" / "log").glob("*.checkpoint.json"))
            print(json.dumps({"side": "after", "parts_recorded": size, "ms_per_commit": round(seconds * 1e3, 3),
                              "bytes_per_commit": round(statistics.mean(sizes_written)),
                              "checkpoint_bytes": max(p.stat().st_size for p in checkpoints),
                              "checkpoint_ms": round(checkpoint_ms, 1),
                              "checkpoint_every": interval(size),
                              "checkpoint_ms_per_commit": round(checkpoint_ms / interval(size), 3)}), flush=True)
        if before:
            old_commit_cost(before, size)


def old_commit_cost(rev: str, size: int) -> None:
    """The same figure for 0.2's manifest, rewritten whole per part (its own module, from REV)."""
    code = f"""
import json, sys, tempfile, time
sys.path.insert(0, {worktree(rev)!r})
from batchnlp.write.manifest import Manifest
from batchnlp.write.folder import Folder
with tempfile.TemporaryDirectory() as tmp:
    m = Manifest.new(Folder(tmp), fingerprint={{}})
    m.data["runs"].append({{"started_at": "now"}})
    part = {json.dumps(synthetic_part(0, 0))}
    m.data["shards"] = [{{**part, "unit": i // 1000, "shard": i % 1000, "part": "x"}} for i in range({size})]
    n = 20 if {size} > 20000 else 100
    began = time.perf_counter()
    for i in range(n):
        m.record_shard({{**part, "unit": 10000, "shard": i}}, run={{"rows": i}})
    seconds = (time.perf_counter() - began) / n
    import os
    print(json.dumps({{"side": "before", "parts_recorded": {size}, "ms_per_commit": round(seconds * 1e3, 3),
                      "bytes_per_commit": os.path.getsize(tmp + "/.manifest.json")}}))
"""
    print(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip(),
          flush=True)


# -- a 4,000-part run ---------------------------------------------------------------------------

def many_parts(rows: int, rows_per_shard: int, before: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tiny_classifier(tmp / "model")
        pq.write_table(pa.table({"id": [f"r{i}" for i in range(rows)], "text": texts(rows)}), tmp / "in.parquet")
        sides = [("after", None)] + ([("before", worktree(before))] if before else [])
        for side, path in sides:
            directory = tmp / side
            directory.mkdir()
            job = job_file(directory, model, str(tmp / "in.parquet"), rows_per_shard)
            seconds, _ = batchnlp(["run", str(job), "-q"], path)
            kept = ".manifest.json" if (directory / "out" / ".manifest.json").exists() else ".batchnlp/log"
            print(json.dumps({"side": side, "record": kept, "rows": rows, "rows_per_shard": rows_per_shard,
                              "wall_seconds": round(seconds, 1), **intervals(directory / "out")}), flush=True)


# -- a folder of small files --------------------------------------------------------------------

def many_files(files: int, rows_each: int, before: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tiny_classifier(tmp / "model")
        corpus = texts(files * rows_each + rows_each)
        sides = [("after", None)] + ([("before", worktree(before))] if before else [])
        for side, path in sides:
            directory = tmp / side
            inbox = directory / "inbox"
            inbox.mkdir(parents=True)
            for f in range(files):
                rows = corpus[f * rows_each:(f + 1) * rows_each]
                pq.write_table(pa.table({"id": [f"f{f}-{i}" for i in range(rows_each)], "text": rows}),
                               inbox / f"file-{f:05d}.parquet")
            job = job_file(directory, model, str(inbox), rows_each)
            figures = {"side": side, "files": files}
            figures["first_run_s"] = round(batchnlp(["run", str(job), "-q"], path)[0], 1)
            figures["nothing_new_s"] = round(batchnlp(["run", str(job), "-q"], path)[0], 1)
            pq.write_table(pa.table({"id": ["new"] * 1, "text": corpus[-1:]}), inbox / "file-99999.parquet")
            figures["one_new_file_s"] = round(batchnlp(["run", str(job), "-q"], path)[0], 1)
            figures["verify_s"] = round(batchnlp(["verify", str(directory / "out")], path)[0], 1)
            figures["inspect_s"] = round(batchnlp(["inspect", str(directory / "out")], path)[0], 1)
            print(json.dumps(figures), flush=True)


# -- run start against a large output ------------------------------------------------------------

def run_start(parts: int) -> None:
    """Reading the state of an output of `parts` parts and deciding which planned shards are done
    (the two steps of a run's start that grow with the output), and `decide`'s private copy of
    the state (`OutputState.fork`), with the peak memory."""
    from batchnlp.write.actions import Add

    with tempfile.TemporaryDirectory() as tmp:
        log = synthetic_log(tmp, parts)
        log.checkpoint()
        for i in range(49):  # commits since the checkpoint, as a reader finds them at worst
            log.commit(Add(synthetic_part(10_000, i)))
        for i in range(parts):
            (Path(tmp) / f"part-{i // 1000:05d}-{i % 1000:05d}.parquet").write_bytes(b"x" * 10)
        code = f"""
import json, resource, sys, time
from batchnlp.write.commits import CommitLog
from batchnlp.write.folder import Folder
began = time.perf_counter()
log = CommitLog.read(Folder({tmp!r}))
read = time.perf_counter() - began
stored = Folder({tmp!r}).sizes()
listed = time.perf_counter() - began - read
missing = log.state.missing_parts(stored)
compared = time.perf_counter() - began - read - listed
forking = time.perf_counter()
log.state.fork()
print(json.dumps({{"parts": len(log.state.parts), "read_state_s": round(read, 2), "list_parts_s": round(listed, 2),
                  "compare_s": round(compared, 2), "fork_s": round(time.perf_counter() - forking, 4),
                  "peak_rss_mib": [int(l.split()[1]) // 1024 for l in open("/proc/self/status")
                                   if l.startswith("VmHWM")][0]}}))
"""
        print(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip())


# -- memory of a --limit read -------------------------------------------------------------------

def limit_rss(megabytes: int, before: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tiny_classifier(tmp / "model")
        base = texts(20_000)
        rows = []
        size = 0
        while size < megabytes * 2**20:
            rows.extend(base)
            size += sum(len(t) for t in base)
        pq.write_table(pa.table({"id": [str(i) for i in range(len(rows))], "text": rows}), tmp / "big.parquet",
                       row_group_size=1 << 20)
        file_mb = (tmp / "big.parquet").stat().st_size / 2**20
        sides = [("after", None)] + ([("before", worktree(before))] if before else [])
        for side, path in sides:
            directory = tmp / side
            directory.mkdir()
            job = job_file(directory, model, str(tmp / "big.parquet"), 1000)
            # The peak from /proc (VmHWM, polled): ru_maxrss survives exec, so a child started by this
            # process (which built a large table) would report this process's size.
            code = ("import batchnlp, subprocess, sys, time; p = subprocess.Popen([sys.executable, '-m', 'batchnlp', "
                    f"'run', {str(job)!r}, '-q', '--limit', '5000']); peak = 0\n"
                    "while p.poll() is None:\n"
                    "    try: peak = max(peak, [int(l.split()[1]) for l in open(f'/proc/{p.pid}/status') "
                    "if l.startswith('VmHWM')][0])\n"
                    "    except (OSError, IndexError): pass\n"
                    "    time.sleep(0.05)\n"
                    "print(batchnlp.__file__); print(peak // 1024)")
            env = {**os.environ, **({"PYTHONPATH": path} if path else {})}
            peak = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                                  cwd=tempfile.gettempdir())
            code_used, rss = peak.stdout.strip().splitlines()[-2:]
            print(json.dumps({"side": side, "batchnlp": code_used, "file_mb": round(file_mb), "rows": len(rows),
                              "limit": 5000, "peak_rss_mib": int(rss)}), flush=True)


# -- issue 17: a growing export, and the seen-id lookup at scale --------------------------------

def growing(rows: int) -> None:
    """Night 1: an export of `rows` rows; night 2: the same rows plus as many new ones. Files mode
    must annotate the whole file again (--reprocess-changed); ids mode only the new rows."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tiny_classifier(tmp / "model")
        corpus = texts(2 * rows)
        for mode in ("files", "ids"):
            directory = tmp / mode
            (directory / "inbox").mkdir(parents=True)
            job = job_file(directory, model, str(directory / "inbox"), 1000)
            job.write_text(job.read_text().replace("format: parquet", f"format: parquet\n  incremental: {mode}"))
            export = directory / "inbox" / "export.parquet"
            pq.write_table(pa.table({"id": [f"e{i}" for i in range(rows)], "text": corpus[:rows]}), export)
            night1 = batchnlp(["run", str(job), "-q"])[0]
            pq.write_table(pa.table({"id": [f"e{i}" for i in range(2 * rows)], "text": corpus}), export)
            night2, done = batchnlp(["run", str(job), "-q", *(["--reprocess-changed"] if mode == "files" else [])])
            print(json.dumps({"mode": mode, "night1_rows": rows, "night2_rows": 2 * rows,
                              "night1_s": round(night1, 1), "night2_s": round(night2, 1),
                              "night2_said": done.stdout.strip().split(": ", 1)[-1]}), flush=True)


def ids_lookup(held: int, new_share: float) -> None:
    """The seen-id lookup of a night 2 against an output holding `held` ids (synthetic: their id
    indexes, 10,000 ids a part), the export rewritten with `new_share` more rows; then the new rows
    annotated from a file of their own, for the wall time beside it."""
    import numpy as np

    from batchnlp.read import ids

    new = int(held * new_share)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = pa.array(texts(20_000), pa.large_string())  # 10M texts pass 2 GiB: 64-bit offsets
        began = time.perf_counter()
        every = pa.table({"id": pa.array([f"id{i}" for i in range(held + new)]),
                          "text": base.take(pa.array(np.arange(held + new) % len(base)))})
        pq.write_table(every, tmp / "export.parquet", row_group_size=1 << 17)
        index_dir = tmp / "out" / ".batchnlp" / "ids"
        index_dir.mkdir(parents=True)
        spec = _ids_spec(tmp / "export.parquet")
        for start in range(0, held, 10_000):
            pq.write_table(ids.index_table(spec, every.slice(start, min(10_000, held - start))),
                           index_dir / f"part-00000-{start // 10_000:05d}.parquet")
        pq.write_table(every.slice(held), tmp / "new_only.parquet")
        del every
        print(json.dumps({"built_s": round(time.perf_counter() - began, 1)}), flush=True)
        code = f"""
import json, resource, sys, time
sys.path.insert(0, {str(ROOT / "benchmarks")!r})
import pyarrow.dataset as ds
from output_log import _ids_spec
from batchnlp.read import ids
from batchnlp.read.files import FileSource
from batchnlp.read.source import Unit
spec = _ids_spec({str(tmp / "export.parquet")!r})
held = sorted(str(p) for p in __import__("pathlib").Path({str(index_dir)!r}).glob("*.parquet"))
began = time.perf_counter()
delta = ids.classify(spec, FileSource(spec), Unit({str(tmp / "export.parquet")!r}, None), held)
print(json.dumps({{"held_ids": {held}, "file_rows": delta.rows, "new_rows": len(delta.new_rows),
                  "lookup_s": round(time.perf_counter() - began, 1),
                  "peak_rss_mib": [int(l.split()[1]) // 1024 for l in open("/proc/self/status")
                                   if l.startswith("VmHWM")][0]}}))
"""
        print(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             cwd=tempfile.gettempdir()).stdout.strip(), flush=True)
        model = tiny_classifier(tmp / "model")
        job = job_file(tmp, model, str(tmp / "new_only.parquet"), 10_000)
        print(json.dumps({"annotate_new_rows_from_their_own_file_s": round(batchnlp(["run", str(job), "-q"])[0], 1),
                          "rows": new}), flush=True)


def _ids_spec(path: Path):
    from batchnlp.spec import InputSpec

    return InputSpec(text_column="text", path=str(path), format="parquet", id_column="id", incremental="ids")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["commit", "run", "files", "start", "limit-rss", "growing", "ids-lookup"])
    parser.add_argument("--ids", type=int, default=10_000_000)
    parser.add_argument("--new-share", type=float, default=0.01)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rows-per-shard", type=int, default=5)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rows-each", type=int, default=3)
    parser.add_argument("--parts", type=int, default=100_000)
    parser.add_argument("--mb", type=int, default=325)
    parser.add_argument("--before", help="a git revision to compare with (e.g. 1ce0cc8, batchnlp 0.2)")
    args = parser.parse_args()
    if args.what == "commit":
        commit_cost([int(s) for s in args.sizes.split(",")], args.before)
    elif args.what == "run":
        many_parts(args.rows, args.rows_per_shard, args.before)
    elif args.what == "files":
        many_files(args.files, args.rows_each, args.before)
    elif args.what == "start":
        run_start(args.parts)
    elif args.what == "growing":
        growing(args.rows)
    elif args.what == "ids-lookup":
        ids_lookup(args.ids, args.new_share)
    else:
        limit_rss(args.mb, args.before)


if __name__ == "__main__":
    main()
