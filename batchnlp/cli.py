"""The `batchnlp` command. Exit status: 0 success, 2 a user error (one line on stderr), 3 a run
that finished but skipped changed input files (output.on_changed: skip; one line names them), 75
the output is busy (another live run holds it: try later), 130/143 stopped by a signal, 1 a bug.

torch and transformers are imported inside `run` only, so `--help`, `validate`, `inspect` and
`tasks` answer at once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from batchnlp.version import __version__
from batchnlp.errors import BUSY, SKIPPED, USER_ERROR, RunFailed, UserError, exit_code, is_disk_full

__all__ = ["BUSY", "SKIPPED", "main"]


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a UserError (or a full disk) into one line and exit status 2, a busy output into 75;
    let bugs raise (click exits 1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from batchnlp.log import final_error

        try:
            return fn(*args, **kwargs)
        except (UserError, RunFailed) as e:
            final_error(str(e), exit_code(e))
            sys.exit(exit_code(e))
        except OSError as e:
            if not is_disk_full(e):
                raise
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            final_error(f"no space left on the device{where}; nothing half-written is kept and the committed parts "
                        "are: free space (the output's disk, TMPDIR, the model cache HF_HOME), then run the job "
                        "again to resume", USER_ERROR)
            sys.exit(USER_ERROR)

    return wrapper


class OneLineGroup(click.Group):
    """Usage errors in one line, like every other user error (click's default is three)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("standalone_mode", None)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as e:
            command = e.ctx.command_path if e.ctx else "batchnlp"
            click.echo(f"error: {e.format_message()} (see {command} --help)", err=True)
            sys.exit(2)
        except click.Abort:
            sys.exit(130)
        except click.ClickException as e:
            click.echo(f"error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batchnlp")
def main() -> None:
    """Annotate corpora with Hugging Face models: streaming, resumable, reproducible."""


def set_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Override a key of the job (dotted: runtime.device=cpu; the value is read as YAML); "
                             "repeatable.")(fn)


