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
          "marian": tiny_models.marian, "grouped": tiny_models.grouped_causal_lm}


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """The converted-model cache of the whole session: never the user's ~/.cache, shared by the
    tests (and the processes they start) so that a GGUF is converted once per session."""
    folder = tmp_path_factory.mktemp("model-cache")
    os.environ["BATCHNLP_CACHE"] = str(folder)
    return folder


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


class S3:
    """A real S3-compatible server (moto's, over HTTP on a free local port) and a client for it."""

    def __init__(self, endpoint: str):
        import s3fs

        self.endpoint = endpoint
        self.fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing")
        self.count = 0

    def bucket(self) -> str:
        """A new empty bucket for one test."""
        self.count += 1
        name = f"bucket-{os.getpid()}-{self.count}"
        self.fs.mkdir(name)
        return name

    def put_texts(self, bucket: str, key: str, fmt: str, texts=TEXTS, prefix: str = "r") -> None:
        """An input file of `texts` with ids prefix0, prefix1, ... as Parquet, CSV or JSONL."""
        import json

        import pyarrow as pa
        import pyarrow.parquet as pq

        ids = [f"{prefix}{i}" for i in range(len(texts))]
        with self.fs.open(f"{bucket}/{key}", "wb") as f:
            if fmt == "parquet":
                pq.write_table(pa.table({"id": ids, "text": texts}), f)
            elif fmt == "csv":
                f.write(("id,text\n" + "".join(f'{i},"{t}"\n' for i, t in zip(ids, texts))).encode())
            else:
                f.write("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids, texts)).encode())

    def read_output(self, url: str):
        """The parts under an output prefix, read back with pyarrow's own S3 client, as a user would."""
        import pyarrow.dataset as ds
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(url.replace("s3://", "s3://testing:testing@") +
                                                  f"?endpoint_override={self.endpoint.split('//')[1]}&scheme=http")
        return ds.dataset(path, format="parquet", filesystem=fs).to_table()

    def options(self) -> dict[str, str]:
        """Storage options naming this server, as a job would give them."""
        return {"endpoint_url": self.endpoint, "key": "testing", "secret": "testing"}


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server, started once, reached as users reach S3: the endpoint and credentials come
    from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), which subprocesses inherit."""
    pytest.importorskip("s3fs", reason="needs the s3 extra: pip install -e '.[s3]'")
    server_module = pytest.importorskip("moto.server", reason="needs moto[server] (the test extra)")
    import logging

    logging.getLogger("werkzeug").disabled = True  # the server's request log is not the CLI's output
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield S3(endpoint)
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3(s3_server):
    return s3_server
