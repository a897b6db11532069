"""`batchnlp report`: one self-contained page per output, its charts checked in the HTML and, where
Chromium is installed (`.ci/run` installs Debian's `chromium`), rendered by it headless: each
chart in the DOM, no console error, a screenshot kept in BATCHNLP_ARTIFACTS (default .artifacts/)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import TEXTS, invoke, write_job

ARTIFACTS = Path(os.environ.get("BATCHNLP_ARTIFACTS", Path(__file__).resolve().parent.parent / ".artifacts"))


def report_of(tmp_path, job) -> tuple[Path, str]:
    assert invoke("run", job, "-q").exit_code == 0
    page = tmp_path / "report.html"
    result = invoke("report", tmp_path / "out", "-o", page)
    assert result.exit_code == 0, result.output
    return page, page.read_text()


def self_contained(page: str) -> None:
    """Nothing fetched when the page opens: no script, no link, no src or href to a server."""
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", page)


def rendered(page: Path, name: str, charts: list[str]) -> None:
    """The page in headless Chromium: each chart in the DOM it built, no console error, and a
    screenshot kept; skipped, saying so, where Chromium is not installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (apt install chromium): the report was not rendered in a browser")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
             "--v=0"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for chart in charts:
        figure = re.search(rf"<figure class=\"chart\" id=\"chart-{chart}\">.*?</figure>", dom.stdout, re.S)
        assert figure is not None, chart
        assert re.search(r"<(rect|polyline|circle)\b", figure.group(0)), chart  # drawn, not empty
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"report-{name}.png"
    subprocess.run([*flags, "--window-size=1000,2400", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120, check=True)
    assert shot.stat().st_size > 10_000


def test_a_classification_report(tmp_path, classifier_dir, reviews_csv):
    rows = reviews_csv.read_text().splitlines()
    reviews_csv.write_text("\n".join([*rows, "r99,,1"]) + "\n")  # an empty text: a row with an error
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "text-classification"}, model={"path": str(classifier_dir)})
    path, page = report_of(tmp_path, job)
    self_contained(page)
    charts = ["labels", "scores", "rows_per_s", "latency", "error_rate"]
    assert re.findall(r"id='chart-([\w-]+)'", page) == charts
    assert f"Annotations ({len(TEXTS) + 1} rows)" in page and "<td>1</td><td>null text</td>" in page
    least = re.search(r"<table id='least'>(.*?)</table>", page, re.S).group(1)
    scores = [float(s) for s in re.findall(r"<tr><td>([0-9.]+)</td>", least)]
    assert len(scores) == len(TEXTS) and scores == sorted(scores)  # every scored row, least confident first
    rendered(path, "classification", charts)


@pytest.mark.parametrize("damage", ["missing", "garbled"])
def test_a_report_on_an_output_with_a_missing_or_damaged_part_is_one_line(tmp_path, classifier_dir, reviews_csv,
                                                                         damage):
    """A report over the parts that happen to be readable would pass for the whole output's (and
    it was a traceback): one line naming the part or what to run, exit 2, no page."""
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "text-classification"}, model={"path": str(classifier_dir)})
    assert invoke("run", job, "-q").exit_code == 0
    part = tmp_path / "out" / "part-00000-00001.parquet"
    if damage == "missing":
        part.unlink()
    else:
        part.write_bytes(b"\0" * part.stat().st_size)
    result = invoke("report", tmp_path / "out", "-o", tmp_path / "report.html")
    assert result.exit_code == 2 and result.output.count("\n") == 1 and result.output.startswith("error: "), \
        result.output
    assert ("part-00000-00001.parquet is missing or altered" if damage == "missing" else "a part cannot be read") \
        in result.output and "run the job again" in result.output
    assert not (tmp_path / "report.html").exists()


def test_an_embeddings_report(tmp_path, encoder_dir, reviews_csv):
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "embeddings", "normalize": False}, model={"path": str(encoder_dir)})
    path, page = report_of(tmp_path, job)
    self_contained(page)
    assert re.findall(r"id='chart-([\w-]+)'", page) == ["norms", "projection", "rows_per_s", "latency", "error_rate"]
    assert len(re.findall(r"<circle ", page)) == len(TEXTS)  # every row projected (a sample of 500 at most)
    rendered(path, "embeddings", ["norms", "projection"])


def test_a_generation_report(tmp_path, causal_dir, reviews_csv):
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "text-generation", "max_new_tokens": 5}, model={"path": str(causal_dir)})
    path, page = report_of(tmp_path, job)
    self_contained(page)
    assert re.findall(r"id='chart-([\w-]+)'", page)[:1] == ["lengths"]
    assert "flagged, blocked or cut: none" in page
    assert len(re.findall(r"<tr><td>", re.search(r"<table id='samples'>(.*?)</table>", page, re.S).group(1))) == 8
    rendered(path, "generation", ["lengths"])


def two_label_job(tmp_path, rows: int = 40, rows_per_shard: int = 10):
    """A random two-label classifier over `rows` texts with a gold column of label ids (0/1), as
    SST-2's `label` is."""
    import csv

    from tiny_models import classifier

    model = classifier(tmp_path / "model", ["NEGATIVE", "POSITIVE"], seed=3)
    path = tmp_path / "sst.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "gold"])
        for i in range(rows):
            writer.writerow([f"s{i}", TEXTS[i % len(TEXTS)] + f" {i}", i % 2])
    return write_job(tmp_path, input={"path": str(path), "text_column": "text"},
                     task={"name": "text-classification"}, model={"path": str(model)},
                     output={"path": str(tmp_path / "out"), "rows_per_shard": rows_per_shard})


