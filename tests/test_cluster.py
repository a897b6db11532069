"""The Ray engine on an existing two-node cluster, on one machine: `ray start --head` and
`ray start --address`, each node with its own temporary folder, inside network, PID and mount
namespaces the test creates, so every byte goes over a loopback of its own and every process of
the cluster ends with the namespace (no `ray stop` that could reach another test's cluster)."""

from __future__ import annotations

import ast
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import TEXTS, invoke, read_output, record, write_job

pytestmark = pytest.mark.ray

TASK = {"name": "text-classification"}
PORT = 6390


def namespaces_allowed() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "-rn", "-p", "-f", "--mount-proc", "true"], capture_output=True).returncode == 0


def on_a_two_node_cluster(tmp_path: Path, commands: list[list[str]]) -> list[dict]:
    """Start the cluster, run each command against it (as the driver), and return for each its
    exit status and output; the namespace's end takes every Ray process along."""
    pytest.importorskip("ray")
    ray = str(Path(sys.executable).with_name("ray"))
    short = Path(tempfile.mkdtemp(prefix="bnr-", dir="/tmp"))  # Ray's socket paths must stay under 108 bytes
    try:
        return _run_on_cluster(tmp_path, short, ray, commands)
    finally:
        shutil.rmtree(short, ignore_errors=True)


def _run_on_cluster(tmp_path: Path, short: Path, ray: str, commands: list[list[str]]) -> list[dict]:
    # The head node has no CPU for actors: every part is written on the other node, and recorded
    # by the driver only once it sees it.
    common = "--node-ip-address=127.0.0.1 --object-store-memory=100000000"
    # (Workers at the driver's priority, as batchnlp's own local cluster has them: on a busy CI
    # machine Ray's default nice 15 starves them.)
    lines = ["set -e", "ip link set lo up", "export RAY_USAGE_STATS_ENABLED=0 RAY_worker_niceness=0",
             f"{ray} start --head --port={PORT} {common} --num-cpus=0 --include-dashboard=false "
             f"--disable-usage-stats --temp-dir={short}/head > {tmp_path}/head.log 2>&1",
             f"{ray} start --address=127.0.0.1:{PORT} {common} --num-cpus=4 --temp-dir={short}/worker "
             f"> {tmp_path}/worker.log 2>&1", "set +e"]
    for i, command in enumerate(commands):
        quoted = " ".join(shlex.quote(part) for part in command)
        lines.append(f"{quoted} > {tmp_path}/out-{i}.txt 2> {tmp_path}/err-{i}.txt; echo $? > {tmp_path}/rc-{i}.txt")
    script = tmp_path / "cluster.sh"
    script.write_text("\n".join(lines) + "\n")
    done = subprocess.run(["unshare", "-rn", "-p", "-f", "--mount-proc", "sh", str(script)], capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, (done.stderr, (tmp_path / "head.log").read_text()[-2000:])
    return [{"rc": int((tmp_path / f"rc-{i}.txt").read_text()), "stdout": (tmp_path / f"out-{i}.txt").read_text(),
             "stderr": (tmp_path / f"err-{i}.txt").read_text()} for i in range(len(commands))]


@pytest.mark.skipif(not namespaces_allowed(), reason="needs unshare with user, network and PID namespaces")
def test_a_job_on_an_existing_two_node_cluster(tmp_path, classifier_dir, reviews_csv):
    """A local output is refused on an external cluster unless the job declares it shared; with
    runtime.shared_storage (both nodes see this machine's disk) the run uses both nodes' CPUs
    and writes what the local engine writes."""
    def job(name: str, shared: bool) -> Path:
        return write_job(tmp_path, input={"path": str(reviews_csv), "text_column": "text", "id_column": "id"},
                         task=TASK, model={"path": str(classifier_dir)},
                         output={"path": str(tmp_path / name), "rows_per_shard": 2},
                         runtime={"shared_storage": shared}, name=f"{name}.yaml")

    address = ["--engine", "ray", "--address", f"127.0.0.1:{PORT}"]
    run = [sys.executable, "-m", "batchnlp", "run"]
    nodes = [sys.executable, "-c", "import ray; ray.init(address='127.0.0.1:%d', logging_level='ERROR'); "
             "print([(n['NodeID'][:12], 'node:__internal_head__' in n['Resources']) for n in ray.nodes()])" % PORT]
    refused, ran, listed = on_a_two_node_cluster(tmp_path, [[*run, str(job("unshared", False)), "-q", *address],
                                                            [*run, str(job("shared", True)), "-q", *address], nodes])
    assert refused["rc"] == 2 and refused["stderr"].count("\n") == 1, refused["stderr"]
    assert "input.path: " in refused["stderr"] and "is a local path" in refused["stderr"]
    assert not (tmp_path / "unshared").exists()
    assert ran["rc"] == 0, ran["stderr"][-3000:]
    assert f"wrote {len(TEXTS)} rows in {len(TEXTS) // 2} parts" in ran["stdout"]
    entry = record(tmp_path / "shared")["runs"][-1]
    assert entry["engine"] == "ray" and entry["ray_address"] == f"127.0.0.1:{PORT}"
    assert entry["cluster_resources"]["CPU"] == 4.0 and entry["actors"] == 2
    cluster = dict(ast.literal_eval(listed["stdout"].strip().splitlines()[-1]))  # node id -> is the head
    assert len(cluster) == 2, listed
    writers = {part["node"] for part in record(tmp_path / "shared")["parts"]}
    assert writers and all(cluster[node] is False for node in writers)  # written on the worker node
    local = job("local", False)
    assert invoke("run", local, "-q").exit_code == 0
    on_cluster, reference = read_output(tmp_path / "shared"), read_output(tmp_path / "local")
    assert on_cluster.column("id").to_pylist() == reference.column("id").to_pylist()
    assert on_cluster.column("label").to_pylist() == reference.column("label").to_pylist()
    assert json.dumps(on_cluster.column("score").to_pylist()) == json.dumps(reference.column("score").to_pylist())