def log_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--log-level, --log-file, --log-format and --progress-interval, shared by run and rerun."""
    from batchnlp.log import LEVELS

    for option in reversed([
        click.option("--log-level", type=click.Choice(LEVELS, case_sensitive=False),
                     help="Default INFO (WARNING with --quiet)."),
        click.option("--log-file", type=click.Path(dir_okay=False), help="Also append the log to this file."),
        click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
                     help="json: one object per line (shard committed, rows, rows/s, tokens/s, errors, ETA)."),
        click.option("--progress-interval", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
                     help="Seconds between progress lines when stderr is not a terminal (no bar then)."),
    ]):
        fn = option(fn)
    return fn


def _setup_logging(quiet: bool, log_level: str | None, log_file: str | None, log_format: str) -> None:
    from batchnlp.log import configure

    configure((log_level or ("WARNING" if quiet else "INFO")).upper(), log_file, log_format, quiet,
              file_level=(log_level or "INFO").upper())


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Discard any earlier output of this or another job and start over.")
@click.option("--limit", type=click.IntRange(min=1), help="Annotate only the first N input rows (a later run "
                                                          "with a larger limit, or none, continues).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or progress lines; only warnings are logged.")
@click.option("--engine", type=click.Choice(["local", "ray"]), help="Override runtime.engine.")
@click.option("--address", help="engine ray: an existing cluster's GCS address (head-host:6379, or auto on a node "
                                "where `ray start` ran); default a local one. ray:// (Ray Client) is refused.")
@click.option("--reprocess-changed", is_flag=True,
              help="Annotate again the input files whose content changed since they were annotated.")
@click.option("--drop-removed", "removed", flag_value="drop",
              help="Drop the rows of input files that were annotated and are gone.")
@click.option("--keep-removed", "removed", flag_value="keep",
              help="Keep the rows of input files that were annotated and are gone.")
@click.option("--retry-errors", is_flag=True,
              help="Annotate again the rows whose annotation failed (error set); they replace the old rows.")
@click.option("--dry-run", is_flag=True, help="Say what the run would do now (files new / changed / removed, rows "
                                              "and parts to do, what it would refuse, an estimate) and write nothing.")
@set_option
@log_options
@user_errors
def run(job: str, overwrite: bool, limit: int | None, quiet: bool, engine: str | None, address: str | None,
        reprocess_changed: bool, removed: str | None, retry_errors: bool, dry_run: bool, overrides: tuple[str, ...],
        log_level: str | None, log_file: str | None, log_format: str, progress_interval: float) -> None:
    """Run JOB (a YAML or TOML job spec): annotate what its output does not hold yet (new input
    files, the rest of an interrupted run), or say it is complete."""
    _setup_logging(quiet, log_level, log_file, log_format)
    from batchnlp.faults import Faults
    from batchnlp.options import RunOptions
    from batchnlp.runner import run as run_job
    from batchnlp.spec import load_spec

    spec = load_spec(job, overrides)
    options = RunOptions(overwrite=overwrite, limit=limit, quiet=quiet, engine=engine, address=address,
                         on_changed="reprocess" if reprocess_changed else None, on_removed=removed,
                         retry_errors=retry_errors, progress_interval=progress_interval,
                         faults=Faults.from_environment(), exit_at_once=True).for_job(spec)
    if dry_run:
        _dry_run(spec, options)
        return
    with interruptible(spec.output.path):
        result = run_job(spec, options)
    _report(result)
    skipped = (result.changes or {}).get("skipped")
    if skipped:  # output.on_changed: skip — the night's work is done, and it is not what the input says
        from batchnlp.log import final_error

        final_error(f"input.path: {skipped[0]}{f' (and {len(skipped) - 1} more)' if len(skipped) > 1 else ''} "
                    f"changed since {'it was' if len(skipped) == 1 else 'they were'} annotated and "
                    f"{'was' if len(skipped) == 1 else 'were'} skipped (output.on_changed: skip): the earlier "
                    "annotations are kept, the other files annotated; restore it, or run with --reprocess-changed",
                    SKIPPED)
        sys.exit(SKIPPED)


def _dry_run(spec: Any, options: Any) -> None:
    """Print what the run would do; exit 2 if it would refuse, 75 if the output is busy now."""
    from batchnlp.preview import preview

    seen = preview(spec, options)
    for line in seen.lines:
        click.echo(line)
    for refusal in [seen.busy, *seen.refusals] if seen.busy else seen.refusals:
        click.echo(f"would refuse: {refusal}")
    if seen.refusals or seen.busy:
        sys.exit(USER_ERROR if seen.refusals else BUSY)


def _report(result: Any) -> None:
    changes = result.changes or {}
    noted = "; ".join(f"{len(v)} {k} input file(s)" for k, v in changes.items() if v and k != "removed")
    noted = f" ({noted})" if noted else ""
    written = result.shards_written
    if result.retried is not None:
        click.echo(f"{result.output}: retried {result.retried['rows']} rows with an error in "
                   f"{len(result.retried['parts'])} parts: {result.retried['rows'] - result.retried['failing']} "
                   f"annotated now, {result.retried['failing']} still fail")
        written -= len(result.retried["parts"])
        if written == 0:
            return
    if written == 0:
        done = "already complete" if result.status == "complete" else "already partial (the --limit is reached)"
        click.echo(f"{result.output}: {done} ({result.resumed_from} parts); nothing to do{noted}")
        return
    resumed = f", resumed after {result.resumed_from} committed parts" if result.resumed and result.resumed_from \
        else f", after the {result.resumed_from} parts the output held" if result.resumed_from else ""
    if result.status == "partial":
        noted += "; partial: run without --limit (or with a larger one) to continue"
    click.echo(f"{result.output}: wrote {result.rows_written} rows in {written} parts{resumed}{noted}")


@contextlib.contextmanager
def interruptible(output: str | Path) -> Iterator[None]:
    """SIGTERM (what schedulers send on a timeout) and SIGINT both stop the run the same way: the
    commit in flight finishes, the log records `interrupted`, one line says how to resume, and
    the exit status is 128 + the signal (143, 130), never 1."""
    import signal

    def stop(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        from batchnlp.log import final_error

        final_error(f"interrupted by {signal.Signals(signum).name}; the committed parts are kept in {output}; run the "
                    "same command again to resume", 128 + signum)
        sys.exit(128 + signum)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Interrupted(KeyboardInterrupt):
    """A signal asked the run to stop (a KeyboardInterrupt, so the log records `interrupted`)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@main.command()
