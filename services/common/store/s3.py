"""S3 backend (MinIO, SeaweedFS, AWS) through the `minio` client.

Large objects are uploaded multipart with a configurable part size; every request has connect/read
timeouts and a bounded retry, so a dead endpoint fails a job with a clear message within seconds
instead of hanging (MLflow's artifact-timeout issues are the failure catalogue here). Network failures
become `StoreUnavailableError` (retryable), a missing object `ObjectNotFoundError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, TypeVar

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error

from services.common.settings import Settings
from services.common.store.base import (
    CHUNK,
    HashingReader,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    StoreError,
    StoreUnavailableError,
    sha256_of,
    validate_key,
    validate_prefix,
)

T = TypeVar("T")
SHA_META = "sha256"  # stored as x-amz-meta-sha256 when known before the upload starts
_NOT_FOUND = {"NoSuchKey", "NoSuchObject", "NotFound"}


class S3Store(ObjectStore):
    name = "s3"

    def __init__(
        self,
        *,
        endpoint: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        region: str | None = None,
        secure: bool = True,
        cert_check: bool = True,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 300.0,
        max_retries: int = 3,
        part_size: int = 64 << 20,
        public_endpoint: str = "",
        create_bucket: bool = True,
    ) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self.part_size = part_size
        self.create_bucket = create_bucket
        self._scheme = "https" if secure else "http"
        # Presigning never needs the network when the region is known; without one minio asks the server.
        self._region = region or "us-east-1"
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            maxsize=16,
            cert_reqs="CERT_REQUIRED" if cert_check else "CERT_NONE",
            ca_certs=certifi.where() if cert_check else None,
            retries=urllib3.Retry(
                total=max_retries,
                backoff_factor=0.2,
                status_forcelist=[500, 502, 503, 504],
                raise_on_status=False,
            ),
        )
        common = {
            "access_key": access_key,
            "secret_key": secret_key,
            "secure": secure,
            "region": self._region,
        }
        self._client = Minio(endpoint, http_client=http, cert_check=cert_check, **common)
        self._signer = Minio(public_endpoint or endpoint, cert_check=cert_check, **common)
        self._bucket_ready = False

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        return cls(
            endpoint=settings.s3_endpoint,
            bucket=settings.s3_bucket,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key.get_secret_value(),
            region=settings.s3_region,
            secure=settings.s3_secure,
            cert_check=settings.s3_cert_check,
            connect_timeout_s=settings.s3_connect_timeout_s,
            read_timeout_s=settings.s3_read_timeout_s,
            max_retries=settings.s3_max_retries,
            part_size=settings.s3_part_size_mb << 20,
            public_endpoint=settings.s3_public_endpoint,
            create_bucket=settings.s3_create_bucket,
        )

    # --- error translation --------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except S3Error as exc:
            raise self._translate(what, exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailableError(
                f"object store {self._scheme}://{self.endpoint} unreachable while {what}: {_reason(exc)}"
            ) from exc
        except MinioException as exc:
            raise StoreError(f"object store {self.endpoint}: {what} failed: {exc}") from exc

    def _translate(self, what: str, exc: S3Error) -> StoreError:
        if exc.code in _NOT_FOUND:
            return ObjectNotFoundError(f"{what}: object not found in s3://{self.bucket}")
        status = getattr(exc.response, "status", 0) if exc.response is not None else 0
        message = f"object store {self.endpoint}: {what} failed: {exc.code}: {exc.message}"
        return StoreUnavailableError(message) if status >= 500 else StoreError(message)

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        if not self._call("checking the bucket", lambda: self._client.bucket_exists(self.bucket)):
            if not self.create_bucket:
                raise StoreError(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint} (MMDLM_S3_BUCKET)"
                )
            try:
                self._call("creating the bucket", lambda: self._client.make_bucket(self.bucket))
            except StoreError:
                # another process may have created it between the check and the create
                if not self._call("checking the bucket", lambda: self._client.bucket_exists(self.bucket)):
                    raise
        self._bucket_ready = True

    # --- interface ------------------------------------------------------------------------------------

    def put_stream(self, key: str, stream: BinaryIO, length: int = -1) -> ObjectInfo:
        return self._put(key, stream, length, metadata=None)

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        # Hash first so the checksum travels as object metadata, then compare it with the hash of the
        # bytes actually sent: a file rewritten during the upload is caught here.
        path = Path(path)
        sha, size = sha256_of(path)
        with path.open("rb") as handle:
            info = self._put(key, handle, size, metadata={SHA_META: sha})
        if info.sha256 != sha:
            self.delete(key)
            raise StoreError(f"{path} changed while it was being uploaded to {key}")
        return info

    def _put(self, key: str, stream: BinaryIO, length: int, metadata: dict[str, str] | None) -> ObjectInfo:
        validate_key(key)
        self._ensure_bucket()
        reader = HashingReader(stream)
        self._call(
            f"uploading {key}",
            lambda: self._client.put_object(
                self.bucket, key, reader, length, part_size=self.part_size, metadata=metadata
            ),
        )
        if length >= 0 and reader.bytes != length:
            raise StoreError(f"{key}: expected {length} bytes from the stream, got {reader.bytes}")
        return ObjectInfo(key=key, bytes=reader.bytes, sha256=reader.sha256)

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        validate_key(key)
        self._ensure_bucket()
        response = self._call(f"downloading {key}", lambda: self._client.get_object(self.bucket, key))
        try:
            stream = response.stream(chunk_size)
            while True:
                chunk = self._call(f"downloading {key}", lambda: next(stream, None))
                if chunk is None:
                    return
                yield chunk
        finally:
            response.close()
            response.release_conn()

    def stat(self, key: str) -> ObjectInfo | None:
        validate_key(key)
        self._ensure_bucket()
        try:
            obj = self._call(f"reading {key}", lambda: self._client.stat_object(self.bucket, key))
        except ObjectNotFoundError:
            return None
        meta = {k.lower(): v for k, v in (obj.metadata or {}).items()}
        return ObjectInfo(key=key, bytes=int(obj.size or 0), sha256=meta.get(f"x-amz-meta-{SHA_META}"))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        self._ensure_bucket()
        objects = self._call(
            f"listing {prefix or '/'}",
            lambda: list(self._client.list_objects(self.bucket, prefix=prefix or None, recursive=True)),
        )
        for obj in objects:
            if obj.object_name and not obj.is_dir:
                yield ObjectInfo(key=obj.object_name, bytes=int(obj.size or 0))

    def delete(self, key: str) -> None:
        validate_key(key)
        self._call(f"deleting {key}", lambda: self._client.remove_object(self.bucket, key))

    def delete_prefix(self, prefix: str) -> int:
        keys = [info.key for info in self.list(prefix)]
        if not keys:
            return 0
        errors = self._call(
            f"deleting {prefix}",
            lambda: list(self._client.remove_objects(self.bucket, (DeleteObject(k) for k in keys))),
        )
        if errors:
            raise StoreError(f"deleting {prefix}: {len(errors)} objects could not be removed: {errors[0]}")
        return len(keys)

    def presigned_url(self, key: str, expires_s: int, filename: str | None = None) -> str | None:
        validate_key(key)
        headers = {"response-content-disposition": f'attachment; filename="{filename}"'} if filename else None
        return self._call(
            f"signing {key}",
            lambda: self._signer.presigned_get_object(
                self.bucket, key, expires=timedelta(seconds=expires_s), response_headers=headers
            ),
        )

    def check(self) -> None:
        self._bucket_ready = False
        self._ensure_bucket()

    def describe(self) -> str:
        return f"s3:{self._scheme}://{self.endpoint}/{self.bucket}"


def _reason(exc: BaseException) -> str:
    """The innermost cause of a urllib3 failure, e.g. 'Connection refused', not a wall of reprs."""
    seen = exc
    while True:
        inner = getattr(seen, "reason", None) or seen.__cause__ or seen.__context__
        if inner is None or inner is seen or not isinstance(inner, BaseException):
            break
        seen = inner
    text = str(seen)
    if "] " in text:
        text = text.split("] ", 1)[1]
    return text.strip() or type(seen).__name__
