"""Where inputs are read and outputs written: a local path, or a URL into object storage
(s3://, gs://, az://, hf://) reached through fsspec, the client library that pandas, datasets
and pyarrow users already configure. Credentials and endpoints come the usual way (the
environment, e.g. AWS_PROFILE / AWS_ENDPOINT_URL, or fsspec's config), or from a job's
`storage_options`, which are handed to fsspec and never written to the output's record.

`file://` URLs are plain local paths (the spec strips the scheme).

An outage is ridden out, not fatal: every S3 request has a connect and a read timeout (10 s and
30 s unless `storage_options.config_kwargs` says otherwise), and a request that fails for a
transient reason (refused, reset or timed-out connections, 5xx, throttling) is retried with
exponential backoff and full jitter until the store has been failing for `runtime.retry_seconds`;
each retry is a log line. The budget counts from the first try, and no try outlives it (a store
that takes requests and never answers would otherwise spend the client's own timeouts and
retries on each: 370 s for a budget of 30); once a request has given up, the client's other
requests (recording the run's end, releasing the lease) get `DOWN_GRACE_S` each. One chokepoint does it: s3fs sends every request (listings, reads,
uploads, the log's conditional commits, the lease) through `_call_s3`, which `RetryingS3` wraps.
A retried conditional write can find its own first attempt applied (the answer was lost): the log
and the lease read the object back and recognise their own bytes. Other stores (gs://, az://)
keep their clients' own retries.
"""

from __future__ import annotations

import asyncio
import errno
import random
import re
import time
from typing import Any

from batchnlp import watchdog
from batchnlp.errors import SpecError, StoreUnavailable, UserError
from batchnlp.log import event

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
        if scheme(url) in ("s3", "s3a"):
            cls = retrying_s3()
            return cls(**s3_options(options)), cls._strip_protocol(url)
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
    if isinstance(error, StoreUnavailable):
        return str(error)
    text = first_line(error) or type(error).__name__
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


# -- riding out an outage ----------------------------------------------------------------------

#: How long a store may keep failing before a run gives up (runtime.retry_seconds sets it).
RETRY = {"seconds": 300.0}
#: A request's budget while its client is down (another request gave up): the run's last words.
DOWN_GRACE_S = 5.0
#: The longest wait between two tries, and the first one's scale.
BACKOFF_CAP_S, BACKOFF_BASE_S = 30.0, 0.5
#: Timeouts of every S3 request unless the job's config_kwargs set them: connecting, then each read.
TIMEOUTS = {"connect_timeout": 10, "read_timeout": 30}
#: S3 error codes that mean "later" (besides any 5xx status and 429).
TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeoutException",
                   "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequests",
                   "BandwidthLimitExceeded", "500", "502", "503", "504"}
#: Client exceptions (botocore, aiohttp, fsspec) that are a connection's trouble, not an answer.
TRANSIENT_TYPES = {"EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
                   "HTTPClientError", "ProxyConnectionError", "ResponseParserError", "IncompleteRead",
                   "FSTimeoutError", "ClientPayloadError", "ServerDisconnectedError", "ClientConnectorError",
                   "ClientOSError", "ServerTimeoutError"}
TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EPIPE, errno.EHOSTUNREACH,
                    errno.ENETUNREACH, errno.ECONNABORTED}


def configure_retries(seconds: float) -> None:
    """This process's retry budget (a run sets it from runtime.retry_seconds; so does each Ray actor)."""
    RETRY["seconds"] = float(seconds)


def is_transient(error: BaseException) -> bool:
    """Whether a failed request may succeed if tried again later (the store or the network is
    down, slow or busy), as opposed to an answer (missing, refused, invalid)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StoreUnavailable):
            return False
        if isinstance(current, (FileNotFoundError, PermissionError, FileExistsError)):
            return False
        if isinstance(current, (ConnectionError, TimeoutError, asyncio.TimeoutError)) \
                or type(current).__name__ in TRANSIENT_TYPES:
            return True
        response = getattr(current, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            code = str(response.get("Error", {}).get("Code", ""))
            return status >= 500 or status == 429 or code in TRANSIENT_CODES
        if isinstance(current, OSError) and current.errno in TRANSIENT_ERRNOS:
            return True
        current = current.__cause__ or current.__context__
    return False


class BudgetSpent(TimeoutError):
    """A try cut short because its request's retry budget ran out (a transient failure)."""


