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
        assert "count" not in devices[0] and devices[0]["device_ids"] == ["0"], f"{name}: its own GPUs"
        assert services[name]["image"].endswith(":cuda"), name
        assert services[name]["profiles"] == ["gpu"]
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
        (
            lambda s: s.replace('device_ids: ["${TRAIN_GPU_IDS:-0}"]', 'device_ids: "${TRAIN_GPU_IDS:-0}"'),
            "device_ids",
        ),
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


GPU_IDS = {
    "sampler": "SAMPLER_GPU_IDS",
    "worker-encode": "ENCODE_GPU_IDS",
    "worker-sample": "SAMPLE_GPU_IDS",
    "worker-train": "TRAIN_GPU_IDS",
}


def test_each_gpu_service_gets_its_own_devices(tmp_path: Path) -> None:
    """No service takes every GPU: each reserves the devices its variable names (the trainer several)."""
    ids = {"SAMPLER_GPU_IDS": "0", "ENCODE_GPU_IDS": "1", "SAMPLE_GPU_IDS": "1", "TRAIN_GPU_IDS": "2,3,4,5"}
    env = env_file(tmp_path, **ids)
    code, out, err = compose(tmp_path, "--profile", "gpu", "config", "--format", "json", env=env)
    assert code == 0, err
    services = json.loads(out)["services"]
    for name, variable in GPU_IDS.items():
        (device,) = reservations(services[name])
        assert device["device_ids"] == [ids[variable]], name
        assert "count" not in device, f"{name}: count and device_ids exclude each other"
    text = ENV_EXAMPLE.read_text()
    for variable in GPU_IDS.values():
        assert re.search(rf"(?m)^{variable}=0$", text), f".env.example documents {variable}"


def test_cuda_image_exposes_no_gpu_by_default() -> None:
    """Without a reservation (or a Kubernetes GPU request) a container of the CUDA image sees no GPU:
    NVIDIA_VISIBLE_DEVICES=all in the image would hand every GPU of the host to any container."""
    dockerfile = (REPO / "docker" / "Dockerfile.cuda").read_text()
    values = re.findall(r"NVIDIA_VISIBLE_DEVICES=(\S+)", dockerfile)
    assert values and all(v in ("void", "none") for v in values), values


SECRET_FILES = {
    "MMDLM_DATABASE_URL_FILE": "database-url",
    "MMDLM_S3_ACCESS_KEY_FILE": "store-access-key",
    "MMDLM_S3_SECRET_KEY_FILE": "store-secret-key",
}


def test_secrets_reach_containers_as_files_not_environment(tmp_path: Path) -> None:
    """Every secret value of .env is absent from every container's environment and command; the
    MM-DLM containers read them from /run/secrets through MMDLM_*_FILE (loaded by the entrypoint),
    PostgreSQL and MinIO through their own *_FILE variables."""
    secrets = {
        "POSTGRES_PASSWORD": "pg-pass-4f1d",
        "MINIO_ROOT_PASSWORD": "minio-root-9a2c",
        "STORE_ACCESS_KEY": "store-key-77b0",
        "STORE_SECRET_KEY": "store-secret-e3d5",
    }
    code, out, err = compose(
        tmp_path, "--profile", "gpu", "--profile", "cpu", "config", "--format", "json",
        env=env_file(tmp_path, **secrets),
    )  # fmt: skip
    assert code == 0, err
    cfg = json.loads(out)
    assert cfg["secrets"]["database-url"]["environment"] == "DATABASE_URL"
    for name, service in cfg["services"].items():
        visible = json.dumps([service.get("environment"), service.get("command"), service.get("entrypoint")])
        for variable, value in secrets.items():
            assert value not in visible, f"{name}: {variable} is in its environment or command"
        mounted = {s["source"] for s in service.get("secrets") or []}
        if str(service.get("image", "")).startswith("mmdlm:"):
            for env_name, secret in SECRET_FILES.items():
                assert service["environment"][env_name] == f"/run/secrets/{secret}", name
                assert secret in mounted, f"{name} does not mount {secret}"
                assert env_name.removesuffix("_FILE") not in service["environment"], name
    services = cfg["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres-password"
    minio = services["minio"]
    assert minio["environment"]["MINIO_ROOT_PASSWORD_FILE"] == "minio-root-password"  # under /run/secrets
    assert {s["source"] for s in minio["secrets"]} == {"minio-root-user", "minio-root-password"}
    # the database URL secret is built from the password in .env (compose interpolates .env itself)
    example = ENV_EXAMPLE.read_text()
    assert "DATABASE_URL=postgresql+psycopg://${POSTGRES_USER}:${POSTGRES_PASSWORD}@postgres:5432/" in example
