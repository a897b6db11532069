"""Does `dtype: auto` give the same answer on a busy machine as on a quiet one? (issue 28)

Each round runs the same job into two fresh outputs: once on a quiet machine, once with a process
spinning on every core. Runs use a cache folder of their own, whose precision calibration is
removed before each run, so each run measures this CPU again (converted models are kept there:
converting a GGUF is not what is measured). A round passes when both outputs pinned the same precision and every
part is byte-identical (sha256 from the outputs' records).

    python benchmarks/precision_stability.py                                  # jobs/embed_reviews.yaml, 5 rounds
    python benchmarks/precision_stability.py --job jobs/label_reviews_smollm2.yaml --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def busy_cores() -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]


def run(job: str, out: Path, env: dict[str, str]) -> tuple[dict, float]:
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "batchnlp", "run", job, "-q", "--set", f"output.path={out}"],
                          capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        sys.exit(f"{job} into {out} failed ({done.returncode}): {done.stderr.strip()}")
    state = json.loads(subprocess.run([sys.executable, "-m", "batchnlp", "inspect", str(out), "--json"],
                                      capture_output=True, text=True, env=env, check=True).stdout)
    return state, seconds


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default="jobs/embed_reviews.yaml")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="batchnlp-precision-"))
    cache = work / "cache"  # its own: the user's calibration is not touched (a GGUF converts once, in round 1)
    env = {**os.environ, "BATCHNLP_CACHE": str(cache)}
    passed = 0
    print(f"{args.job}, {args.rounds} rounds; cache {cache}")
    for round_ in range(1, args.rounds + 1):
        results = {}
        for mode in ("quiet", "busy"):
            shutil.rmtree(cache / "precision", ignore_errors=True)  # this CPU measured again, in this mode
            hogs = busy_cores() if mode == "busy" else []
            try:
                time.sleep(1 if hogs else 0)  # (let the spinners take the cores before the run starts)
                state, seconds = run(args.job, work / f"{round_}-{mode}", env)
                load = load_average()
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
            probe = state["pinned"].get("probe") or {}
            results[mode] = (state["pinned"]["precision"], {p["part"]: p["sha256"] for p in state["parts"]},
                             (probe.get("calibration") or {}).get("bf16_speedup"), seconds, load, probe)
        (quiet, busy) = results["quiet"], results["busy"]
        same = quiet[0] == busy[0] and quiet[1] == busy[1]
        identical = sum(quiet[1][p] == busy[1].get(p) for p in quiet[1])
        passed += same
        print(f"round {round_}: quiet {quiet[0]} (calibration {quiet[2]}x, {quiet[3]:.1f} s, load {quiet[4]}) | "
              f"busy {busy[0]} (calibration {busy[2]}x, {busy[3]:.1f} s, load {busy[4]}) | "
              f"{identical} of {len(quiet[1])} parts sha256-identical -> {'same' if same else 'DIFFERENT'}")
        if round_ == 1:
            shown = {k: quiet[5].get(k) for k in ("kept", "refused", "agreement", "rows", "tokens", "seconds")}
            print(f"  probe (quiet): {shown}")
    print(f"{passed} of {args.rounds} rounds: same precision and byte-identical parts")
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if passed == args.rounds else 1)


if __name__ == "__main__":
    main()
