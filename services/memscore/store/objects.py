"""Object storage: one interface, a local-directory store (embedded default) and S3/MinIO.

Keys are relative, '/'-separated names (``jobs/<job>/shards/3/trace.npz``), the same in both
stores. Writes are atomic: a reader sees the old object or the new one, never a part.

Two errors cross this boundary, whatever the backend:
- `ObjectNotFound` (a KeyError): the key does not exist;
- `StoreUnavailable` (a RuntimeError): the store could not be reached or answered 5xx;
  transient, so a Celery task should retry it with backoff.
"""

from __future__ import annotations

import abc
import copy
import io
import os
import shutil
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from memscore.settings import Settings

CHUNK_SIZE = 1 << 20  # bytes per streamed chunk
_TMP_PREFIX = ".tmp-"  # local temp files; never listed
_MAX_PRESIGN_S = 7 * 24 * 3600  # S3's limit for presigned URLs


class ObjectNotFound(KeyError):
    """The key does not exist in the store."""


class StoreUnavailable(RuntimeError):
    """The store could not be reached or failed on its side (5xx). Retry later."""


def check_key(key: str) -> str:
    """A valid key is relative, '/'-separated, without empty, '.' or '..' parts."""
    if not isinstance(key, str) or not key:
        raise ValueError("object key must be a non-empty string")
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"object key {key!r} must be a relative '/'-separated path")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"object key {key!r} has an empty, '.' or '..' part")
    if parts[-1].startswith(_TMP_PREFIX):
        raise ValueError(f"object key {key!r}: names starting with {_TMP_PREFIX!r} are reserved")
    return key


def _check_prefix(prefix: str) -> str:
    """A prefix is '' (everything) or the start of a valid key (it may end with '/')."""
    if prefix:
        check_key(prefix.rstrip("/") or "/")
    return prefix


class ObjectStore(abc.ABC):
    """What workers and servers need from an object store."""

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, replacing any object there, atomically."""

    @abc.abstractmethod
    def put_file(self, key: str, path: str | os.PathLike) -> None:
        """Upload a local file (multipart on S3 when large), atomically."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The whole object. Raises ObjectNotFound."""

    @abc.abstractmethod
    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The object as a stream of chunks of at most `chunk_size` bytes. Raises ObjectNotFound
        (on the first `next`)."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """Size in bytes. Raises ObjectNotFound."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """All keys starting with `prefix` (a plain string prefix, recursive), sorted."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove every key starting with `prefix`; returns how many. '' is refused (use
        an explicit prefix so a bug cannot empty the store)."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot be reached (for Health)."""

    @abc.abstractmethod
    def presigned_get_url(self, key: str, expires_s: int = 3600) -> str:
        """A URL a client can GET the object from without credentials (file:// for local)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the objects live, for logs: s3://bucket@endpoint or file:///path."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class LocalObjectStore(ObjectStore):
    """Objects as files under `root`. Safe across threads and processes on one machine:
    each write goes to a temp file in the target directory, then `os.replace`."""

    STALE_TEMP_S = 3600  # a temp file this old was left by a process that died mid-write

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweep_temp()

    def sweep_temp(self, older_than_s: float | None = None) -> int:
        """Remove temp files (`.tmp-*`) older than `older_than_s` (default an hour): what a
        process killed mid-write leaves. Returns how many."""
        cutoff = time.time() - (self.STALE_TEMP_S if older_than_s is None else older_than_s)
        removed = 0
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    path = os.path.join(dirpath, name)
                    try:
                        if os.stat(path).st_mtime < cutoff:
                            os.unlink(path)
                            removed += 1
                    except FileNotFoundError:
                        pass
        return removed

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def _write_atomically(self, key: str, write) -> None:
        dest = self._path(key)
        for attempt in range(3):  # a concurrent delete may prune the directory under us
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=dest.parent)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write_atomically(key, lambda f: f.write(data))

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        with open(path, "rb") as src:
            self._write_atomically(key, lambda f: shutil.copyfileobj(src, f, CHUNK_SIZE))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        path = self._path(key)
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")

        def gen() -> Iterator[bytes]:
            try:
                f = open(path, "rb")
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise ObjectNotFound(key) from None
            with f:
                while chunk := f.read(chunk_size):
                    yield chunk

        return gen()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        path = self._path(key)
        try:
            if not path.is_file():
                raise FileNotFoundError
            return path.stat().st_size
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def list(self, prefix: str = "") -> list[str]:
        _check_prefix(prefix)
        # Walk only the deepest directory the prefix names, then filter by the string prefix.
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*base_dir.split("/")) if base_dir else self.root
        keys = []
        for dirpath, dirnames, filenames in os.walk(start):
            rel = PurePosixPath(Path(dirpath).relative_to(self.root).as_posix())
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue
                key = name if str(rel) == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        self._prune(path.parent)

    def _prune(self, directory: Path) -> None:
        """Remove empty directories up to the root (best effort; a writer may race us)."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise ValueError("delete_prefix needs a non-empty prefix")
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        return len(keys)

    # A file:// URL names this machine's path: useless to a remote client, and it reveals where
    # the server keeps its store. The Results service sends none (the bytes still stream).
    presigns_for_clients = False

    def ping(self) -> None:
        if not self.root.is_dir():
            raise StoreUnavailable(f"{self.describe()}: the store directory is gone")

    def presigned_get_url(self, key: str, expires_s: int = 3600) -> str:
        return self._path(key).as_uri()

    def describe(self) -> str:
        return self.root.as_uri()


