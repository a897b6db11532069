"""llama.cpp (through llama-cpp-python) on the job's own .gguf file, greedy, the same prompt token
ids and token budget as batchnlp: the engine a user would pick for a GGUF on a CPU, in its two
forms.

- `batched`: its strongest form, as llama.cpp's own `batched` example and `llama-server -np` do it:
  every prompt a sequence of one context with one unified KV buffer; the prompts' common prefix
  decoded once and shared with `llama_memory_seq_cp`; then one `llama_decode` per step for every
  unfinished sequence, the logits asked for only where a token is chosen.
- `per_prompt`: `Llama.create_completion` one prompt at a time (what most users write).

Its matrix multiplies run the file's own quantised blocks (Q4_1 × Q8_1 dot products), so its texts
differ from float32 greedy on the dequantised weights where two tokens are close: the bench
reports how many rows are identical. llama-cpp-python builds from source (~20 minutes): it is not
a dependency, and the bench says how to add it when it is missing."""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from batchnlp.tasks.bench_hooks import Baseline


def _quiet(level: int, text: bytes, data: Any) -> None:
    """llama.cpp's log callback: its load and graph messages would bury the bench's table."""


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


_QUIET: Any = None
#: Most sequences one llama.cpp context holds (LLAMA_MAX_SEQ, src/llama-cparams.h): more prompts
#: than this run in groups of it, one after another, as `llama-server -np` would serve them.
MAX_SEQ = 256


class Batched:
    """One llama.cpp context holding every prompt as a parallel sequence (see the module's doc)."""

    def __init__(self, path: str, prompts: list[list[int]], shared: int, new_tokens: int, threads: int,
                 eos: set[int]):
        import llama_cpp as lc

        global _QUIET
        _QUIET = _QUIET or lc.llama_log_callback(_quiet)  # kept alive: llama.cpp holds the pointer
        self.lc, self.shared, self.new_tokens, self.eos = lc, shared, new_tokens, eos
        lc.llama_log_set(_QUIET, ctypes.c_void_p(0))
        lc.llama_backend_init()
        model_params = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(path.encode(), model_params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        params = lc.llama_context_default_params()
        self.groups = [prompts[i:i + MAX_SEQ] for i in range(0, len(prompts), MAX_SEQ)]
        n = max(len(group) for group in self.groups)
        # Room for every sequence's whole prompt and answer in the one unified buffer.
        params.n_ctx = max(sum(len(p) for p in group) for group in self.groups) + n * new_tokens + 64
        params.n_batch = params.n_ubatch = 512
        params.n_seq_max = n
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        self.ctx = lc.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context for the batched peer")
        self.n_batch = params.n_batch
        self.batch = lc.llama_batch_init(self.n_batch, 0, 1)

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> dict[int, int]:
        """Decode (token, position, sequence, wants logits) items in chunks of n_batch; the greedy
        next token of each sequence that asked for logits (read after its chunk: the next chunk's
        decode replaces them)."""
        lc, batch, chosen = self.lc, self.batch, {}
        for start in range(0, len(items), self.n_batch):
            chunk = items[start:start + self.n_batch]
            for i, (token, pos, seq, logits) in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
                batch.seq_id[i][0], batch.logits[i] = seq, logits
            batch.n_tokens = len(chunk)
            if lc.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed (the context is too small for the batch?)")
            for i, (_, _, seq, logits) in enumerate(chunk):
                if logits:
                    row = lc.llama_get_logits_ith(self.ctx, i)
                    chosen[seq] = int(np.ctypeslib.as_array(row, shape=(self.n_vocab,)).argmax())
        return chosen

    def generate(self) -> list[list[int]]:
        return [answer for group in self.groups for answer in self._generate(group)]

    def _generate(self, prompts: list[list[int]]) -> list[list[int]]:
        lc = self.lc
        memory = lc.llama_get_memory(self.ctx)
        lc.llama_memory_clear(memory, True)
        shared = self.shared
        if shared:
            self._decode([(t, i, 0, False) for i, t in enumerate(prompts[0][:shared])])
            for seq in range(1, len(prompts)):
                lc.llama_memory_seq_cp(memory, 0, seq, -1, -1)
        chosen = self._decode([(t, shared + i, seq, i == len(p) - shared - 1)
                              for seq, p in enumerate(prompts) for i, t in enumerate(p[shared:])])
        answers: list[list[int]] = [[] for _ in prompts]
        live = list(range(len(prompts)))
        while live:
            step, still = [], []
            for seq in live:
                token = chosen[seq]
                if token in self.eos:
                    continue
                answers[seq].append(token)
                if len(answers[seq]) < self.new_tokens:
                    still.append(seq)
                    step.append((token, len(prompts[seq]) + len(answers[seq]) - 1, seq, True))
            live = still
            if step:
                chosen = self._decode(step)
        return answers


def peers(model_path: str, prompts: list[list[int]], shared: int, new_tokens: int, threads: int, eos: set[int],
          detokenize: Any, n_ctx: int) -> list[Baseline]:
    """The batched and the one-prompt-at-a-time llama.cpp on the same prompt ids, as bench peers."""
    from llama_cpp import Llama

    from batchnlp.job import library_version

    version = library_version("llama_cpp_python")
    batched = Batched(model_path, prompts, shared, new_tokens, threads, eos)

    def parallel() -> list[dict[str, Any]]:
        return [{"generated_text": detokenize(ids)} for ids in batched.generate()]

    llm = Llama(model_path=model_path, n_ctx=n_ctx, n_threads=threads, n_batch=512, verbose=False)

    def one_at_a_time() -> list[dict[str, Any]]:
        rows = []
        for prompt in prompts:
            ids: list[int] = []
            for token in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
                if token in eos or len(ids) >= new_tokens:
                    break
                ids.append(token)
            rows.append({"generated_text": detokenize(ids)})
        return rows

    return [Baseline(parallel, f"llama.cpp {version} batched", batches_features=False),
            Baseline(one_at_a_time, f"llama.cpp {version} per prompt", batches_features=False)]

