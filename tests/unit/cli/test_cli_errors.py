"""The real `mmdlm` console script on a user's mistakes: a bad job file, a bad `--set`, a wrong or
unreachable API address. Each ends with a non-zero exit and one `error:` line saying what is wrong and
what to do, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.utils.servers import free_port

MMDLM = str(Path(sys.executable).with_name("mmdlm"))  # the installed console script, as a user runs it
REPO = Path(__file__).resolve().parents[3]


def run_mmdlm(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MMDLM_")}
    base.update(HF_HUB_OFFLINE="1", MMDLM_HOME=str(cwd / "var"), **env)
    return subprocess.run(
        [MMDLM, *args], env=base, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str, code: int = 1) -> str:
    """Exit `code`, nothing but one `error: ...` line on stderr holding every word, no traceback anywhere."""
    both = result.stdout + result.stderr
    assert "Traceback" not in both, both
    assert result.returncode == code, both
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), both
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


CLIENT = {"MMDLM_TOKEN": "mmdlm_x", "MMDLM_API_URL": "http://127.0.0.1:9"}


@pytest.mark.parametrize(
    ("content", "name", "words"),
    [
        (
            "kind: train\nsteps: [1\n",
            "job.yaml",
            ["job.yaml is not valid YAML", "line 3, column 1", "expected ','"],
        ),
        ("kind: train\n\tsteps: 3\n", "job.yaml", ["not valid YAML", "line 2, column 1", "'\\t'"]),
        ('kind: "train\n', "job.yaml", ["not valid YAML", "quoted scalar"]),
        ('{"kind": ', "job.json", ["job.json is not valid JSON", "line 1"]),
        ("- kind: train\n", "job.yaml", ["expected a mapping at the top level, got list"]),
        ("just a string\n", "job.yaml", ["expected a mapping", "got str"]),
        ("steps: 3\n", "job.yaml", ["missing `kind`", "kind: prepare-data"]),
    ],
)
def test_submit_names_what_is_wrong_with_the_file(
    tmp_path: Path, content: str, name: str, words: list[str]
) -> None:
    (tmp_path / name).write_text(content)
    assert_one_line_error(run_mmdlm(["submit", name], CLIENT, tmp_path), *words)


def test_submit_of_a_missing_file_and_bad_overrides(tmp_path: Path) -> None:
    assert_one_line_error(
        run_mmdlm(["submit", "nope.yaml"], CLIENT, tmp_path), "config file not found: nope.yaml"
    )
    (tmp_path / "job.yaml").write_text("kind: train\nsteps: 3\n")
    cases = {
        "steps=[1": ["--set 'steps=[1'", "not valid YAML", "column 3"],
        "steps.x=1": ["--set", "'steps' is not a section"],
        "steps": ["--set", "must look like key.sub=value"],
    }
    for override, words in cases.items():
        assert_one_line_error(run_mmdlm(["submit", "job.yaml", "--set", override], CLIENT, tmp_path), *words)


def test_ml_commands_report_bad_yaml_in_one_line(tmp_path: Path) -> None:
    """The ML commands exit 2 (bad input) with the same one-line description."""
    (tmp_path / "train.yaml").write_text("steps: [1\n")
    result = run_mmdlm(["train", "train.yaml"], {}, tmp_path)
    assert_one_line_error(result, "config is not valid YAML", "line 2, column 1", "expected ','", code=2)


@pytest.fixture
def not_the_api() -> Iterator[str]:
    """A real HTTP server that is not the MM-DLM API (a wrong port, a proxy's HTML error page)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
            body = b"<html><body><h1>404 Not Found</h1><p>nginx</p></body></html>\n" * 20
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_client_commands_on_a_wrong_api_url(tmp_path: Path, not_the_api: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cases = [
        ("not-a-url", ["MMDLM_API_URL", "must be http(s)://host[:port]", "'not-a-url'"]),
        ("ftp://127.0.0.1:21", ["MMDLM_API_URL", "must be http(s)://host[:port]"]),
        ("http://[::1", ["MMDLM_API_URL", "invalid MM-DLM API URL"]),
        (closed, [f"cannot reach the MM-DLM API at {closed}", "Connection refused", "MMDLM_API_URL"]),
        (not_the_api, ["HTTP 404", "text/html", "is MMDLM_API_URL the MM-DLM API?"]),
    ]
    for url, words in cases:
        env = {**CLIENT, "MMDLM_API_URL": url}
        for args in (["jobs"], ["status", "0" * 32]):
            line = assert_one_line_error(run_mmdlm(args, env, tmp_path), *words)
            assert "<html>" not in line


def test_no_token_says_how_to_get_one(tmp_path: Path) -> None:
    result = run_mmdlm(["jobs"], {"MMDLM_API_URL": "http://127.0.0.1:9"}, tmp_path)
    assert_one_line_error(result, "MMDLM_TOKEN", "mmdlm token create --user NAME")


def test_messages_with_brackets_are_printed_whole(tmp_path: Path) -> None:
    """`[...]` in a message is text, not console markup (it used to vanish)."""
    result = run_mmdlm(["worker", "--queues", "encode,gpu"], {}, tmp_path)
    assert_one_line_error(result, "unknown queues ['gpu']", "['encode', 'train', 'sample']")


def test_admin_commands_on_an_unreachable_database(tmp_path: Path) -> None:
    """Commands without a start-up check (`token`, `sweep`) meet the outage mid-command: one line too."""
    env = {"MMDLM_DATABASE_URL": f"postgresql+psycopg://postgres:hunter2@127.0.0.1:{free_port()}/mmdlm"}
    for args, words in (
        (["token", "create", "--user", "alice"], ["cannot create the token", "Connection refused"]),
        (["token", "revoke", "--user", "alice"], ["cannot revoke", "Connection refused"]),
        (["sweep"], ["OperationalError", "Connection refused"]),
    ):
        line = assert_one_line_error(run_mmdlm(args, env, tmp_path), *words)
        assert "hunter2" not in line
