"""The CLI through click's CliRunner; exit statuses; instant commands import no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import TEXTS, invoke, printed, read_output, record, write_job


def test_run_then_inspect(tmp_path, classifier_dir, reviews_csv):
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "sentiment"}, model={"path": str(classifier_dir)})
    result = invoke("run", job, "--quiet")
    assert result.exit_code == 0, result.output
    assert f"wrote {len(TEXTS)} rows in 3 parts" in result.output

    again = invoke("run", job, "--quiet")
    assert again.exit_code == 0 and "already complete" in again.output

    summary = invoke("inspect", tmp_path / "out")
    assert summary.exit_code == 0
    assert "status:    complete" in summary.output
    assert f"rows:      {len(TEXTS)} of {len(TEXTS)}" in summary.output
    assert "parts:     3 of 3" in summary.output
    as_json = json.loads(invoke("inspect", tmp_path / "out", "--json").output)
    assert as_json["totals"]["rows"] == len(TEXTS)


def test_user_errors_are_one_line_and_exit_2(tmp_path, reviews_csv):
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "review"},
                    task={"name": "embeddings"}, model={"path": str(tmp_path / "no-model")})
    for command, lines in (("validate", 2), ("run", 1)):  # validate lists the missing model too
        result = invoke(command, job)
        assert result.exit_code == 2
        assert printed(result.output).count("\n") == lines  # (and log lines, on a stderr that is no terminal)
        assert printed(result.output).startswith('error: input.text_column: column "review" not found')
    quiet = invoke("run", job, "-q")
    assert quiet.exit_code == 2 and quiet.output.count("\n") == 1 and quiet.output.startswith("error: ")


def test_hub_model_unavailable_offline_is_one_line(tmp_path, reviews_csv):
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "text-classification"},
                    model={"id": "distilbert/distilbert-base-uncased-finetuned-sst-2-english", "revision": "main"})
    for command in ("validate", "run"):  # validate looks in the cache too: no "ok" for what run cannot do
        result = invoke(command, job)
        assert result.exit_code == 2 and printed(result.output).count("\n") == 1
        assert printed(result.output).startswith("error: model.id: distilbert/distilbert-base-uncased-finetuned-"
                                                 "sst-2-english at revision main is not in the local cache")


def test_missing_model_directory_and_package(tmp_path, reviews_csv):
    for model, message in (({"path": str(tmp_path / "nowhere")}, "model.path: model directory"),
                           ({"package": "no_such_model_pkg"}, "model.package: Python package 'no_such_model_pkg' "
                                                              "is not installed")):
        job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                        task={"name": "embeddings"}, model=model)
        result = invoke("validate", job)
        assert result.exit_code == 2 and result.output.startswith(f"error: {message}")


def test_inspect_a_directory_without_manifest(tmp_path):
    result = invoke("inspect", tmp_path)
    assert result.exit_code == 2 and "no batchnlp log (.batchnlp/log) here" in result.output


def test_tasks_lists_parameters():
    result = invoke("tasks")
    assert result.exit_code == 0
    for text in ("text-classification:", "top_k", "function_to_apply", "embeddings:", "pooling", "normalize"):
        assert text in result.output


def test_help_validate_and_tasks_do_not_import_torch(tmp_path, reviews_csv):
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "embeddings"}, model={"path": str(tmp_path)})
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "vocab.txt").write_text("[PAD]\n")  # validate wants a tokenizer's files
    code = ("import sys\nfrom batchnlp.cli import main\n"
            "for args in (['--help'], ['tasks'], ['validate', sys.argv[1]]):\n"
            "    try:\n        main(args)\n    except SystemExit as e:\n        assert not e.code, (args, e.code)\n"
            "heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code, str(job)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_dry_run_does_not_import_torch(tmp_path, reviews_csv):
    """--dry-run decides without a model: the conductor, `decide` and the per-shard work import no
    torch until an engine runs (the per-shard `Worker` once pulled it in through the stages)."""
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "embeddings"}, model={"path": str(tmp_path)})
    (tmp_path / "config.json").write_text("{}")
    code = ("import sys\nfrom batchnlp.cli import main\nimport batchnlp.runner, batchnlp.work, batchnlp.record\n"
            "try:\n    main(['run', sys.argv[1], '--dry-run'])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code, str(job)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "to do: " in result.stdout


def test_python_dash_m_works():
    result = subprocess.run([sys.executable, "-m", "batchnlp", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "batchnlp" in result.stdout


def test_example_hub_jobs_validate_and_stop_with_one_line_offline(monkeypatch):
    from pathlib import Path

    import yaml

    monkeypatch.chdir(Path(__file__).parent.parent)  # the jobs name paths relative to the repository
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    jobs = [j for j in sorted(Path("jobs").glob("*.yaml")) if "id" in yaml.safe_load(j.read_text())["model"]]
    jobs.append(Path("jobs/classify_reviews.toml"))
    assert len(jobs) >= 8
    for job in jobs:
        for command in ("validate", "run"):
            result = invoke(command, job)
            assert result.exit_code == 2, (job, result.output)
            assert printed(result.output).count("\n") == 1 and " is not in the local cache and the hub cannot be " \
                "reached" in printed(result.output), (job, result.output)


def test_a_busy_output_exits_75_and_a_broken_job_2(tmp_path, classifier_dir, reviews_csv):
    """A scheduler tells "another run holds this output, try later" (75, EX_TEMPFAIL) from "this
    job is wrong" (2)."""
    from batchnlp.write.lock import OutputLock

    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "text-classification"}, model={"path": str(classifier_dir)})
    (tmp_path / "out").mkdir()
    with OutputLock(tmp_path / "out"):
        busy = invoke("run", job, "-q")
    assert busy.exit_code == 75 and busy.output.count("\n") == 1 and "is in use by a running job" in busy.output
    broken = write_job(tmp_path, input={"path": str(tmp_path / "none.csv"), "text_column": "text"},
                       task={"name": "text-classification"}, model={"path": str(classifier_dir)}, name="broken.yaml")
    assert invoke("run", broken, "-q").exit_code == 2


