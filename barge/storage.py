"""Object storage behind one small interface: S3 (boto3) in production, a local directory embedded.

Every location is an ``s3://bucket/key`` URI in both modes, so a job spec means the same thing
whichever backend runs it. The local backend maps ``s3://bucket/key`` to ``<dir>/bucket/key``.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from barge.errors import BargeError, InvalidSpec, NotFound, ObjectChanged, StorageError, excerpt
from barge.paths import local_path
from barge.settings import Settings

SINGLE_PUT_BYTES = 8 << 20  # files below this are one PutObject (boto3's multipart threshold)


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str, *, field: str = "uri") -> S3Uri:
        if not isinstance(uri, str) or not uri.startswith("s3://"):
            raise InvalidSpec(
                f"{field} must be an s3://bucket/key URI, got {excerpt(uri)}", field=field
            )
        rest = uri[len("s3://") :]
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise InvalidSpec(f"{field} has no bucket: {excerpt(uri)}", field=field)
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def join(self, name: str) -> S3Uri:
        base = self.key if not self.key or self.key.endswith("/") else self.key + "/"
        return S3Uri(self.bucket, base + name)

    def as_prefix(self) -> S3Uri:
        if not self.key or self.key.endswith("/"):
            return self
        return S3Uri(self.bucket, self.key + "/")


@dataclass(frozen=True)
class ObjectInfo:
    uri: S3Uri
    size: int
    etag: str


class ObjectStore(Protocol):
    """A PUT returns the ETag of the object it wrote (what a later ``If-Match`` names)."""

    def head(self, uri: S3Uri) -> ObjectInfo | None: ...
    def list(self, prefix: S3Uri) -> list[ObjectInfo]: ...
    def open(
        self, uri: S3Uri, start: int = 0, end: int | None = None, *, if_match: str = ""
    ) -> IO[bytes]: ...
    def get_bytes(self, uri: S3Uri) -> bytes: ...
    def put_bytes(self, uri: S3Uri, data: bytes) -> str: ...
    def put_file(self, uri: S3Uri, path: Path) -> str: ...
    def delete(self, uri: S3Uri) -> None: ...
    def copy(self, src: S3Uri, dst: S3Uri) -> None: ...


def check_bucket_allowed(settings: Settings, uri: S3Uri, field: str) -> None:
    if settings.allowed_buckets and uri.bucket not in settings.allowed_buckets:
        raise InvalidSpec(
            f"{field}: bucket {uri.bucket!r} is not one Barge may use "
            f"(allowed: {', '.join(settings.allowed_buckets)})",
            field=field,
        )


class LocalStore:
    """A directory that behaves like a bucket store: atomic PUTs by rename, byte-range reads."""

    def __init__(self, root: Path):
        self.root = root

    def _path(self, uri: S3Uri) -> Path:
        key = uri.key.rstrip("/")
        return local_path(self.root, f"{uri.bucket}/{key}" if key else uri.bucket)

    def head(self, uri: S3Uri) -> ObjectInfo | None:
        path = self._path(uri)
        if not uri.key or not path.is_file():
            return None
        st = path.stat()
        return ObjectInfo(uri, st.st_size, f"{st.st_mtime_ns:x}-{st.st_size:x}")

    def list(self, prefix: S3Uri) -> list[ObjectInfo]:
        bucket_dir = self.root / prefix.bucket
        if not bucket_dir.is_dir():
            return []
        out = []
        for dirpath, _dirs, files in os.walk(bucket_dir):
            for name in files:
                if name.startswith(".barge-tmp-"):
                    continue
                key = str(Path(dirpath, name).relative_to(bucket_dir))
                if key.startswith(prefix.key):
                    info = self.head(S3Uri(prefix.bucket, key))
                    if info:
                        out.append(info)
        return sorted(out, key=lambda i: i.uri.key)

    def open(
        self, uri: S3Uri, start: int = 0, end: int | None = None, *, if_match: str = ""
    ) -> IO[bytes]:
        path = self._path(uri)
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise NotFound(f"no object at {uri}") from None
        if if_match:  # the file opened: a PUT replaces it by rename, never in place
            st = os.fstat(f.fileno())
            etag = f"{st.st_mtime_ns:x}-{st.st_size:x}"
            if etag != if_match:
                f.close()
                raise ObjectChanged(uri, if_match, etag)
        f.seek(start)
        if end is None:
            return f
        return _Limited(f, end - start)  # type: ignore[return-value]

    def get_bytes(self, uri: S3Uri) -> bytes:
        with self.open(uri) as f:
            return f.read()

    def put_bytes(self, uri: S3Uri, data: bytes) -> str:
        return self._atomic_write(uri, lambda f: f.write(data))

    def put_file(self, uri: S3Uri, path: Path) -> str:
        def copy(f: IO[bytes]) -> None:
            with path.open("rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)

        return self._atomic_write(uri, copy)

    def _atomic_write(self, uri: S3Uri, write: Any) -> str:
        """Write to a temporary file, then rename it into place; the ETag of what was written
        (taken from the written file before the rename, which keeps its mtime and size)."""
        path = self._path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".barge-tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            st = os.stat(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return f"{st.st_mtime_ns:x}-{st.st_size:x}"

    def delete(self, uri: S3Uri) -> None:
        self._path(uri).unlink(missing_ok=True)

    def copy(self, src: S3Uri, dst: S3Uri) -> None:
        path = self._path(src)
        if not path.is_file():
            raise NotFound(f"no object at {src}")
        self.put_file(dst, path)


class HeldObjects:
    """Objects already read, served from memory as a store serves them (byte ranges, ``If-Match``
    against the ETag each was read at): what planning read once is parsed again, or a packed
    shard's objects are read from Barge's copy, without another GET. Read-only."""

    def __init__(self, objects: dict[str, tuple[bytes, str]] | None = None):
        self._objects = dict(objects or {})

    def hold(self, uri: S3Uri, body: bytes, etag: str) -> None:
        self._objects[str(uri)] = (body, etag)

    def head(self, uri: S3Uri) -> ObjectInfo | None:
        held = self._objects.get(str(uri))
        return None if held is None else ObjectInfo(uri, len(held[0]), held[1])

    def list(self, prefix: S3Uri) -> list[ObjectInfo]:
        found = [self.head(S3Uri.parse(u)) for u in sorted(self._objects)]
        return [i for i in found if i is not None and i.uri.key.startswith(prefix.key)]

    def open(
        self, uri: S3Uri, start: int = 0, end: int | None = None, *, if_match: str = ""
    ) -> IO[bytes]:
        held = self._objects.get(str(uri))
        if held is None:
            raise NotFound(f"no object at {uri}")
        body, etag = held
        if if_match and etag and if_match != etag:
            raise ObjectChanged(uri, if_match, etag)
        return io.BytesIO(body[start:end])

    def get_bytes(self, uri: S3Uri) -> bytes:
        with self.open(uri) as f:
            return f.read()

    def put_bytes(self, uri: S3Uri, data: bytes) -> str:
        raise StorageError(f"held objects are read-only: no PUT of {uri}")

    def put_file(self, uri: S3Uri, path: Path) -> str:
        raise StorageError(f"held objects are read-only: no PUT of {uri}")

    def delete(self, uri: S3Uri) -> None:
        raise StorageError(f"held objects are read-only: no DELETE of {uri}")

    def copy(self, src: S3Uri, dst: S3Uri) -> None:
        raise StorageError(f"held objects are read-only: no COPY to {dst}")


class _Limited(io.RawIOBase):
    def __init__(self, f: IO[bytes], remaining: int):
        self._f = f
        self._remaining = remaining

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._remaining <= 0:
            return 0
        view = memoryview(b)[: self._remaining]
        n = self._f.readinto(view)  # type: ignore[attr-defined]
        self._remaining -= n or 0
        return n or 0

    def close(self) -> None:
        self._f.close()
        super().close()


class _BodyReader(io.RawIOBase):
    """botocore's streaming body as a raw file, so it can be buffered and read by lines."""

    def __init__(self, body: Any):
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._body.read(len(b))
        n = len(data)
        memoryview(b)[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _error_code(exc: Exception) -> str | None:
    """The S3 error code of a boto3 ``ClientError`` (None for any other exception)."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return None


class S3Store:
    """AWS S3 or any S3-compatible server (MinIO, moto) through boto3 with standard retries."""

    def __init__(self, settings: Settings):
        import boto3
        from botocore.config import Config

        self.client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            config=Config(
                retries={"mode": "standard", "max_attempts": 6},
                connect_timeout=10,
                read_timeout=120,
                # room for an image shard's (or the planner's) concurrent GETs beside the
                # worker's other calls
                max_pool_connections=max(
                    10, settings.image_fetch_threads + 4, settings.input_fetch_threads + 4
                ),
                s3={"addressing_style": "path"} if settings.s3_endpoint_url else {},
            ),
        )

    def _wrap(self, exc: Exception, uri: S3Uri) -> Exception:
        code = _error_code(exc)
        if code is not None:
            if code in ("NoSuchKey", "404", "NotFound"):
                return NotFound(f"no object at {uri}")
            if code == "NoSuchBucket":
                return NotFound(f"bucket {uri.bucket!r} does not exist ({uri})")
            if code in ("AccessDenied", "403"):
                return StorageError(f"access denied to {uri}")
        return StorageError(f"object store error on {uri}: {exc}")

    def head(self, uri: S3Uri) -> ObjectInfo | None:
        if not uri.key:
            return None
        try:
            r = self.client.head_object(Bucket=uri.bucket, Key=uri.key)
        except Exception as exc:
            err = self._wrap(exc, uri)
            if isinstance(err, NotFound):
                return None
            raise err from exc
        return ObjectInfo(uri, int(r["ContentLength"]), str(r.get("ETag", "")).strip('"'))

    def list(self, prefix: S3Uri) -> list[ObjectInfo]:
        out = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=prefix.bucket, Prefix=prefix.key
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    out.append(
                        ObjectInfo(
                            S3Uri(prefix.bucket, obj["Key"]),
                            int(obj["Size"]),
                            str(obj.get("ETag", "")).strip('"'),
                        )
                    )
        except Exception as exc:
            err = self._wrap(exc, prefix)
            if isinstance(err, NotFound):
                return []
            raise err from exc
        return sorted(out, key=lambda i: i.uri.key)

    def open(
        self, uri: S3Uri, start: int = 0, end: int | None = None, *, if_match: str = ""
    ) -> IO[bytes]:
        """The object's bytes [start, end). With ``if_match`` (an ETag) the GET is conditional
        (``If-Match``): an object whose ETag is another now is ``ObjectChanged``, naming both
        (one HEAD, only then, learns the new one)."""
        kwargs: dict[str, Any] = {"Bucket": uri.bucket, "Key": uri.key}
        if start or end is not None:
            if end is not None and end <= start:
                return io.BytesIO(b"")
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if if_match:
            kwargs["IfMatch"] = f'"{if_match}"'
        try:
            body = self.client.get_object(**kwargs)["Body"]
        except Exception as exc:
            if if_match and _error_code(exc) in ("PreconditionFailed", "412"):
                now = self.head(uri)
                if now is None:
                    raise NotFound(f"no object at {uri}") from None
                raise ObjectChanged(uri, if_match, now.etag) from None
            raise self._wrap(exc, uri) from exc
        return io.BufferedReader(_BodyReader(body), 1 << 20)

    def get_bytes(self, uri: S3Uri) -> bytes:
        with self.open(uri) as f:
            return f.read()

    def put_bytes(self, uri: S3Uri, data: bytes) -> str:
        try:
            r = self.client.put_object(Bucket=uri.bucket, Key=uri.key, Body=data)
        except Exception as exc:
            raise self._wrap(exc, uri) from exc
        return str(r.get("ETag", "")).strip('"')

    def put_file(self, uri: S3Uri, path: Path) -> str:
        # A small file is one PutObject, as upload_file would send it, without its transfer
        # manager and thread pool (a shard's part: milliseconds per shard), and its ETag is the
        # response's. upload_file switches to multipart above 8 MiB and aborts the upload if any
        # part fails, so an object is either complete or absent; it returns no ETag, so one HEAD
        # asks for it.
        try:
            if path.stat().st_size < SINGLE_PUT_BYTES:
                with path.open("rb") as body:
                    r = self.client.put_object(Bucket=uri.bucket, Key=uri.key, Body=body)
                return str(r.get("ETag", "")).strip('"')
            self.client.upload_file(str(path), uri.bucket, uri.key)
        except Exception as exc:
            raise self._wrap(exc, uri) from exc
        info = self.head(uri)
        return info.etag if info is not None else ""

    def delete(self, uri: S3Uri) -> None:
        try:
            self.client.delete_object(Bucket=uri.bucket, Key=uri.key)
        except Exception as exc:
            raise self._wrap(exc, uri) from exc

    def copy(self, src: S3Uri, dst: S3Uri) -> None:
        # The managed copy switches to a multipart copy for large objects (over 5 GB too).
        try:
            self.client.copy({"Bucket": src.bucket, "Key": src.key}, dst.bucket, dst.key)
        except Exception as exc:
            raise self._wrap(exc, src) from exc


class SeekableObject(io.RawIOBase):
    """A read-only seekable view of an object through range reads (for Parquet footers), each
    conditional on the object's ETag (when ``info`` has one)."""

    def __init__(self, store: ObjectStore, info: ObjectInfo):
        self._store = store
        self._info = info
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._info.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b: Any) -> int:
        end = min(self._pos + len(b), self._info.size)
        if end <= self._pos:
            return 0
        with self._store.open(self._info.uri, self._pos, end, if_match=self._info.etag) as f:
            data = f.read()
        n = len(data)
        memoryview(b)[:n] = data
        self._pos += n
        return n

    def size(self) -> int:
        return self._info.size


