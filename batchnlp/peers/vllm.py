"""vLLM-CPU on the job's own weights (the model directory batchnlp loads; for a GGUF, its cached
float32 conversion), greedy, the same prompt token ids and token budget as batchnlp: the serving
engine a user would run offline. Its strongest offline form: one `LLM.generate` over every prompt
(its scheduler's continuous batching; its automatic prefix caching shares the prompts' common
beginning within a round, and is emptied between rounds), its compiled model, and
`OMP_NUM_THREADS` at the bench's threads (vLLM otherwise serves a 2-core machine with one thread);
in float32 (equal quality: the bench checks its texts against ours) and bfloat16 (its fast path).

vLLM pins its own torch build and transformers range, so it usually lives in a venv of its own. It
runs in a worker process (`vllm_worker.py`, which imports nothing of batchnlp) under the
interpreter `BATCHNLP_VLLM_PYTHON` names, else under this one when it can import vllm. Each engine
starts once (the first start compiles the model: ~1.5 minutes on 2 cores; vLLM caches it), then
each round is one line there and back, timed by the bench like any peer. Between its rounds the
worker is suspended (SIGSTOP): idle, vLLM's threads still wake, and on 2 cores that cost the
other engines' rounds ~12% (batchnlp's 64 SST-2 answers: 9.2-10.3 s alone, 11.3-12.1 s next to
two idle vLLM workers). Every wait has a limit, and a worker that fails or goes quiet is killed and
named with its log's path."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

from batchnlp.errors import UserError
from batchnlp.tasks.bench_hooks import Baseline, generated_rows

#: The environment variable naming the python that has vLLM (a venv of its own).
PYTHON = "BATCHNLP_VLLM_PYTHON"
DTYPES = ("float32", "bfloat16")
#: Seconds an engine may take to start (loading and compiling the model the first time) ...
START_LIMIT = 1200.0
#: ... and one round may take.
ROUND_LIMIT = 900.0
#: ... and a suspended worker to stop (SIGSTOP cannot be caught: only a process stuck in the kernel waits).
PAUSE_LIMIT = 30.0


class PeerError(UserError):
    """The vLLM worker failed or gave no answer in time (the message names its log): one line from
    the CLI, as for any installation the user can mend."""


def interpreter() -> tuple[str | None, str]:
    """(the python to run vLLM under, or None; why not, when None)."""
    named = os.environ.get(PYTHON, "").strip()
    if named:
        if not Path(named).is_file():
            return None, f"{PYTHON}={named} is not a file"
        return named, ""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return sys.executable, ""
    return None, ""


def kv_cache_gib(config: Any, tokens: int, dtype: str) -> int:
    """The KV cache space (whole GiB, VLLM_CPU_KVCACHE_SPACE) the rounds' tokens need, twice over:
    vLLM's own default claims most of the machine's memory, next to batchnlp's model."""
    text = getattr(config, "get_text_config", lambda: config)()
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    per_token = text.num_hidden_layers * 2 * heads * head_dim * (4 if dtype == "float32" else 2)
    return max(1, -(-2 * tokens * per_token // 2**30))


class Worker:
    """One vLLM engine in its own process (see the module's doc)."""

    def __init__(self, python: str, setup: dict[str, Any], threads: int, kv_gib: int,
                 start_limit: float = START_LIMIT):
        self.log = Path(tempfile.mkstemp(prefix=f"batchnlp-vllm-{setup['dtype']}-", suffix=".log")[1])
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), VLLM_CPU_KVCACHE_SPACE=str(kv_gib))
        # One process: vLLM's default engine process would poll next to the bench's own work.
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([python, str(Path(__file__).with_name("vllm_worker.py"))],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                                            text=True)
        weakref.finalize(self, _stop, self.process)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_read, args=(self.process.stdout, self.lines), daemon=True).start()
        self.what = f"vLLM ({setup['dtype']})"
        self.version = self._ask(setup, start_limit, "to start its engine")["ready"]
        self._pause()

    def generate(self, prompts: list[list[int]], max_tokens: int, stop: list[int], limit: float = ROUND_LIMIT
                 ) -> list[list[int]]:
        request = {"prompts": prompts, "max_tokens": max_tokens, "stop_token_ids": stop}
        tokens = self._ask(request, limit, f"to generate for {len(prompts)} prompts")["tokens"]
        self._pause()
        return tokens

    def _ask(self, request: dict[str, Any], limit: float, waiting_for: str) -> dict[str, Any]:
        try:
            self.process.send_signal(signal.SIGCONT)
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            line = self.lines.get(timeout=limit)
        except queue.Empty:
            self.close()
            raise PeerError(f"{self.what} gave no answer within {limit:.0f} s ({waiting_for}); its log: "
                            f"{self.log}") from None
        except BrokenPipeError:
            line = None
        answer = json.loads(line) if line else {"error": f"the worker exited ({self.process.poll()})"}
        if "error" in answer:
            self.close()
            raise PeerError(f"{self.what} failed {waiting_for}: {answer['error']} (its log: {self.log})")
        return answer

    def _pause(self) -> None:
        """Suspend the worker and return once the kernel reports it stopped: a signal is delivered
        asynchronously, and the next engine's timed round must not start beside a running worker."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + PAUSE_LIMIT
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.process.pid, os.WUNTRACED | os.WNOHANG)
            if pid and os.WIFSTOPPED(status):
                return
            if pid:  # it exited meanwhile: record it as Popen would, so poll() stays true
                self.process.returncode = os.waitstatus_to_exitcode(status)
                return
            time.sleep(0.001)
        self.close()
        raise PeerError(f"{self.what} did not stop within {PAUSE_LIMIT:.0f} s of SIGSTOP; its log: {self.log}")

    def close(self) -> None:
        _stop(self.process)


def _read(stream: Any, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)  # the worker is gone


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def peers(python: str, directory: Path, config: Any, prompts: list[list[int]], new_tokens: int, threads: int,
          eos: set[int], detokenize: Callable[[list[int]], str], max_length: int, echo: Callable[[str], None]
          ) -> list[Baseline]:
    """vLLM in float32 and bfloat16; an engine that cannot start is named (one line) and left out."""
    tokens = sum(map(len, prompts)) + len(prompts) * new_tokens
    stop = sorted(eos)
    baselines = []
    for dtype in DTYPES:
        setup = {"model": str(directory), "dtype": dtype, "max_model_len": max_length, "seed": 0}
        try:
            worker = Worker(python, setup, threads, kv_cache_gib(config, tokens, dtype))
        except PeerError as e:
            echo(f"  no vLLM {dtype} peer: {e}")
            continue

        def generate(worker: Worker = worker) -> list[dict[str, Any]]:
            return generated_rows(worker.generate(prompts, new_tokens, stop), eos, detokenize)

        baselines.append(Baseline(generate, f"vLLM-CPU {worker.version} {dtype}", batches_features=False))
    return baselines
