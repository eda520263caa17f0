"""Session setup of the container suite: a Docker engine, the registry-free base image, a wheelhouse served
on loopback, and the two images built from docker/Dockerfile.cpu and docker/Dockerfile.api. Build times and
image sizes go to var/containers/report.json and to the end of the pytest output (also without -s)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers.engine import Engine, EngineUnavailable, docker_engine
from tests.containers.images import REPO, base_tarball, wheelhouse
from tests.utils.fixtures import need

REPORT: dict[str, object] = {}
REPORT_FILE = REPO / "var" / "containers" / "report.json"


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    need(os.geteuid() == 0 or bool(os.environ.get("CONTAINERS_DOCKER_HOST")),
         "the container suite needs root (apt-get, dockerd) or CONTAINERS_DOCKER_HOST")  # fmt: skip
    # a short path: dockerd's and containerd's unix sockets live under it (108-byte limit)
    workdir = Path(tmp_path_factory.mktemp("dk"))

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    # A SIGTERM'd pytest (`timeout`, CI cancel) would skip the finalizers and orphan dockerd with its data-root;
    # as KeyboardInterrupt, pytest still tears the session fixtures down.
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        with docker_engine(workdir) as started:
            REPORT["storage_driver"] = started.storage_driver or "(reused engine)"
            yield started
    except EngineUnavailable as exc:
        need(False, str(exc))
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="session")
def wheel_index() -> Iterator[str]:
    """The wheelhouse as a pip `--find-links` page on 127.0.0.1 (pip trusts loopback over plain HTTP)."""
    started = time.monotonic()
    folder = wheelhouse()
    REPORT["wheelhouse_s"] = round(time.monotonic() - started, 1)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def base_image(engine: Engine) -> str:
    """`docker import` of the debootstrap tarball: the PYTHON_IMAGE the builds use instead of Docker Hub."""
    started = time.monotonic()
    tarball = base_tarball()
    name = f"mmdlm-test-base:{tarball.stem.rsplit('-', 1)[-1]}"
    if engine.run("image", "inspect", name, check=False).returncode != 0:
        with tarball.open("rb") as handle:
            import subprocess

            subprocess.run(
                [engine.cli, "import", "--change", "ENV LANG=C.UTF-8", "-", name],
                stdin=handle, env=engine.env(), check=True, capture_output=True, timeout=600,
            )  # fmt: skip
    REPORT["base_image_s"] = round(time.monotonic() - started, 1)
    return name


def _build(engine: Engine, dockerfile: str, tag: str, base: str, index: str) -> None:
    started = time.monotonic()
    engine.run(
        "build", "--network", "host", "--force-rm", "-f", dockerfile, "-t", tag,
        "--build-arg", f"PYTHON_IMAGE={base}", "--build-arg", "PIP_NO_INDEX=1",
        "--build-arg", f"PIP_FIND_LINKS={index}", str(REPO),
        timeout=1800,
    )  # fmt: skip
    size = int(engine.run("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
    REPORT[Path(dockerfile).name] = {
        "build_s": round(time.monotonic() - started, 1),
        "size_mb": round(size / 1e6),
    }


@pytest.fixture(scope="session")
def images(engine: Engine, base_image: str, wheel_index: str) -> Iterator[dict[str, str]]:
    """{"cpu": tag, "api": tag}, removed (with the dangling builder layers) at the end of the session."""
    prebuilt = os.environ.get("CONTAINERS_IMAGES")  # "cpu=TAG,api=TAG": iterate on the runs, skip the builds
    if prebuilt:
        yield dict(item.split("=", 1) for item in prebuilt.split(","))  # type: ignore[misc]
        return
    run_id = "kept" if os.environ.get("CONTAINERS_KEEP_IMAGES") else secrets.token_hex(4)
    tags = {"cpu": f"mmdlm-test:cpu-{run_id}", "api": f"mmdlm-test:api-{run_id}"}
    try:
        _build(engine, "docker/Dockerfile.api", tags["api"], base_image, wheel_index)
        _build(engine, "docker/Dockerfile.cpu", tags["cpu"], base_image, wheel_index)
        yield tags
    finally:
        if not os.environ.get("CONTAINERS_KEEP_IMAGES"):  # keep: a reused engine's build cache survives
            engine.run("rmi", "--force", *tags.values(), check=False)
            engine.run("image", "prune", "--force", check=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORT:
        return
    REPORT_FILE.parent.mkdir(parents=True, exist_ok=True)
    REPORT_FILE.write_text(json.dumps(REPORT, indent=2) + "\n")
    terminalreporter.section("container images")
    for key, value in REPORT.items():
        terminalreporter.write_line(f"{key}: {value}")
    terminalreporter.write_line(f"(written to {REPORT_FILE.relative_to(REPO)})")
