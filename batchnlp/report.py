"""`batchnlp report OUTPUT [-o report.html] [--gold COLUMN]`: one self-contained HTML page for the
person who checks a night's annotations — the job, the model and where it came from, the
precision, the runs; the annotations as the task has them (labels and scores — for two labels the
margin between them and the ties —, the least confident rows, embedding norms or, for normalised
vectors, how alike pairs and nearest neighbours are, a 2-D projection with axes, generated
lengths and flags, answers); against a gold column, accuracy, the confusion matrix and precision /
recall by label; and the run's health per part (rows/s, p50/p95 batch latency, error rate; the
figures alone for a one-part output) with the errors grouped by message.

Charts are inline SVG drawn here (no script, no network: the file opens anywhere). The parts are
streamed batch by batch (`batchnlp.dataset`); what a chart needs raw (least confident rows, a
projection, sample outputs) comes from a bounded heap or reservoir, so memory does not grow with
the output. Deliberately no plotting library: a few bar, histogram, line and scatter charts are
less code than a dependency and its inlined runtime.
"""

from __future__ import annotations

import heapq
import html
import math
import random
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import pyarrow as pa

from batchnlp.errors import UserError
from batchnlp.tasks import task_class

#: Rows below this confidence are counted as unsure (the seed tutorial's rule of thumb).
THRESHOLD = 0.5
LEAST_CONFIDENT, SAMPLES, PROJECTED, BINS, BATCH_ROWS = 20, 8, 500, 20, 8192


@dataclass
class Tally:
    """What the annotations add up to, gathered batch by batch."""

    rows: int = 0
    labels: Counter = field(default_factory=Counter)
    scores: list[int] = field(default_factory=lambda: [0] * BINS)  # a histogram on [0, 1]
    unsure: int = 0
    scored: int = 0
    least: list[tuple[float, int, str, str]] = field(default_factory=list)  # max-heap by -score
    norms: list[float] = field(default_factory=list)  # a reservoir
    sample: list[list[float]] = field(default_factory=list)  # a reservoir of embeddings
    sample_colors: list[str] = field(default_factory=list)  # --color-by: each sampled row's value
    lengths: list[int] = field(default_factory=list)  # a reservoir of output lengths (words)
    outputs: list[tuple[str, str]] = field(default_factory=list)
    flags: Counter = field(default_factory=Counter)
    empty: int = 0
    errors: Counter = field(default_factory=Counter)
    seen: int = 0  # rows offered to the reservoirs
    threshold: float = THRESHOLD
    #: --gold: (gold label, predicted label) -> rows; rows whose gold value is null are not compared.
    gold: Counter = field(default_factory=Counter)
    #: Rows whose top score is exactly 0.5 (two labels: no decision).
    ties: int = 0
    #: extraction: each field's values (array fields: their elements; free strings: their length
    #: in characters, in `field_lengths`), and how many arrays had each length.
    fields: dict[str, Counter] = field(default_factory=dict)
    field_lengths: dict[str, list[int]] = field(default_factory=dict)

    def score(self, value: float | None, text: str, label: str) -> None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        self.scored += 1
        self.ties += value == 0.5
        self.scores[min(BINS - 1, max(0, int(value * BINS)))] += 1
        self.unsure += value < self.threshold
        self.offer(value, self.scored, text, label)

    def offer(self, value: float, number: int, text: str, label: str) -> None:
        """A scored row for the least-confident table (a heap of the lowest scores seen)."""
        item = (-value, number, text, label)
        if len(self.least) < LEAST_CONFIDENT:
            heapq.heappush(self.least, item)
        elif item > self.least[0]:
            heapq.heapreplace(self.least, item)

    def keep(self, reservoir: list, value: Any, size: int, rng: random.Random) -> int | None:
        """Reservoir sampling: every row has the same chance to be kept, in bounded memory; the
        position it took (None: not kept)."""
        if len(reservoir) < size:
            reservoir.append(value)
            return len(reservoir) - 1
        at = rng.randrange(self.seen)
        if at < size:
            reservoir[at] = value
            return at
        return None