class ResumedRead(io.RawIOBase):
    """The bytes [start, end) of an object through one streaming GET, conditional on its ETag
    (``info.etag``, when known), read as they are asked for (memory: the reader's buffer).

    When reading the body fails (a connection reset or timed out, a body cut short: real S3
    may drop a stream its reader left idle while a model ran), the rest is read by a new GET
    from the first byte not yet read, on the same condition: every byte comes once, in order,
    from the same object (one changed since is ``ObjectChanged``). ``resumes`` failures in a
    row with no byte read between them raise the last one. A failure to open a GET is the
    store's (boto3 retries its requests) and is raised as it is."""

    def __init__(
        self, store: ObjectStore, info: ObjectInfo, start: int, end: int, resumes: int = 3
    ):
        self._store = store
        self._info = info
        self._pos = start
        self._end = end
        self._resumes = resumes
        self._body: IO[bytes] | None = None

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        """The offset in the object of the next byte read."""
        return self._pos

    def readinto(self, b: Any) -> int:
        failures = 0
        view = memoryview(b)[: max(0, self._end - self._pos)]
        while len(view):
            if self._body is None:
                self._body = self._store.open(
                    self._info.uri, self._pos, self._end, if_match=self._info.etag
                )
            try:
                n = self._body.readinto(view)  # type: ignore[attr-defined]
                if not n:
                    raise EOFError(f"{self._info.uri}: body ended at byte {self._pos}")
            except Exception as exc:
                if isinstance(exc, BargeError):
                    raise
                self._drop_body()
                failures += 1
                if failures > self._resumes:
                    raise
                time.sleep(min(1.0, 0.05 * 2**failures))
                continue
            self._pos += n
            return n
        return 0

    def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            with contextlib.suppress(Exception):  # a broken stream may fail to close too
                body.close()

    def close(self) -> None:
        self._drop_body()
        super().close()


