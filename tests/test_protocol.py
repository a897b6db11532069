"""The task protocol's shared pieces, held to values computed by hand: agreement between two sets
of annotations, and the separate tokenizers of the annotator's threads."""

from __future__ import annotations

import pytest

from batchnlp.model import source
from batchnlp.decide import plan_job
from batchnlp.job import describe_job
from batchnlp.session import open_session
from batchnlp.spec import load_spec

from helpers import write_job


def job_for(tmp_path, reviews_csv, model_dir, task):
    job = write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text"}, task=task,
                    model={"path": str(model_dir)})
    spec = load_spec(job)
    return describe_job(spec, plan_job(spec), source.resolve(spec.model))


def test_label_agreement_is_the_share_of_rows_that_agree(tmp_path, reviews_csv, classifier_dir):
    task = job_for(tmp_path, reviews_csv, classifier_dir, {"name": "text-classification"}).task
    ours = [{"label": "a", "error": None}, {"label": "b", "error": None}, {"label": "a", "error": None},
            {"label": None, "error": "empty text"}]
    reference = [{"label": "a", "error": None}, {"label": "c", "error": None}, {"label": "c", "error": None},
                 {"label": "x", "error": None}]
    assert task.agreement(ours, reference) == pytest.approx(1 / 3)  # the row with an error is left out
    assert task.agreement(ours[:1], reference[:1]) == 1.0


def test_embedding_agreement_is_the_mean_cosine(tmp_path, reviews_csv, encoder_dir):
    task = job_for(tmp_path, reviews_csv, encoder_dir, {"name": "embeddings"}).task
    ours = [{"embedding": [1.0, 0.0]}, {"embedding": [0.0, 2.0]}]
    reference = [{"embedding": [3.0, 0.0]}, {"embedding": [1.0, 0.0]}]
    assert task.agreement(ours, reference) == pytest.approx(0.5)  # cosines 1 and 0


def test_each_stage_of_a_seq2seq_annotator_has_its_own_tokenizer(tmp_path, reviews_csv, marian_dir):
    """Fast tokenizers fail ("Already borrowed") when two threads use one at once: the reader
    (encode), the model (generate's batch_decode) and the writer (decode) each need their own."""
    session = open_session(job_for(tmp_path, reviews_csv, marian_dir, {"name": "translation", "max_new_tokens": 3}))
    annotator = session.stages
    tokenizers = [annotator.task.tokenizer, annotator.encoder.tokenizer, annotator.decoder.tokenizer]
    assert len({id(t) for t in tokenizers}) == 3
    assert all(t.get_vocab() == tokenizers[0].get_vocab() for t in tokenizers)  # copies, not other tokenizers
