"""Local-folder backend: the embedded default. Objects are files under `root`; writes go to a temp
file in `root/.mmdlm-tmp` and are renamed into place, so a reader never sees half an object."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from services.common.store.base import (
    CHUNK,
    HashingReader,
    InvalidKeyError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    StoreError,
    StoreUnavailableError,
    validate_key,
    validate_prefix,
)

_TMP = ".mmdlm-tmp"


class LocalStore(ObjectStore):
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._tmp = self.root / _TMP

    def _path(self, key: str) -> Path:
        validate_key(key)
        if key.split("/", 1)[0] == _TMP:
            raise InvalidKeyError(f"object key {key!r} uses the reserved prefix {_TMP}/")
        return self.root / key

    def put_stream(self, key: str, stream: BinaryIO, length: int = -1) -> ObjectInfo:
        path = self._path(key)
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(f"local store {self.root} is not writable: {exc}") from exc
        tmp = self._tmp / uuid.uuid4().hex
        reader = HashingReader(stream)
        try:
            with tmp.open("wb") as handle:
                while chunk := reader.read(CHUNK):
                    handle.write(chunk)
            if length >= 0 and reader.bytes != length:
                raise StoreError(f"{key}: expected {length} bytes from the stream, got {reader.bytes}")
            os.replace(tmp, path)
        except OSError as exc:
            raise StoreUnavailableError(f"local store {self.root}: writing {key} failed: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return ObjectInfo(key=key, bytes=reader.bytes, sha256=reader.sha256)

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        path = self._path(key)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise ObjectNotFoundError(f"object {key!r} not found in the local store") from None
        except IsADirectoryError:
            raise ObjectNotFoundError(
                f"object {key!r} not found in the local store (it is a prefix)"
            ) from None
        with handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        if not path.is_file():
            return None
        return ObjectInfo(key=key, bytes=st.st_size)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            if Path(dirpath) == self.root and _TMP in dirnames:
                dirnames.remove(_TMP)
            dirnames.sort()
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                key = path.relative_to(self.root).as_posix()
                yield ObjectInfo(key=key, bytes=path.stat().st_size)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # prune now-empty folders so that a deleted prefix leaves nothing behind
        parent = path.parent
        while parent != self.root and parent.is_dir():
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".ready-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StoreUnavailableError(f"local store {self.root} is not writable: {exc}") from exc

    def describe(self) -> str:
        return f"local:{self.root}"
