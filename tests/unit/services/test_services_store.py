"""Both object-store backends against the same contract (S3: a real SeaweedFS server)."""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import httpx
import pytest

from services.common.store import InvalidKeyError, ObjectNotFoundError, ObjectStore, StoreUnavailableError
from services.common.store.base import validate_key, validate_prefix
from services.common.store.local import LocalStore
from services.common.store.s3 import S3Store

BAD_KEYS = ["", "/abs/key", "a/../b", "..", "./a", "a/./b", "a//b", "a/", "a\\b", "a\x00b", "x" * 1100]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_unsafe_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidKeyError):
        validate_key(key)


@pytest.mark.parametrize(
    "key", ["a", "artifacts/j1/dataset/train/shard-00000.npy", "a.b-c_d/e f", "..a/b..", "é/ü"]
)
def test_safe_keys_are_accepted(key: str) -> None:
    assert validate_key(key) == key


def test_prefixes_must_end_with_a_slash() -> None:
    assert validate_prefix("") == "" and validate_prefix("a/b/") == "a/b/"
    with pytest.raises(InvalidKeyError):
        validate_prefix("a/b")
    with pytest.raises(InvalidKeyError):
        validate_prefix("../")


def test_local_store_never_writes_outside_its_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    with pytest.raises(InvalidKeyError):
        store.put_bytes("../escape", b"x")
    with pytest.raises(InvalidKeyError):
        store.put_bytes(".mmdlm-tmp/x", b"x")
    assert not (tmp_path / "escape").exists()


def test_put_get_roundtrip_with_checksums(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    info = store.put_bytes("a/b/blob.bin", data)
    assert info.bytes == len(data) and info.sha256 == hashlib.sha256(data).hexdigest()
    assert store.get_bytes("a/b/blob.bin") == data
    got = store.get_file("a/b/blob.bin", tmp_path / "out" / "blob.bin")
    assert got.sha256 == info.sha256 and (tmp_path / "out" / "blob.bin").read_bytes() == data
    stat = store.stat("a/b/blob.bin")
    assert stat is not None and stat.bytes == len(data)
    assert store.stat("a/b/missing") is None


def test_put_file_records_its_sha256(store: ObjectStore, tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"hello" * 1000)
    info = store.put_file("files/f.bin", path)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    if isinstance(store, S3Store):  # known before the upload: travels as object metadata
        stat = store.stat("files/f.bin")
        assert stat is not None and stat.sha256 == info.sha256


def test_stream_of_unknown_length_goes_multipart(store: ObjectStore) -> None:
    # 11 MiB through a reader that hides its size; S3 parts are 5 MiB here -> 3 parts
    payload = os.urandom(11 << 20)
    info = store.put_stream("big/stream.bin", io.BufferedReader(io.BytesIO(payload)), -1)  # type: ignore[arg-type]
    assert info.bytes == len(payload) and info.sha256 == hashlib.sha256(payload).hexdigest()
    digest = hashlib.sha256()
    for chunk in store.iter_chunks("big/stream.bin"):
        digest.update(chunk)
    assert digest.hexdigest() == info.sha256


def test_list_delete_and_delete_prefix(store: ObjectStore) -> None:
    for key in ("p/q/1", "p/q/2", "p/r/3", "other/4"):
        store.put_bytes(key, key.encode())
    assert sorted(i.key for i in store.list("p/")) == ["p/q/1", "p/q/2", "p/r/3"]
    store.delete("p/q/1")
    store.delete("p/q/1")  # missing is fine
    assert sorted(i.key for i in store.list("p/q/")) == ["p/q/2"]
    assert store.delete_prefix("p/") == 2
    assert list(store.list("p/")) == []
    assert [i.key for i in store.list("other/")] == ["other/4"]


def test_missing_object_raises_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError):
        store.get_bytes("nope/nothing")


def test_presigned_download(store: ObjectStore) -> None:
    store.put_bytes("signed/file.txt", b"signed bytes")
    url = store.presigned_url("signed/file.txt", 600, filename="file.txt")
    if isinstance(store, LocalStore):
        assert url is None  # the API streams local objects itself
        return
    assert url is not None
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == b"signed bytes"
    assert "file.txt" in response.headers.get("content-disposition", "")
    tampered = url.replace("signed/file.txt", "signed/other.txt")
    assert httpx.get(tampered).status_code == 403  # the server checks signatures


def test_check_passes_on_a_usable_store(store: ObjectStore) -> None:
    store.check()


def test_unreachable_s3_fails_fast_with_a_clear_error() -> None:
    # nothing listens on port 9 (discard) of the loopback interface
    store = S3Store(endpoint="127.0.0.1:9", bucket="b-unreachable", access_key="a", secret_key="b", secure=False,
                    connect_timeout_s=1, read_timeout_s=2, max_retries=1)  # fmt: skip
    start = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=r"127\.0\.0\.1:9 unreachable"):
        store.put_bytes("k/v", b"x")
    assert time.monotonic() - start < 10


def test_unwritable_local_store_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = LocalStore(blocker / "store")
    with pytest.raises(StoreUnavailableError, match="not writable"):
        store.check()
    with pytest.raises(StoreUnavailableError):
        store.put_bytes("a/b", b"x")
