"""The converted-model cache: a checkpoint that transformers must convert on every load (a GGUF file
is dequantised tensor by tensor, ~20-60 s for SmolLM2-135M) is converted once and kept as a plain
model directory (safetensors, config, tokenizer), which later runs map in well under a second.

Where: `BATCHNLP_CACHE`, else `$XDG_CACHE_HOME/batchnlp`, else `~/.cache/batchnlp`; entries live in
`converted/`. An entry is keyed by the source file's sha256, the model class and the versions of
the libraries that converted it, and holds `entry.json` (written last) with every file's size,
mtime and sha256. It is built in a private temporary folder and published by one rename, so a run
killed mid-write leaves no entry, and two runs converting at once both end up using one complete
entry. An entry whose files do not match its `entry.json` (truncated, edited, half deleted) is
never loaded: it is removed and rebuilt. Size and mtime are checked on every use; the bytes
themselves (sha256, ~0.35 s for SmolLM2's 540 MB) the first time a process uses the entry, so an
edit that kept both is caught too. A new entry for the same source file replaces the entries of
other library versions that no run has used for `KEEP_UNUSED_DAYS` (each use touches the entry's
`last_used`): two environments sharing one cache folder keep one entry each.

Also here: sha256 of large files remembered by path, size and mtime (as input files are), so the
weights' hash that pins the model in the output's record is not recomputed on every run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from batchnlp import durable
from batchnlp.checksums import sha256
from batchnlp.log import event, no_load_report
from batchnlp.model.resolved import ResolvedModel


FORMAT = 1
ENTRY = "entry.json"
#: Touched by each use of an entry (not one of its recorded files).
LAST_USED = "last_used"
#: Entries of other library versions for the same source file go once unused this long.
KEEP_UNUSED_DAYS = 7
#: Entries whose bytes this process has hashed and found as recorded.
_VERIFIED: set[str] = set()
#: The libraries whose versions decide the converted bytes.
CONVERTERS = ("transformers", "gguf", "torch", "safetensors", "tokenizers")


def root() -> Path:
    if os.environ.get("BATCHNLP_CACHE"):
        return Path(os.environ["BATCHNLP_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "batchnlp"


def needs_converting(resolved: ResolvedModel) -> bool:
    return resolved.gguf_file is not None


def converted(resolved: ResolvedModel, model_class: str, trust_remote_code: bool) -> tuple[ResolvedModel, dict | None]:
    """The model to load: the cached conversion of `resolved` (built now on a miss), or `resolved`
    itself when it needs no converting. The second item goes to the run's record: hit or miss,
    the seconds it took, the entry's path (None when nothing needed converting)."""
    if not needs_converting(resolved):
        return resolved, None
    began = time.perf_counter()
    source = resolved.directory / resolved.gguf_file
    source_hash = resolved.identity.get("weights_sha256", {}).get(resolved.gguf_file) or file_sha256(source)
    key = entry_key(source_hash, model_class)
    folder = root() / "converted"
    entry = folder / key
    problem = check_entry(entry, hashed=str(entry) not in _VERIFIED)
    if problem is None:
        _VERIFIED.add(str(entry))
        _touch(entry)
        return _use(resolved, entry), _info(True, began, entry)
    if entry.exists():
        event("model_cache", f"model cache: rebuilding {entry} ({problem})", level=logging.WARNING,
              entry=str(entry), problem=problem)
        _discard(entry)
    event("model_cache", f"converting {source.name} once into the model cache {folder} (later runs load it "
          "in about a second)", entry=str(entry), terminal=False)

    def build(into: Path) -> None:
        _convert(resolved, model_class, trust_remote_code, into)

    try:
        published = store(entry, build, source={"file": resolved.gguf_file, "sha256": source_hash,
                                                "path": str(source)}, model_class=model_class)
    except OSError as e:  # unwritable or full cache: run from the GGUF, as before the cache
        event("model_cache", f"model cache: cannot write {folder} ({e.strerror or e}); loading {source.name} "
              "directly (set BATCHNLP_CACHE to a writable folder)", level=logging.WARNING)
        info = _info(False, began, None)
        info["stored"] = False
        return resolved, info
    return _use(resolved, published), _info(False, began, published)


