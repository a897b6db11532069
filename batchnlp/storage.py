"""Where inputs are read and outputs written: a local path, or a URL into object storage
(s3://, gs://, az://, hf://) reached through fsspec, the client library that pandas, datasets
and pyarrow users already configure. Credentials and endpoints come the usual way (the
environment, e.g. AWS_PROFILE / AWS_ENDPOINT_URL, or fsspec's config), or from a job's
`storage_options`, which are handed to fsspec and never written to the output's record.

`file://` URLs are plain local paths (the spec strips the scheme)."""

from __future__ import annotations

import re
from typing import Any

from batchnlp.errors import SpecError, UserError

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
#: The object stores batchnlp is built and documented for, with the fsspec package each needs.
STORES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
          "abfss": "adlfs", "hf": "huggingface_hub"}
#: Stores that can be read but not written (a hub repo changes by commits, not by objects).
READ_ONLY = {"hf"}


def scheme(path: str) -> str | None:
    match = _SCHEME.match(path)
    return match.group(1).lower() if match else None


def is_url(path: str) -> bool:
    """True for object storage, false for a local path (file:// URLs are stripped by the spec)."""
    return scheme(path) not in (None, "file")


def check_url(key: str, url: str, write: bool = False) -> None:
    """Refuse, naming the key, a scheme batchnlp does not support or a store it cannot write."""
    name = scheme(url)
    if name is None or name == "file":
        return
    if name not in STORES:
        raise SpecError(key, f"{url!r}: unsupported URL scheme {name}://; use a local path or one of "
                             f"{', '.join(s + '://' for s in ('s3', 'gs', 'az', 'hf'))}")
    if write and name in READ_ONLY:
        raise SpecError(key, f"{url!r}: {name}:// can be read, not written; write the output to a local path or a "
                             "bucket (s3://, gs://, az://)")


def filesystem(url: str, options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """(the fsspec filesystem, the path within it) for a URL; a missing client package or a bad
    option is one line naming what to install or fix."""
    import fsspec.core

    try:
        fs, path = fsspec.core.url_to_fs(url, **(options or {}))
    except ImportError:
        package = STORES.get(scheme(url) or "", "an fsspec implementation")
        raise UserError(f"{url}: reading and writing {scheme(url)}:// needs the {package} package: pip install "
                        f"{package} (or batchnlp[s3] for s3://)") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"{url}: the storage options were refused ({e}); check storage_options in the job") from None
    return fs, path


def fresh_listing(fs: Any, path: str | None = None) -> None:
    """Forget what this process listed under `path`: fsspec shares one client per set of options
    in a process and caches its listings, and a nightly job run from a long-lived process (a
    notebook, Airflow) must see today's files. Called before each listing, not per client."""
    fs.invalidate_cache(path.rstrip("/") if path else None)


#: The packages whose exceptions are a store's answer (refused, unreachable), not a bug of ours.
CLIENT_PACKAGES = ("botocore", "aiobotocore", "aiohttp", "google", "azure")


def is_store_error(error: BaseException) -> bool:
    """An error the store or its client raised (s3fs turns most into OSError; botocore raises
    NoCredentialsError, EndpointConnectionError, ... of its own)."""
    return isinstance(error, OSError) or type(error).__module__.split(".")[0] in CLIENT_PACKAGES


def describe_error(url: str, error: Exception) -> str:
    """One line for a failed object-store call: a missing bucket, refused credentials, no
    endpoint — the text of the store's own message kept after it."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    lowered = text.lower()
    if "bucket" in lowered and ("not exist" in lowered or "nosuchbucket" in lowered):
        hint = "the bucket does not exist (or is not visible with these credentials)"
    elif isinstance(error, PermissionError) or any(
            s in lowered for s in ("accessdenied", "access denied", "forbidden", "invalidaccesskeyid", "access key",
                                   "signaturedoesnotmatch", "credentials", "403")):
        hint = "access was refused: check the credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID, storage_options)"
    elif any(s in lowered for s in ("could not connect", "connect", "name or service", "timed out")):
        hint = "the store cannot be reached: check the endpoint (AWS_ENDPOINT_URL, storage_options.endpoint_url)"
    else:
        hint = "the store refused the request"
    return f"{url}: {hint} ({type(error).__name__}: {text})"


def open_file(name: str, options: dict[str, Any] | None = None) -> Any:
    """A local path or an object's URL, opened for reading bytes (FileNotFoundError if absent)."""
    if not is_url(name):
        return open(name, "rb")
    fs, path = filesystem(name, options)
    try:
        return fs.open(path, "rb")
    except FileNotFoundError:
        raise
    except Exception as e:
        if not is_store_error(e):
            raise
        raise UserError(describe_error(name, e)) from None


def bucket_exists(fs: Any, path: str) -> bool:
    """Whether the bucket of `path` exists, asked the way that prefix-scoped permissions allow: a
    one-key listing under the prefix (S3 refuses HeadBucket to a policy that only grants a
    prefix). Other errors (credentials, endpoint) propagate."""
    bucket, _, prefix = path.partition("/")
    try:
        if hasattr(fs, "call_s3"):
            fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
        else:
            fs.info(bucket)
    except FileNotFoundError:
        return False
    return True