@click.argument("output_dir", type=click.Path(file_okay=False))
@click.option("--skip-inputs", is_flag=True, help="Check only the parts, not the input files' content hashes.")
@user_errors
def verify(output_dir: str, skip_inputs: bool) -> None:
    """Check OUTPUT_DIR against its log: every part present with its sha256, nothing unlisted
    beside them, the inputs unchanged, the run complete. Exit 0, or 2 with one line per problem."""
    from batchnlp.verification import verify as check

    verdict = check(output_dir, check_inputs=not skip_inputs)
    for note in verdict.notes:
        click.echo(f"note: {note}")
    for problem in verdict.problems:
        click.echo(f"error: {problem}", err=True)
    if verdict.problems:
        sys.exit(2)
    inputs = "" if skip_inputs else f", {verdict.inputs} input file(s) unchanged"
    click.echo(f"{output_dir}: ok — {verdict.parts} parts, {verdict.rows} rows verified{inputs}")


@main.command()
@click.argument("output_dir", type=click.Path(file_okay=False))
@click.option("--to", "to_dir", required=True, type=click.Path(file_okay=False),
              help="An empty (or new) directory for the rerun's output.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or progress lines; only warnings are logged.")
@log_options
@user_errors
def rerun(output_dir: str, to_dir: str, quiet: bool, log_level: str | None, log_file: str | None, log_format: str,
          progress_interval: float) -> None:
    """Re-execute the job recorded in OUTPUT_DIR's log (the log alone, not the job file)
    into DIR and report whether every part is byte-identical (exit 0) or not (exit 2)."""
    _setup_logging(quiet, log_level, log_file, log_format)
    from batchnlp.faults import Faults
    from batchnlp.options import RunOptions
    from batchnlp.runner import run as run_job
    from batchnlp.spec import parse
    from batchnlp.storage import is_url
    from batchnlp.verification import compare_parts, kept_units, load, recorded_job
    from batchnlp.write.folder import Folder

    original_dir, target = (p if is_url(p) else str(Path(p).absolute()) for p in (output_dir, to_dir))
    if Folder(target).files():
        raise UserError(f"--to: {target} is not empty; give a new or empty directory")
    original = load(original_dir)
    data, base = recorded_job(original, original_dir, target)
    spec = parse(data, base_dir=base)
    with interruptible(target):
        run_job(spec, RunOptions(limit=original.planned.get("limit"), quiet=quiet,
                                 unit_order=kept_units(original, original_dir), progress_interval=progress_interval,
                                 faults=Faults.from_environment(), pin=original.pinned.precision,
                                 exit_at_once=True).for_job(spec))
    same, problems = compare_parts(original, load(target))
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    click.echo(f"rerun into {target}: {len(same)} of {len(original.parts)} parts byte-identical")
    if problems:
        sys.exit(2)


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@set_option
@user_errors
def validate(job: str, overrides: tuple[str, ...]) -> None:
    """Check JOB without running it or loading weights: the spec, the input files and columns, the
    model's files (tokenizer, a head for the task, positions), the output's place and columns."""
    from batchnlp.errors import SpecError, SpecProblems
    from batchnlp.spec import load_partial, load_spec
    from batchnlp.validate import validate as check

    try:
        try:
            spec, known = load_spec(job, overrides), []
        except SpecError:  # the sections that parse are still checked against the data
            spec, known = load_partial(job, overrides)
        click.echo(f"{job}: ok — {check(spec, known)}")
    except SpecProblems as e:  # every problem found, one line each
        for problem in e.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(USER_ERROR)


