"""The CLI through click's CliRunner; exit statuses; instant commands import no torch."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import TEXTS, invoke, write_job


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
    for command in ("validate", "run"):
        result = invoke(command, job)
        assert result.exit_code == 2
        assert result.output.count("\n") == 1
        assert result.output.startswith('error: input.text_column: column "review" not found')


def test_hub_model_unavailable_offline_is_one_line(tmp_path, reviews_csv):
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"},
                    task={"name": "text-classification"},
                    model={"id": "distilbert/distilbert-base-uncased-finetuned-sst-2-english", "revision": "main"})
    for command in ("validate", "run"):  # validate looks in the cache too: no "ok" for what run cannot do
        result = invoke(command, job)
        assert result.exit_code == 2 and result.output.count("\n") == 1
        assert result.output.startswith("error: model.id: distilbert/distilbert-base-uncased-finetuned-sst-2-english "
                                        "at revision main is not in the local cache")


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
            assert result.output.count("\n") == 1 and " is not in the local cache and the hub cannot be reached" \
                in result.output, (job, result.output)


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
    """The README's cron recipe on a failing job: the error is in the log file, as JSON, with its
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
                           "--log-file", str(log)], capture_output=True, text=True)  # the README's cron recipe
    assert done.returncode == 0 and done.stderr == "", done.stderr  # -q quiets the terminal, not the file
    events = [json.loads(line) for line in log.read_text().splitlines()]
    names = [e["event"] for e in events if e["event"] in ("started", "planned", "model", "shard", "finished")]
    assert names == ["started", "planned", "model", "shard", "shard", "shard", "finished"]
    by_name = {e["event"]: e for e in events}
    assert by_name["planned"]["rows"] == len(TEXTS) and by_name["planned"]["parts"] == 3 and by_name["planned"]["new"] == 1
    assert by_name["model"]["precision"] == "float32" and by_name["model"]["device"] == "cpu"
    assert (by_name["finished"]["status"], by_name["finished"]["rows"], by_name["finished"]["exit_code"]) == (
        "complete", len(TEXTS), 0)
