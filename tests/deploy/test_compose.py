"""docker-compose.yml through Compose v5's own validation (`docker-compose config`, no engine needed), for
the default and each profile, plus what the stack relies on: GPU reservations only in the gpu profile,
start order through health/completion conditions, healthchecks, volumes, and secrets required from the
environment rather than written down."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import COMPOSE, ENV_EXAMPLE, REPO, clean_env, run, tool

PROFILES = ["gpu", "cpu"]
ROLE_COMMANDS = {
    "api": ["api"],
    "migrate": ["migrate"],
    "sampler": ["sampler"],
    "worker-encode": ["worker", "--queues", "encode"],
    "worker-train": ["worker", "--queues", "train"],
    "worker-sample": ["worker", "--queues", "sample"],
}


def env_file(tmp_path: Path, **overrides: str) -> Path:
    """.env.example with its blanks filled, as a user's .env would be."""
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line)
        if match and match.group(1) in overrides:
            line = f"{match.group(1)}={overrides.pop(match.group(1))}"
        elif match and match.group(2) == "" and not match.group(1).startswith("HF_"):
            line = f"{match.group(1)}=test-{match.group(1).lower().replace('_', '-')}"
        lines.append(line)
    lines += [f"{key}={value}" for key, value in overrides.items()]
    path = tmp_path / "test.env"
    path.write_text("\n".join(lines) + "\n")
    return path


def compose(
    tmp_path: Path, *args: str, env: Path | None = None, file: Path = COMPOSE
) -> tuple[int, str, str]:
    env = env or env_file(tmp_path)
    cmd = [tool("docker-compose"), "-f", str(file), "--project-directory", str(REPO), "--env-file", str(env)]
    result = run([*cmd, *args], env=clean_env(), cwd=tmp_path)
    return result.returncode, result.stdout, result.stderr


def config(tmp_path: Path, *profiles: str) -> dict[str, Any]:
    flags = [arg for p in profiles for arg in ("--profile", p)]
    code, out, err = compose(tmp_path, *flags, "config", "--format", "json")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("profiles", [[], ["gpu"], ["cpu"]], ids=["default", "gpu", "cpu"])
def test_config_is_valid(tmp_path: Path, profiles: list[str]) -> None:
    flags = [arg for p in profiles for arg in ("--profile", p)]
    code, _, err = compose(tmp_path, *flags, "config", "-q")
    assert code == 0, err


def test_env_example_selects_the_gpu_profile(tmp_path: Path) -> None:
    # COMPOSE_PROFILES in the env file decides what `docker compose up` starts
    code, out, err = compose(tmp_path, "config", "--services")
    assert code == 0, err
    assert {"worker-train", "sampler"} <= set(out.split())
    code, out, err = compose(tmp_path, "config", "--services", env=env_file(tmp_path, COMPOSE_PROFILES="cpu"))
    assert code == 0, err
    assert {"worker-train-cpu", "sampler-cpu"} <= set(out.split()) and "worker-train" not in out.split()


def test_every_role_in_both_profiles(tmp_path: Path) -> None:
    for profile in PROFILES:
        services = config(tmp_path, profile)["services"]
        suffix = "-cpu" if profile == "cpu" else ""
        for role, command in ROLE_COMMANDS.items():
            name = role if role in ("api", "migrate") else role + suffix
            assert name in services, f"{profile}: no {name}"
            assert services[name]["command"] == command, name
        for name in ("postgres", "redis", "minio", "minio-init", "migrate", "api"):
            assert name in services, f"{name} must run in the {profile} profile"


def reservations(service: dict[str, Any]) -> list[dict[str, Any]]:
    return (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get(
        "devices"
    ) or []


def test_gpu_reservations_only_in_the_gpu_profile(tmp_path: Path) -> None:
    services = config(tmp_path, "gpu", "cpu")["services"]
    for name in ("sampler", "worker-encode", "worker-train", "worker-sample"):
        devices = reservations(services[name])
        assert devices and devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"], name
        assert services[name]["image"].endswith(":cuda"), name
        assert services[name]["profiles"] == ["gpu"]
    assert reservations(services["worker-train"])[0]["count"] == -1, "the trainer takes every GPU"
    assert int(services["worker-train"]["shm_size"]) >= 1 << 30, "NCCL needs a large /dev/shm"
    for name, service in services.items():
        if name.endswith("-cpu") or name in ("api", "migrate"):
            assert not reservations(service), f"{name} must run without a GPU"
            assert service["image"].endswith(":cpu"), name


def test_start_order_and_healthchecks(tmp_path: Path) -> None:
    services = config(tmp_path, "gpu", "cpu")["services"]
    for name in ("postgres", "redis", "minio"):
        assert services[name]["healthcheck"]["test"], name
        assert services[name].get("volumes") or name == "redis", f"{name} keeps its data in a volume"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in services.items():
        if name in ("postgres", "redis", "minio", "minio-init", "migrate"):
            continue
        conditions = {dep: spec["condition"] for dep, spec in service["depends_on"].items()}
        assert conditions == {
            "migrate": "service_completed_successfully",
            "minio-init": "service_completed_successfully",
            "redis": "service_healthy",
        }, name
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "mmdlm-entrypoint", "healthcheck"], name
        assert {"/cache"} <= {v["target"] for v in service["volumes"]}, f"{name}: model cache volume"
    named = set(config(tmp_path)["volumes"])
    assert {"postgres-data", "minio-data", "cache"} <= named


def test_minio_init_creates_the_bucket(tmp_path: Path) -> None:
    init = config(tmp_path)["services"]["minio-init"]
    script = " ".join(init["command"])
    # `$$` is compose's escape: the container's shell sees `$BUCKET`
    assert 'mc mb --ignore-existing "stack/$$BUCKET"' in script
    assert init["environment"]["BUCKET"] == "mmdlm"


def test_secrets_must_come_from_the_environment(tmp_path: Path) -> None:
    env = env_file(tmp_path, POSTGRES_PASSWORD="", STORE_SECRET_KEY="")
    code, _, err = compose(tmp_path, "config", "-q", env=env)
    assert code != 0
    assert "POSTGRES_PASSWORD" in err and "STORE_SECRET_KEY" in err
    text = COMPOSE.read_text()
    for secret in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "STORE_SECRET_KEY"):
        assert re.search(rf"\$\{{{secret}:\?", text), f"{secret} must be required, without a default"


@pytest.mark.parametrize(
    "mutation, expected",
    [
        (lambda s: s.replace("    shm_size: ${TRAIN_SHM_SIZE:-16gb}", "    shm_sise: 16gb"), "shm_sise"),
        (
            lambda s: s.replace("condition: service_completed_successfully", "condition: finished", 1),
            "condition value must be one of",
        ),
        (
            lambda s: s.replace(
                "      postgres:\n        condition: service_healthy",
                "      postgrs:\n        condition: service_healthy",
            ),
            "postgrs",
        ),
        (lambda s: s.replace("          count: all", "          count: many"), "count"),
    ],
    ids=["unknown-key", "bad-condition", "undefined-dependency", "bad-gpu-count"],
)
def test_config_catches_a_broken_file(tmp_path: Path, mutation: Any, expected: str) -> None:
    broken = tmp_path / "docker-compose.yml"
    text = mutation(COMPOSE.read_text())
    assert text != COMPOSE.read_text()
    broken.write_text(text)
    code, _, err = compose(tmp_path, "--profile", "gpu", "config", "-q", file=broken)
    assert code != 0 and expected in err, err
