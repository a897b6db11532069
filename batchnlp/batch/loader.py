"""Length-sorted, token-budget batches through a torch DataLoader.

Rows of a shard are sorted longest first and packed so that (rows in batch) x (longest row)
stays under the budget: padding waste is small and the largest batch comes first, so an
out-of-memory error shows at once rather than at the end. The collate pads with the tokenizer's
own `pad` (right padding, the model's pad id, an attention mask).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def token_budget_batches(lengths: Sequence[int], batch_tokens: int, max_batch_size: int,
                         overhead_tokens: int = 64, grouped: bool = False) -> list[list[int]]:
    """Row indices grouped into batches, longest rows first, each within the token budget.

    Greedy filling up to the budget pads short rows to the longest of a wide length range when a
    shard is small. Instead the sorted rows are cut where it is cheapest: each batch costs its
    padded tokens (rows x longest) plus a fixed `overhead_tokens` (the per-forward cost in token
    equivalents), minimised exactly by dynamic programming over the sorted order. A row longer
    than the whole budget gets a batch of its own rather than being dropped. `grouped`: the task
    runs a batch's rows in groups of similar length itself, so a batch costs its rows' tokens
    (padded rows x longest still has to fit the budget).
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")  # ties keep input order
    sorted_lengths = np.asarray(lengths, dtype=np.int64)[order]
    summed = np.concatenate([[0], np.cumsum(sorted_lengths)])  # summed[j]: the first j sorted rows' tokens
    n = len(order)
    best = np.zeros(n + 1)  # best[j]: cheapest cost of batching the first j sorted rows
    cut = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        # Candidate starts i of the last batch [i, j): its longest row is sorted_lengths[i].
        low = max(0, j - max_batch_size)
        starts = np.arange(low, j)
        rows = j - starts
        padded = rows * sorted_lengths[starts]
        fits = padded <= batch_tokens
        fits[-1] = True  # a single row always forms a batch
        tokens = summed[j] - summed[starts] if grouped else padded
        cost = np.where(fits, best[starts] + tokens + overhead_tokens, np.inf)
        k = int(np.argmin(cost))
        best[j], cut[j] = cost[k], starts[k]
    batches = []
    j = n
    while j > 0:
        batches.append(order[cut[j]:j].tolist())
        j = int(cut[j])
    return batches[::-1]


class Features(Dataset):
    def __init__(self, features: Sequence[dict[str, Any]]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> tuple[int, dict[str, Any]]:
        return i, self.features[i]


class PadCollate:
    """A picklable collate (DataLoader workers need one): pads a batch to its longest feature with
    the tokenizer's own `pad` and hands each feature's "meta" through untouched."""

    def __init__(self, tokenizer: Any, padding_side: str = "right"):
        self.tokenizer = tokenizer
        self.padding_side = padding_side

    def __call__(self, items: list[tuple[int, dict[str, Any]]]) -> tuple[list[int], dict[str, torch.Tensor], list]:
        indices = [i for i, _ in items]
        meta = [feature.get("meta") for _, feature in items]
        inputs = [{k: v for k, v in feature.items() if k != "meta"} for _, feature in items]
        batch = self.tokenizer.pad(inputs, padding=True, return_tensors="pt", padding_side=self.padding_side)
        return indices, dict(batch), meta


def loader(features: Sequence[dict[str, Any]], batches: list[list[int]], tokenizer: Any, padding_side: str,
           num_workers: int, pin_memory: bool) -> DataLoader:
    if num_workers:
        tie_forks_to_parent()
    return DataLoader(Features(features), batch_sampler=batches, collate_fn=PadCollate(tokenizer, padding_side),
                      num_workers=num_workers, pin_memory=pin_memory)


# A worker whose run was killed (SIGKILL) must not outlive it. torch's own check of its parent runs
# in the worker's loop, which a worker never reaches or returns to when it is stuck: blocked on a
# full queue nobody reads, or on a lock another thread held at fork time. Such orphans were seen
# alive a quarter of an hour later. So right after fork, before any of torch's worker code, the
# child asks the kernel to kill it when its parent dies (Linux's PR_SET_PDEATHSIG).
_prctl: Any = None  # libc's prctl, looked up in the parent: dlopen in a forked child can deadlock
_forking_pid = 0  # the process that forks, noted before each fork


def tie_forks_to_parent() -> None:
    """From now on, every process this one forks dies with it (Linux; elsewhere nothing changes).
    A process started with exec (subprocess, Ray) runs no fork hooks and is not affected."""
    global _prctl
    if _prctl is not None or not sys.platform.startswith("linux"):
        return
    try:
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    os.register_at_fork(before=_note_forking_pid, after_in_child=_die_with_parent)


def _note_forking_pid() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _die_with_parent() -> None:
    _prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != _forking_pid:  # the parent died before the request took effect
        os._exit(1)
