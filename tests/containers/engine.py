"""A Docker engine for the container suite: the Debian `docker.io` daemon started with its own data-root,
exec-root, pidfile and socket (vfs storage, no iptables, no bridge: it runs inside these CI machines as root),
or an already running engine named by CONTAINERS_DOCKER_HOST. `Engine` wraps the CLI calls the suite makes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = {"dockerd": "docker.io", "debootstrap": "debootstrap"}


class EngineUnavailable(RuntimeError):
    pass


def ensure_packages() -> None:
    """Install the engine and debootstrap from Debian packages when they are missing (root only)."""
    missing = [pkg for binary, pkg in PACKAGES.items() if not shutil.which(binary)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise EngineUnavailable(
            f"{', '.join(missing)} missing and not root: apt-get install -y {' '.join(missing)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:
            raise EngineUnavailable(
                f"{' '.join(args)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )


def docker_cli() -> str:
    """Debian's client (/usr/bin/docker, same release as the daemon) before any other `docker` on PATH."""
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker") or "docker"


@dataclass
class Engine:
    host: str
    cli: str = field(default_factory=docker_cli)
    storage_driver: str = ""

    def env(self) -> dict[str, str]:
        # DOCKER_BUILDKIT=0: the legacy builder, the one a Debian docker.io without buildx has; the
        # Dockerfiles must build with it as well as with BuildKit.
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "0"}

    def run(
        self, *args: str, check: bool = True, timeout: float = 300, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.cli, *args], capture_output=True, text=True, env=self.env(), timeout=timeout, input=input
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)[:300]} -> {result.returncode}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        return result

    def ok(self) -> bool:
        try:
            return (
                self.run("version", "--format", "{{.Server.Version}}", check=False, timeout=10).returncode
                == 0
            )
        except subprocess.TimeoutExpired:
            return False

    def inspect(self, name: str) -> dict:
        return json.loads(self.run("inspect", name).stdout)[0]


def storage_driver() -> str:
    """overlay2 where the kernel has overlayfs (measured here: the CPU image builds several times faster),
    else vfs, which works on any filesystem but copies every layer in full, ENV and LABEL steps included.
    CONTAINERS_DOCKER_STORAGE picks one; a failed overlay2 start falls back to vfs."""
    chosen = os.environ.get("CONTAINERS_DOCKER_STORAGE")
    if chosen:
        return chosen
    filesystems = Path("/proc/filesystems").read_text() if Path("/proc/filesystems").exists() else ""
    return "overlay2" if "\toverlay\n" in filesystems else "vfs"


def _mounts_under(path: Path) -> list[str]:
    lines = Path("/proc/mounts").read_text().splitlines()
    return [line.split()[1] for line in lines if line.split()[1].startswith(f"{path}/")]


def _start_dockerd(workdir: Path, driver: str) -> tuple[subprocess.Popen[bytes], Engine]:
    sock = workdir / "docker.sock"
    engine = Engine(f"unix://{sock}")
    with (workdir / "dockerd.log").open("ab") as log:
        proc = subprocess.Popen(
            ["dockerd", f"--storage-driver={driver}", "--iptables=false", "--ip-masq=false", "--bridge=none",
             f"--data-root={workdir / 'data'}", f"--exec-root={workdir / 'exec'}",
             f"--pidfile={workdir / 'dockerd.pid'}", f"--host={engine.host}", "--log-level=warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while not engine.ok():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            text = (workdir / "dockerd.log").read_text(errors="replace")[-3000:]
            raise EngineUnavailable(
                f"dockerd --storage-driver={driver} did not start ({proc.poll()}):\n{text}"
            )
        time.sleep(0.5)
    return proc, engine


@contextmanager
def docker_engine(workdir: Path) -> Iterator[Engine]:
    """Reuse CONTAINERS_DOCKER_HOST when it answers; else start a private dockerd under `workdir`, and stop
    it and delete its data-root (every image layer) at the end."""
    reuse = os.environ.get("CONTAINERS_DOCKER_HOST")
    if reuse:
        engine = Engine(reuse)
        if not engine.ok():
            raise EngineUnavailable(f"CONTAINERS_DOCKER_HOST={reuse} does not answer")
        yield engine
        return
    if os.geteuid() != 0:
        raise EngineUnavailable(
            "starting dockerd needs root (or set CONTAINERS_DOCKER_HOST to a running engine)"
        )
    ensure_packages()
    workdir.mkdir(parents=True, exist_ok=True)
    driver = storage_driver()
    try:
        proc, engine = _start_dockerd(workdir, driver)
    except EngineUnavailable:
        if driver == "vfs" or os.environ.get("CONTAINERS_DOCKER_STORAGE"):
            raise
        driver = "vfs"
        proc, engine = _start_dockerd(workdir, driver)
    engine.storage_driver = driver
    try:
        yield engine
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for mount in sorted(_mounts_under(workdir), reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)
        if not _mounts_under(workdir):
            shutil.rmtree(workdir / "data", ignore_errors=True)
            shutil.rmtree(workdir / "exec", ignore_errors=True)