def report(output: str, threshold: float = THRESHOLD, gold: str | None = None, color_by: str | None = None) -> str:
    """The page, as HTML text. `gold`: an input column holding the right label of each row: the
    annotations are compared with it (accuracy, confusion matrix, precision and recall by label).
    `color_by`: an input column whose values colour the embeddings' projection."""
    from batchnlp.api import dataset_of
    from batchnlp.verification import load
    from batchnlp.write.folder import Folder

    state = load(output)
    job = state.job.get("resolved", {})
    prefix = job.get("output", {}).get("prefix", "")
    text_column = job.get("input", {}).get("text_column", "text")
    kind = task_class(job.get("task", {}).get("name", "")).__name__
    missing = state.missing_parts(Folder(output).sizes())
    if missing:  # a report on part of the rows would pass for the whole output's
        raise UserError(f"{output}: {missing[0]}{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''} "
                        "is missing or altered on disk, so no report is written; run the job again to annotate "
                        "its rows anew (batchnlp verify lists what is wrong)")
    data = dataset_of(output, state)  # (the state read once)
    label_names = _label_names(job) if kind == "Classification" or gold is not None else {}  # read once
    if gold is not None:
        _check_gold(gold, kind, data, output)
    if color_by is not None and color_by not in data.schema.names:
        raise UserError(f"--color-by: {output} has no column {color_by!r}; its columns are: "
                        f"{', '.join(data.schema.names)}")
    try:
        properties = (job.get("task", {}).get("schema") or {}).get("properties", {})
        tally = _gather(data, kind, prefix, text_column, threshold, gold, label_names, color_by, _free_strings(job),
                        properties)
    except (OSError, pa.ArrowException) as e:  # a part with the recorded size and other bytes
        raise UserError(f"{output}: a part cannot be read ({str(e).strip().splitlines()[0]}), so no report is "
                        "written; batchnlp verify names the damaged part: delete it and run the job again to "
                        "annotate its rows anew") from None
    sections = [_header(output, state), _annotations(kind, tally, job, label_names, color_by)]
    if gold is not None:
        sections.append(_gold_section(gold, tally))
    sections.append(_health(state, tally))
    return PAGE.format(title=html.escape(f"batchnlp report: {output}"), body="\n".join(sections))


def _gather(data: Any, kind: str, prefix: str, text_column: str, threshold: float, gold: str | None = None,
            label_names: dict[int, str] | None = None, color_by: str | None = None,
            free: Iterable[str] = (), fields: Iterable[str] = ()) -> Tally:
    tally, rng = Tally(threshold=threshold), random.Random(0)
    names = set(data.schema.names)
    free_strings = set(free or ())
    own = COLUMNS.get(kind, ()) if kind != "Extraction" else (*fields, "extracted")
    wanted = [c for c in (text_column, *(prefix + n for n in own), prefix + "error") if c in names]
    extra = {gold: "_gold", color_by: "_color"}
    wanted += [c for c in (gold, color_by) if c is not None and c not in wanted]
    # One part read at a time, one batch ahead: memory stays that of a batch, however many parts.
    for batch in data.to_batches(columns=wanted, batch_size=BATCH_ROWS, fragment_readahead=1, batch_readahead=1,
                                 use_threads=False):
        batch = batch.rename_columns([extra.get(n) or ("_text" if n == text_column else n.removeprefix(prefix))
                                      for n in wanted])
        tally.rows += batch.num_rows
        batch = _without_errors(batch, tally)
        if gold is not None:
            _compare_gold(batch, kind, tally, label_names or {})
        if kind in ("Classification", "QuestionAnswering"):
            _scalar_scores(batch, kind, tally)  # vectorised: no Python object per row
            continue
        columns = {name: batch.column(name).to_pylist() for name in batch.schema.names}
        texts = columns.get("_text", [""] * batch.num_rows)
        if kind == "Extraction":
            for i in range(batch.num_rows):
                row = {k: v[i] for k, v in columns.items()}
                _extracted(tally, row.pop("extracted", None) or row, free_strings)
            continue
        for i in range(batch.num_rows):
            tally.seen += 1
            _row(kind, tally, {k: v[i] for k, v in columns.items()}, str(texts[i] or ""), rng)
    return tally


def _free_strings(job: dict[str, Any]) -> list[str]:
    """An extraction's string fields without an enum: their lengths are reported, not their values."""
    properties = (job.get("task", {}).get("schema") or {}).get("properties", {})
    return [name for name, prop in properties.items()
            if "string" in (prop.get("type") if isinstance(prop.get("type"), list) else [prop.get("type")])
            and "enum" not in prop and "const" not in prop]