def test_a_failing_run_leaves_its_error_in_the_json_log_file(tmp_path, classifier_dir):
    """The guide's cron recipe (docs/scheduling.md) on a failing job: the error is in the log file, as JSON, with its
    exit code, and stderr (JSON too) stays JSON to its last line."""
    job = write_job(tmp_path, input={"path": str(tmp_path / "missing.csv"), "text_column": "text"},
                    task={"name": "text-classification"}, model={"path": str(classifier_dir)})
    log = tmp_path / "run.log"
    done = subprocess.run([sys.executable, "-m", "batchnlp", "run", str(job), "-q", "--log-format", "json",
                           "--log-file", str(log)], capture_output=True, text=True)
    assert done.returncode == 2
    last = json.loads(log.read_text().splitlines()[-1])
    assert (last["level"], last["event"], last["exit_code"]) == ("ERROR", "error", 2)
    assert "missing.csv does not exist" in last["message"]
    assert [json.loads(line)["message"] for line in done.stderr.splitlines()] == [last["message"]]


def test_an_unattended_run_logs_its_lifecycle_as_json(tmp_path, classifier_dir, reviews_csv):
    """started, planned (files, rows, parts), model loaded (seconds, precision), each part, finished
    (status, rows, seconds, exit code) in the log file, with -q: enough for a night nobody watched."""
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "text-classification"}, model={"path": str(classifier_dir)})
    log = tmp_path / "run.log"
    done = subprocess.run([sys.executable, "-m", "batchnlp", "run", str(job), "-q", "--log-format", "json",
                           "--log-file", str(log)], capture_output=True, text=True)  # the guide's cron recipe
    assert done.returncode == 0 and done.stderr == "", done.stderr  # -q quiets the terminal, not the file
    events = [json.loads(line) for line in log.read_text().splitlines()]
    names = [e["event"] for e in events if e["event"] in ("started", "planned", "model", "shard", "finished")]
    assert names == ["started", "planned", "model", "shard", "shard", "shard", "finished"]
    by_name = {e["event"]: e for e in events}
    assert by_name["planned"]["rows"] == len(TEXTS) and by_name["planned"]["parts"] == 3 and by_name["planned"]["new"] == 1
    assert by_name["model"]["precision"] == "float32" and by_name["model"]["device"] == "cpu"
    assert (by_name["finished"]["status"], by_name["finished"]["rows"], by_name["finished"]["exit_code"]) == (
        "complete", len(TEXTS), 0)


