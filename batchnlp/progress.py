"""Progress of a run, advanced batch by batch: a tqdm bar on a terminal; elsewhere (cron, a log
file) a plain log line every `interval` seconds; and one log event per committed part with its
figures (rows, rows/s, tokens/s, errors, ETA)."""

from __future__ import annotations

import time
from typing import Any

from batchnlp.log import bars_allowed, event


class Progress:
    def __init__(self, total: int | None, initial: int, quiet: bool, interval: float = 30.0):
        self.total, self.done, self.quiet, self.interval = total, float(initial), quiet, interval
        self.began = self.last_line = time.monotonic()
        self.initial = initial
        self.bar = None
        if bars_allowed(quiet):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="rows", dynamic_ncols=True, desc="annotating")

    def advance(self, rows: float) -> None:
        """Rows (a share of a shard's rows, by the features done) annotated since the last call."""
        before = int(self.done)
        self.done += rows
        if self.bar is not None:
            self.bar.update(int(self.done) - before)
        elif not self.quiet and time.monotonic() - self.last_line >= self.interval:
            self.last_line = time.monotonic()
            share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
            event("progress", f"annotated {int(self.done)} of {self.total or '?'} rows{share}, "
                              f"{self.rate():.1f} rows/s, ETA {self.eta()}", rows=int(self.done), total=self.total,
                  rows_per_s=round(self.rate(), 2), eta_s=self.eta_seconds())

    def committed(self, part: str, stats: dict[str, Any]) -> None:
        seconds = max(stats["seconds"], 1e-9)
        event("shard", f"committed {part}: {stats['rows']} rows, {stats['rows'] / seconds:.1f} rows/s, "
                       f"{stats['tokens'] / seconds:.0f} tokens/s, {stats['errors']} errors; "
                       f"{int(self.done)} of {self.total or '?'} rows, ETA {self.eta()}",
              part=part, rows=stats["rows"], rows_per_s=round(stats["rows"] / seconds, 2),
              tokens_per_s=round(stats["tokens"] / seconds, 1), errors=stats["errors"],
              error_rate=stats.get("error_rate"), batch_seconds_p50=stats.get("batch_seconds_p50"),
              batch_seconds_p95=stats.get("batch_seconds_p95"), done=int(self.done),
              total=self.total, eta_s=self.eta_seconds())
        if self.bar is not None:
            self.bar.set_postfix(tok_s=f"{stats['tokens'] / seconds:.0f}")

    def rate(self) -> float:
        return (self.done - self.initial) / max(time.monotonic() - self.began, 1e-9)

    def eta_seconds(self) -> float | None:
        rate = self.rate()
        return round((self.total - self.done) / rate, 1) if self.total and rate > 0 else None

    def eta(self) -> str:
        seconds = self.eta_seconds()
        return "?" if seconds is None else f"{seconds:.0f}s"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