def _extracted(tally: Tally, row: dict[str, Any], free: set[str]) -> None:
    for name, value in row.items():
        if name.startswith("_") or name in ("error", "raw_json", "extracted"):
            continue
        if name in free and isinstance(value, str):
            tally.field_lengths.setdefault(name, []).append(len(value))
            continue
        counts = tally.fields.setdefault(name, Counter())
        for item in value if isinstance(value, list) else [value]:
            counts[str(round(item, 2)) if isinstance(item, float) else str(item)] += 1
        if isinstance(value, list):
            tally.fields.setdefault(f"{name} (items per row)", Counter())[str(len(value))] += 1


def _without_errors(batch: Any, tally: Tally) -> Any:
    """The batch's rows without an error; the errors counted by message."""
    import pyarrow.compute as pc

    if "error" not in batch.schema.names:
        return batch
    errors = batch.column("error")
    if errors.null_count < len(errors):
        for item in pc.value_counts(errors.drop_null()).to_pylist():
            tally.errors[item["values"]] += item["counts"]
        batch = batch.filter(pc.is_null(errors))
    return batch


def _scalar_scores(batch: Any, kind: str, tally: Tally) -> None:
    """A label (or answer) and a score per row: counted, binned and the least confident kept, in
    arrays; only the few rows that enter the least-confident heap become Python strings."""
    import numpy as np
    import pyarrow.compute as pc

    if batch.num_rows == 0:
        return
    annotation = batch.column("label" if kind == "Classification" else "answer")
    if kind == "Classification":
        for item in pc.value_counts(annotation).to_pylist():
            tally.labels[item["values"]] += item["counts"]
    else:
        tally.empty += int(pc.sum(pc.or_kleene(pc.is_null(annotation), pc.equal(annotation, ""))).as_py() or 0)
    scores = batch.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
    known = ~np.isnan(scores)
    values = scores[known]
    tally.scored += int(values.size)
    tally.unsure += int((values < tally.threshold).sum())
    tally.ties += int((values == 0.5).sum())
    bins = np.clip((values * BINS).astype(np.int64), 0, BINS - 1)
    for b, n in zip(*np.unique(bins, return_counts=True)):
        tally.scores[int(b)] += int(n)
    order = np.where(known, scores, np.inf)
    lowest = np.argpartition(order, min(LEAST_CONFIDENT, len(order) - 1))[:LEAST_CONFIDENT]
    texts = batch.column("_text") if "_text" in batch.schema.names else None
    for i in lowest[np.isfinite(order[lowest])]:
        text = texts[int(i)].as_py() if texts is not None else ""
        label = annotation[int(i)].as_py()
        tally.offer(float(scores[i]), tally.rows - batch.num_rows + int(i), str(text or ""), label or "(no answer)")


def _check_gold(gold: str, kind: str, data: Any, output: str) -> None:
    if kind not in ("Classification", "ZeroShot"):
        raise UserError(f"--gold: {output} is a {kind} output; gold labels are compared for text-classification "
                        "and zero-shot-classification outputs")
    if gold not in data.schema.names:
        raise UserError(f"--gold: {output} has no column {gold!r}; its columns are: {', '.join(data.schema.names)}")


def _label_names(job: dict[str, Any]) -> dict[int, str]:
    """The model's labels by id (its config's id2label), to name gold labels given as numbers (SST-2's
    0/1); empty where the model's files are not at hand."""
    import json
    from pathlib import Path

    from batchnlp.model import source
    from batchnlp.spec import ModelSpec

    if not (job.get("model", {}).get("path") or job.get("model", {}).get("package")):
        return {}  # a hub model: its cache is not searched (nothing here may wait on the network)
    try:
        directory = source.check(ModelSpec(**job.get("model", {})))
        config = json.loads((Path(directory) / "config.json").read_text()) if directory else {}
    except Exception:  # (the report stands without names: numbers are then compared as written)
        return {}
    return {int(k): v for k, v in (config.get("id2label") or {}).items()}


def _compare_gold(batch: Any, kind: str, tally: Tally, label_names: dict[int, str]) -> None:
    """Count (gold, predicted) pairs; a gold number is the model's label of that id."""
    predicted = (batch.column("label").to_pylist() if kind == "Classification"
                 else [labels[0] if labels else None for labels in batch.column("labels").to_pylist()])
    for truth, guess in zip(batch.column("_gold").to_pylist(), predicted):
        if truth is None or guess is None:
            continue
        if isinstance(truth, (int, float)) and not isinstance(truth, bool):
            truth = label_names.get(int(truth), str(int(truth)))
        tally.gold[(str(truth), str(guess))] += 1