def test_set_and_environment_variables_let_one_job_file_serve_two_environments(tmp_path, classifier_dir,
                                                                                reviews_csv, monkeypatch):
    """`${VAR:-default}` in the file (a value that is one variable alone is read as YAML: a number
    here), `--set` on the command line (dotted keys, YAML values); the record keeps the job as
    resolved, the overrides and the variables' names."""
    job = tmp_path / "job.yaml"
    job.write_text(f"""
input: {{path: {reviews_csv}, text_column: text}}
task: {{name: text-classification}}
model: {{path: {classifier_dir}}}
runtime: {{dtype: float32}}
output: {{path: "${{OUT_ROOT:-{tmp_path}/dev}}/reviews", rows_per_shard: "${{ROWS:-4}}"}}
""")
    monkeypatch.delenv("OUT_ROOT", raising=False)
    monkeypatch.setenv("ROWS", "5")
    dev = invoke("run", job, "-q", "--set", "output.prefix=x_", "--set", "runtime.max_batch_size=2")
    assert dev.exit_code == 0 and f"{tmp_path}/dev/reviews: wrote 12 rows in 3 parts" in dev.output, dev.output
    assert "x_label" in read_output(tmp_path / "dev" / "reviews").column_names
    state = record(tmp_path / "dev" / "reviews")
    assert state["job"]["overrides"] == ["output.prefix=x_", "runtime.max_batch_size=2"]
    assert state["job"]["variables"] == ["ROWS"] and state["job"]["resolved"]["runtime"]["max_batch_size"] == 2
    monkeypatch.setenv("OUT_ROOT", str(tmp_path / "prod"))
    prod = invoke("run", job, "-q", "--set", "output.prefix=x_")
    assert prod.exit_code == 0 and f"{tmp_path}/prod/reviews: wrote 12 rows in 3 parts" in prod.output, prod.output

    unset = tmp_path / "unset.yaml"
    unset.write_text(job.read_text().replace("${OUT_ROOT:-", "${BUCKET}/${OUT_ROOT:-"))
    for args, message in [((unset,), "output.path: ${BUCKET} is not set in the environment; export BUCKET"),
                          ((job, "--set", "runtime.device"), "--set: 'runtime.device': expected KEY=VALUE"),
                          ((job, "--set", "devices.cpu=1"), "--set: devices.cpu: a key is SECTION.NAME"),
                          ((job, "--set", "runtime.nosuch=1"), "runtime.nosuch: unknown setting"),
                          ((job, "--set", "output.rows_per_shard=[1"), "--set: output.rows_per_shard: the value")]:
        result = invoke("validate", *args)
        assert result.exit_code == 2 and result.output.count("\n") == 1, (args, result.output)
        assert message in result.output, (args, result.output)


