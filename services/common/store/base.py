"""The object-store interface, key rules and the streaming sha256 helper shared by both backends.

Keys are POSIX-like relative paths (`artifacts/<job>/<name>/train/shard-00000.npy`). They are validated
before any I/O so that a key can never escape the local root or address another tenant's prefix:
no absolute paths, no `.`/`..` segments, no empty segments, no backslashes or control characters.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20  # 1 MiB: streaming granularity for hashing, copying and downloads
MAX_KEY_BYTES = 1024  # S3's limit
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


class StoreError(Exception):
    """Base class of every object-store failure; its message is what a user sees as the job error."""


class InvalidKeyError(StoreError, ValueError):
    pass


class ObjectNotFoundError(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "object not found"


class StoreUnavailableError(StoreError):
    """The store could not be reached or answered with a server error: worth retrying later."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    bytes: int
    sha256: str | None = None  # known when computed on upload or recorded in object metadata


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a safe object key, else raise InvalidKeyError naming the problem."""
    if not isinstance(key, str) or not key:
        raise InvalidKeyError("object key must be a non-empty string")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidKeyError(f"object key longer than {MAX_KEY_BYTES} bytes")
    if key.startswith("/"):
        raise InvalidKeyError(f"object key {key!r} must be relative (no leading '/')")
    if _BAD_CHARS.search(key):
        raise InvalidKeyError(f"object key {key!r} contains a backslash or a control character")
    for segment in key.split("/"):
        if segment == "":
            raise InvalidKeyError(f"object key {key!r} has an empty segment ('//' or a trailing '/')")
        if segment in (".", ".."):
            raise InvalidKeyError(f"object key {key!r} contains a {segment!r} segment")
    return key


def validate_prefix(prefix: str) -> str:
    """A prefix is a key followed by '/'; the empty prefix means the whole store."""
    if prefix == "":
        return prefix
    if not prefix.endswith("/"):
        raise InvalidKeyError(f"prefix {prefix!r} must end with '/'")
    validate_key(prefix[:-1])
    return prefix


class HashingReader:
    """Wraps a binary stream: counts bytes and computes sha256 while the consumer reads it."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._digest = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._digest.update(data)
        self.bytes += len(data)
        return data

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


def sha256_of(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class ObjectStore(ABC):
    """Streaming object storage. Every method validates its key first.

    Uploads compute sha256 while streaming and return it; downloads to a file compute it again so the
    caller can compare it with what the artifact row recorded.
    """

    name: str

    @abstractmethod
    def put_stream(self, key: str, stream: BinaryIO, length: int = -1) -> ObjectInfo:
        """Store everything `stream` yields under `key` (replacing it); large objects go multipart."""

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        path = Path(path)
        with path.open("rb") as handle:
            return self.put_stream(key, handle, path.stat().st_size)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        import io

        return self.put_stream(key, io.BytesIO(data), len(data))

    @abstractmethod
    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Stream the object's bytes. Raises ObjectNotFoundError before yielding if it is missing."""

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.iter_chunks(key))

    def get_file(self, key: str, dest: Path) -> ObjectInfo:
        """Download to `dest` (written to a temp sibling, then renamed) and return size + sha256."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        digest = hashlib.sha256()
        size = 0
        try:
            with tmp.open("wb") as handle:
                for chunk in self.iter_chunks(key):
                    digest.update(chunk)
                    size += len(chunk)
                    handle.write(chunk)
            tmp.replace(dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return ObjectInfo(key=key, bytes=size, sha256=digest.hexdigest())

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size (and sha256 when recorded) of an object, or None if it does not exist."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix` (a validated prefix ending in '/')."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; missing objects are not an error."""

    def delete_prefix(self, prefix: str) -> int:
        count = 0
        for info in list(self.list(prefix)):
            self.delete(info.key)
            count += 1
        return count

    def presigned_url(self, key: str, expires_s: int, filename: str | None = None) -> str | None:
        """A time-limited download URL, or None when the backend cannot make one (the API streams then)."""
        del key, expires_s, filename
        return None

    @abstractmethod
    def check(self) -> None:
        """Raise StoreError if the store is not usable right now (for /readyz and worker start-up)."""

    def describe(self) -> str:
        return self.name