def test_a_two_label_report_shows_margins_and_checks_a_gold_column(tmp_path):
    """Two labels: "0 of 40 below 0.5" was always true; the margin between the labels is shown,
    with the ties. --gold: accuracy, a confusion matrix and precision/recall by label, the gold
    ids named by the model's labels, each figure as the output's rows give it."""
    from helpers import read_output

    job = two_label_job(tmp_path)
    assert invoke("run", job, "-q").exit_code == 0
    page_path = tmp_path / "report.html"
    result = invoke("report", tmp_path / "out", "-o", page_path, "--gold", "gold")
    assert result.exit_code == 0, result.output
    page = page_path.read_text()
    self_contained(page)
    assert re.findall(r"id='chart-([\w-]+)'", page)[:2] == ["labels", "margins"] and "chart-scores" not in page
    assert "tie(s) (both labels at 0.5)" in page and "below 0.5" not in page
    least = re.search(r"<table id='least'><tr><th>margin</th>(.*?)</table>", page, re.S).group(1)
    margins = [float(m) for m in re.findall(r"<tr><td>([0-9.]+)</td>", least)]
    table = read_output(tmp_path / "out")
    expected = sorted(round(2 * s - 1, 3) for s in table.column("score").to_pylist())[:len(margins)]
    assert margins == expected
    truth = ["POSITIVE" if g else "NEGATIVE" for g in table.column("gold").to_pylist()]
    guess = table.column("label").to_pylist()
    right = sum(t == g for t, g in zip(truth, guess))
    assert f"accuracy {right / 40:.1%} ({right} of 40)" in page
    confusion = re.search(r"<table id='confusion'>(.*?)</table>", page, re.S).group(1)
    cells = [[int(n) for n in re.findall(r"<td>(\d+)</td>", row)] for row in re.findall(r"<tr><th>\w+</th>(.*?)</tr>",
                                                                                        confusion)]
    assert cells == [[sum(t == a and g == b for t, g in zip(truth, guess)) for b in ("NEGATIVE", "POSITIVE")]
                     for a in ("NEGATIVE", "POSITIVE")]
    assert "<th>precision</th><th>recall</th>" in page
    rendered(page_path, "two-labels-gold", ["labels", "margins"])


def test_gold_is_refused_in_one_line_where_it_cannot_be_compared(tmp_path, encoder_dir, reviews_csv):
    job = two_label_job(tmp_path)
    assert invoke("run", job, "-q").exit_code == 0
    missing = invoke("report", tmp_path / "out", "-o", tmp_path / "r.html", "--gold", "truth")
    assert missing.exit_code == 2 and "--gold: " in missing.output and "has no column 'truth'" in missing.output
    other = tmp_path / "embed"
    other.mkdir()
    embed = write_job(other, input={"path": str(reviews_csv), "text_column": "text"}, task={"name": "embeddings"},
                      model={"path": str(encoder_dir)})
    assert invoke("run", embed, "-q").exit_code == 0
    refused = invoke("report", other / "out", "-o", tmp_path / "e.html", "--gold", "stars")
    assert refused.exit_code == 2 and "gold labels are compared for text-classification" in refused.output


def test_normalised_embeddings_show_how_alike_the_texts_come_out(tmp_path, encoder_dir, reviews_csv):
    """Normalised vectors all have norm 1 (the histogram read "1 ... 1"): pairwise and nearest-
    neighbour cosines instead, and the projection has axes. One part: its figures, not one-point
    charts, and the model named as the local directory it is."""
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "embeddings", "normalize": True}, model={"path": str(encoder_dir)},
                    output={"path": str(tmp_path / "out"), "rows_per_shard": 100})
    assert invoke("run", job, "-q").exit_code == 0
    path = tmp_path / "report.html"
    made = invoke("report", tmp_path / "out", "-o", path, "--color-by", "stars")
    assert made.exit_code == 0, made.output
    page = path.read_text()
    n = len(TEXTS)
    assert re.findall(r"id='chart-([\w-]+)'", page) == ["cosines", "nearest", "projection"]
    # coloured by the input's `stars` (1-5), a legend with each value's count, every point coloured
    assert "coloured by stars" in page and len(re.findall(r"<circle [^>]*style='fill:#", page)) == n
    legend = dict(re.findall(r"</span> (\d) \((\d+)\)", page))
    assert sorted(legend) == ["1", "2", "3", "4", "5"] and sum(map(int, legend.values())) == n
    assert f"Cosine similarity of sampled pairs ({n * (n - 1) // 2} pairs; the norms are all 1.000)" in page
    assert "(first component)" in page and "<table id='part'>" in page and "chart-latency" not in page
    assert "a local directory (weights pinned by sha256)" in page and "(a local model)" not in page
    rendered(path, "embeddings-normalised", ["cosines", "nearest", "projection"])


def test_a_two_label_zero_shot_labeller_shows_margins_and_ties(tmp_path, nli_dir, reviews_csv):
    """An LLM labeller's shape (zero-shot, two candidate labels): its least confident rows were all
    0.500 ties; the margins and the number of ties are shown instead of "below 0.5"."""
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "zero-shot-classification", "candidate_labels": ["positive", "negative"]},
                    model={"path": str(nli_dir)})
    path, page = report_of(tmp_path, job)
    assert re.findall(r"id='chart-([\w-]+)'", page)[:2] == ["labels", "margins"]
    assert "tie(s) (both labels at 0.5)" in page and "<th>margin</th>" in page


def test_an_ner_report(tmp_path, ner_dir, reviews_csv):
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "token-classification", "aggregation_strategy": "simple"},
                    model={"path": str(ner_dir)})
    path, page = report_of(tmp_path, job)
    self_contained(page)
    assert re.findall(r"id='chart-([\w-]+)'", page)[:2] == ["labels", "scores"]
    rendered(path, "ner", ["labels", "scores"])
