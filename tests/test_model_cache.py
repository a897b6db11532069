"""The converted-model cache's promises without a real conversion (test_demo converts the real
SmolLM2 GGUF once and checks the second run maps it): a damaged or unfinished entry is never
used but rebuilt, a run killed mid-write leaves nothing that a later run would load, two runs
converting at once leave one complete entry, and an unwritable cache only costs the speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from batchnlp.model import cache
from batchnlp.model.source import ResolvedModel


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHNLP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def gguf(tmp_path) -> ResolvedModel:
    """A model directory whose GGUF file is only bytes: the conversion is replaced by `builds`."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "m.gguf").write_bytes(b"GGUF" + os.urandom(64))
    return ResolvedModel(folder, {"source": "path"}, "m.gguf")


@pytest.fixture
def builds(monkeypatch) -> list[Path]:
    """Conversions made, by folder; each writes a 1 MiB 'weights' file and a config."""
    made: list[Path] = []

    def fake(resolved, model_class, trust, into: Path) -> None:
        made.append(into)
        (into / "model.safetensors").write_bytes(b"w" * (1 << 20))
        (into / "config.json").write_text(json.dumps({"model_class": model_class}))

    monkeypatch.setattr(cache, "_convert", fake)
    return made


def test_converted_once_then_found(fresh, gguf, builds):
    model, info = cache.converted(gguf, "AutoModelForCausalLM", False)
    assert info["hit"] is False and len(builds) == 1
    assert model.gguf_file is None and (model.directory / "model.safetensors").stat().st_size == 1 << 20
    assert model.identity is gguf.identity  # the record pins the source file, not the copy
    again, info = cache.converted(gguf, "AutoModelForCausalLM", False)
    assert info["hit"] is True and again.directory == model.directory and len(builds) == 1
    # Another model class is another entry; a model with nothing to convert bypasses the cache.
    cache.converted(gguf, "AutoModelForSequenceClassification", False)
    assert len(builds) == 2
    plain = ResolvedModel(gguf.directory, {}, None)
    assert cache.converted(plain, "AutoModel", False) == (plain, None)


@pytest.mark.parametrize("damage", ["truncate", "edit", "delete", "no-entry-json", "garbled-entry-json"])
def test_a_damaged_entry_is_rebuilt_not_loaded(fresh, gguf, builds, damage):
    model, _ = cache.converted(gguf, "AutoModelForCausalLM", False)
    weights = model.directory / "model.safetensors"
    if damage == "truncate":
        os.truncate(weights, 1000)
    elif damage == "edit":  # same size, new bytes, new mtime: the hash tells
        weights.write_bytes(b"x" * (1 << 20))
    elif damage == "delete":
        weights.unlink()
    elif damage == "no-entry-json":
        (model.directory / cache.ENTRY).unlink()
    else:
        (model.directory / cache.ENTRY).write_text("{")
    assert cache.check_entry(model.directory) is not None
    again, info = cache.converted(gguf, "AutoModelForCausalLM", False)
    assert info["hit"] is False and len(builds) == 2
    assert cache.check_entry(again.directory) is None
    assert weights.read_bytes() == b"w" * (1 << 20)


def test_a_touched_file_is_hashed_again_and_kept(fresh, gguf, builds):
    model, _ = cache.converted(gguf, "AutoModelForCausalLM", False)
    os.utime(model.directory / "model.safetensors", ns=(1, 1))
    assert cache.check_entry(model.directory) is None


