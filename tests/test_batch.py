"""Length-sorted token-budget batching."""

from __future__ import annotations

import random

import pytest

from batchnlp.batch.loader import token_budget_batches


def padded(batches, lengths):
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


@pytest.mark.parametrize("seed", range(5))
def test_every_row_once_within_budget(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([3, 5, 8, 40, 120, 500]) + rng.randint(0, 9) for _ in range(rng.randint(1, 700))]
    batches = token_budget_batches(lengths, batch_tokens=2048, max_batch_size=64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 64
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 2048
    longest_first = [max(lengths[i] for i in b) for b in batches]
    assert longest_first == sorted(longest_first, reverse=True)


def test_a_row_longer_than_the_budget_gets_its_own_batch():
    assert token_budget_batches([10, 5000, 10], batch_tokens=100, max_batch_size=8) == [[1], [0, 2]]


def test_less_padding_than_greedy_filling():
    rng = random.Random(0)
    lengths = [rng.randint(5, 300) for _ in range(100)]
    batches = token_budget_batches(lengths, batch_tokens=16384, max_batch_size=256)
    greedy = [sorted(range(100), key=lambda i: -lengths[i])]  # everything fits one greedy batch
    assert sum(lengths) / padded(batches, lengths) > 0.9
    assert padded(batches, lengths) < 0.6 * padded(greedy, lengths)


def test_a_task_that_groups_by_length_pays_its_tokens_not_its_padding():
    """A task that runs a batch's rows in groups of similar length itself (greedy generation):
    one long row costs nothing extra beside short ones, so they share a batch; the padded batch
    must still fit the budget (its memory)."""
    lengths = [100, 10, 10, 10]
    assert token_budget_batches(lengths, batch_tokens=1000, max_batch_size=8) == [[0], [1, 2, 3]]
    assert token_budget_batches(lengths, batch_tokens=1000, max_batch_size=8, grouped=True) == [[0, 1, 2, 3]]
    tight = token_budget_batches(lengths, batch_tokens=250, max_batch_size=8, grouped=True)
    assert len(tight) == 2 and padded(tight, lengths) <= 2 * 250
    assert all(len(b) * max(lengths[i] for i in b) <= 250 for b in tight)


def test_grouped_generation_counts_the_positions_its_groups_run():
    """A greedy batch prefills its long prompt alone and its short ones together: its padded
    tokens (the record's, the bench's padding efficiency) are those, not rows x longest."""
    from batchnlp.tasks.decoding import grouped_positions

    assert grouped_positions([100, 10, 10, 12]) == 100 + 3 * 12
