"""Fixtures: tiny random models with a real WordPiece tokenizer, saved to disk and loaded through
the same code path as a user's model; helpers to write inputs and job files."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import yaml

import tiny_models

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

@pytest.fixture(scope="session")
def classifier_dir(tmp_path_factory) -> Path:
    return tiny_models.sentiment_classifier(tmp_path_factory.mktemp("classifier"))


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory) -> Path:
    return tiny_models.encoder(tmp_path_factory.mktemp("encoder"))


@pytest.fixture(scope="session")
def nli_dir(tmp_path_factory) -> Path:
    return tiny_models.nli_classifier(tmp_path_factory.mktemp("nli"))


@pytest.fixture(scope="session")
def mlm_dir(tmp_path_factory) -> Path:
    return tiny_models.masked_lm(tmp_path_factory.mktemp("mlm"))


@pytest.fixture(scope="session")
def ner_dir(tmp_path_factory) -> Path:
    return tiny_models.token_classifier(tmp_path_factory.mktemp("ner"))


@pytest.fixture(scope="session")
def qa_dir(tmp_path_factory) -> Path:
    return tiny_models.span_picking_qa(tmp_path_factory.mktemp("qa"))


@pytest.fixture(scope="session")
def causal_dir(tmp_path_factory) -> Path:
    return tiny_models.causal_lm(tmp_path_factory.mktemp("causal"))


@pytest.fixture(scope="session")
def bart_dir(tmp_path_factory) -> Path:
    return tiny_models.bart(tmp_path_factory.mktemp("bart"))


@pytest.fixture(scope="session")
def marian_dir(tmp_path_factory) -> Path:
    return tiny_models.marian(tmp_path_factory.mktemp("marian"))


TEXTS = [
    "great battery, would buy again",
    "terrible. it broke after a week and the refund never came",
    "ok",
    "the story was slow but the ending was excellent and the music was great, i would recommend it to "
    "anyone who likes a good film with a long plot and great acting",
    "bad fit",
    "love it",
    "the price is very expensive for the quality of the sound",
    "fine",
    "never again",
    "the screen is fast and the coffee machine works, the shoes fit and the movie was good",
    "awful acting",
    "best product",
]


@pytest.fixture
def reviews_csv(tmp_path) -> Path:
    import csv

    path = tmp_path / "reviews.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "stars"])
        for i, text in enumerate(TEXTS):
            writer.writerow([f"r{i}", text, i % 5 + 1])
    return path


def write_job(directory: Path, *, input: dict, task: dict, model: dict, output: dict | None = None,
              runtime: dict | None = None, name: str = "job.yaml") -> Path:
    spec = {"input": input, "task": task, "model": model,
            "output": output or {"path": str(directory / "out"), "rows_per_shard": 4},
            # float32 unless a test says otherwise: most tests compare with a float32 reference,
            # and `auto` may pick bfloat16 on this CPU.
            "runtime": {"dtype": "float32", **(runtime or {})}}
    path = directory / name
    path.write_text(yaml.safe_dump(spec))
    return path


def read_output(directory: Path):
    """The whole annotated output, parts in order (the manifest and lock file are skipped)."""
    return ds.dataset(str(directory), format="parquet").to_table()