#: The annotation columns each kind of task is reported on.
COLUMNS = {"Classification": ("label", "score"), "ZeroShot": ("labels", "scores"),
           "TokenClassification": ("entities",), "FillMask": ("predictions",), "Embeddings": ("embedding",),
           "QuestionAnswering": ("answer", "score"), "TextGeneration": ("generated_text", "flag"),
           "Summarization": ("summary_text", "flag"), "Translation": ("translation_text", "flag")}


def _row(kind: str, tally: Tally, row: dict[str, Any], text: str, rng: random.Random) -> None:
    if kind == "ZeroShot" and row.get("labels"):
        tally.labels[row["labels"][0]] += 1
        tally.score(row["scores"][0], text, row["labels"][0])
    elif kind == "TokenClassification":
        for entity in row.get("entities") or []:
            tally.labels[entity["entity_group"]] += 1
            tally.score(entity["score"], f"{entity['word']} — in: {text}", entity["entity_group"])
    elif kind == "FillMask" and row.get("predictions"):
        best = row["predictions"][0]
        tally.labels[best["token_str"]] += 1
        tally.score(best["score"], text, best["token_str"])
    elif kind == "Embeddings" and row.get("embedding"):
        vector = row["embedding"]
        if isinstance(vector[0], list):  # pooling none: the row's token vectors, reported by their mean
            vector = [sum(column) / len(vector) for column in zip(*vector)]
        tally.keep(tally.norms, math.sqrt(sum(x * x for x in vector)), 5000, rng)
        at = tally.keep(tally.sample, vector, PROJECTED, rng)
        if at is not None and "_color" in row:
            color = str(row["_color"])
            tally.sample_colors[at:at + 1] = [color]  # (appended, or the replaced row's value replaced)
    elif kind in ("TextGeneration", "Summarization", "Translation"):
        produced = next((row[c] for c in COLUMNS[kind][:1] if c in row), None)
        produced = " / ".join(produced) if isinstance(produced, list) else (produced or "")
        tally.keep(tally.lengths, len(produced.split()), 5000, rng)
        if row.get("flag"):
            tally.flags[row["flag"].split(":")[0]] += 1
        if len(tally.outputs) < SAMPLES:
            tally.outputs.append((text, produced))


# -- the page's sections ----------------------------------------------------------------------

def _header(output: str, state: Any) -> str:
    job = state.job.get("resolved", {})
    model = state.model or {}
    runs = "".join(f"<tr><td>{r.number}</td><td>{_e(r.started_at)}</td><td>{_e(r.engine)}</td><td>{_e(r.status)}</td>"
                   f"<td>{r.rows}</td><td>{r.seconds:.1f}</td><td>{_e(r.info.get('precision') or r.info.get('dtype'))}"
                   f"</td></tr>" for r in state.runs)
    weights = model.get("weights_sha256") or {}
    weights = ", ".join(f"{name} {digest[:12]}" for name, digest in weights.items()) if isinstance(weights, dict) \
        else str(weights)[:16]
    version = f" {model['version']}" if model.get("version") else ""
    facts = [("output", output), ("status", state.status), ("task", job.get("task", {}).get("name")),
             ("model", f"{model.get('package') or model.get('id') or model.get('path')}{version} "
                       f"({model.get('architecture', '?')})"),
             ("model source", _source(model)),
             ("weights (sha256)", weights),
             ("precision", state.pinned.precision), ("rows", state.totals.get("rows")), ("parts", len(state.parts))]
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    return (f"<section id='job'><h1>batchnlp report</h1><table class='facts'>{rows}</table>"
            f"<h2>Runs</h2><table><tr><th>#</th><th>started</th><th>engine</th><th>status</th><th>rows</th>"
            f"<th>seconds</th><th>precision</th></tr>{runs}</table></section>")


def _source(model: dict[str, Any]) -> str:
    """Where the weights came from, as the record pins them."""
    if model.get("id"):
        return f"hub {model['id']} at commit {model.get('commit') or model.get('revision') or '?'}"
    if model.get("package"):
        version = f" {model['version']}" if model.get("version") else ""
        return f"installed package {model['package']}{version} (weights pinned by sha256)"
    return "a local directory (weights pinned by sha256)"