@main.command("cache")
@click.option("--clear", is_flag=True, help="Remove every entry (each is rebuilt by the next run that needs it).")
@user_errors
def cache_command(clear: bool) -> None:
    """List the converted-model cache (GGUF checkpoints converted once): entries, sizes, problems."""
    import shutil

    from batchnlp.model import cache

    found = cache.entries()
    count = f"{len(found)} entr{'y' if len(found) == 1 else 'ies'}"
    mib = f"{sum(e['bytes'] for e in found) / 2**20:.0f} MiB"
    if clear:
        for entry in found:
            shutil.rmtree(entry["entry"], ignore_errors=True)
        click.echo(f"removed {count} ({mib}) from {cache.root()}")
        return
    import os

    where = "set by BATCHNLP_CACHE" if os.environ.get("BATCHNLP_CACHE") else \
        "the default; set BATCHNLP_CACHE to use another folder"
    click.echo(f"model cache: {cache.root()} ({where})")
    for entry in found:
        click.echo(f"  {entry['entry']}  {entry['bytes'] / 2**20:.0f} MiB  {entry['source'] or '?'}"
                   + (f"  ({entry['problem']}: rebuilt when next needed)" if entry["problem"] else ""))
    click.echo(f"{count}, {mib}")
    from batchnlp.model import precision

    for calibration in precision.calibrations():
        hardware = calibration.get("hardware", {})
        click.echo(f"precision calibration (dtype auto): {hardware.get('cpu')}, torch {hardware.get('torch')}: "
                   f"bfloat16 at {calibration.get('bf16_speedup')}x float32 per core, measured "
                   f"{calibration.get('measured_at')}")


@main.command()
@click.argument("output_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the output's state as JSON (schema: docs/output.md, "
                                                      "\"The output's record\").")
@click.option("--history", is_flag=True, help="List the runs: when, engine, precision, what each added, removed, "
                                              "found new, changed or dropped, and how each ended.")
@user_errors
def inspect(output_dir: str, as_json: bool, history: bool) -> None:
    """Summarise an output directory from its log."""
    from batchnlp.probe import probe_summary
    from batchnlp.verification import load
    from batchnlp.write import lock
    from batchnlp.write.folder import Folder

    state = load(output_dir)
    if as_json:
        click.echo(json.dumps(state.to_json(), indent=2, default=str))
        return
    if history:
        click.echo("\n".join(_history_lines(state, output_dir)))
        return
    directory = Folder(output_dir)
    missing = state.missing_parts(directory.sizes())
    status = state.status
    if status == "running" and not lock.held(directory):
        status = "interrupted (rerun the job to resume)"
    elif status == "partial":
        status = f"partial ({state.partial_note()})"
    totals, planned, model = state.summary(), state.planned, state.model
    model_name = model.get("id") or model.get("package") or model.get("path")
    pinned = model.get("commit_sha") or model.get("version") or ""
    # The last run that loaded the model (a night with nothing to do loads none).
    last_run = next((r.to_json() for r in reversed(state.runs) if r.info.get("device")), {})
    precision = state.pinned.precision
    probe = state.pinned.probe
    lines = [
        f"output:    {directory}",
        f"status:    {status}",
        f"task:      {state.job['resolved']['task']['name']}",
        f"model:     {model_name} {pinned} ({model.get('architecture')})",
        f"inputs:    {len(state.units)} file(s)"
        + (f", {len(state.kept_removed())} removed with their parts kept" if state.kept_removed() else ""),
        f"rows:      {totals.get('rows', 0)} of {planned.get('rows')}",
        f"parts:     {totals.get('shards', 0)} of {planned.get('shards')}"
        + (f"; {len(missing)} missing or altered on disk ({missing[0]}{', ...' if len(missing) > 1 else ''}): "
           "run the job to redo them"
           if missing else ""),
        f"errors:    {totals.get('errors', 0)} rows with an error",
        f"speed:     {totals.get('rows_per_second')} rows/s, {totals.get('tokens_per_second')} tokens/s, "
        f"padding efficiency {totals.get('padding_efficiency')}",
        f"precision: {precision} (pinned at the first run"
        + (f"; {probe_summary(probe)}" if probe else "") + ")",
        (f"device:    {last_run.get('device')} {last_run.get('dtype')}"
         + (" (autocast)" if last_run.get("autocast_dtype") else "") + f", engine {last_run.get('engine')}")
        if last_run else "device:    no run loaded the model",
        f"runs:      {len(state.runs)}, started {state.started_at}, finished {state.finished_at}",
    ]
    skipped = state.runs[-1].inputs.get("skipped") if state.runs else None
    if skipped:
        lines.append(f"skipped:   {len(skipped)} changed input file(s) left as annotated by the last run "
                     f"(output.on_changed: skip): {', '.join(skipped[:3])}{', ...' if len(skipped) > 3 else ''}")
    click.echo("\n".join(lines))


