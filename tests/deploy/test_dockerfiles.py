"""The Dockerfiles and the entrypoint script, checked without a Docker engine: hadolint, shellcheck, the
structure the deployment relies on (multi-stage, non-root, healthcheck, one entrypoint), and the build
context (.dockerignore) really containing what the images copy and install."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.deploy.support import DOCKERFILES, ENTRYPOINT, REPO, clean_env, run, tool

BROKEN_DOCKERFILE = """\
FROM python:latest
RUN apt-get update && apt-get install -y build-essential
ADD . /app
RUN pip install -r /app/requirements.txt
ENV DB_PASSWORD=hunter2
CMD python /app/main.py
"""


def stages(text: str) -> list[str]:
    """The Dockerfile split at each FROM (comments dropped, continuation lines joined)."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    parts = re.split(r"(?m)^(?=FROM\s)", joined)
    return [part for part in parts if part.startswith("FROM")]


def test_there_is_a_cpu_a_cuda_and_a_slim_gateway_image() -> None:
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.api", "Dockerfile.cpu", "Dockerfile.cuda"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile: Path) -> None:
    result = run([tool("hadolint"), "--no-color", str(dockerfile)])
    assert result.returncode == 0, f"hadolint {dockerfile.name}:\n{result.stdout}{result.stderr}"


