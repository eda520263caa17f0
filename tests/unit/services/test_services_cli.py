"""The `mmdlm` CLI: clear one-line errors (never a traceback), token creation, lazy ML mount."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from services import cli

REPO = Path(__file__).resolve().parents[3]


def invoke(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    runner = CliRunner()
    result = runner.invoke(cli.build_cli(args), args, env=env or {}, catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MMDLM_HOME", str(tmp_path / "var"))
    return tmp_path / "var"


def test_client_commands_without_a_token_say_how_to_get_one(home: Path) -> None:
    code, out = invoke(["jobs"])
    assert code == 1 and "MMDLM_TOKEN" in out and "token create" in out


def test_unreachable_api_is_one_line(home: Path) -> None:
    code, out = invoke(["status", "abc"], {"MMDLM_TOKEN": "mmdlm_x", "MMDLM_API_URL": "http://127.0.0.1:9"})
    assert code == 1 and "cannot reach the MM-DLM API at http://127.0.0.1:9" in out and "Traceback" not in out


def test_submit_reports_file_problems(home: Path, tmp_path: Path) -> None:
    env = {"MMDLM_TOKEN": "mmdlm_x", "MMDLM_API_URL": "http://127.0.0.1:9"}
    code, out = invoke(["submit", str(tmp_path / "missing.yaml")], env)
    assert code == 1 and "config file not found" in out
    spec = tmp_path / "job.yaml"
    spec.write_text("seq_len: 64\n")
    code, out = invoke(["submit", str(spec)], env)
    assert code == 1 and "missing `kind`" in out
    spec.write_text("- a list\n")
    code, out = invoke(["submit", str(spec)], env)
    assert code == 1 and "expected a mapping" in out


def test_invalid_settings_name_the_variable(home: Path) -> None:
    code, out = invoke(["jobs"], {"MMDLM_LEASE_TTL_S": "soon"})
    assert code == 1 and "invalid MMDLM_* settings" in out and "lease_ttl_s" in out


def test_token_create_prints_only_the_token_on_stdout(home: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "token", "create", "--user", "alice"],
        capture_output=True, text=True, cwd=home.parent, timeout=120,
        env={"PATH": "/usr/bin:/bin", "MMDLM_HOME": str(home), "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("mmdlm_") and len(result.stdout.split()) == 1
    assert "shown once" in result.stderr


def test_worker_refuses_unknown_queues(home: Path) -> None:
    code, out = invoke(["worker", "--queues", "encode,gpu"])
    assert code == 1 and "unknown queues ['gpu']" in out


def test_migrate_creates_the_schema(home: Path) -> None:
    from services.common.migrate import head_revision

    code, out = invoke(["migrate"])
    assert code == 0 and f"revision {head_revision()}" in out


def test_a_broken_ml_cli_never_breaks_platform_commands(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mmdlm.cli", None)  # importing it now raises ImportError
    group = cli.build_cli(["--help"])
    assert "jobs" in group.commands and "train" not in group.commands  # type: ignore[attr-defined]
    code, out = invoke(["migrate"])
    assert code == 0
    with pytest.raises(Exception) as info:  # typer.Exit after a one-line message
        cli.build_cli(["train"])
    assert getattr(info.value, "exit_code", None) == 1


def test_ml_commands_are_mounted_when_available(home: Path) -> None:
    group = cli.build_cli([])
    ml_names = set(group.commands) - cli.PLATFORM_COMMANDS  # type: ignore[attr-defined]
    try:
        import mmdlm.cli  # noqa: F401
    except Exception:
        pytest.skip("mmdlm.cli is not importable in this checkout")
    assert ml_names, "mmdlm.cli:app imports but none of its commands were mounted"
