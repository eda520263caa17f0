"""`mmdlm demo --keep`: the demo's stack stays up after its steps (here: none) with the dashboard's URL
printed and the demo user's token in a 0600 file, and Ctrl-C stops every process it started."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.utils.harness import REPO

pytestmark = pytest.mark.integration

SCRIPT = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if pytest runs in the background (`&` ignores SIGINT)
from rich.console import Console
from services.common.settings import Settings
from services.demo import run_demo
sys.exit(run_demo(Console(width=200), steps=[], settings=Settings(), scale="smoke", keep=True))
"""
URL = re.compile(r"dashboard: (http://127\.0\.0\.1:(\d+)/ui)")


def test_keep_leaves_the_stack_up_with_the_dashboard_url_until_ctrl_c(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMDLM_")}
    env.update(MMDLM_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        match = None
        deadline = time.monotonic() + 180
        while match is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = URL.search(line)
        assert match is not None, "no dashboard URL printed:\n" + "".join(lines)
        base = match.group(1).removesuffix("/ui")

        token_file = home / "demo" / "token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert token not in "".join(lines)  # never on the console
        # the stack is still up after the (empty) steps: the API answers with the demo user's token
        time.sleep(1.0)
        assert proc.poll() is None, "".join(lines)
        system = httpx.get(f"{base}/v1/system", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert system.status_code == 200, system.text
        assert system.json()["backends"]["database"] == "sqlite"

        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C
        rest, _ = proc.communicate(timeout=60)
        lines.append(rest)
        assert proc.returncode == 0, "".join(lines)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{base}/healthz", timeout=5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
