"""Every MMDLM_* variable the code reads reaches every deployment: `.env.example` documents it, the
compose file hands it to every MM-DLM container, the ConfigMap carries it (the Secret template and the
dev Secret when it is a secret), and no deployment file sets a name the code does not read (a typo
would silently do nothing). Failures name the variable and the file to edit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.deploy import settings_catalog as cat
from services.deploy.kustomize import render
from tests.deploy.support import COMPOSE, ENV_EXAMPLE, K8S, REPO, clean_env, run, tool
from tests.deploy.test_compose import env_file

FIX = (
    "\nFix: python -m services.deploy.settings_catalog --sync adds each missing variable at its code "
    "default (an empty value); then give it a real value where the deployment needs one."
)


def allowed_names() -> set[str]:
    return cat.known_names()


@pytest.fixture(scope="module")
def variables() -> list[cat.SettingVar]:
    return cat.catalog()


def _missing(
    variables: list[cat.SettingVar], present: set[str], where: str, secret: bool | None
) -> list[str]:
    return [
        f"{v.env} (field {v.owner}.{v.field}) is missing from{' ' + where if where else ''}"
        for v in variables
        if (secret is None or v.secret == secret) and v.env not in present and f"{v.env}_FILE" not in present
    ]


def test_catalogue_covers_the_settings_classes_and_direct_reads(variables: list[cat.SettingVar]) -> None:
    owners = {v.owner for v in variables}
    assert "services.common.settings.Settings" in owners
    names = {v.env for v in variables}
    from services.common.settings import Settings

    assert {f"MMDLM_{f.upper()}" for f in Settings.model_fields} <= names
    for name in cat.direct_env_reads():
        assert name in names, f"{name} is read with os.environ but missing from the catalogue"
    assert not cat.collisions(), f"two settings classes read the same variable: {cat.collisions()}"
    secrets = {v.env for v in variables if v.secret}
    assert {"MMDLM_DATABASE_URL", "MMDLM_BROKER_URL", "MMDLM_S3_SECRET_KEY", "MMDLM_S3_ACCESS_KEY"} <= secrets
    assert "MMDLM_S3_BUCKET" not in secrets


def test_direct_reads_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "services" / "x.py"
    module.parent.mkdir()
    module.write_text('import os\nA = os.environ.get("MMDLM_FOO_BAR")\nB = os.getenv(\'MMDLM_BAZ\', "1")\n')
    monkeypatch.setattr(cat, "REPO", tmp_path)
    assert cat.direct_env_reads(("services",)) == {
        "MMDLM_FOO_BAR": ["services/x.py:2"],
        "MMDLM_BAZ": ["services/x.py:3"],
    }


def test_env_example_is_current() -> None:
    """The generated block of .env.example lists every variable with its default and description."""
    text = ENV_EXAMPLE.read_text()
    expected = cat.replace_block(text, cat.env_example_block())
    assert text == expected, (
        ".env.example is stale (a setting was added, removed or changed): run\n"
        "  python -m services.deploy.settings_catalog --write .env.example"
    )


def test_env_example_check_command_detects_staleness(tmp_path: Path) -> None:
    stale = tmp_path / ".env.example"
    stale.write_text(ENV_EXAMPLE.read_text().replace("# MMDLM_S3_BUCKET=mmdlm\n", ""))
    assert cat.main(["--check", str(stale)]) == 1
    assert cat.main(["--write", str(stale)]) == 0
    assert stale.read_text() == ENV_EXAMPLE.read_text()


@pytest.fixture(scope="module")
def compose_services(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("compose")
    cmd = [tool("docker-compose"), "-f", str(COMPOSE), "--project-directory", str(REPO)]
    result = run(
        [
            *cmd,
            "--env-file",
            str(env_file(tmp)),
            "--profile",
            "gpu",
            "--profile",
            "cpu",
            "config",
            "--format",
            "json",
        ],
        env=clean_env(),
        cwd=tmp,
    )
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    return {n: s for n, s in services.items() if str(s.get("image", "")).startswith("mmdlm:")}


def test_compose_gives_every_setting_to_every_container(
    variables: list[cat.SettingVar], compose_services: dict[str, dict[str, Any]]
) -> None:
    assert len(compose_services) >= 10, sorted(compose_services)
    where: dict[str, list[str]] = {}
    for name, service in sorted(compose_services.items()):
        present = set(service.get("environment") or {})
        for problem in _missing(variables, present, "", None):
            where.setdefault(problem, []).append(name)
    problems = [
        f"{problem} docker-compose.yml x-mmdlm-env (services {', '.join(names)})"
        for problem, names in where.items()
    ]
    assert not problems, "\n".join(problems) + FIX


def test_compose_sets_only_known_names(compose_services: dict[str, dict[str, Any]]) -> None:
    allowed = allowed_names()
    unknown = {
        f"{key} (service {name})"
        for name, service in compose_services.items()
        for key in service.get("environment") or {}
        if key.startswith(cat.PREFIX) and key not in allowed
    }
    assert not unknown, f"docker-compose.yml sets MMDLM_* names no settings class reads: {sorted(unknown)}"


def _configmap(path: Path) -> dict[str, str]:
    (obj,) = [o for o in yaml.safe_load_all(path.read_text()) if o and o["kind"] == "ConfigMap"]
    return obj["data"]


def _secret_keys(path: Path, name: str = "mmdlm-secrets") -> set[str]:
    docs = [o for o in yaml.safe_load_all(path.read_text()) if o and o["kind"] == "Secret"]
    (obj,) = [o for o in docs if o["metadata"]["name"] == name]
    return set(obj.get("stringData") or {}) | set(obj.get("data") or {})


def test_configmap_and_secrets_carry_every_setting(variables: list[cat.SettingVar]) -> None:
    config = set(_configmap(K8S / "base" / "configmap.yaml"))
    problems = _missing(variables, config, "k8s/base/configmap.yaml", secret=False)
    template = _secret_keys(K8S / "base" / "secret.template.yaml")
    problems += _missing(variables, template, "k8s/base/secret.template.yaml", secret=True)
    dev = _secret_keys(K8S / "overlays" / "dev-cpu" / "secrets.yaml")
    problems += _missing(variables, dev, "k8s/overlays/dev-cpu/secrets.yaml", secret=True)
    leaked = sorted(v.env for v in variables if v.secret and v.env in config)
    if leaked:
        problems.append(f"secrets in the ConfigMap (move them to the Secret): {leaked}")
    assert not problems, "\n".join(problems) + FIX


def test_kubernetes_sets_only_known_names() -> None:
    allowed = allowed_names()
    found: dict[str, set[str]] = {}
    for overlay in ("dev-cpu", "prod-gpu"):
        for obj in render(K8S / "overlays" / overlay):
            if obj["kind"] in ("ConfigMap", "Secret"):
                keys = set(obj.get("data") or {}) | set(obj.get("stringData") or {})
                found.setdefault(f"{obj['kind']} {obj['metadata']['name']}", set()).update(keys)
    found["k8s/base/secret.template.yaml"] = _secret_keys(K8S / "base" / "secret.template.yaml")
    unknown = {
        f"{key} ({where})"
        for where, keys in found.items()
        for key in keys
        if key.startswith(cat.PREFIX) and key not in allowed
    }
    assert not unknown, f"Kubernetes manifests set MMDLM_* names no settings class reads: {sorted(unknown)}"


def test_settings_load_from_the_deployment_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap of each overlay plus its Secret (or the template) are a valid configuration for
    every settings class: types parse and the cross-field rules hold (e.g. s3 needs endpoint and keys)."""
    for overlay in ("dev-cpu", "prod-gpu"):
        objs = render(K8S / "overlays" / overlay)
        env = dict(next(o for o in objs if o["kind"] == "ConfigMap")["data"])
        secrets = [o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"] == "mmdlm-secrets"]
        if not secrets:
            secrets = [
                o for o in yaml.safe_load_all((K8S / "base" / "secret.template.yaml").read_text()) if o
            ]
        env.update(secrets[0]["stringData"])
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        for cls in cat.settings_classes():
            settings = cls(_env_file=None)  # type: ignore[call-arg]
            if hasattr(settings, "store_backend"):
                assert settings.store_backend == "s3" and not settings.should_auto_migrate, overlay


def test_sync_adds_a_new_setting_everywhere(tmp_path: Path) -> None:
    """What the next person runs after adding a setting: every file gains it, and only it."""
    for target in cat.SYNC_TARGETS:
        (tmp_path / target.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / target.path).write_text((REPO / target.path).read_text())
    (tmp_path / ".env.example").write_text(ENV_EXAMPLE.read_text())
    variables = cat.catalog()
    cat.sync(tmp_path, variables)  # whatever the working tree lacks right now
    new = [
        cat.SettingVar("MMDLM_NEW_KNOB", "new_knob", variables[0].owner, False, "int", "3", "a new knob"),
        cat.SettingVar("MMDLM_NEW_PASSWORD", "new_password", variables[0].owner, True, "SecretStr", "", ""),
    ]
    added = cat.sync(tmp_path, variables + new)
    assert sorted(added) == sorted(
        [
            "docker-compose.yml: MMDLM_NEW_KNOB",
            "docker-compose.yml: MMDLM_NEW_PASSWORD",
            "k8s/base/configmap.yaml: MMDLM_NEW_KNOB",
            "k8s/base/secret.template.yaml: MMDLM_NEW_PASSWORD",
            "k8s/overlays/dev-cpu/secrets.yaml: MMDLM_NEW_PASSWORD",
            ".env.example: generated block refreshed",
        ]
    )
    compose_env = yaml.safe_load((tmp_path / "docker-compose.yml").read_text())["x-mmdlm-env"]
    assert compose_env["MMDLM_NEW_KNOB"] == "${MMDLM_NEW_KNOB:-}"
    assert _configmap(tmp_path / "k8s/base/configmap.yaml")["MMDLM_NEW_KNOB"] == ""
    assert "MMDLM_NEW_PASSWORD" in _secret_keys(tmp_path / "k8s/overlays/dev-cpu/secrets.yaml")
    assert "# MMDLM_NEW_KNOB=3" in (tmp_path / ".env.example").read_text()
    assert cat.sync(tmp_path, variables + new) == []
