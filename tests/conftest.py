"""Fixtures: tiny random models with real tokenizers, saved to disk and loaded through the same
code path as a user's model; a small reviews CSV. Helpers that tests import live in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import tiny_models
from helpers import TEXTS

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The tiny models the tests use, by fixture name: `<name>_dir` is a session-wide directory holding
# the model that `tiny_models.<builder>` saves there, built on first use.
MODELS = {"classifier": tiny_models.sentiment_classifier, "encoder": tiny_models.encoder,
          "nli": tiny_models.nli_classifier, "mlm": tiny_models.masked_lm, "ner": tiny_models.token_classifier,
          "qa": tiny_models.span_picking_qa, "causal": tiny_models.causal_lm, "bart": tiny_models.bart,
          "marian": tiny_models.marian}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The one model factory: tiny_model("classifier") -> the directory of that model."""
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = MODELS[name](tmp_path_factory.mktemp(name))
        return built[name]

    return get


def _model_fixture(name: str):
    @pytest.fixture(scope="session")
    def directory(tiny_model) -> Path:
        return tiny_model(name)

    return directory


for _name in MODELS:
    globals()[f"{_name}_dir"] = _model_fixture(_name)


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