def test_a_run_killed_mid_write_leaves_no_entry(fresh, gguf, tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from batchnlp.model import cache
        from batchnlp.model.source import ResolvedModel

        def dies(resolved, model_class, trust, into):
            (into / "model.safetensors").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)

        cache._convert = dies
        cache.converted(ResolvedModel(Path({str(gguf.directory)!r}), {{}}, "m.gguf"), "AutoModelForCausalLM", False)
    """)
    killed = subprocess.run([sys.executable, "-c", script], env={**os.environ, "BATCHNLP_CACHE": str(fresh)})
    assert killed.returncode == -9
    folder = fresh / "converted"
    assert [p.name for p in folder.iterdir() if not p.name.startswith(".")] == []  # nothing loadable
    assert any(".tmp-" in p.name for p in folder.iterdir())
    state = cache.entries()
    assert [e["problem"] for e in state] == ["unfinished (temporary)"]


def test_the_next_run_sweeps_a_dead_runs_leftovers(fresh, gguf, builds):
    key = cache.entry_key(cache.file_sha256(gguf.directory / "m.gguf"), "AutoModelForCausalLM")
    folder = fresh / "converted"
    folder.mkdir(parents=True)
    import socket

    dead = folder / f".{key}.tmp-{socket.gethostname()}-999999999-abcd1234"
    dead.mkdir()
    model, info = cache.converted(gguf, "AutoModelForCausalLM", False)
    assert not dead.exists() and info["hit"] is False and cache.check_entry(model.directory) is None


def test_a_competitor_publishing_first_wins_and_ours_is_dropped(fresh, gguf, builds, monkeypatch):
    """Two runs converting at once: the second to rename finds the first's complete entry and
    uses it; no temporary folder remains."""
    fake = cache._convert

    def racing(resolved, model_class, trust, into):
        fake(resolved, model_class, trust, into)
        if len(builds) == 1:  # while ours is unpublished, a competitor converts and publishes
            cache.converted(resolved, model_class, trust)

    monkeypatch.setattr(cache, "_convert", racing)
    model, info = cache.converted(gguf, "AutoModelForCausalLM", False)
    assert len(builds) == 2 and cache.check_entry(model.directory) is None
    assert [p.name for p in (fresh / "converted").iterdir()] == [model.directory.name]


def test_concurrent_processes_leave_one_complete_entry(fresh, gguf):
    script = textwrap.dedent(f"""
        from pathlib import Path
        from batchnlp.model import cache
        from batchnlp.model.source import ResolvedModel

        def build(resolved, model_class, trust, into):
            (into / "model.safetensors").write_bytes(b"w" * (32 << 20))

        cache._convert = build
        model, info = cache.converted(ResolvedModel(Path({str(gguf.directory)!r}), {{}}, "m.gguf"),
                                      "AutoModelForCausalLM", False)
        print(model.directory)
    """)
    env = {**os.environ, "BATCHNLP_CACHE": str(fresh)}
    runs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
            for _ in range(3)]
    outs = [r.communicate(timeout=120)[0].strip() for r in runs]
    assert [r.returncode for r in runs] == [0, 0, 0]
    assert len(set(outs)) == 1 and cache.check_entry(Path(outs[0])) is None
    assert [p.name for p in (fresh / "converted").iterdir()] == [Path(outs[0]).name]


def test_an_unwritable_cache_falls_back_to_the_source(tmp_path, gguf, builds, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("BATCHNLP_CACHE", str(blocker))
    model, info = cache.converted(gguf, "AutoModelForCausalLM", False)
    assert model is gguf and info["hit"] is False and info["stored"] is False
    assert "cannot write" in caplog.text and "BATCHNLP_CACHE" in caplog.text


def test_a_new_library_version_replaces_the_old_entry_once_unused(fresh, gguf, builds, monkeypatch):
    """Two environments sharing one cache folder (other transformers versions) each keep their
    entry; an entry no run has used for KEEP_UNUSED_DAYS goes when a newer one is built."""
    real = cache.converters
    old, _ = cache.converted(gguf, "AutoModelForCausalLM", False)
    monkeypatch.setattr(cache, "converters", lambda: {**dict.fromkeys(cache.CONVERTERS), "transformers": "99.0"})
    new, info = cache.converted(gguf, "AutoModelForCausalLM", False)
    assert info["hit"] is False and new.directory != old.directory
    assert old.directory.exists() and cache.check_entry(new.directory) is None  # used just now: kept
    monkeypatch.setattr(cache, "converters", real)
    assert cache.converted(gguf, "AutoModelForCausalLM", False)[1]["hit"] is True  # the first environment's
    assert len(builds) == 2
    month_ago = (old.directory / cache.LAST_USED).stat().st_mtime - 30 * 86400
    os.utime(old.directory / cache.LAST_USED, (month_ago, month_ago))
    monkeypatch.setattr(cache, "converters", lambda: {**dict.fromkeys(cache.CONVERTERS), "transformers": "100.0"})
    newest, _ = cache.converted(gguf, "AutoModelForCausalLM", False)
    assert not old.directory.exists() and new.directory.exists() and newest.directory.exists()


def test_an_entry_altered_in_place_keeping_size_and_mtime_is_rebuilt_not_loaded(fresh, gguf, builds):
    """Bytes changed, size and mtime put back: the first use by a process hashes the entry's
    files, so it is rebuilt rather than loaded, and `batchnlp cache` does not call it sound."""
    from click.testing import CliRunner

    from batchnlp.cli import main

    model, _ = cache.converted(gguf, "AutoModelForCausalLM", False)
    weights = model.directory / "model.safetensors"
    stat = weights.stat()
    with open(weights, "r+b") as f:
        f.seek(1000)
        f.write(b"X")
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    listed = CliRunner().invoke(main, ["cache"])
    assert "model.safetensors has changed since it was written: rebuilt when next needed" in listed.output
    cache._VERIFIED.clear()  # a later process
    again, info = cache.converted(gguf, "AutoModelForCausalLM", False)
    assert info["hit"] is False and len(builds) == 2
    assert weights.read_bytes() == b"w" * (1 << 20)


def test_file_hashes_are_remembered_by_size_and_mtime(fresh, tmp_path, monkeypatch):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 1000)
    first = cache.file_sha256(path)
    calls = []
    monkeypatch.setattr(cache, "sha256", lambda p: calls.append(p) or "recomputed")
    assert cache.file_sha256(path) == first and calls == []
    path.write_bytes(b"b" * 1000)  # same size, new mtime: hashed again
    os.utime(path, ns=(10**18, 10**18))
    assert cache.file_sha256(path) == "recomputed" and len(calls) == 1


def test_the_cache_command_lists_and_clears(fresh, gguf, builds):
    from click.testing import CliRunner

    from batchnlp.cli import main

    model, _ = cache.converted(gguf, "AutoModelForCausalLM", False)
    listed = CliRunner().invoke(main, ["cache"])
    assert listed.exit_code == 0 and str(model.directory) in listed.output and "1 entry, 1 MiB" in listed.output
    cleared = CliRunner().invoke(main, ["cache", "--clear"])
    assert cleared.exit_code == 0 and "removed 1 entry" in cleared.output and not model.directory.exists()