def _history_lines(state: Any, output: str) -> list[str]:
    from batchnlp.write.state import base_of_output, resolved_name

    # Input names are recorded relative to the job's folder (a moved project keeps them); an input
    # the job named by an absolute path is shown as one, not as ../../../../data/x.csv.
    absolute = "input.path" not in (state.job.get("paths_as_written") or {})
    base = base_of_output(state, output) if absolute else None

    def shown(name: str) -> str:
        return resolved_name(name, base) if base is not None else name

    lines = []
    for run in state.runs:
        info = run.info
        inputs = "; ".join(f"{kind} {len(names)} ({', '.join(map(shown, names[:3]))}{', ...' if len(names) > 3 else ''})"
                           for kind, names in run.inputs.items() if names)
        device = f"{info['device']} {info.get('dtype')}" if info.get("device") else "no model loaded"
        lines.append(f"run {run.number}: {run.started_at} -> {run.finished_at or '-'} {run.status}"
                     f"{f' ({run.error})' if run.error else ''}; engine {run.engine}, {device}; {run.parts_added} "
                     f"parts added ({run.rows} rows), {run.parts_removed} removed{f'; inputs: {inputs}' if inputs else ''}")
    return lines


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--rows", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Benchmark on the first N input rows.")
@click.option("--baseline", type=click.Choice(["pipeline", "none"]), default="pipeline", show_default=True,
              help="Also time transformers' pipeline(texts, batch_size=B) on the same model and rows.")
@click.option("--check-agreement", is_flag=True, help="Compare the outputs with float32 (and the pipeline's).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Alternating timed runs of each side; the median is reported.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True,
              help="Untimed runs of each side first (a first run pays one-time costs: allocation, kernel set-up).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="The pipeline's batch_size.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16", "int8"]),
              help="Override the job's runtime.dtype.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the figures to this file.")
@set_option
@user_errors
def bench(job: str, overrides: tuple[str, ...], rows: int, baseline: str, check_agreement: bool, repeats: int,
          warmup: int, batch_size: int, dtype: str | None, json_path: str | None) -> None:
    """Time JOB's task through batchnlp against the naive pipeline loop (nothing is written to the
    job's output)."""
    import dataclasses

    from batchnlp import bench as benchmark
    from batchnlp.spec import load_spec

    spec = load_spec(job, overrides)
    if dtype:
        spec = dataclasses.replace(spec, runtime=dataclasses.replace(spec.runtime, dtype=dtype))
    report = benchmark.bench(spec, rows, None if baseline == "none" else baseline, check_agreement,
                             repeats, batch_size, echo=click.echo, warmup=warmup)
    if json_path:
        benchmark.save(report, json_path)


