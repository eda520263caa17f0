"""Registry-free ingredients of the image builds: a Debian base made with debootstrap and a wheelhouse made
with the host's pip, both cached under CONTAINERS_CACHE (default /var/cache/mmdlm-containers) and keyed
by a hash of their recipe, so only the first run pays for them. Also usable as a script to warm the cache:
`python -m tests.containers.images`."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("CONTAINERS_CACHE", "/var/cache/mmdlm-containers"))
SUITE = "bookworm"
# python-is-python3: the Dockerfiles call `python`, as in the python:3.11-slim images; tini is the init the
# images' ENTRYPOINT runs (present, so the runtime stage skips its apt-get step and needs no network).
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "tini", "ca-certificates")
REQUIREMENTS = ("requirements.txt", "requirements-nodeps.txt", "requirements-api.txt")
# bookworm's python3 is 3.11.2: redis requires async-timeout below 3.11.3, which a newer host's pip skips.
BASE_PYTHON = "3.11.2"
BASE_PYTHON_EXTRAS = ("async-timeout==5.0.1",)


def debian_mirror() -> str:
    """The host's Debian mirror (apt sources, one-line or deb822), so debootstrap uses what apt can reach."""
    if os.environ.get("CONTAINERS_DEBIAN_MIRROR"):
        return os.environ["CONTAINERS_DEBIAN_MIRROR"]
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file() or path.suffix not in {".list", ".sources", ""}:
            continue
        text = path.read_text(errors="replace")
        for match in re.finditer(r"(?m)^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", text):
            return match.group(1)
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"(?m)^URIs:\s*(\S+)", stanza)
            suites = re.search(r"(?m)^Suites:\s*(.*)$", stanza)
            if uris and suites and SUITE in suites.group(1).split() and "security" not in uris.group(1):
                return uris.group(1)
    return "http://deb.debian.org/debian"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def log(message: str) -> None:
    print(f"[containers] {message}", file=sys.stderr, flush=True)


def _mounts_inside(root: Path) -> list[str]:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    return [m for m in mounts if m.startswith(f"{root}/")]


def _unmount_under(root: Path) -> None:
    for mount in sorted(_mounts_inside(root), reverse=True):
        subprocess.run(["umount", "-l", mount], check=False)
    if _mounts_inside(root):
        raise RuntimeError(f"cannot unmount what debootstrap mounted under {root}; remove it by hand")


def base_tarball() -> Path:
    """A minbase Debian root with Python 3.11 and tini as a tarball for `docker import` (cached)."""
    mirror = debian_mirror()
    key = _digest("base-v1", SUITE, mirror, *BASE_PACKAGES)
    tarball = CACHE / f"debian-{SUITE}-python-{key}.tar"
    if tarball.exists():
        return tarball
    if not shutil.which("debootstrap"):
        raise RuntimeError("debootstrap is not installed (apt-get install -y debootstrap)")
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tmp = tempfile.mkdtemp(dir=CACHE, prefix="rootfs-")
    try:
        root = Path(tmp) / "root"
        try:
            subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(BASE_PACKAGES)}",
                    SUITE,
                    str(root),
                    mirror,
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        finally:
            _unmount_under(root)  # a failed debootstrap can leave /proc, /sys mounted: never rmtree into them
        for junk in (
            "var/cache/apt/archives",
            "var/lib/apt/lists",
            "var/log",
            "usr/share/doc",
            "usr/share/man",
        ):
            target = root / junk
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    elif child.name != "lock":
                        child.unlink()
        partial = Path(tmp) / "base.tar"  # renamed into place when complete: concurrent runs never see half
        subprocess.run(
            ["tar", "-C", str(root), "--one-file-system", "--numeric-owner", "-cf", str(partial), "."],
            check=True,
        )
        partial.rename(tarball)
    finally:
        # never a plain TemporaryDirectory: debootstrap may bind-mount the host's /dev, and rmtree would follow
        if not _mounts_inside(Path(tmp)):
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"debootstrap base {tarball.name}: {time.monotonic() - started:.0f} s")
    return tarball


def wheelhouse() -> Path:
    """Every wheel the images install, fetched by the host's pip (which finds the torch CPU wheel locally);
    the few pure-Python sdists become wheels here, so the image builds need neither an index nor a compiler."""
    texts = [(REPO / name).read_text() for name in REQUIREMENTS if (REPO / name).exists()]
    key = _digest("wheelhouse-v3", BASE_PYTHON, *BASE_PYTHON_EXTRAS, *texts)
    target = CACHE / f"wheelhouse-{key}"
    if (target / ".complete").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    partial = Path(tempfile.mkdtemp(dir=CACHE, prefix=f"wheelhouse-{key}.partial-"))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "download", "-r", str(REPO / "requirements.txt"), "-d", str(partial)], check=True)
    subprocess.run(
        [*pip, "download", "--no-deps", "-r", str(REPO / "requirements-nodeps.txt"), "-d", str(partial)],
        check=True,
    )
    for sdist in [*partial.glob("*.tar.gz"), *partial.glob("*.zip")]:
        subprocess.run([*pip, "wheel", "--no-deps", "-w", str(partial), str(sdist)], check=True)
        sdist.unlink()
    # pip evaluates environment markers with the host's Python only (--python-version changes wheel tags, not
    # markers), so what the base's older 3.11 patch release needs in addition is named here; a missing one
    # fails the image build with its name.
    subprocess.run([*pip, "download", "--no-deps", *BASE_PYTHON_EXTRAS, "-d", str(partial)], check=True)
    (partial / ".complete").touch()
    try:
        partial.rename(target)
    except OSError:  # another session finished the same wheelhouse first
        shutil.rmtree(partial, ignore_errors=True)
    log(f"wheelhouse {target.name}: {time.monotonic() - started:.0f} s")
    return target


if __name__ == "__main__":
    print(base_tarball())
    print(wheelhouse())
