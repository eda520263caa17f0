"""Publishing and staging artifacts on both stores: verified bytes, no row without bytes, idempotence."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

import pytest
from sqlalchemy import func, select

from services.common import artifacts, lifecycle
from services.common.auth import Principal
from services.common.db import Database
from services.common.errors import LeaseLostError, PermanentError
from services.common.lifecycle import Lease
from services.common.models import Artifact, utcnow
from services.common.store import ObjectInfo, ObjectStore, StoreError, StoreUnavailableError
from services.common.store.local import LocalStore


def make_dir(root: Path, files: int = 3, with_manifest: bool = True) -> Path:
    root.mkdir(parents=True)
    for i in range(files):
        (root / "sub" / f"f{i}.bin").parent.mkdir(exist_ok=True)
        (root / "sub" / f"f{i}.bin").write_bytes(os.urandom(2000 + i))
    if with_manifest:
        (root / "manifest.json").write_text(json.dumps({"files": files}))
    return root


def running_job(db: Database, user: Principal, owner: str = "w") -> Lease:
    with db.begin() as s:
        lifecycle.create_job(s, owner_id=user.id, kind="probe", queue="encode", spec={"kind": "probe"})
    claim = lifecycle.claim_next(db, "encode", owner, 60)
    assert claim is not None
    return claim.lease


def count_rows(db: Database) -> int:
    with db.session() as s:
        return s.execute(select(func.count()).select_from(Artifact)).scalar_one()


def test_publish_then_stage_roundtrip(
    db: Database, store: ObjectStore, user: Principal, tmp_path: Path
) -> None:
    src = make_dir(tmp_path / "src")
    lease = running_job(db, user)
    artifact_id = artifacts.publish_directory(
        db,
        store,
        lease=lease,
        owner_id=user.id,
        local_dir=src,
        kind="dataset",
        name="dataset",
        metadata={"x": 1},
    )
    row = artifacts.get_artifact(db, artifact_id)
    assert row is not None and row.uri == f"artifacts/{lease.job_id}/dataset/"
    assert row.sha256 == hashlib.sha256((src / "manifest.json").read_bytes()).hexdigest()
    assert row.bytes == sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    assert row.meta["x"] == 1 and len(row.meta["files"]) == 4
    for record in row.meta["files"]:  # the store holds exactly the bytes the row describes
        data = store.get_bytes(row.uri + record["path"])
        assert hashlib.sha256(data).hexdigest() == record["sha256"] and len(data) == record["bytes"]
    staged = artifacts.stage_artifact(
        db, store, artifact_id, tmp_path / "cache" / artifact_id, owner_id=user.id
    )
    for path in src.rglob("*"):
        if path.is_file():
            assert (staged / path.relative_to(src)).read_bytes() == path.read_bytes()


def test_publish_is_idempotent_per_job_and_name(
    db: Database, store: ObjectStore, user: Principal, tmp_path: Path
) -> None:
    lease = running_job(db, user)
    first = artifacts.publish_directory(
        db, store, lease=lease, owner_id=user.id, local_dir=make_dir(tmp_path / "a"), kind="k", name="out"
    )
    # a later attempt of the same job re-publishes after a crash: same artifact, no duplicate row
    later = lifecycle.claim_next(db, "encode", "w2", 60, now=utcnow() + timedelta(seconds=61))
    assert later is not None
    again = artifacts.publish_directory(
        db,
        store,
        lease=later.lease,
        owner_id=user.id,
        local_dir=make_dir(tmp_path / "b"),
        kind="k",
        name="out",
    )
    assert again == first and count_rows(db) == 1


def test_directory_without_manifest_uses_the_file_list_digest(
    db: Database, store: ObjectStore, user: Principal, tmp_path: Path
) -> None:
    lease = running_job(db, user)
    src = make_dir(tmp_path / "src", with_manifest=False)
    artifact_id = artifacts.publish_directory(
        db, store, lease=lease, owner_id=user.id, local_dir=src, kind="k", name="n"
    )
    row = artifacts.get_artifact(db, artifact_id)
    assert row is not None and row.meta["checksum"] == "file-list"
    staged = artifacts.stage_artifact(db, store, artifact_id, tmp_path / "staged")
    assert (staged / "sub" / "f0.bin").read_bytes() == (src / "sub" / "f0.bin").read_bytes()


def test_publish_file(db: Database, store: ObjectStore, user: Principal, tmp_path: Path) -> None:
    lease = running_job(db, user)
    path = tmp_path / "samples.jsonl"
    path.write_text('{"text": "hi"}\n')
    artifact_id = artifacts.publish_file(
        db, store, lease=lease, owner_id=user.id, local_path=path, kind="samples", name="samples"
    )
    staged = artifacts.stage_artifact(db, store, artifact_id, tmp_path / "cache")
    assert staged.name == "samples.jsonl" and staged.read_text() == path.read_text()


class FailingStore(ObjectStore):
    """A real store whose Nth upload fails, as a dying network would make it."""

    name = "failing"

    def __init__(self, inner: ObjectStore, fail_on: int) -> None:
        self.inner, self.fail_on, self.puts = inner, fail_on, 0

    def put_stream(self, key: str, stream: BinaryIO, length: int = -1) -> ObjectInfo:
        self.puts += 1
        if self.puts == self.fail_on:
            raise StoreUnavailableError("object store unreachable while uploading (injected)")
        return self.inner.put_stream(key, stream, length)

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        with open(path, "rb") as handle:
            return self.put_stream(key, handle, path.stat().st_size)

    def iter_chunks(self, key, chunk_size=1 << 20):  # noqa: ANN001, ANN201
        return self.inner.iter_chunks(key, chunk_size)

    def stat(self, key: str) -> ObjectInfo | None:
        return self.inner.stat(key)

    def list(self, prefix: str):  # noqa: ANN201
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def check(self) -> None:
        self.inner.check()


def test_failed_upload_leaves_no_row_and_no_objects(
    db: Database, store: ObjectStore, user: Principal, tmp_path: Path
) -> None:
    lease = running_job(db, user)
    failing = FailingStore(store, fail_on=3)
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        artifacts.publish_directory(
            db,
            failing,
            lease=lease,
            owner_id=user.id,
            local_dir=make_dir(tmp_path / "src"),
            kind="k",
            name="out",
        )
    assert count_rows(db) == 0
    assert list(store.list(artifacts.artifact_prefix(lease.job_id, "out"))) == []


def test_lost_lease_registers_nothing(
    db: Database, store: ObjectStore, user: Principal, tmp_path: Path
) -> None:
    lease = running_job(db, user)
    assert lifecycle.claim_next(db, "encode", "thief", 60, now=utcnow() + timedelta(seconds=61))
    with pytest.raises(LeaseLostError):
        artifacts.publish_directory(
            db,
            store,
            lease=lease,
            owner_id=user.id,
            local_dir=make_dir(tmp_path / "src"),
            kind="k",
            name="out",
        )
    assert count_rows(db) == 0
    assert list(store.list(artifacts.artifact_prefix(lease.job_id, "out"))) == []


def test_stage_refuses_other_users_and_wrong_kinds(
    db: Database, store: ObjectStore, user: Principal, other_user: Principal, tmp_path: Path
) -> None:
    lease = running_job(db, user)
    artifact_id = artifacts.publish_directory(
        db,
        store,
        lease=lease,
        owner_id=user.id,
        local_dir=make_dir(tmp_path / "src"),
        kind="dataset",
        name="d",
    )
    with pytest.raises(PermanentError, match="not found"):
        artifacts.stage_artifact(db, store, artifact_id, tmp_path / "x", owner_id=other_user.id)
    with pytest.raises(PermanentError, match="expected 'model'"):
        artifacts.stage_artifact(db, store, artifact_id, tmp_path / "x", kind="model")


def test_stage_detects_corruption_in_the_store(
    db: Database, store: ObjectStore, user: Principal, tmp_path: Path
) -> None:
    lease = running_job(db, user)
    artifact_id = artifacts.publish_directory(
        db, store, lease=lease, owner_id=user.id, local_dir=make_dir(tmp_path / "src"), kind="d", name="d"
    )
    row = artifacts.get_artifact(db, artifact_id)
    assert row is not None
    store.put_bytes(row.uri + "sub/f1.bin", b"tampered")
    with pytest.raises(StoreError, match="corrupt"):
        artifacts.stage_artifact(db, store, artifact_id, tmp_path / "staged")
    assert not (tmp_path / "staged").exists()


def test_stage_reuses_a_complete_copy(db: Database, user: Principal, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    lease = running_job(db, user)
    artifact_id = artifacts.publish_directory(
        db, store, lease=lease, owner_id=user.id, local_dir=make_dir(tmp_path / "src"), kind="d", name="d"
    )
    dest = tmp_path / "cache"
    artifacts.stage_artifact(db, store, artifact_id, dest)
    store.delete_prefix(f"artifacts/{lease.job_id}/")  # a second stage must not need the store
    assert artifacts.stage_artifact(db, store, artifact_id, dest) == dest
    (dest / "sub" / "f0.bin").write_bytes(b"short")  # a damaged cache is fetched again -> store is empty now
    with pytest.raises(StoreError):
        artifacts.stage_artifact(db, store, artifact_id, dest)


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "x" * 200])
def test_artifact_names_are_single_safe_segments(name: str) -> None:
    with pytest.raises(ValueError):
        artifacts.validate_name(name)
