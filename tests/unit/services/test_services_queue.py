"""Queues on the embedded (SQL) broker: workers starting together on a fresh broker all come up."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

DECLARE = """
import sys, time
from services.common.queue import create_celery, declare_queues
from services.common.settings import Settings
app = create_celery(Settings(home=sys.argv[1]))
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))  # every process declares at the same instant
declare_queues(app)
"""


def test_workers_declaring_at_once_on_a_fresh_broker_all_succeed(tmp_path: Path) -> None:
    for round_ in range(2):
        home = tmp_path / f"home-{round_}"
        home.mkdir()
        start = time.time() + 4.0  # after every interpreter has imported celery
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", DECLARE, str(home), str(start)], stderr=subprocess.PIPE, text=True
            )
            for _ in range(4)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err[-2000:]
        with sqlite3.connect(home / "broker.sqlite") as db:
            names = sorted(row[0] for row in db.execute("SELECT name FROM kombu_queue"))
        assert names == ["encode", "sample", "train"]