def local_model_dir(settings: Settings, ref: str) -> Path | None:
    """The local directory a model reference names (None for s3:// and registry names).

    Only directories under BARGE_LOCAL_MODEL_DIRS are allowed. A refusal names the reference
    as it was sent, never what it resolves to (``/proc/self/cwd`` resolves to this process's
    own directory)."""
    sent = ref
    if ref.startswith("file://"):
        ref = ref[len("file://") :]
    if not ref.startswith("/"):
        return None
    path = Path(ref).resolve()
    roots = [r.resolve() for r in settings.local_model_dirs]
    if not any(path == r or r in path.parents for r in roots):
        raise InvalidSpec(
            f"local model directory {excerpt(sent)} is not under BARGE_LOCAL_MODEL_DIRS "
            f"({', '.join(map(str, settings.local_model_dirs)) or 'not set'}); put the model in "
            "S3 or allow the directory",
            field="model",
        )
    return path


def make_store(settings: Settings) -> ObjectStore:
    if settings.storage_backend == "s3":
        return S3Store(settings)
    return LocalStore(settings.resolved_local_store_dir)


def iter_prefix_files(store: ObjectStore, prefix: S3Uri) -> Iterator[tuple[ObjectInfo, str]]:
    """Objects under a prefix with their path relative to it."""
    base = prefix.as_prefix()
    for info in store.list(base):
        yield info, info.uri.key[len(base.key) :]