def snapshot(folder):
    """Every file under a folder with its size and modification time (what a dry run must not touch)."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_a_dry_run_says_what_a_run_would_do_and_writes_nothing(tmp_path, classifier_dir, monkeypatch):
    from batchnlp.model import load

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name, texts in (("a.csv", TEXTS[:6]), ("b.csv", TEXTS[6:9])):
        (inbox / name).write_text("id,text\n" + "".join(f'{name}{i},"{t}"\n' for i, t in enumerate(texts)))
    job = write_job(tmp_path, input={"path": str(inbox), "format": "csv", "text_column": "text"}, task={"name": "text-classification"},
                    model={"path": str(classifier_dir)}, output={"path": str(tmp_path / "out"), "rows_per_shard": 4})
    monkeypatch.setattr(load, "load_model", lambda *a, **k: pytest.fail("a dry run loads no model"))
    new = invoke("run", job, "--dry-run")
    assert new.exit_code == 0, new.output
    assert f"output: {tmp_path / 'out'}: new" in new.output and "2 new (a.csv, b.csv)" in new.output.replace(
        str(inbox) + "/", "")
    assert "to do: 9 rows in 3 parts (of 3)" in new.output and "estimate: none" in new.output
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()

    assert invoke("run", job, "-q").exit_code == 0
    (inbox / "c.csv").write_text("id,text\nc0,fine\nc1,awful\n")
    (inbox / "a.csv").write_text((inbox / "a.csv").read_text().replace("ok", "not ok"))
    before = snapshot(tmp_path / "out")
    planned = invoke("run", job, "--dry-run")
    assert planned.exit_code == 2, planned.output
    assert "1 new" in planned.output and "1 changed" in planned.output
    assert f"would refuse: input.path: {inbox / 'a.csv'} changed since it was annotated" in planned.output
    assert "to do: 2 rows in 1 parts (of 4)" in planned.output
    assert "estimate: about " in planned.output and "rows/s as this output's runs recorded" in planned.output
    again = invoke("run", job, "--dry-run", "--reprocess-changed")
    assert again.exit_code == 0 and "would refuse" not in again.output
    assert "to do: 8 rows in 3 parts (of 4)" in again.output  # a.csv's 6 rows (2 parts) and c.csv's 2
    other = invoke("run", job, "--dry-run", "--set", "output.rows_per_shard=2", "--reprocess-changed")
    assert other.exit_code == 2 and "was started by a different job (spec.output.rows_per_shard: 4 -> 2)" in other.output
    assert snapshot(tmp_path / "out") == before


def test_validate_lists_every_problem_of_a_job_in_one_pass(tmp_path, classifier_dir, reviews_csv):
    """Four mistakes in four places (an unknown key and a bad value in runtime, an input file that
    is not there, a model directory that is not there): four lines, exit 2."""
    job = tmp_path / "job.yaml"
    job.write_text(f"""
