"""One run per output in object storage, where there is no flock: a lease object
(`.batchnlp.lease` beside the parts) that names its holder and when it expires.

- Taken with a conditional write that only succeeds if no lease exists (S3 `If-None-Match: *`),
  so of two runs started together exactly one gets it.
- Renewed by a background thread every third of its lifetime, with a write conditional on the
  lease still being the one this run wrote (`If-Match: <etag>`).
- A lease that expired (its holder died or lost the network), or one whose holder is a dead
  process on this very host (kill -9, then run again), is taken over with a write conditional on
  its etag: if two runs try at once, one wins and the other is refused.
- Lost, if a renewal finds another run's lease in its place (this run was taken for dead): the
  next write to the output then stops the run with one line, rather than two runs writing one
  output.
- Released (deleted) when the run ends.

Stores without conditional writes (the fallback for non-S3 fsspec stores) get the same protocol
with a check-then-write, which two runs started in the same second could both pass.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from batchnlp.errors import OutputBusyError, OutputConflictError
from batchnlp.log import event
from batchnlp.storage import LEASE_KEY
from batchnlp.write.folder import Folder


LEASE_NAME = LEASE_KEY


def lease_seconds() -> float:
    """How long a lease lasts without renewal: how long a killed run on another host blocks the next."""
    return float(os.environ.get("BATCHNLP_LEASE_SECONDS", "120"))


class Lease:
    def __init__(self, folder: Folder):
        self.folder = folder
        self.owner = uuid.uuid4().hex
        self.etag: str | None = None
        self.ttl = lease_seconds()
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taking and giving back ------------------------------------------------------------------

    def __enter__(self) -> "Lease":
        try:
            self.etag = self._put(if_none_match=True)
        except FileExistsError:
            self._take_over()
        self._thread = threading.Thread(target=self._renew, name="batchnlp-lease", daemon=True)
        self._thread.start()
        return self

    def _take_over(self) -> None:
        """A lease is there: ours (a retried write whose first try was applied), a live run's
        (busy), or an expired or dead one's (taken over, conditionally on its etag)."""
        current, etag = self._read()
        if self._ours(current, etag):
            return
        if current is not None and not stale(current):
            raise OutputBusyError(busy(self.folder, current)) from None
        try:
            self.etag = self._put(if_match=etag) if current is not None else self._put(if_none_match=True)
        except FileExistsError:
            holder, etag = self._read()
            if self._ours(holder, etag):
                return
            raise OutputBusyError(busy(self.folder, holder or {})) from None
        if current is not None:
            event("lease", f"{self.folder}: took over the lease of pid {current.get('pid')} on "
                           f"{current.get('host')} (expired or dead)", level=30)

    def _ours(self, lease: dict[str, Any] | None, etag: str | None) -> bool:
        """Whether the lease found is this run's own (a retried write whose first try was
        applied, its answer lost); if so, its etag is the one to renew against."""
        if lease is None or lease.get("owner") != self.owner:
            return False
        self.etag = etag
        return True

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self._delete()
        except Exception:  # noqa: BLE001 - an unreleased lease expires by itself; the run's result stands
            pass

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            self.renew()

    def renew(self) -> None:
        """Extend the lease, if it is still this run's."""
        try:
            self.etag = self._put(if_match=self.etag)
        except FileExistsError:
            if self._ours(*self._read()):  # a retried renewal whose first try was applied: still ours
                return
            self.lost = True
            event("lease", f"{self.folder}: another run took over this run's lease; stopping at the next write",
                  level=40)
        except Exception as e:  # noqa: BLE001 - logged; the lease then expires and another run may start
            event("lease", f"{self.folder}: the lease could not be renewed ({type(e).__name__}: {e})", level=30)

    def check(self) -> None:
        """Raise if this run lost its lease: another run now writes this output."""
        if self.lost:
            raise OutputConflictError(f"output.path: {self.folder}: another run took over this output (this run's "
                                      "lease was not renewed in time and was taken as expired); this run stopped; "
                                      "its committed parts are kept")

    # -- who holds it ----------------------------------------------------------------------------

    def held_by_another(self) -> dict[str, Any] | None:
        current, _ = self._read()
        return current if current is not None and not stale(current) else None

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "renewed_at": now, "expires_at": now + self.ttl}).encode()

    # -- the store's conditional writes ----------------------------------------------------------

    def _s3(self) -> tuple[Any, str, str] | None:
        """(fs, bucket, key) when the store is S3 (conditional writes by header), else None."""
        fs = self.folder.fs
        if not hasattr(fs, "call_s3"):
            return None
        bucket, _, key = self.folder.key(LEASE_NAME).partition("/")
        return fs, bucket, key

    def _put(self, if_none_match: bool = False, if_match: str | None = None) -> str | None:
        """Write the lease; FileExistsError when the condition does not hold. Returns the etag."""
        s3 = self._s3()
        if s3 is None:
            return self._put_generic(if_none_match)
        fs, bucket, key = s3
        conditions = {"IfNoneMatch": "*"} if if_none_match else {"IfMatch": if_match} if if_match else {}
        try:
            return fs.call_s3("put_object", Bucket=bucket, Key=key, Body=self._body(), **conditions)["ETag"]
        except Exception as e:
            if precondition_failed(e):
                raise FileExistsError(str(e)) from None
            raise

    def _put_generic(self, create: bool) -> None:
        fs, path = self.folder.fs, self.folder.key(LEASE_NAME)
        try:
            fs.pipe_file(path, self._body(), **({"mode": "create"} if create else {}))
        except TypeError:  # this store's fsspec has no create mode: check, then write
            if create and fs.exists(path):
                raise FileExistsError(path) from None
            fs.pipe_file(path, self._body())

    def _read(self) -> tuple[dict[str, Any] | None, str | None]:
        """The lease now (None: there is none) and its etag."""
        s3 = self._s3()
        try:
            if s3 is None:
                return json.loads(self.folder.fs.cat_file(self.folder.key(LEASE_NAME))), None
            fs, bucket, key = s3
            response = fs.call_s3("get_object", Bucket=bucket, Key=key)
            body = _read_body(fs, response["Body"])
            return json.loads(body), response["ETag"]
        except FileNotFoundError:
            return None, None
        except (ValueError, KeyError):
            return {}, None  # not a lease batchnlp wrote: treated as expired

    def _delete(self) -> None:
        s3 = self._s3()
        if s3 is None:
            self.folder.remove(LEASE_NAME)
            return
        fs, bucket, key = s3
        try:
            fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=self.etag)
        except Exception as e:
            if not precondition_failed(e):  # another run took it over: leave theirs alone
                raise


def _read_body(fs: Any, body: Any) -> bytes:
    """get_object's streaming body is async in s3fs: read it on fsspec's loop."""
    from fsspec.asyn import sync

    async def read() -> bytes:
        async with body:
            return await body.read()

    return sync(fs.loop, read)


def stale(lease: dict[str, Any]) -> bool:
    """Expired, or held by a process of this host that no longer exists."""
    if not lease or lease.get("expires_at", 0) < time.time():
        return True
    if lease.get("host") == socket.gethostname():
        try:
            os.kill(int(lease.get("pid", 0)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, OverflowError):
            return False
    return False


def busy(folder: Folder, lease: dict[str, Any]) -> str:
    left = max(0, round(lease.get("expires_at", 0) - time.time()))
    return (f"output.path: {folder} is in use by a running job (pid {lease.get('pid')} on {lease.get('host')}; its "
            f"lease expires in {left} s unless renewed); wait for it to finish or choose another output.path")


def precondition_failed(error: Exception) -> bool:
    text = str(error)
    return isinstance(error, FileExistsError) or "pre-condition" in text or "PreconditionFailed" in text \
        or "412" in text