def _two_labels(kind: str, tally: Tally, job: dict[str, Any], label_names: dict[int, str]) -> bool:
    """One label of two per row, the two scores summing to 1: a classifier with two labels, or
    zero-shot with two candidate labels and not multi_label (an LLM labeller's positive/negative)."""
    if kind == "Classification":
        return len(label_names or tally.labels) == 2
    task = job.get("task", {})
    return kind == "ZeroShot" and len(task.get("candidate_labels") or []) == 2 and not task.get("multi_label")


def _annotations(kind: str, tally: Tally, job: dict[str, Any], label_names: dict[int, str],
                 color_by: str | None = None) -> str:
    parts = [f"<section id='annotations'><h2>Annotations ({tally.rows} rows)</h2>"]
    if tally.labels:
        top = tally.labels.most_common(25)
        parts.append(bars("labels", "Label distribution" + (" (top 25)" if len(tally.labels) > 25 else ""), top))
    two = _two_labels(kind, tally, job, label_names)
    if tally.scored and two:
        # Two labels: the top score is never below 0.5; what tells a sure row from an unsure one is
        # the margin between the two (2 x score - 1), and a score of exactly 0.5 is no decision.
        margins = tally.scores[BINS // 2:]
        edges = [2 * i / BINS - 1 for i in range(BINS // 2, BINS + 1)]
        parts.append(histogram("margins", "Margin between the two labels (top score - the other)", margins, edges))
        close = sum(margins[:1])
        parts.append(f"<p class='unsure'>{close} of {tally.scored} ({close / tally.scored:.1%}) with a margin below "
                     f"{edges[1]:.2g}; {tally.ties} tie(s) (both labels at 0.5)</p>")
    elif tally.scored:
        edges = [i / BINS for i in range(BINS + 1)]
        parts.append(histogram("scores", "Confidence (score) histogram", tally.scores, edges))
        share = tally.unsure / tally.scored
        parts.append(f"<p class='unsure'>{tally.unsure} of {tally.scored} ({share:.1%}) below {tally.threshold}</p>")
    if tally.scored:
        least = sorted(tally.least, reverse=True)
        shown = (lambda score: 2 * score - 1) if two else (lambda score: score)
        rows = "".join(f"<tr><td>{shown(-s):.3f}</td><td>{_e(label)}</td><td>{_e(text[:300])}</td></tr>"
                       for s, _, text, label in least)
        parts.append(f"<h3>Least confident</h3><table id='least'><tr><th>{'margin' if two else 'score'}</th>"
                     f"<th>annotation</th><th>text</th></tr>{rows}</table>")
    if kind == "QuestionAnswering":
        parts.append(f"<p class='empty'>{tally.empty} empty answers</p>")
    if len(tally.sample) >= 2 and max(tally.norms) - min(tally.norms) < 1e-3:
        # Normalised vectors: every norm is 1, so the histogram would say nothing; how alike the
        # texts come out does (a collapsed model puts every pair near 1).
        pairs, nearest = _cosines(tally.sample)
        parts.append(histogram("cosines", f"Cosine similarity of sampled pairs ({len(pairs)} pairs; the norms are all "
                                          f"{statistics.fmean(tally.norms):.3f})", *_bins(pairs)))
        parts.append(histogram("nearest", "Each sampled text's nearest neighbour (cosine)", *_bins(nearest)))
    elif tally.norms:
        parts.append(histogram("norms", "Embedding norms", *_bins(tally.norms)))
    if tally.norms:
        colored = color_by is not None and len(tally.sample_colors) == len(tally.sample)
        parts.append(scatter("projection", f"2-D projection (PCA) of {len(tally.sample)} sampled embeddings"
                             + (f", coloured by {color_by}" if colored else ""),
                             _project(tally.sample), tally.sample_colors if colored else None))
    for name, counts in tally.fields.items():
        top = counts.most_common(15)
        chart = "field-" + "".join(c if c.isalnum() else "-" for c in name)
        parts.append(bars(chart, f"{name}" + (" (top 15)" if len(counts) > 15 else ""), top))
    for name, lengths in tally.field_lengths.items():
        parts.append(histogram(f"field-{name}", f"{name}: length (characters)", *_bins([float(n) for n in lengths])))
    if kind == "Extraction":
        cut = sum(n for message, n in tally.errors.items() if message.startswith("cut:"))
        invalid = sum(n for message, n in tally.errors.items() if message.startswith("invalid:"))
        share = f" ({cut / tally.rows:.1%})" if tally.rows else ""
        parts.append(f"<p class='cut'>cut before the answer was complete: {cut} of {tally.rows} rows{share}; "
                     f"invalid answers: {invalid}</p>")
    if tally.lengths:
        parts.append(histogram("lengths", "Output length (words)", *_bins([float(n) for n in tally.lengths])))
        flags = ", ".join(f"{k}: {v}" for k, v in tally.flags.most_common()) or "none"
        parts.append(f"<p class='flags'>flagged, blocked or cut: {flags}</p>")
        rows = "".join(f"<tr><td>{_e(t[:200])}</td><td>{_e(o[:400])}</td></tr>" for t, o in tally.outputs)
        parts.append(f"<h3>Sample outputs</h3><table id='samples'><tr><th>input</th><th>output</th></tr>{rows}</table>")
    parts.append("</section>")
    return "\n".join(parts)


def _gold_section(gold: str, tally: Tally) -> str:
    """Accuracy, the confusion matrix and precision / recall / F1 by label, against `gold`."""
    compared = sum(tally.gold.values())
    if not compared:
        return f"<section id='gold'><h2>Against {_e(gold)}</h2><p>no row with a gold label to compare</p></section>"
    labels = sorted({g for g, _ in tally.gold} | {p for _, p in tally.gold})
    right = sum(n for (g, p), n in tally.gold.items() if g == p)
    head = "".join(f"<th>{_e(p)}</th>" for p in labels)
    body = "".join(f"<tr><th>{_e(g)}</th>" + "".join(f"<td>{tally.gold.get((g, p), 0)}</td>" for p in labels)
                   + "</tr>" for g in labels)
    scores = []
    for label in labels:
        hit = tally.gold.get((label, label), 0)
        said = sum(n for (_, p), n in tally.gold.items() if p == label)
        true = sum(n for (g, _), n in tally.gold.items() if g == label)
        precision, recall = (hit / said if said else 0.0), (hit / true if true else 0.0)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append(f"<tr><td>{_e(label)}</td><td>{precision:.3f}</td><td>{recall:.3f}</td><td>{f1:.3f}</td>"
                      f"<td>{true}</td></tr>")
    return (f"<section id='gold'><h2>Against {_e(gold)} ({compared} rows with a gold label)</h2>"
            f"<p class='accuracy'>accuracy {right / compared:.1%} ({right} of {compared})</p>"
            f"<h3>Confusion matrix (rows: {_e(gold)}, columns: predicted)</h3>"
            f"<table id='confusion'><tr><th></th>{head}</tr>{body}</table>"
            f"<table id='per-label'><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>rows</th></tr>"
            f"{''.join(scores)}</table></section>")


def _health(state: Any, tally: Tally) -> str:
    parts = state.part_list()
    grouped = "".join(f"<tr><td>{n}</td><td>{_e(message[:300])}</td></tr>" for message, n in tally.errors.most_common(20))
    total = sum(tally.errors.values())
    errors = (f"<h3>Errors ({total} rows)</h3><table id='errors'><tr><th>rows</th><th>message</th></tr>{grouped}"
              "</table>")
    rate = [p.rows / p.stats["seconds"] if p.stats.get("seconds") else 0.0 for p in parts]
    p50 = [(p.stats.get("batch_seconds_p50") or 0.0) for p in parts]
    p95 = [(p.stats.get("batch_seconds_p95") or 0.0) for p in parts]
    if len(parts) < 2:  # nothing to compare a part with: its figures, not one-point charts
        figures = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in (
            ("rows/s", _number(rate[0]) if rate else "-"), ("batch latency p50", _duration(p50[0]) if p50 else "-"),
            ("batch latency p95", _duration(p95[0]) if p95 else "-")))
        return f"<section id='health'><h2>How the run went</h2><table id='part'>{figures}</table>{errors}</section>"
    unit, scale = ("s", 1.0) if max(p95, default=0) >= 1 else ("ms", 1000.0)
    error_rate = [100 * (p.stats.get("error_rate") or 0.0) for p in parts]
    return ("<section id='health'><h2>How the run went (per part, in part order)</h2>"
            + line("rows_per_s", "Rows/s per part", {"rows/s": rate})
            + line("latency", f"Batch latency per part ({unit})", {"p50": [v * scale for v in p50],
                                                                   "p95": [v * scale for v in p95]})
            + line("error_rate", "Error rate per part (%)", {"errors %": error_rate})
            + errors + "</section>")


def _number(value: float) -> str:
    """A figure as people read it: no exponent, three significant digits below 100."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _duration(seconds: float) -> str:
    return f"{_number(seconds)} s" if seconds >= 1 else f"{_number(seconds * 1000)} ms"


# -- charts: inline SVG ---------------------------------------------------------------------------

W, H, PAD = 640, 240, 40


def bars(chart_id: str, title: str, pairs: list[tuple[Any, int]]) -> str:
    height = 22 * len(pairs) + 30
    most = max((n for _, n in pairs), default=1) or 1
    items = "".join(f"<text x='150' y='{30 + 22 * i}' text-anchor='end'>{_e(str(k)[:24])}</text>"
                    f"<rect x='156' y='{18 + 22 * i}' width='{(W - 260) * n / most:.1f}' height='16'/>"
                    f"<text x='{162 + (W - 260) * n / most:.1f}' y='{30 + 22 * i}'>{n}</text>"
                    for i, (k, n) in enumerate(pairs))
    return _figure(chart_id, title, f"<svg viewBox='0 0 {W} {height}' width='{W}' height='{height}'>{items}</svg>")


def histogram(chart_id: str, title: str, counts: list[int], edges: list[float]) -> str:
    most = max(counts, default=1) or 1
    width = (W - 2 * PAD) / max(len(counts), 1)
    items = "".join(f"<rect x='{PAD + i * width:.1f}' y='{H - PAD - (H - 2 * PAD) * n / most:.1f}' "
                    f"width='{width - 1:.1f}' height='{(H - 2 * PAD) * n / most:.1f}'><title>{edges[i]:.3g}–"
                    f"{edges[i + 1]:.3g}: {n}</title></rect>" for i, n in enumerate(counts))
    axis = (f"<text x='{PAD}' y='{H - PAD + 16}'>{edges[0]:.4g}</text>"
            f"<text x='{W - PAD}' y='{H - PAD + 16}' text-anchor='end'>{edges[-1]:.4g}</text>"
            f"<text x='4' y='{PAD}'>{most}</text>")
    return _figure(chart_id, title, f"<svg viewBox='0 0 {W} {H}' width='{W}' height='{H}'>{items}{axis}</svg>")


def line(chart_id: str, title: str, series: dict[str, list[float]]) -> str:
    values = [v for vs in series.values() for v in vs]
    top = max(values, default=1) or 1
    n = max((len(v) for v in series.values()), default=1)
    step = (W - 2 * PAD) / max(n - 1, 1)
    paths = "".join(
        f"<polyline class='s{k}' fill='none' points='"
        + " ".join(f"{PAD + i * step:.1f},{H - PAD - (H - 2 * PAD) * v / top:.1f}" for i, v in enumerate(vs))
        + f"'><title>{_e(name)}</title></polyline>" for k, (name, vs) in enumerate(series.items()))
    legend = " ".join(f"<tspan class='s{k}'>■ {_e(name)}</tspan>" for k, name in enumerate(series))
    axis = f"<text x='4' y='{PAD}'>{_number(top)}</text><text x='{PAD}' y='{H - 8}'>{legend}</text>"
    return _figure(chart_id, title, f"<svg viewBox='0 0 {W} {H}' width='{W}' height='{H}'>{paths}{axis}</svg>")


#: Point colours for up to eight values of a --color-by column (the eighth: every other value).
PALETTE = ["#4a78b5", "#d2691e", "#2e8b57", "#b22222", "#8a2be2", "#daa520", "#20b2aa", "#888888"]


def scatter(chart_id: str, title: str, points: list[tuple[float, float]], colors: list[str] | None = None) -> str:
    if not points:
        return _figure(chart_id, title, "<p>no embeddings</p>")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs) or 1, min(ys), max(ys) or 1
    fill, legend = _palette(colors or [])
    dots = "".join(f"<circle cx='{PAD + (W - 2 * PAD) * (x - x0) / ((x1 - x0) or 1):.1f}' "
                   f"cy='{H - PAD - (H - 2 * PAD) * (y - y0) / ((y1 - y0) or 1):.1f}' r='3'"
                   + (f" style='fill:{fill[i]}'><title>{_e(colors[i])}</title></circle>" if colors else "/>")
                   for i, (x, y) in enumerate(points))
    axes = (f"<line x1='{PAD}' y1='{H - PAD}' x2='{W - PAD}' y2='{H - PAD}' stroke='#999'/>"
            f"<line x1='{PAD}' y1='{PAD}' x2='{PAD}' y2='{H - PAD}' stroke='#999'/>"
            f"<text x='{PAD}' y='{H - PAD + 14}'>{x0:.2g}</text>"
            f"<text x='{W - PAD}' y='{H - PAD + 14}' text-anchor='end'>{x1:.2g}  (first component)</text>"
            f"<text x='2' y='{H - PAD}'>{y0:.2g}</text><text x='2' y='{PAD - 6}'>{y1:.2g} (second)</text>")
    return _figure(chart_id, title, f"<svg viewBox='0 0 {W} {H}' width='{W}' height='{H}'>{axes}{dots}</svg>"
                   + legend)


def _palette(values: list[str]) -> tuple[list[str], str]:
    """(each point's colour, the legend): the seven commonest values their own, the rest grey."""
    if not values:
        return [], ""
    counts = Counter(values).most_common()
    own = {value: PALETTE[i] for i, (value, _) in enumerate(counts[:7])}
    legend = "".join(f"<span style='color:{own[v]}'>■</span> {_e(v)} ({n}) " for v, n in counts[:7])
    rest = sum(n for _, n in counts[7:])
    legend += f"<span style='color:{PALETTE[7]}'>■</span> other ({rest})" if rest else ""
    return [own.get(v, PALETTE[7]) for v in values], f"<p class='legend'>{legend}</p>"


def _figure(chart_id: str, title: str, svg: str) -> str:
    return f"<figure class='chart' id='chart-{chart_id}'><figcaption>{_e(title)}</figcaption>{svg}</figure>"


def _bins(values: list[float]) -> tuple[list[int], list[float]]:
    low, high = min(values), max(values)
    width = (high - low) / BINS or 1.0
    counts = [0] * BINS
    for v in values:
        counts[min(BINS - 1, int((v - low) / width))] += 1
    return counts, [low + i * width for i in range(BINS + 1)]


def _cosines(vectors: list[list[float]]) -> tuple[list[float], list[float]]:
    """(the cosine of every pair of the sample, each vector's best cosine with another)."""
    import numpy as np

    if len(vectors) < 2:
        return [], []
    matrix = np.asarray(vectors, dtype=np.float64)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True).clip(min=1e-12)
    similar = matrix @ matrix.T
    upper = similar[np.triu_indices(len(vectors), k=1)]
    np.fill_diagonal(similar, -np.inf)
    return upper.tolist(), similar.max(axis=1).tolist()


def _project(vectors: list[list[float]]) -> list[tuple[float, float]]:
    """The first two principal components of a sample (numpy's SVD)."""
    import numpy as np

    if len(vectors) < 3:
        return []
    matrix = np.asarray(vectors, dtype=np.float64)
    matrix -= matrix.mean(axis=0)
    _, _, vt = np.linalg.svd(matrix, full_matrices=False)
    return [(float(a), float(b)) for a, b in matrix @ vt[:2].T]


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def charts(page: str) -> Iterable[str]:
    """The ids of the charts a page holds (for the CLI's summary)."""
    import re

    return re.findall(r"id='chart-([\w-]+)'", page)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 980px; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; }} td, th {{ border: 1px solid #ddd; padding: 3px 8px;
 text-align: left; vertical-align: top; }}
figure.chart {{ margin: 12px 0 20px; }} figcaption {{ font-weight: 600; margin-bottom: 4px; }}
svg rect {{ fill: #4a78b5; }} svg circle {{ fill: #4a78b5; fill-opacity: .6; }} svg text {{ font-size: 11px; }}
polyline.s0 {{ stroke: #4a78b5; stroke-width: 1.5; }} tspan.s0 {{ fill: #4a78b5; }}
polyline.s1 {{ stroke: #d2691e; stroke-width: 1.5; }} tspan.s1 {{ fill: #d2691e; }}
polyline {{ fill: none !important; }}
</style></head><body>
{body}
</body></html>
"""
