"""`dtype: auto` on a CPU: a decision that is a function of the job, the hardware and the library
versions — never of how busy the machine is when the run starts.

Three steps, each recorded in the output's `precision_probe`:

1. **Hardware.** bfloat16 is a candidate only where the CPU computes it natively (oneDNN's own
   check: AVX512-BF16 or AMX); elsewhere it is emulated and slower.
2. **Calibration, once per machine.** A CPU may advertise bfloat16 and still multiply slower in it
   than in float32 (0.55x on the Xeon that ran our CI on 2026-12-06; 2.1x per core on the EPYC of
   the same machine kind). So one linear layer is timed in both precisions — in the *thread's CPU
   time* on one thread, best of `REPEATS` alternating pairs. CPU time does not count the time the
   thread waits for a core, so other processes on every core do not move it (measured on this
   2-core EPYC: 2.07x quiet, 2.06x with busy loops on both cores, where wall-clock timing read
   3.6x). The result is kept in the cache folder under a key of the CPU's model and flags and
   torch's version and kernels, so every later run on this machine and these libraries reads the
   same number. bfloat16 stays a candidate only at `BF16_MARGIN` x float32 or more: a decisive
   margin, float32 when unsure.
3. **Agreement on the job's own rows** (`session.probe_on`): the task's outputs on the first rows
   in both precisions, compared as the task requires (labels, and for scores their resolution:
   ties, distinct values, the margin between the top two). Deterministic: no timing is involved.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Any

#: bfloat16 must multiply at least this many times faster than float32 (per core) to be tried.
BF16_MARGIN = 1.25
FORMAT = 1
#: One linear layer of a base-sized model's width: (rows, in, out).
SHAPE = (512, 1024, 2048)
REPEATS = 12
#: The CPU flags that decide how bfloat16 and float32 matmuls run.
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8", "avx512_fp16")


def cpuinfo() -> dict[str, str]:
    """The first CPU's fields in /proc/cpuinfo (empty where there is none: not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


@functools.cache
def hardware() -> dict[str, Any]:
    """What the precision decision depends on besides the job: the CPU and torch's kernels."""
    import torch

    info = cpuinfo()
    present = set(info.get("flags", "").split())
    return {"cpu": info.get("model name") or platform.processor() or platform.machine(),
            "flags": [f for f in FLAGS if f in present], "machine": platform.machine(), "torch": torch.__version__,
            "capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16()}


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (oneDNN's own check)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def folder() -> Path:
    """Where calibrations are kept: the cache folder's `precision/`."""
    from batchnlp.model.cache import root

    return root() / "precision"


def calibration_file() -> Path:
    facts = json.dumps({"format": FORMAT, "shape": SHAPE, **hardware()}, sort_keys=True)
    return folder() / f"{hashlib.sha256(facts.encode()).hexdigest()[:24]}.json"


def calibrations() -> list[dict[str, Any]]:
    """Every calibration kept (one per machine and torch version that used the cache folder),
    read without torch (`batchnlp cache` lists them)."""
    found = []
    for path in sorted(folder().glob("*.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return found


@functools.cache
def calibration() -> dict[str, Any]:
    """bfloat16's speed-up over float32 for one linear layer on one core of this machine: read
    from the cache folder, or measured now (about a second) and kept there."""
    path = calibration_file()
    try:
        known = json.loads(path.read_text())
        if known.get("format") == FORMAT and known.get("hardware") == hardware():
            return {**known, "cached": True, "file": str(path)}
    except (OSError, ValueError):
        pass
    measured = {"format": FORMAT, "hardware": hardware(), "bf16_speedup": round(bf16_speedup(), 3),
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "method": f"thread CPU time of a {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} linear layer on one thread, "
                          f"best of {REPEATS} alternating pairs"}
    from batchnlp.model.cache import keep_json

    stored = keep_json(path, measured)  # (an unwritable cache folder costs a measurement a run)
    return {**measured, "cached": False, "file": str(path) if stored else None}


def bf16_speedup() -> float:
    """float32's CPU time over bfloat16's (under autocast, as runs use it) for one linear layer,
    on one thread, best of REPEATS alternating pairs. The thread's CPU time, not the wall clock:
    it stops while the thread waits for a core, so a loaded machine measures what a quiet one does
    (a busy neighbour can still share a core's caches; the best of several pairs discounts that)."""
    import torch

    rows, inputs, outputs = SHAPE
    generator = torch.Generator().manual_seed(0)
    x, w = torch.randn(rows, inputs, generator=generator), torch.randn(outputs, inputs, generator=generator)

    def timed(bf16: bool) -> float:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            began = time.thread_time()
            torch.nn.functional.linear(x, w)
            return time.thread_time() - began

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the work runs in this thread, where its CPU time is counted
    try:
        timed(False), timed(True)  # the first calls pay oneDNN's set-up
        pairs = [(timed(False), timed(True)) for _ in range(REPEATS)]
    finally:
        torch.set_num_threads(threads)
    return min(p[0] for p in pairs) / max(min(p[1] for p in pairs), 1e-9)


def cpu_candidate() -> tuple[bool, dict[str, Any]]:
    """(whether bfloat16 is worth checking on the job's rows here, the facts that decided it)."""
    facts: dict[str, Any] = {"hardware": hardware(), "margin": BF16_MARGIN}
    if not facts["hardware"]["native_bf16"]:
        return False, {**facts, "refused": "this CPU has no native bfloat16 (AVX512-BF16 or AMX)"}
    measured = calibration()
    facts["calibration"] = {k: measured.get(k) for k in ("bf16_speedup", "measured_at", "method", "cached", "file")}
    if measured["bf16_speedup"] < BF16_MARGIN:
        return False, {**facts, "refused": f"bfloat16 multiplies at {measured['bf16_speedup']}x float32 per core on "
                                           f"this CPU, under the {BF16_MARGIN}x margin"}
    return True, facts