def entry_key(source_hash: str, model_class: str) -> str:
    """<source sha256[:16]>-<hash of what else decides the converted bytes>[:16]."""
    detail = json.dumps({"format": FORMAT, "model_class": model_class, "dtype": "float32", "libraries": converters()},
                        sort_keys=True)
    return f"{source_hash[:16]}-{hashlib.sha256(detail.encode()).hexdigest()[:16]}"


def check_entry(entry: Path, hashed: bool = False) -> str | None:
    """None if `entry` is complete and its files are the bytes it recorded, else what is wrong.
    A file whose size and mtime match is trusted unless `hashed` (every file's sha256 is then
    compared); one whose mtime moved is hashed again."""
    try:
        record = json.loads((entry / ENTRY).read_text())
    except FileNotFoundError:
        return "no entry.json: never finished" if entry.exists() else "missing"
    except (OSError, ValueError) as e:
        return f"unreadable entry.json ({e})"
    if record.get("format") != FORMAT or not isinstance(record.get("files"), dict) or not record["files"]:
        return "entry.json of another format"
    for name, meta in record["files"].items():
        path = entry / name
        try:
            stat = path.stat()
        except OSError:
            return f"{name} is missing"
        if stat.st_size != meta["size"]:
            return f"{name} is {stat.st_size} bytes, {meta['size']} expected (truncated or replaced)"
        if (hashed or stat.st_mtime_ns != meta["mtime_ns"]) and sha256(path) != meta["sha256"]:
            return f"{name} has changed since it was written"
    return None


def _touch(entry: Path) -> None:
    """Mark the entry used now (an unwritable cache only loses the mark)."""
    try:
        (entry / LAST_USED).touch()
    except OSError:
        pass


def last_used(entry: Path) -> float:
    """When a run last used the entry (its creation, if never)."""
    for path in (entry / LAST_USED, entry / ENTRY, entry):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return 0.0


