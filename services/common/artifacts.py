"""Publishing and staging artifacts: the only code that writes artifact rows.

Publish (a worker, inside its lease): upload every file of a local folder under
`artifacts/<job_id>/<name>/`, check that the store holds each one with the right size, THEN insert the
row. Any failure deletes the objects already uploaded and leaves no row, so an artifact row always
means "every byte is stored". Publishing is idempotent per (job, name): a re-run of the job after a
crash gets the artifact its earlier attempt registered instead of a duplicate.

Row fields (docs/ARCHITECTURE.md): uri = the prefix; sha256 = sha256 of `manifest.json` when the folder
has one (it lists the sha256 of every other file), otherwise sha256 of the canonical JSON file list;
bytes = total; metadata.files = [{path, sha256, bytes}].

Stage (a worker, before it runs): download an artifact into a local cache folder, verifying every file's
sha256, so library code only ever reads local directories.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from services.common.db import Database
from services.common.errors import LeaseLostError, PermanentError
from services.common.lifecycle import Lease, lease_is_held
from services.common.models import Artifact, utcnow
from services.common.store import ObjectStore, StoreError
from services.common.store.base import sha256_of, validate_key

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MARKER = ".mmdlm-artifact.json"  # written last into a staged folder: its presence means "complete"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class FileRecord:
    path: str  # relative, POSIX separators
    sha256: str
    bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}


def artifact_prefix(job_id: str, name: str) -> str:
    return f"artifacts/{job_id}/{name}/"


def validate_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(
            f"artifact name {name!r} must be 1-128 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def scan_directory(local_dir: Path) -> list[FileRecord]:
    """Every regular file under `local_dir` (sorted), with sha256 and size. Symlinks are refused:
    an artifact must be self-contained."""
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise FileNotFoundError(f"artifact folder {local_dir} does not exist")
    records = []
    for path in sorted(p for p in local_dir.rglob("*")):
        if path.is_symlink():
            raise ValueError(f"{path}: symlinks cannot be published as artifact files")
        if path.is_dir():
            continue
        rel = path.relative_to(local_dir).as_posix()
        if rel == MARKER:
            continue
        validate_key(rel)
        sha, size = sha256_of(path)
        records.append(FileRecord(rel, sha, size))
    if not records:
        raise ValueError(f"artifact folder {local_dir} is empty")
    return records


def listing_digest(files: list[FileRecord]) -> str:
    payload = json.dumps([f.as_dict() for f in files], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def find_published(db: Database, job_id: str, name: str) -> Artifact | None:
    with db.session() as s:
        return s.execute(
            select(Artifact).where(Artifact.producer_job_id == job_id, Artifact.name == name)
        ).scalar_one_or_none()


def publish_directory(
    db: Database,
    store: ObjectStore,
    *,
    lease: Lease,
    owner_id: int,
    local_dir: Path,
    kind: str,
    name: str,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Upload `local_dir` as artifact `name` of the leased job and return the artifact id."""
    validate_name(name)
    existing = find_published(db, lease.job_id, name)
    if existing is not None:
        logger.info(
            "job %s: artifact %r already published as %s (earlier attempt)", lease.job_id, name, existing.id
        )
        return existing.id
    files = scan_directory(Path(local_dir))
    manifest = next((f for f in files if f.path == MANIFEST), None)
    sha = manifest.sha256 if manifest is not None else listing_digest(files)
    prefix = artifact_prefix(lease.job_id, name)
    meta = {
        **(metadata or {}),
        "layout": "directory",
        "checksum": "manifest.json" if manifest is not None else "file-list",
        "files": [f.as_dict() for f in files],
    }
    return _upload_and_register(
        db, store, lease=lease, owner_id=owner_id, kind=kind, name=name, uri=prefix, sha256=sha,
        total=sum(f.bytes for f in files), meta=meta,
        uploads=[(prefix + f.path, Path(local_dir) / f.path, f) for f in files], prefix=prefix,
    )  # fmt: skip


