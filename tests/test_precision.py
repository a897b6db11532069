"""`dtype: auto` decides from the job, the hardware and the library versions, never from the
machine's load: this CPU's calibration under busy processes on every core, kept once per machine;
the probe's comparison of scores (ties, distinct values, margins); scoring heads in float32."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from batchnlp.model import precision
from batchnlp.tasks.agreement import compare


def busy_cores():
    """One process spinning on each core (as other work on a shared machine does)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]


def test_the_calibration_gives_the_same_verdict_with_every_core_busy():
    """Measured three times on a quiet machine and three times with a process spinning on every
    core, the calibration says the same: wall-clock timings flipped between bfloat16 and float32
    at a load of 5-20 (the first run pinned float32, the next bfloat16)."""
    quiet = [precision.bf16_speedup() for _ in range(3)]
    hogs = busy_cores()
    try:
        busy = [precision.bf16_speedup() for _ in range(3)]
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    verdicts = {speedup >= precision.BF16_MARGIN for speedup in quiet + busy}
    assert len(verdicts) == 1, f"quiet {quiet}, busy {busy}"


def test_the_calibration_is_measured_once_per_machine_and_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHNLP_CACHE", str(tmp_path))
    precision.calibration.cache_clear()
    measured = []
    monkeypatch.setattr(precision, "bf16_speedup", lambda: measured.append(1) or 1.9)
    try:
        first = precision.calibration()
        precision.calibration.cache_clear()  # a later process
        second = precision.calibration()
        assert (first["cached"], second["cached"], len(measured)) == (False, True, 1)
        assert second["bf16_speedup"] == 1.9 and second["file"] == first["file"]
        kept = json.loads(open(first["file"]).read())
        assert kept["hardware"] == precision.hardware()
        # Another CPU or torch (a shared home folder, an upgrade): measured again, not read.
        kept["hardware"] = {**kept["hardware"], "cpu": "another CPU"}
        open(first["file"], "w").write(json.dumps(kept))
        precision.calibration.cache_clear()
        assert precision.calibration()["cached"] is False and len(measured) == 2
    finally:
        precision.calibration.cache_clear()


@dataclass
class Scored:
    """A task as the comparison sees it: rows with a label and scores, best first."""

    agreement_threshold: float = 0.95

    def agreement(self, rows, reference):
        return sum(a["label"] == b["label"] for a, b in zip(rows, reference)) / len(rows)

    def scores_of(self, row):
        return row["scores"]


def rows_of(scores):
    return [{"label": "a" if s[0] >= s[1] else "b", "scores": sorted(s, reverse=True), "error": None}
            for s in scores]


EXACT = [[0.5 + 0.4 * i / 40, 0.5 - 0.4 * i / 40] for i in range(1, 41)]  # margins 0.02 .. 0.8


def test_scores_as_fine_as_float32s_are_kept():
    close = [[a + 1e-4, b - 1e-4] for a, b in EXACT]
    refused, figures = compare(Scored(), rows_of(close), rows_of(EXACT))
    assert refused is None and figures["scores"]["distinct"] == figures["scores"]["float32_distinct"] == 40


def test_ties_that_float32_does_not_have_refuse_the_precision():
    """Labels all agree, yet one row's scores tie (bfloat16 logits a step apart): refused."""
    tied = [list(s) for s in EXACT]
    tied[0] = [0.5, 0.5]
    refused, figures = compare(Scored(), rows_of(tied), rows_of(EXACT))
    assert figures["agreement"] == 1.0 and figures["scores"]["ties"] == 1
    assert refused == "its scores tie on 1 of 40 rows where float32's tie on 0"


def test_scores_collapsed_to_a_few_values_refuse_the_precision():
    steps = [[round(a * 8) / 8, 1 - round(a * 8) / 8] for a, _ in EXACT]  # 8 steps, as bfloat16 logits
    steps = [s if s[0] != s[1] else [0.625, 0.375] for s in steps]
    refused, figures = compare(Scored(), rows_of(steps), rows_of(EXACT))
    assert figures["scores"]["distinct"] < 10 and refused.startswith("its scores take")


def test_rows_whose_margin_is_within_the_precisions_error_refuse_it():
    """Errors of 0.03 on the gap between the two best scores (every label still agrees), and a
    row whose float32 gap is smaller than that: its label could go either way on other rows."""
    noisy = [[a + 0.015, b - 0.015] for a, b in EXACT]
    refused, figures = compare(Scored(agreement_threshold=0.99), rows_of(noisy), rows_of(EXACT))
    assert figures["scores"]["margin_error_median"] == pytest.approx(0.03)
    assert figures["scores"]["fragile_rows"] == 1 and refused.startswith("1 of 40 rows have a gap")


def test_a_scoring_head_runs_in_float32_under_bfloat16_autocast():
    from batchnlp.model.device import head_in_float32

    torch.manual_seed(0)
    head, x = torch.nn.Linear(64, 2), torch.randn(8, 64) * 30
    exact = head(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        coarse = head(x)
        head_in_float32(head)
        fine = head(x)
    assert coarse.dtype == torch.bfloat16 and fine.dtype == torch.float32
    torch.testing.assert_close(fine, exact)
    assert torch.equal(head(x), exact)  # without autocast: exactly as before
