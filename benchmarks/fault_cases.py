"""Unattended runs under faults (issue 18), measured: each case run through the CLI as a
scheduler runs it, with its exit status, the lines it printed on stderr and the seconds until
it exited. The store cases put the tests' fault proxy in front of a moto S3 server; the input is
AG News texts (or the tests' sample texts), the model the tests' tiny classifier.

    python benchmarks/fault_cases.py [--rows 400] [--rows-per-shard 50] [--defaults]

`--defaults` keeps batchnlp's default timeouts and budgets (30 s reads, 300 s of retries, 300 s
stall) for the store-that-never-answers case; otherwise the short settings of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpora"
sys.path.insert(0, str(ROOT / "tests"))


def cli(*args: str, env: dict[str, str] | None = None, wrap: list[str] | None = None) -> dict:
    began = time.monotonic()
    command = [*(wrap or []), sys.executable, "-m", "batchnlp", *args]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd="/",
                          timeout=1800)
    lines = done.stderr.strip().splitlines()
    return {"exit": done.returncode, "seconds": round(time.monotonic() - began, 1), "stderr_lines": len(lines),
            "warnings": sum(" WARNING " in line for line in lines),
            "last": lines[-1][:220] if lines else "", "stdout": done.stdout.strip()[:160]}


def write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--rows-per-shard", type=int, default=50)
    parser.add_argument("--defaults", action="store_true")
    parser.add_argument("--only", help="comma-separated case names")
    args = parser.parse_args()

    import pyarrow.parquet as pq
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").disabled = True  # the server's request log

    from fault_proxy import FaultProxy
    from tiny_models import sentiment_classifier

    work = Path(tempfile.mkdtemp(prefix="batchnlp-faults-"))
    model = sentiment_classifier(work / "model")
    texts = pq.read_table(CORPUS / "ag_news_test.parquet", columns=["text"]).column("text").to_pylist()[:args.rows] \
        if (CORPUS / "ag_news_test.parquet").exists() else [f"text number {i}" for i in range(args.rows)]
    corpus = work / "corpus.parquet"
    import pyarrow as pa

    pq.write_table(pa.table({"id": [f"r{i}" for i in range(len(texts))], "text": texts}), corpus)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
           "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    import s3fs

    s3 = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"])
    proxy = FaultProxy(env["AWS_ENDPOINT_URL"])
    count = [0]

    def bucket_job(name: str, read_timeout: float | None = 2, **runtime: object) -> Path:
        count[0] += 1
        s3.mkdir(f"faults-{count[0]}")
        options = {"endpoint_url": proxy.endpoint}
        if read_timeout is not None:
            options["config_kwargs"] = {"read_timeout": read_timeout, "connect_timeout": 2}
        return write(work / f"{name}.yaml", {
            "input": {"path": str(corpus), "text_column": "text", "id_column": "id"},
            "task": {"name": "text-classification"}, "model": {"path": str(model)},
            "runtime": {"dtype": "float32", **runtime},
            "output": {"path": f"s3://faults-{count[0]}/out", "rows_per_shard": args.rows_per_shard,
                       "storage_options": options}})

    results = {}

    def case(name: str, setup, *run_args: str, **kwargs) -> None:
        if args.only and name not in args.only.split(","):
            return
        proxy.clear()
        job = setup()
        results[name] = cli("run", str(job), "-q", *run_args, **kwargs)
        print(json.dumps({"case": name, **results[name]}), flush=True)

    third = f"part-00000-{2:05d}"
    stall_settings = {} if args.defaults else {"read_timeout": 1, "retry_seconds": 10}

    def outage(mode: str, seconds: float):
        def setup() -> Path:
            proxy.add(mode, method="PUT", path=third, seconds=seconds)
            return bucket_job(f"outage-{mode}", retry_seconds=300)
        return setup

    case("no fault (the baseline)", lambda: bucket_job("clean"))
    for mode in ("down", "refuse", "reset", "error"):
        case(f"{mode} for 25 s mid-run", outage(mode, 25))

    def never_answers() -> Path:
        proxy.add("stall", method="PUT", path=third, seconds=3600, everything=False)
        read_timeout = stall_settings.get("read_timeout")
        return bucket_job("never", read_timeout=read_timeout,
                          **{k: v for k, v in stall_settings.items() if k != "read_timeout"})
    case("store never answers (" + ("defaults" if args.defaults else "read_timeout 1 s, retry_seconds 10") + ")",
         never_answers)

    def past_budget() -> Path:
        proxy.add("down", method="PUT", path=third, seconds=120)
        return bucket_job("past", retry_seconds=20)
    case("down 120 s, retry_seconds 20", past_budget)

    def stalled() -> Path:
        proxy.add("stall", method="PUT", path=third, seconds=3600, everything=False)
        return bucket_job("stalled", read_timeout=600, stall_seconds=15)
    case("a call that never returns, stall_seconds 15", stalled)

    def lost_answer() -> Path:
        proxy.add("drop-answer", method="PUT", path=".batchnlp/log/00000000000000000003.json")
        return bucket_job("lost")
    case("a commit's answer lost", lost_answer)

    staging = work / "staging"
    staging.mkdir()

    def tmp_full() -> Path:
        return bucket_job("tmpfull")
    if not args.only or "TMPDIR full" in args.only:
        proxy.clear()
        job = tmp_full()
        script = (f"mount -t tmpfs -o size=64k tmpfs {staging} && head -c 61440 /dev/zero > {staging}/f && "
                  f"TMPDIR={staging} exec \"$0\" \"$@\"")
        results["TMPDIR full"] = cli("run", str(job), "-q", wrap=["unshare", "-rm", "sh", "-c", script])
        print(json.dumps({"case": "TMPDIR full", **results["TMPDIR full"]}), flush=True)
    proxy.stop()
    server.stop()


if __name__ == "__main__":
    main()