def publish_file(
    db: Database,
    store: ObjectStore,
    *,
    lease: Lease,
    owner_id: int,
    local_path: Path,
    kind: str,
    name: str,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Upload one file as artifact `name`; its uri is `artifacts/<job>/<name>/<filename>`."""
    validate_name(name)
    existing = find_published(db, lease.job_id, name)
    if existing is not None:
        return existing.id
    local_path = Path(local_path)
    if not local_path.is_file():
        raise FileNotFoundError(f"artifact file {local_path} does not exist")
    sha, size = sha256_of(local_path)
    record = FileRecord(local_path.name, sha, size)
    validate_key(record.path)
    prefix = artifact_prefix(lease.job_id, name)
    meta = {**(metadata or {}), "layout": "file", "checksum": "file", "files": [record.as_dict()]}
    return _upload_and_register(
        db, store, lease=lease, owner_id=owner_id, kind=kind, name=name, uri=prefix + record.path,
        sha256=sha, total=size, meta=meta, uploads=[(prefix + record.path, local_path, record)], prefix=prefix,
    )  # fmt: skip


def _upload_and_register(
    db: Database,
    store: ObjectStore,
    *,
    lease: Lease,
    owner_id: int,
    kind: str,
    name: str,
    uri: str,
    sha256: str,
    total: int,
    meta: dict[str, Any],
    uploads: list[tuple[str, Path, FileRecord]],
    prefix: str,
) -> str:
    try:
        # No row exists for (job, name), so whatever sits under the prefix is debris of a crashed attempt.
        store.delete_prefix(prefix)
        for key, path, record in uploads:
            info = store.put_file(key, path)
            if info.sha256 != record.sha256 or info.bytes != record.bytes:
                raise StoreError(f"{path} changed while it was being published (sha256/size differ)")
        _verify_stored(store, prefix, uploads)
        artifact_id = _insert_row(db, lease, owner_id, kind, name, uri, sha256, total, meta)
    except BaseException as exc:
        _cleanup(store, prefix, exc)
        raise
    logger.info("job %s: published %s artifact %r (%d files, %d bytes) as %s", lease.job_id, kind, name,
                len(uploads), total, artifact_id)  # fmt: skip
    return artifact_id


def _verify_stored(store: ObjectStore, prefix: str, uploads: list[tuple[str, Path, FileRecord]]) -> None:
    stored = {info.key: info.bytes for info in store.list(prefix)}
    for key, _, record in uploads:
        if stored.get(key) != record.bytes:
            raise StoreError(
                f"verification failed for {key}: store has {stored.get(key)} bytes, expected {record.bytes}"
            )


def _insert_row(
    db: Database, lease: Lease, owner_id: int, kind: str, name: str, uri: str, sha256: str, total: int,
    meta: dict[str, Any],
) -> str:  # fmt: skip
    try:
        with db.begin() as s:
            # Fence: the row is written only while this attempt still owns the job (row lock on PostgreSQL).
            if not lease_is_held(s, lease, lock=True):
                raise LeaseLostError(
                    f"job {lease.job_id}: lease lost before artifact {name!r} was registered"
                )
            artifact = Artifact(
                owner_id=owner_id, producer_job_id=lease.job_id, kind=kind, name=name, uri=uri,
                sha256=sha256, bytes=total, meta=meta, created_at=utcnow(),
            )  # fmt: skip
            s.add(artifact)
            s.flush()
            return artifact.id
    except IntegrityError:
        existing = find_published(db, lease.job_id, name)
        if existing is None:
            raise
        return existing.id


def _cleanup(store: ObjectStore, prefix: str, exc: BaseException) -> None:
    try:
        removed = store.delete_prefix(prefix)
        if removed:
            logger.info("removed %d partial objects under %s after: %s", removed, prefix, exc)
    except StoreError as cleanup_exc:
        # The store is unreachable: no row points at the debris, and the next publish of this
        # (job, name) clears the prefix first.
        logger.warning("could not remove partial objects under %s: %s", prefix, cleanup_exc)


# --- staging ------------------------------------------------------------------------------------------------


def get_artifact(db: Database, artifact_id: str) -> Artifact | None:
    with db.session() as s:
        return s.get(Artifact, artifact_id)


def stage_artifact(
    db: Database,
    store: ObjectStore,
    artifact_id: str,
    dest: Path,
    *,
    owner_id: int | None = None,
    kind: str | None = None,
) -> Path:
    """Make `dest` a verified local copy of a directory artifact (or, for a file artifact, return the
    path of the verified file inside `dest`). A complete earlier copy is reused.

    owner_id / kind: refuse (PermanentError) an artifact of another user or of the wrong kind.
    """
    artifact = get_artifact(db, artifact_id)
    if artifact is None or (owner_id is not None and artifact.owner_id != owner_id):
        raise PermanentError(f"artifact {artifact_id} not found")
    if kind is not None and artifact.kind != kind:
        raise PermanentError(f"artifact {artifact_id} is a {artifact.kind!r} artifact, expected {kind!r}")
    dest = Path(dest)
    files = [FileRecord(**f) for f in artifact.meta.get("files", [])]
    layout = artifact.meta.get("layout", "directory")
    result = dest / files[0].path if layout == "file" else dest
    with _dir_lock(dest):
        if _is_complete(dest, artifact):
            return result
        tmp = dest.with_name(f".{dest.name}.staging-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            base = artifact.uri if layout == "directory" else artifact.uri.rsplit("/", 1)[0] + "/"
            for record in files:
                info = store.get_file(base + record.path, tmp / record.path)
                if info.sha256 != record.sha256 or info.bytes != record.bytes:
                    raise StoreError(
                        f"artifact {artifact_id}: {record.path} is corrupt in the store "
                        f"(sha256 {info.sha256}, expected {record.sha256})"
                    )
            _check_artifact_digest(artifact, files, tmp)
            (tmp / MARKER).write_text(json.dumps({"id": artifact.id, "sha256": artifact.sha256}))
            shutil.rmtree(dest, ignore_errors=True)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return result


def _check_artifact_digest(artifact: Artifact, files: list[FileRecord], folder: Path) -> None:
    checksum = artifact.meta.get("checksum")
    if checksum == "manifest.json":
        actual, _ = sha256_of(folder / MANIFEST)
    elif checksum == "file-list":
        actual = listing_digest(files)
    else:
        actual = files[0].sha256
    if actual != artifact.sha256:
        raise StoreError(
            f"artifact {artifact.id}: checksum {actual} does not match the recorded {artifact.sha256}"
        )


def _is_complete(dest: Path, artifact: Artifact) -> bool:
    marker = dest / MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if recorded.get("sha256") != artifact.sha256:
        return False
    # cheap integrity check: every file present with its size (full hashes were checked when staged)
    return all(
        (dest / f["path"]).is_file() and (dest / f["path"]).stat().st_size == f["bytes"]
        for f in artifact.meta.get("files", [])
    )


@contextmanager
def _dir_lock(dest: Path) -> Iterator[None]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with (dest.parent / f".{dest.name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