class Outage:
    """The tries of one request: since when it runs, how many times it was tried again. Each
    request has its own budget (another request's answer, a lease renewal's, says nothing of
    this one); a client whose request gave up is `down`, and its other requests then get
    DOWN_GRACE_S in all (the run's end is recorded, or not, fast)."""

    def __init__(self, what: str, client: dict[str, Any]):
        self.what, self.client = what, client
        self.since = time.monotonic()  # the first try's start: a hung try counts against the budget
        self.failed_once = False
        self.retries = 0
        self.store_said: str | None = None  # the last failure that came from the store, not the budget

    def budget(self) -> float:
        down = self.client.get("down")
        grace = down is not None and time.monotonic() - down < RETRY["seconds"]
        return min(RETRY["seconds"], DOWN_GRACE_S) if grace else RETRY["seconds"]

    def time_left(self) -> float | None:
        """How long the next try may take (None: no budget, the client's own timeouts only)."""
        if RETRY["seconds"] <= 0:
            return None
        return self.budget() - (time.monotonic() - self.since)

    def answered(self) -> None:
        self.client.pop("down", None)
        if self.failed_once:
            event("retried", f"{self.what}: the store answers again after {time.monotonic() - self.since:.0f} s and "
                             f"{self.retries} retries", what=self.what, seconds=round(time.monotonic() - self.since, 1),
                  retries=self.retries)

    def failed(self, error: BaseException) -> float | None:
        """The wait before trying again; StoreUnavailable once the budget is spent; None with no
        budget at all (`validate`: the store's error as it is)."""
        budget = self.budget()
        if RETRY["seconds"] <= 0:
            return None
        self.failed_once = True
        now = time.monotonic()
        spent, reason = now - self.since, one_line(error)
        if not isinstance(error, BudgetSpent):
            self.store_said = reason
        if spent >= budget:
            self.client["down"] = now
            last = reason if self.store_said is None or self.store_said == reason else \
                f"{self.store_said}, then {reason}"
            raise StoreUnavailable(
                f"{self.what}: the store kept failing for {spent:.0f} s ({self.retries} retries; last: {last}); "
                f"gave up after runtime.retry_seconds ({RETRY['seconds']:g} s); the committed parts are kept: run "
                "the job again to resume once the store answers")
        self.retries += 1
        # Full jitter: runs that failed together do not come back together.
        wait = min(random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** self.retries)), budget - spent)
        event("retried", f"{self.what}: {reason}; retrying in {wait:.1f} s (retry {self.retries}, {spent:.0f} of "
                         f"{budget:g} s)", level=30, what=self.what, error=reason, wait_s=round(wait, 2),
              retry=self.retries, spent_s=round(spent, 1), budget_s=budget)
        return wait


def first_line(error: BaseException) -> str:
    """The first line of an error's message ("" if it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def one_line(error: BaseException) -> str:
    text = first_line(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def s3_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """The job's options with batchnlp's defaults under them: timeouts, and no retries of the
    client's own beyond a quick second try (the outage is ridden out by `RetryingS3`, logged)."""
    options = dict(options or {})
    config = {**TIMEOUTS, "retries": {"total_max_attempts": 1}, **(options.get("config_kwargs") or {})}
    return {**options, "config_kwargs": config}


_RETRYING_S3: list[type] = []
#: The lease object's name (write/lease.py): its renewals run beside the run, not as its progress.
LEASE_KEY = ".batchnlp.lease"


def retrying_s3() -> type:
    """s3fs's filesystem, each request of which rides out an outage (built on first use: s3fs is
    an extra)."""
    if _RETRYING_S3:
        return _RETRYING_S3[0]
    import s3fs
    from fsspec.asyn import sync_wrapper

    class RetryingS3(s3fs.S3FileSystem):
        retries = 2  # s3fs's own quick retries of a request (a body read cut short, above all)

        async def _call_s3(self, method: str, *akwarglist: Any, **kwargs: Any) -> Any:
            where = f"s3://{kwargs.get('Bucket', '')}/{kwargs.get('Key') or kwargs.get('Prefix') or ''} ({method})"
            outage = Outage(where, self.__dict__.setdefault("_batchnlp_client", {}))
            # The lease's renewals run beside the run: their answers are not its progress.
            progress = not str(kwargs.get("Key", "")).endswith(LEASE_KEY)
            while True:
                left = outage.time_left()
                try:
                    if left is not None and left <= 0:
                        raise BudgetSpent(f"no answer within runtime.retry_seconds ({outage.budget():g} s)")
                    call = super()._call_s3(method, *akwarglist, **kwargs)
                    try:  # no try outlives the budget: the client's own timeouts and retries add up past it
                        answer = await (call if left is None else asyncio.wait_for(call, timeout=left))
                    except asyncio.TimeoutError:
                        raise BudgetSpent(f"no answer in {left:.1f} s, the rest of runtime.retry_seconds") from None
                except Exception as e:
                    if progress:
                        watchdog.tick()  # an answer, if a failing one: the budget bounds the retries
                    if not is_transient(e):
                        outage.answered()  # (an answer, if a refusal: the store is there)
                        raise
                    wait = outage.failed(e)
                    if wait is None:
                        raise
                    await asyncio.sleep(wait)
                    continue
                outage.answered()
                if progress:
                    watchdog.tick()
                return answer

        call_s3 = sync_wrapper(_call_s3)  # s3fs's own binds its `_call_s3`, not this one

    _RETRYING_S3.append(RetryingS3)
    return RetryingS3
