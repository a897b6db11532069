"""The output folder: a local directory or a prefix in object storage, with the few operations
the runner, the engines and `verify` need, so none of them knows which it is.

The commit protocol is the same on both: a part is written whole and only then appears under its
final name, and only then does a commit of the output's log (`write/commits.py`) list it. On a
local disk that is a temporary file, fsync and rename (and an fsync of the directory). An object
store has no rename, but a single PUT (or a multipart upload's completion) is atomic: an object is
there whole or not at all. So a part is written to a local temporary file first, its sha256
taken, then uploaded under its final key. A commit is created only if absent: a hard link of a
synced temporary file on a disk (which fails if the name exists), a PUT with `If-None-Match: *`
in S3, so of two writers of one commit number exactly one wins.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batchnlp.checksums import sha256
from batchnlp.durable import fsync_dir
from batchnlp.errors import UserError, is_disk_full
from batchnlp.storage import bucket_exists, describe_error, filesystem, fresh_listing, is_store_error, is_url


class Folder:
    """Where an output lives. `str(folder)` is the path or URL as given (for messages)."""

    def __init__(self, location: str | Path, options: dict[str, Any] | None = None):
        self.url = str(location) if is_url(str(location)) else str(Path(location))
        self.url = self.url.rstrip("/") or self.url
        self.options = dict(options or {})
        self.local = not is_url(self.url)
        self._fs: Any = None
        self._root = ""
        self._lease: Any = None  # while this process holds the output's lease (object storage)

    def __str__(self) -> str:
        return self.url

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fs": None, "_lease": None}  # a Ray actor opens its own client

    def __truediv__(self, name: str) -> str:
        """The path or URL of a file in the folder (for messages and readers)."""
        return f"{self.url}/{name}"

    @property
    def directory(self) -> Path:
        assert self.local, "only a local output has a directory"
        return Path(self.url)

    def _open(self) -> None:
        """Open the store's client on first use (and again in each Ray actor)."""
        if self._fs is None:
            self._fs, self._root = filesystem(self.url, self.options)

    @property
    def fs(self) -> Any:
        self._open()
        return self._fs

    def key(self, name: str) -> str:
        """The object's path within the store."""
        self._open()
        return f"{self._root}/{name}"

    # -- reading ---------------------------------------------------------------------------------

    def sizes(self, prefix: str = "part-", suffix: str = ".parquet") -> dict[str, int]:
        """Name -> size of the files named prefix*suffix, listed once (one LIST, not a HEAD per part)."""
        return {n: s for n, s in self._listing().items() if n.startswith(prefix) and n.endswith(suffix)}

    def _listing(self) -> dict[str, int]:
        """Name -> size of every file in the folder (not in sub-folders); empty if it is not there."""
        if self.local:
            if not self.directory.is_dir():
                return {}
            return {e.name: e.stat().st_size for e in os.scandir(self.directory) if e.is_file()}
        fresh_listing(self.fs, self.key(""))
        listing = self._call(self.fs.find, self.key(""), maxdepth=1, detail=True)  # a missing prefix lists nothing
        return {p.rsplit("/", 1)[-1]: info.get("size") for p, info in listing.items()}

    def size(self, name: str) -> int | None:
        """A file's size as stored (None: it is not there): one stat, or one HEAD in a bucket."""
        if self.local:
            try:
                return (self.directory / name).stat().st_size
            except (FileNotFoundError, NotADirectoryError):
                return None
        fresh_listing(self.fs, self.key(name))  # (fsspec answers from a listing it cached earlier)
        try:
            return self._call(self.fs.info, self.key(name)).get("size")
        except FileNotFoundError:
            return None

    def read_bytes(self, name: str) -> bytes | None:
        """A file's bytes (None: it is not there); `name` may lie in a sub-folder (the log)."""
        if self.local:
            path = self.directory / name
            try:
                return path.read_bytes()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
        try:
            return self._call(self.fs.cat_file, self.key(name))
        except FileNotFoundError:
            return None

    def read_table(self, name: str) -> pa.Table:
        """A part read back whole (--retry-errors rewrites it)."""
        if self.local:
            return pq.read_table(self.directory / name)
        with self._call(self.fs.open, self.key(name), "rb") as f:
            return pq.read_table(f)

    def sha256(self, name: str) -> str | None:
        """The sha256 of a file's bytes as stored (None: it is not there)."""
        if self.local:
            path = self.directory / name
            return sha256(path) if path.is_file() else None
        try:
            with self._call(self.fs.open, self.key(name), "rb") as f:
                return sha256(f)
        except FileNotFoundError:
            return None

    def names(self, prefix: str = "part-", suffix: str = ".parquet") -> list[str]:
        return sorted(self.sizes(prefix, suffix))

    def names_in(self, sub: str) -> list[str]:
        """The names of the files in a sub-folder (the log's); empty if it is not there."""
        if self.local:
            folder = self.directory / sub
            return sorted(e.name for e in os.scandir(folder) if e.is_file()) if folder.is_dir() else []
        fresh_listing(self.fs, self.key(sub))
        listing = self._call(self.fs.find, self.key(sub), maxdepth=1)
        return sorted(p.rsplit("/", 1)[-1] for p in listing)

    def files(self) -> list[str]:
        """Every name in the folder (a local one's sub-folders too; a prefix has only objects)."""
        if self.local:
            return sorted(p.name for p in self.directory.iterdir()) if self.directory.is_dir() else []
        return sorted(self._listing())

    # -- writing ---------------------------------------------------------------------------------

    def create(self) -> bool:
        """Make sure the folder can be written to; True if it was created now (local only: a
        prefix in a bucket needs no creating, but the bucket must exist)."""
        if self.local:
            created = not self.directory.exists()
            self.directory.mkdir(parents=True, exist_ok=True)
            return created
        bucket = self.key("").split("/", 1)[0]
        if not self._call(bucket_exists, self.fs, self.key("")):  # unlike exists(), says why it cannot tell
            raise UserError(f"output.path: {self.url}: the bucket {bucket} does not exist (or is not visible with "
                            "these credentials); create it or fix output.path")
        return False

    def write_table(self, name: str, table: pa.Table) -> tuple[int, str]:
        """Write a Parquet part so that it appears whole or not at all; return (size, sha256) of
        the bytes as stored (what `verify` will check)."""
        if self.local:
            return self._write_local(name, lambda tmp: pq.write_table(table, tmp, compression="zstd"), create=True)
        self._check_lease()
        with tempfile.TemporaryDirectory(prefix="batchnlp-part-") as tmp:
            path = Path(tmp) / Path(name).name  # (`name` may lie in a sub-folder: .batchnlp/ids/...)
            try:
                pq.write_table(table, path, compression="zstd")
            except OSError as e:
                if not is_disk_full(e):
                    raise
                raise UserError(f"output.path: {self.url}: the staging folder for uploads {tempfile.gettempdir()} "
                                "(TMPDIR) is full: no space left on the device; nothing half-written is kept and "
                                "the committed parts are: free space there or point TMPDIR elsewhere, then run "
                                "the job again to resume") from None
            digest, size = sha256(path), path.stat().st_size
            self._call(self.fs.put_file, str(path), self.key(name))  # one PUT, or a completed multipart upload
        return size, digest

    def write_bytes(self, name: str, data: bytes) -> None:
        """Replace a small file (a checkpoint of the log) atomically; its folder must exist."""
        if self.local:
            self._write_local(name, lambda tmp: tmp.write_bytes(data))
            return
        self._check_lease()
        self._call(self.fs.pipe_file, self.key(name), data)

    def create_bytes(self, name: str, data: bytes, new_folder: bool = False) -> None:
        """Write a small file only if no file has that name (a commit of the log): FileExistsError
        if one has. Durable before it returns; never visible half-written. `new_folder`: its
        sub-folder may be made (the log's first commit); else it must exist."""
        if self.local:
            path = self.directory / name
            tmp = path.with_name(f".{path.name}.tmp")
            self._subfolder(path, create=new_folder)
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.link(tmp, path)  # atomic, and fails if the name exists (rename would replace it)
            finally:
                tmp.unlink(missing_ok=True)
            fsync_dir(path.parent)
            return
        self._check_lease()
        try:
            self._create_remote(name, data)
        except FileExistsError:
            if self.read_bytes(name) == data:
                return  # a retried write whose first try was applied, its answer lost: ours
            raise

    def _create_remote(self, name: str, data: bytes) -> None:
        fs, key = self.fs, self.key(name)
        if hasattr(fs, "call_s3"):
            bucket, _, object_key = key.partition("/")
            try:
                self._call(fs.call_s3, "put_object", Bucket=bucket, Key=object_key, Body=data, IfNoneMatch="*")
            except UserError as e:
                if "pre-condition" in str(e).lower() or "precondition" in str(e).lower() or "412" in str(e):
                    raise FileExistsError(self / name) from None
                raise
            return
        try:  # other fsspec stores: their create mode where they have one, else check-then-write
            self._call(fs.pipe_file, key, data, mode="create")
        except UserError:
            if self._call(fs.exists, key):
                raise FileExistsError(self / name) from None
            self._call(fs.pipe_file, key, data)

    def _subfolder(self, path: Path, create: bool = False) -> None:
        """Check (and with `create` make) the folder a file goes in, never the output folder
        itself: one that vanished under a run must stop it, not be made again empty. `create`:
        the log's first commit, parts, .batchnlp/ids/; not the log after its first commit nor
        its checkpoints, whose folder must exist (one made again while `rm -r` empties the
        output would hold an orphan commit that the next run collides with)."""
        if not self.directory.is_dir():
            raise FileNotFoundError(errno.ENOENT, "the output folder is gone", str(self.directory))
        if path.parent.is_dir():
            return
        if not create:
            raise FileNotFoundError(errno.ENOENT, "the output's log folder is gone", str(path.parent))
        path.parent.mkdir(parents=True, exist_ok=True)

    def _write_local(self, name: str, write: Any, create: bool = False) -> tuple[int, str]:
        """Write to a temporary name, flush to disk, then rename: a crash leaves either the old
        state or the whole file. `create`: as `_subfolder` (parts and id indexes)."""
        path = self.directory / name
        tmp = path.with_name(f".{path.name}.tmp")
        self._subfolder(path, create)
        try:
            write(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)  # a half-written file (disk full) must not take the space it freed
            raise
        digest = sha256(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        return path.stat().st_size, digest

    def remove(self, name: str) -> None:
        if self.local:
            (self.directory / name).unlink(missing_ok=True)
            return
        try:
            self._call(self.fs.rm_file, self.key(name))
        except FileNotFoundError:
            pass

    def remove_tree(self, sub: str) -> None:
        """Delete a sub-folder and all it holds (the log, on --overwrite)."""
        if self.local:
            shutil.rmtree(self.directory / sub, ignore_errors=True)
            return
        try:
            self._call(self.fs.rm, self.key(sub), recursive=True)
        except FileNotFoundError:
            pass

    def remove_temporary(self, sub: str = "") -> None:
        """Temporary files a killed local run left, here or in the sub-folder `sub` (an object
        store has none)."""
        folder = self.directory / sub if self.local else None
        if folder is not None and folder.is_dir():
            for path in folder.glob(".*.tmp"):
                path.unlink(missing_ok=True)

    def remove_if_empty(self, ignore: set[str]) -> None:
        """A local folder this run created and wrote nothing into goes again."""
        if self.local and self.directory.is_dir() and set(self.files()) <= ignore:
            for name in ignore:
                (self.directory / name).unlink(missing_ok=True)
            self.directory.rmdir()

    def probe_write(self) -> None:
        """Write and delete a small object: the credentials may list but not write (validate)."""
        name = f".batchnlp-probe-{os.getpid()}"
        self.write_bytes(name, b"")
        self.remove(name)

    # -- locking ---------------------------------------------------------------------------------

    def guard(self, lease: Any) -> None:
        """Every later write checks `lease` first (`lease.check()`): a run whose lease on a bucket
        was taken over stops at its next write (`write/lock.hold`)."""
        self._lease = lease

    def _check_lease(self) -> None:
        if self._lease is not None:
            self._lease.check()

    def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """An object-store call; what the user can fix (bucket, credentials, endpoint) is one line."""
        try:
            return function(*args, **kwargs)
        except (FileNotFoundError, FileExistsError):
            raise
        except TypeError as e:
            if "unexpected keyword argument" not in str(e):
                raise
            raise UserError(f"{self.url}: the storage options were refused ({e}); check output.storage_options") \
                from None
        except Exception as e:
            if not is_store_error(e):
                raise
            raise UserError(describe_error(self.url, e)) from None