def store(entry: Path, build: Callable[[Path], None], **record: Any) -> Path:
    """Build an entry in a private temporary folder beside `entry`, record its files, and publish
    it with one rename. If another process published the same entry meanwhile, keep theirs."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    _sweep(entry)
    tmp = entry.parent / f".{entry.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        build(tmp)
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            stat = path.stat()
            files[str(path.relative_to(tmp))] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                                 "sha256": sha256(path)}
        meta = {"format": FORMAT, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "libraries": converters(), **record, "files": files}
        durable.write_bytes(tmp / ENTRY, json.dumps(meta, indent=1).encode())  # durable before the rename
        try:
            os.rename(tmp, entry)
        except OSError:
            if check_entry(entry) is not None:  # not a finished competitor: a real failure
                raise
            _discard(tmp)  # another run published the same conversion first
        else:
            durable.fsync_dir(entry.parent)
            _VERIFIED.add(str(entry))  # its bytes were hashed as they were recorded
            _replace_older(entry)
    except BaseException:
        _discard(tmp)
        raise
    _touch(entry)
    return entry


def derived(kind: str, directory: Path, versions: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """A folder another engine builds from the model in `directory` (a conversion, an export and
    its quantisation: the bench's peers), kept in the cache's `kind/` folder under a key of the
    weights' sha256 and `versions`: from the cache, or built now and published as a conversion is
    (`store`)."""
    weights = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    detail = json.dumps({"weights": [file_sha256(p) for p in weights], **versions}, sort_keys=True)
    entry = root() / kind / hashlib.sha256(detail.encode()).hexdigest()[:32]
    if check_entry(entry) is None:
        return entry
    return store(entry, build, source={"directory": str(directory)})


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered by its absolute path, size and mtime in the cache folder."""
    path = Path(path).resolve()
    stat = path.stat()
    memo = root() / "hashes" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json"
    try:
        known = json.loads(memo.read_text())
        if known["size"] == stat.st_size and known["mtime_ns"] == stat.st_mtime_ns:
            return known["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = sha256(path)
    # (an unwritable cache only costs the hash next time)
    keep_json(memo, {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest})
    return digest


def keep_json(path: Path, data: Any) -> bool:
    """Write a small record of the cache folder (a remembered hash, a precision calibration)
    atomically, under a name private to this process first; False where the folder cannot be
    written (what it remembers is then worked out again next time)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:6]}")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
        return True
    except OSError:
        return False


def entries() -> list[dict[str, Any]]:
    """Every entry in the cache: path, size in bytes, source file, what is wrong with it (its
    bytes hashed: `batchnlp cache` calls an entry sound only if they are what it recorded)."""
    folder = root() / "converted"
    out = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else ():
        if not entry.is_dir():
            continue
        size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
        try:
            source = json.loads((entry / ENTRY).read_text()).get("source", {}).get("file")
        except (OSError, ValueError):
            source = None
        problem = "unfinished (temporary)" if entry.name.startswith(".") else check_entry(entry, hashed=True)
        out.append({"entry": str(entry), "bytes": size, "source": source, "problem": problem})
    return out


def _convert(resolved: ResolvedModel, model_class: str, trust_remote_code: bool, into: Path) -> None:
    """Load the checkpoint the slow way once (float32, as transformers dequantises it) and save
    it as a plain directory: config without its quantization section, tokenizer, safetensors."""
    import torch
    import transformers

    kwargs = {"trust_remote_code": trust_remote_code, "gguf_file": resolved.gguf_file}
    tokenizer = transformers.AutoTokenizer.from_pretrained(resolved.directory, **kwargs)
    with no_load_report():
        model = getattr(transformers, model_class).from_pretrained(resolved.directory, dtype=torch.float32,
                                                                   **kwargs)
    # A GGUF-loaded model refuses save_pretrained while it carries the GGUF quantizer; its weights
    # are already plain float32 tensors.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(into, safe_serialization=True)
    tokenizer.save_pretrained(into)


def _use(resolved: ResolvedModel, entry: Path) -> ResolvedModel:
    # The identity (what the output's record pins) stays the source file's.
    return dataclasses.replace(resolved, directory=entry, gguf_file=None)


def _info(hit: bool, began: float, entry: Path | None) -> dict[str, Any]:
    return {"hit": hit, "seconds": round(time.perf_counter() - began, 3), "entry": str(entry) if entry else None}


def _sweep(entry: Path) -> None:
    """Remove temporary folders of this entry left by dead processes on this host (killed mid-write)."""
    host = socket.gethostname()
    for tmp in entry.parent.glob(f".{entry.name}.tmp-*"):
        rest = tmp.name.removeprefix(f".{entry.name}.tmp-")
        tmp_host, _, pid = rest.rpartition("-")[0].rpartition("-")
        if tmp_host == host and pid.isdigit() and not _alive(int(pid)):
            _discard(tmp)
    for gone in entry.parent.glob(".*.gone-*"):  # a removal cut short
        shutil.rmtree(gone, ignore_errors=True)


def _replace_older(entry: Path) -> None:
    """Entries for the same source file made by other library versions: the new one replaces those
    that no run used for KEEP_UNUSED_DAYS (another environment that shares this cache folder keeps
    the entry it uses, instead of each replacing the other's on every run)."""
    prefix = entry.name.split("-")[0]
    stale = time.time() - KEEP_UNUSED_DAYS * 86400
    for other in entry.parent.glob(f"{prefix}-*"):
        if other != entry and other.is_dir() and last_used(other) < stale:
            _discard(other)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _discard(path: Path) -> None:
    # Renamed aside first so that no reader ever sees a half-deleted entry under its real name.
    aside = path.with_name(f".{path.name.lstrip('.')}.gone-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def converters() -> dict[str, str | None]:
    """The versions of the libraries whose code decides the converted bytes."""
    return {name: _version(name) for name in CONVERTERS}


def _version(name: str) -> str | None:
    # session.library_version's twin: session loads models through this module, and the import
    # graph has no cycle (tests/test_structure.py)
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
