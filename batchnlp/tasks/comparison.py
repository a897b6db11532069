"""Comparing two annotations of the same rows: what must be equal for two answers to agree, the
share that must, and a row's scores. The precision probe (`probe.py`, `tasks/agreement.py`) and
`batchnlp bench --check-agreement` both ask it; a task overrides what differs for it."""

from __future__ import annotations

from typing import Any, Callable, ClassVar


class Comparison:
    """A mixin of `Task` (`fields` is the task's)."""

    #: The share of rows that must give the same answer as float32 for a faster precision to be
    #: kept (the runner's probe) and to pass `batchnlp bench --check-agreement`.
    agreement_threshold: ClassVar[float] = 0.995

    fields: Callable[[], list[Any]]

    def describe_agreement(self, value: float) -> str:
        return f"{100 * value:.2f}% of rows"

    def agreement_key(self, row: dict[str, Any]) -> Any:
        """What must be equal for two annotations of a row to agree (default: the first column)."""
        return row[self.fields()[0].name]

    def scores_of(self, row: dict[str, Any]) -> list[float] | None:
        """A row's scores, best first, where the task gives scores (the precision probe checks
        their resolution and margins against float32's); None: the task gives none."""
        return None

    def agreement(self, rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> float:
        """The share of rows whose annotation agrees with the reference's (rows with errors skipped)."""
        pairs = [(a, b) for a, b in zip(rows, reference) if a.get("error") is None and b.get("error") is None]
        if not pairs:
            return 1.0
        return sum(self.agreement_key(a) == self.agreement_key(b) for a, b in pairs) / len(pairs)