@main.command()
@click.argument("output_dir")
@click.option("-o", "--output", "path", default="report.html", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the page.")
@click.option("--gold", help="An input column holding each row's right label (numbers are the model's label "
                             "ids): accuracy, confusion matrix and precision / recall by label.")
@click.option("--color-by", help="An input column whose values colour the embeddings' 2-D projection.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Rows with a lower confidence count as unsure.")
@user_errors
def report(output_dir: str, path: str, threshold: float, gold: str | None, color_by: str | None) -> None:
    """Write one self-contained HTML page about OUTPUT_DIR (no network needed to open it): the
    job, model, precision and runs; the annotations (labels, scores, the least confident rows,
    embedding norms and a projection, output lengths and flags); rows/s, latency and errors per part."""
    from batchnlp.report import charts, report as page_of

    page = page_of(output_dir, threshold, gold, color_by)
    Path(path).write_text(page, encoding="utf-8")
    click.echo(f"{path}: {len(page.encode()) / 1024:.0f} KiB, charts: {', '.join(charts(page))}")


@main.command()
@click.argument("output_dir")
@click.option("--format", "fmt", type=click.Choice(["openai-batch"]), required=True,
              help="openai-batch: the OpenAI Batch API's output file (a JSON line per request, by custom_id).")
@click.option("--to", "path", default="-", show_default=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="The file to write (-: standard output).")
@user_errors
def export(output_dir: str, fmt: str, path: str) -> None:
    """Write OUTPUT_DIR's answers in another tool's format: with --format openai-batch, one line per
    row as the OpenAI Batch API writes its results (custom_id from input.id_column; the text-generation
    or extraction answer as the chat completion; a cut answer's finish_reason "length")."""
    from batchnlp.export import export_openai_batch

    with click.open_file(path, "w", encoding="utf-8", atomic=path != "-") as to:
        lines = export_openai_batch(output_dir, to)
    if path != "-":
        click.echo(f"{path}: {lines} lines", err=True)


@main.command("random-model")
@click.argument("output_dir", type=click.Path(file_okay=False))
@click.option("--shape", type=click.Choice(["distilbert-base", "bert-base", "smollm2-135m"]), default="distilbert-base",
              show_default=True, help="DistilBertConfig() or BertConfig() defaults (768 dim; 6 or 12 layers), or "
                                      "SmolLM2-135M's Llama shape (a causal LM, for text-generation; --labels unused).")
@click.option("--labels", default="NEGATIVE,POSITIVE", show_default=True,
              help="Comma-separated labels; contradiction,neutral,entailment makes a zero-shot (NLI) model.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(file_okay=False, exists=True),
              help="Copy the tokenizer files from this directory instead of the demo extra's MiniLM "
                   "(e.g. on a machine without the demo extra).")
@user_errors
def random_model(output_dir: str, shape: str, labels: str, seed: int, tokenizer_dir: str | None) -> None:
    """Save a randomly initialised sequence classifier (or causal LM) of a real model's shape, with
    the real bert-base-uncased WordPiece tokenizer that the demo extra's MiniLM ships: the same
    speed as the trained model, for `bench` (its answers are meaningless)."""
    from batchnlp.model.random import save_random_causal_lm, save_random_classifier

    if shape == "smollm2-135m":
        path = save_random_causal_lm(Path(output_dir), seed, Path(tokenizer_dir) if tokenizer_dir else None)
        click.echo(f"{path}: random causal LM of SmolLM2-135M's shape")
        return
    path = save_random_classifier(Path(output_dir), shape, [label.strip() for label in labels.split(",")], seed,
                                  Path(tokenizer_dir) if tokenizer_dir else None)
    click.echo(f"{path}: random {shape} classifier with labels {labels}")


@main.command()
def tasks() -> None:
    """List the tasks and their parameters."""
    from batchnlp.settings import field_docs
    from batchnlp.tasks import ALIASES, task_class, task_names

    for name in task_names():
        cls = task_class(name)
        aliases = [alias for alias, target in ALIASES.items() if target == name]
        aliases += ["translation_XX_to_YY"] if name == "translation" else []
        click.echo(f"{name}: {cls.description}{' Also named: ' + ', '.join(aliases) + '.' if aliases else ''}")
        for field, default, doc in field_docs(cls.Params):
            click.echo(f"    {field} (default {default}): {doc}")
        click.echo("")