class S3ObjectStore(ObjectStore):
    """Objects in one bucket of an S3-compatible server (MinIO, AWS, moto), via `minio`.

    The bucket is created on first use if missing, so a service can start before the
    store is up. `retries` and `connect_timeout_s` bound how long a call waits on an
    unreachable server before raising StoreUnavailable; callers retry above that."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = False,
        region: str = "",
        *,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 300.0,
        retries: int = 3,
        part_size: int = 0,  # bytes per multipart part; 0 = minio's choice (>= 5 MiB)
        public_endpoint: str = "",  # http(s)://host[:port] that outside clients reach; "" = endpoint
    ):
        import certifi
        import urllib3
        from minio import Minio

        if not endpoint:
            raise ValueError("S3 endpoint is required (MEMSCORE_S3_ENDPOINT, e.g. minio:9000)")
        if not bucket:
            raise ValueError("S3 bucket is required (MEMSCORE_STORE=s3://BUCKET)")
        from minio.helpers import check_bucket_name

        check_bucket_name(bucket)  # ValueError now rather than on first use
        self.endpoint = endpoint
        self.bucket = bucket
        self.secure = secure
        self.part_size = part_size
        timeout = urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s)
        retry = urllib3.Retry(total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504])

        def make_client() -> Minio:
            http = urllib3.PoolManager(
                timeout=timeout,
                maxsize=10,
                cert_reqs="CERT_REQUIRED",
                ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
                retries=retry,
            )
            return Minio(
                endpoint,
                access_key=access_key or None,
                secret_key=secret_key or None,
                secure=secure,
                region=region or None,
                http_client=http,
            )

        self._make_client = make_client
        self._minio = make_client()
        self._public = None
        if public_endpoint:
            from urllib.parse import urlparse

            u = urlparse(
                public_endpoint if "://" in public_endpoint else f"{'https' if secure else 'http'}://{public_endpoint}"
            )
            if u.scheme not in ("http", "https") or not u.netloc or u.path.strip("/"):
                raise ValueError(f"public S3 endpoint {public_endpoint!r}: expected http(s)://host[:port]")
            # Presigning is local computation; an explicit region keeps this client from ever
            # asking the (possibly unreachable from here) public endpoint for the bucket's region.
            self._public = Minio(
                u.netloc,
                access_key=access_key or None,
                secret_key=secret_key or None,
                secure=u.scheme == "https",
                region=region or "us-east-1",
            )
        self._pid = os.getpid()
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    def bucket_reader(self, bucket: str) -> "S3ObjectStore":
        """Another bucket of the same server, with the same credentials, to read users' data
        (s3:// datasets): used as it is, never created (a missing bucket has no keys)."""
        from minio.helpers import check_bucket_name

        check_bucket_name(bucket)
        other = copy.copy(self)  # the minio client is the same: it names the bucket in each call
        other.bucket, other._public = bucket, None
        other._bucket_ready, other._bucket_lock = True, threading.Lock()
        return other

    @property
    def _client(self):
        """The minio client; rebuilt after fork, as pooled sockets must not be shared (Celery prefork)."""
        if os.getpid() != self._pid:
            self._minio, self._pid = self._make_client(), os.getpid()
        return self._minio

    # --- error translation -------------------------------------------------------------

    def _translate(self, exc: Exception, key: str | None = None) -> Exception:
        """Map minio/urllib3 errors to ObjectNotFound / StoreUnavailable; others pass."""
        import urllib3
        from minio.error import InvalidResponseError, S3Error, ServerError

        where = f"{self.describe()}" + (f" key {key!r}" if key else "")
        if isinstance(exc, S3Error):
            if exc.code in ("NoSuchKey", "NoSuchObject", "NoSuchBucket", "ResourceNotFound") and key:
                return ObjectNotFound(key)
            if exc.code in (
                "InternalError",
                "ServiceUnavailable",
                "SlowDown",
                "RequestTimeout",
                "XMinioServerNotInitialized",
                "XMinioStorageFull",
            ):
                return StoreUnavailable(f"{where}: {exc.code}: {exc.message}")
            return exc
        if isinstance(exc, ServerError):
            if exc.status_code >= 500:
                return StoreUnavailable(f"{where}: HTTP {exc.status_code}")
            return exc
        if isinstance(exc, InvalidResponseError):
            if getattr(exc, "_code", 0) >= 500:
                return StoreUnavailable(f"{where}: {exc}")
            return exc
        if isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)):
            return StoreUnavailable(f"{where}: {type(exc).__name__}: {exc}")
        return exc

    def _call(self, fn, *args, key: str | None = None, **kwargs):
        self._ensure_bucket()
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # translated or re-raised unchanged
            translated = self._translate(exc, key)
            if translated is exc:
                raise
            raise translated from exc

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        from minio.error import S3Error

        with self._bucket_lock:
            if self._bucket_ready:
                return
            try:
                if not self._client.bucket_exists(self.bucket):
                    try:
                        self._client.make_bucket(self.bucket)
                    except S3Error as exc:  # another process made it first (MinIO errors, moto does not)
                        if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                            raise
            except Exception as exc:
                translated = self._translate(exc)
                if translated is exc:
                    raise
                raise translated from exc
            self._bucket_ready = True

    # --- the interface -----------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        check_key(key)
        self._call(
            self._client.put_object,
            self.bucket,
            key,
            io.BytesIO(data),
            len(data),
            part_size=self.part_size,
            key=key,
        )

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        check_key(key)
        if not Path(path).is_file():
            raise FileNotFoundError(path)
        self._call(self._client.fput_object, self.bucket, key, os.fspath(path), part_size=self.part_size, key=key)

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.iter_chunks(key))

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        check_key(key)
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")

        def gen() -> Iterator[bytes]:
            response = self._call(self._client.get_object, self.bucket, key, key=key)
            try:
                # stream() yields what each socket read returned; re-slice to chunk_size.
                buf = bytearray()
                for part in response.stream(chunk_size):
                    buf += part
                    while len(buf) >= chunk_size:
                        yield bytes(buf[:chunk_size])
                        del buf[:chunk_size]
                if buf:
                    yield bytes(buf)
            except Exception as exc:
                translated = self._translate(exc, key)
                if translated is exc:
                    raise
                raise translated from exc
            finally:
                response.close()
                response.release_conn()

        return gen()

    def open_ranges(self, key: str) -> io.RawIOBase:
        """The object as a seekable read-only file whose every read is one ranged GET: pyarrow
        reads a Parquet footer and the column chunks it needs, not the object. Raises
        ObjectNotFound."""
        return _RangedObject(self, key, self.size(key))

    def _stat(self, key: str):
        check_key(key)
        return self._call(self._client.stat_object, self.bucket, key, key=key)

    def exists(self, key: str) -> bool:
        try:
            self._stat(key)
            return True
        except ObjectNotFound:
            return False

    def size(self, key: str) -> int:
        return int(self._stat(key).size)

    def etags(self, keys) -> dict[str, str]:
        """{key: ETag} of those of `keys` that exist, from one listing of their common prefix
        (not a request per object). An ETag changes whenever its object's content does."""
        keys = list(keys)
        prefix = os.path.commonprefix(keys)
        _check_prefix(prefix)

        def collect() -> dict[str, str]:
            objs = self._client.list_objects(self.bucket, prefix=prefix or None, recursive=True)
            return {o.object_name: str(o.etag) for o in objs if not o.is_dir}

        listed = self._call(collect)
        return {k: listed[k] for k in keys if k in listed}

    def list(self, prefix: str = "") -> list[str]:
        _check_prefix(prefix)

        def collect() -> list[str]:
            objs = self._client.list_objects(self.bucket, prefix=prefix or None, recursive=True)
            return [o.object_name for o in objs if not o.is_dir]

        return sorted(self._call(collect))

    def delete(self, key: str) -> None:
        check_key(key)
        try:
            self._call(self._client.remove_object, self.bucket, key, key=key)
        except ObjectNotFound:
            pass

    def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise ValueError("delete_prefix needs a non-empty prefix")
        from minio.deleteobjects import DeleteObject

        keys = self.list(prefix)

        def remove() -> None:
            # remove_objects is lazy: its errors iterator must be drained for it to run.
            errors = list(self._client.remove_objects(self.bucket, (DeleteObject(k) for k in keys)))
            failed = [e for e in errors if e.code not in ("NoSuchKey",)]
            if failed:
                raise RuntimeError(f"{self.describe()}: could not delete {len(failed)} objects: {failed[0]}")

        if keys:
            self._call(remove)
        return len(keys)

    presigns_for_clients = True

    def ping(self) -> None:
        if not self._call(self._client.bucket_exists, self.bucket):
            raise StoreUnavailable(f"{self.describe()}: bucket {self.bucket!r} is gone")

    def presigned_get_url(self, key: str, expires_s: int = 3600) -> str:
        check_key(key)
        if not 1 <= expires_s <= _MAX_PRESIGN_S:
            raise ValueError(f"expires_s must be between 1 and {_MAX_PRESIGN_S}, got {expires_s}")
        client = self._public or self._client
        return self._call(client.presigned_get_object, self.bucket, key, expires=timedelta(seconds=expires_s), key=key)

    def describe(self) -> str:
        return f"s3://{self.bucket}@{'https' if self.secure else 'http'}://{self.endpoint}"


