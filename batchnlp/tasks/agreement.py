"""How a faster precision's annotations are compared with float32's: by the precision probe of
`dtype: auto` (the job's first rows) and by `batchnlp bench --check-agreement`.

The task's answer (its `agreement_key`: a label, a text, a vector's direction) must be the same on
the share of rows the task requires. Where the task gives scores (`Task.scores_of`), that is not
enough: bfloat16 logits step by 0.125 at 16-32, so a labeller's scores can collapse to a few
values and tie, with every label still "agreeing" on a few rows. So the scores' resolution and
margins are compared too:

- **ties**: rows whose two best scores are exactly equal; the faster precision may not have more
  than float32 (a tie makes the label the first one listed, not the model's answer);
- **distinct**: how many different best scores the rows get; at least `DISTINCT_SHARE` of float32's;
- **margins**: the gap between the two best scores, against float32's. A row whose float32 gap is
  smaller than the faster precision's typical error on gaps (the median) could get the other
  label on any run: such *fragile* rows may not exceed the share of rows the task allows to
  disagree.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchnlp.tasks.base import Task

#: The faster precision's rows must keep this share of float32's distinct best scores.
DISTINCT_SHARE = 0.9


def compare(task: Task, rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> tuple[str | None, dict]:
    """(why the faster precision is refused, or None; the figures that decided it). `rows` and
    `reference`: the same rows' annotations in the faster precision and in float32."""
    agreement = task.agreement(rows, reference)
    figures: dict[str, Any] = {"agreement": round(agreement, 5)}
    refused = None if agreement >= task.agreement_threshold else "disagrees with float32"
    pairs = [(task.scores_of(a), task.scores_of(b)) for a, b in zip(rows, reference)
             if a.get("error") is None and b.get("error") is None]
    pairs = [(a, b) for a, b in pairs if a and b]
    if pairs:
        figures["scores"] = resolution(pairs)
        refused = refused or coarser(figures["scores"], 1 - task.agreement_threshold)
    return refused, figures


def resolution(pairs: list[tuple[list[float], list[float]]]) -> dict[str, Any]:
    """The figures of two precisions' scores for the same rows (each row's scores best first)."""
    fast, exact = [a for a, _ in pairs], [b for _, b in pairs]
    errors = [abs(_margin(a) - _margin(b)) for a, b in pairs if len(a) > 1 and len(b) > 1]
    noise = statistics.median(errors) if errors else 0.0
    fragile = sum(1 for b in exact if len(b) > 1 and _margin(b) <= noise) if errors else 0
    return {"rows": len(pairs), "ties": _ties(fast), "float32_ties": _ties(exact),
            "distinct": len({a[0] for a in fast}), "float32_distinct": len({b[0] for b in exact}),
            "margin_error_median": round(noise, 6), "margin_error_max": round(max(errors, default=0.0), 6),
            "fragile_rows": fragile}


def coarser(figures: dict[str, Any], allowed_share: float) -> str | None:
    """Why these scores are coarser than float32's, or None."""
    if figures["ties"] > figures["float32_ties"]:
        return f"its scores tie on {figures['ties']} of {figures['rows']} rows where float32's tie on " \
               f"{figures['float32_ties']}"
    if figures["distinct"] < DISTINCT_SHARE * figures["float32_distinct"]:
        return f"its scores take {figures['distinct']} distinct values on {figures['rows']} rows where float32's " \
               f"take {figures['float32_distinct']}"
    if figures["fragile_rows"] > allowed_share * figures["rows"]:
        return f"{figures['fragile_rows']} of {figures['rows']} rows have a gap between their two best scores " \
               f"within its typical error ({figures['margin_error_median']:g})"
    return None


def _margin(scores: list[float]) -> float:
    return scores[0] - scores[1]


def _ties(rows: list[list[float]]) -> int:
    return sum(1 for r in rows if len(r) > 1 and r[0] == r[1])