input: {{path: {tmp_path}/missing.csv, text_column: text}}
task: {{name: text-classification}}
model: {{path: {tmp_path}/no-model}}
runtime: {{dtype: float64, devise: cpu}}
output: {{path: {tmp_path}/out}}
""")
    result = invoke("validate", job)
    lines = result.output.splitlines()
    assert result.exit_code == 2 and len(lines) == 4, result.output
    assert lines[0].startswith("error: runtime.devise: unknown setting")
    assert lines[1].startswith("error: runtime.dtype: must be one of auto, float32")
    assert "missing.csv" in lines[2] and "does not exist" in lines[2]
    assert lines[3].startswith(f"error: model.path: model directory {tmp_path}/no-model does not exist")
    run = invoke("run", job, "-q")  # run stops at the spec, in one line that says there is more
    assert run.exit_code == 2 and run.output.count("\n") == 1
    assert "(and 1 more: batchnlp validate lists them)" in run.output

    # validate says what `run` would refuse about the output as it is now: a changed input
    good = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                     task={"name": "text-classification"}, model={"path": str(classifier_dir)}, name="good.yaml")
    assert invoke("run", good, "-q").exit_code == 0
    reviews_csv.write_text(reviews_csv.read_text().replace("love it", "hate it"))
    changed = invoke("validate", good)
    assert changed.exit_code == 2 and "changed since it was annotated" in changed.output, changed.output


def test_the_small_things_a_nightly_user_reads(tmp_path, classifier_dir, reviews_csv, monkeypatch):
    """run --help names an address that works; a night that adds a file does not say "resumed";
    inspect --history shows an input named by an absolute path as that path (not ../../../..)
    and a run that loaded no model as such (not "None None"); --dry-run --retry-errors counts the
    rows it would retry; `batchnlp cache` says where its folder comes from."""
    helped = invoke("run", "--help").output
    assert "ray://head" not in helped and "head-host:6379" in helped
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.csv").write_text("id,text\na0,good\na1,\na2,bad\n")  # a1: an empty text, an error row
    job = write_job(tmp_path, input={"path": str(inbox), "format": "csv", "text_column": "text"},
                    task={"name": "text-classification"}, model={"path": str(classifier_dir)},
                    output={"path": str(tmp_path / "out"), "rows_per_shard": 2})
    assert invoke("run", job, "-q").exit_code == 0
    (inbox / "b.csv").write_text("id,text\nb0,fine\n")
    second = invoke("run", job, "-q")
    assert second.exit_code == 0 and "resumed" not in second.output, second.output
    assert "wrote 1 rows in 1 parts, after the 2 parts the output held (1 new input file(s))" in second.output
    assert invoke("run", job, "-q").exit_code == 0  # nothing to do: no model loaded
    history = invoke("inspect", tmp_path / "out", "--history").output.splitlines()
    assert f"inputs: new 1 ({inbox / 'b.csv'})" in history[1] and "../" not in "".join(history)
    assert "engine local, no model loaded; 0 parts added" in history[2] and "None" not in history[2]
    assert "device:    cpu float32" in invoke("inspect", tmp_path / "out").output
    dry = invoke("run", job, "--dry-run", "--retry-errors")
    assert dry.exit_code == 0 and "retry: 1 rows with an error in 1 parts would be annotated again" in dry.output
    monkeypatch.delenv("BATCHNLP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    listed = invoke("cache").output
    assert f"model cache: {tmp_path / 'xdg' / 'batchnlp'} (the default; set BATCHNLP_CACHE" in listed


def test_a_job_in_the_pipelines_words_validates_and_runs_as_batchnlps(tmp_path, classifier_dir, reviews_csv):
    """`name: sentiment-analysis`, `batch_size: 8`, `device: -1`, `torch_dtype: torch.float32`: the
    words of a transformers pipeline, accepted by validate and run, annotating exactly as the job
    in batchnlp's own words does."""
    import yaml

    words = {"pipeline": ({"name": "sentiment-analysis"}, {"batch_size": 8, "device": -1,
                                                           "torch_dtype": "torch.float32"}),
             "batchnlp": ({"name": "text-classification"}, {"max_batch_size": 8, "device": "cpu",
                                                            "dtype": "float32"})}
    outputs = {}
    for name, (task, runtime) in words.items():
        job = tmp_path / f"{name}.yaml"  # (write_job would add dtype: float32 beside torch_dtype)
        job.write_text(yaml.safe_dump({"input": {"path": str(reviews_csv), "text_column": "text"}, "task": task,
                                       "model": {"path": str(classifier_dir)}, "runtime": runtime,
                                       "output": {"path": str(tmp_path / name)}}))
        checked = invoke("validate", job)
        assert checked.exit_code == 0, checked.output
        assert invoke("run", job, "-q").exit_code == 0
        outputs[name] = read_output(tmp_path / name)
    assert outputs["pipeline"].column("label").to_pylist() == outputs["batchnlp"].column("label").to_pylist()
    assert outputs["pipeline"].column("score").to_pylist() == outputs["batchnlp"].column("score").to_pylist()
    assert record(tmp_path / "pipeline")["runs"][0]["max_batch_size"] == 8