class _RangedObject(io.RawIOBase):
    """`S3ObjectStore.open_ranges`: a file over an object, read by ranges."""

    def __init__(self, store: S3ObjectStore, key: str, size: int):
        super().__init__()
        self._store, self._key, self._size, self._pos = store, key, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        s = self._store
        response = s._call(s._client.get_object, s.bucket, self._key, offset=self._pos, length=n, key=self._key)
        try:
            data = response.read()
        finally:
            response.close()
            response.release_conn()
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def open_object_store(settings: "Settings | None" = None, **s3_options) -> ObjectStore:
    """The store MEMSCORE_STORE names: ``s3://BUCKET`` (with MEMSCORE_S3_*), a directory
    (optionally ``file://``), or, when empty, ``$MEMSCORE_HOME/store``. `s3_options` go to
    S3ObjectStore (timeouts, retries, part size)."""
    if settings is None:
        from memscore.settings import Settings

        settings = Settings()
    spec = settings.store.strip()
    if spec.startswith("s3://"):
        bucket = spec[len("s3://") :].rstrip("/")
        if not bucket or "/" in bucket:
            raise ValueError(f"MEMSCORE_STORE={spec!r}: expected s3://BUCKET (no key prefix)")
        return S3ObjectStore(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            bucket=bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
            public_endpoint=settings.s3_public_endpoint,
            **s3_options,
        )
    if "://" in spec and not spec.startswith("file://"):
        raise ValueError(f"MEMSCORE_STORE={spec!r}: expected s3://BUCKET, a directory, or empty")
    if spec.startswith("file://"):
        from urllib.parse import unquote, urlparse

        spec = unquote(urlparse(spec).path)
    root = Path(spec).expanduser() if spec else Path(settings.home).expanduser() / "store"
    return LocalObjectStore(root)