def test_hadolint_catches_a_broken_dockerfile(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text(BROKEN_DOCKERFILE)
    result = run([tool("hadolint"), "--no-color", str(broken)])
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3020", "DL3025"):  # :latest, unpinned apt, ADD, shell-form CMD
        assert rule in result.stdout, result.stdout


def test_entrypoint_is_shellcheck_clean_and_executable() -> None:
    assert ENTRYPOINT.stat().st_mode & 0o111, "docker/entrypoint.sh must be executable"
    result = run([tool("shellcheck"), "--shell=bash", str(ENTRYPOINT)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_structure(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    parts = stages(text)
    assert len(parts) >= 2, "multi-stage: a builder and a final stage"
    builder, final = parts[0], parts[-1]
    assert re.search(r"^FROM \S+ AS builder", builder, re.M)
    # every requirement is a wheel or pure Python: no stage installs build tools or starts from a -devel base
    assert not re.search(r"build-essential|gcc|g\+\+|-devel", "\n".join(parts))
    assert "COPY --from=builder /opt/venv /opt/venv" in final
    user = re.findall(r"^USER (\S+)", final, re.M)
    assert user and not user[-1].startswith(("0", "root")), "the final stage runs as a non-root user"
    assert re.search(r"^HEALTHCHECK .*CMD \[\"mmdlm-entrypoint\", \"healthcheck\"\]", final, re.M)
    assert 'ENTRYPOINT ["tini", "--", "mmdlm-entrypoint"]' in final
    assert re.search(r"if ! command -v tini", final), (
        "a base that has tini needs no apt-get (air-gapped builds)"
    )
    assert re.search(r"HF_HUB_OFFLINE=", final), "HF_HUB_OFFLINE has a default the deployment can override"
    assert re.search(r"^VOLUME .*\"/cache\"", final, re.M), "model caches live in a volume"
    # no credentials baked in: no ENV/ARG that sets a password, secret key or token
    for line in re.findall(r"(?m)^(?:ENV|ARG) .*$", text):
        assert not re.search(r"(PASSWORD|SECRET|ACCESS_KEY|_TOKEN)\s*=", line), line


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_builds_without_a_registry_frontend_or_buildkit(dockerfile: Path) -> None:
    """Air-gapped builds: no `# syntax=` frontend pull, nothing only BuildKit parses (the legacy builder of
    Debian's docker.io has to build these too), every base image an ARG (a mirror or a pinned digest)."""
    text = dockerfile.read_text()
    assert not re.search(r"(?im)^#\s*syntax\s*=", text)
    instructions = "\n".join(stages(text))
    assert not re.search(r"--(chmod|mount|link|checksum|parents|exclude)\b", instructions), (
        "BuildKit-only flag"
    )
    stage_names = re.findall(r"(?m)^FROM \S+ AS (\S+)", text)
    for image in re.findall(r"(?m)^FROM (\S+)", text):
        assert image.startswith("${") or image in stage_names, f"FROM {image}: make it a build ARG"
    defaults = dict(re.findall(r"(?m)^ARG (\w+)=(\S+)", text))
    base = defaults.get("PYTHON_IMAGE") or defaults.get("PYTORCH_IMAGE")
    assert base and ":" in base and "latest" not in base, "a documented default tag"
    builder = stages(text)[0]
    for arg in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        assert re.search(rf"(?m)^ARG {arg}$", builder), f"{arg} reaches the builder's pip"
    assert "docker/build-ca.pe[m]" in builder and 'PIP_CERT="$PWD/build-ca.pem"' in builder
    assert "build-ca" not in stages(text)[-1], "the build-time CA stays out of the final image"


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==(\S+)", line.strip())
        if match:
            found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(3)
    return found


def test_the_slim_gateway_requirements_are_a_torch_free_subset_with_the_same_pins() -> None:
    api, full = pins(REPO / "requirements-api.txt"), pins(REPO / "requirements.txt")
    assert api and not {"torch", "transformers", "sentence-transformers", "numpy", "tokenizers"} & set(api)
    assert {name: full.get(name) for name in api} == api, (
        "requirements-api.txt pins differ from requirements.txt"
    )
    text = (REPO / "docker" / "Dockerfile.api").read_text()
    assert "-r requirements-api.txt" in text and "--no-deps" in text
    assert not re.search(r"requirements(-nodeps)?\.txt", text), (
        "the slim image installs requirements-api.txt only"
    )


def test_the_gateway_import_chain_never_imports_torch(tmp_path: Path) -> None:
    """What the slim image's roles import (app + every job kind, CLI, health probe, migrations) without torch:
    the same check the Dockerfile.api build runs, here without an engine."""
    code = (
        "import sys, services.cli, services.deploy.healthcheck, services.common.migrate, services.api.main as m\n"
        "from services.common.kinds import load_kinds\n"
        "load_kinds(); m.create_app()\n"
        "print(sorted({'torch', 'transformers', 'numpy', 'tokenizers'} & set(sys.modules)))\n"
    )
    env = clean_env(MMDLM_HOME=str(tmp_path), HF_HUB_OFFLINE="1")
    result = run([sys.executable, "-c", code], env=env, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


def test_cpu_image_takes_torch_from_the_cpu_index_before_requirements() -> None:
    text = (REPO / "docker" / "Dockerfile.cpu").read_text()
    torch_at = text.index("torch==2.13.0")
    assert "download.pytorch.org/whl/cpu" in text
    assert torch_at < text.index("-r requirements.txt")
    assert "torch==2.13.0" in (REPO / "requirements.txt").read_text(), "keep the image's torch pin in step"


def test_cuda_image_keeps_the_base_images_torch() -> None:
    text = (REPO / "docker" / "Dockerfile.cuda").read_text()
    tag = re.search(r"ARG PYTORCH_TAG=(\S+)", text)
    assert tag and tag.group(1).startswith("2.13.0-cuda12."), "base torch = requirements.txt's torch"
    assert "--system-site-packages" in text
    assert "torch.version.cuda" in text, "the build fails if pip swapped in another torch"


def dockerignore_allows(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides; `!`
    re-includes. `*` stays within one path segment, `**/` spans any number of them."""
    parts = path.split("/")
    included = True
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            included = negate
    return included


def copied_sources() -> set[str]:
    sources: set[str] = set()
    for dockerfile in DOCKERFILES:
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                args = [a for a in line.split()[1:] if not a.startswith("--")]
                # a wildcard source is optional (docker/build-ca.pe[m]): admitted, need not exist
                sources.update(a.rstrip("/") for a in args[:-1] if "[" not in a)
    return sources


def test_dockerignore_admits_every_copied_path_and_nothing_secret() -> None:
    sources = copied_sources()
    assert {"requirements.txt", "mmdlm", "services", "docker/entrypoint.sh", "k8s/kubeflow"} <= sources
    missing = [s for s in sorted(sources) if not dockerignore_allows(s) or not (REPO / s).exists()]
    assert not missing, f"COPY sources excluded by .dockerignore or absent: {missing}"
    assert dockerignore_allows("docker/build-ca.pem"), "the optional build-time CA bundle reaches the builder"
    for path in (".env", ".venv", "var", "tests", "services/__pycache__", "k8s/overlays"):
        assert not dockerignore_allows(path), f"{path} must stay out of the build context"


def test_build_context_builds_a_wheel_with_the_migrations(tmp_path: Path) -> None:
    """What the builder stage's `pip install .` sees: only the admitted files; the wheel must carry the
    alembic migrations, the config presets and the health probe, or the image's roles break."""
    context = tmp_path / "context"
    for source in ("pyproject.toml", "README.md", "mmdlm", "services"):
        src = REPO / source
        if src.is_dir():
            shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            context.mkdir(exist_ok=True)
            shutil.copy2(src, context / source)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", ".", "-w", "dist"],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = (context / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "services/common/migrations/env.py" in names
    assert "services/common/migrations/script.py.mako" in names
    assert any(n.startswith("services/common/migrations/versions/") and n.endswith(".py") for n in names)
    assert "services/deploy/healthcheck.py" in names
    assert any(n.startswith("mmdlm/config/presets/") and n.endswith(".yaml") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "mmdlm = services.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
