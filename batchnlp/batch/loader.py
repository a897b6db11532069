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
                         overhead_tokens: int = 64) -> list[list[int]]:
    """Row indices grouped into batches, longest rows first, each within the token budget.

    Greedy filling up to the budget pads short rows to the longest of a wide length range when a
    shard is small. Instead the sorted rows are cut where it is cheapest: each batch costs its
    padded tokens (rows x longest) plus a fixed `overhead_tokens` (the per-forward cost in token
    equivalents), minimised exactly by dynamic programming over the sorted order. A row longer
    than the whole budget gets a batch of its own rather than being dropped.
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")  # ties keep input order
    sorted_lengths = np.asarray(lengths, dtype=np.int64)[order]
    n = len(order)
    best = np.zeros(n + 1)  # best[j]: cheapest cost of batching the first j sorted rows
    cut = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        # Candidate starts i of the last batch [i, j): its longest row is sorted_lengths[i].
        low = max(0, j - max_batch_size)
        starts = np.arange(low, j)
        rows = j - starts
        fits = rows * sorted_lengths[starts] <= batch_tokens
        fits[-1] = True  # a single row always forms a batch
        cost = np.where(fits, best[starts] + rows * sorted_lengths[starts] + overhead_tokens, np.inf)
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
    return DataLoader(Features(features), batch_sampler=batches, collate_fn=PadCollate(tokenizer, padding_side),
                      num_workers=num_workers, pin_memory=pin_memory,
                      worker_init_fn=_die_with_parent if num_workers else None)


def _die_with_parent(worker_id: int) -> None:
    """A worker whose run was killed (SIGKILL) must not outlive it. torch's own check of the parent
    runs only between batches, and a worker blocked putting a batch into a full queue that nobody
    reads any more never gets there: such orphans were seen alive a quarter of an hour later. So
    the kernel is asked to kill the worker when its parent dies (Linux's PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
