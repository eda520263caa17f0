"""Queues on the embedded (SQL) broker: workers starting together on a fresh broker all come up."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from services.common.queue import TASK_NAME, create_celery, declare_queues, publish, publish_many
from services.common.settings import Settings
from tests.utils.servers import redis_namespace

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


@pytest.mark.parametrize("broker", ["redis", "embedded"])
def test_batched_wake_ups_are_the_messages_send_task_makes(broker: str, tmp_path: Path) -> None:
    """`publish_many` (the gateway's batched wake-ups) puts on each queue, in order, the task message
    Celery's own `send_task` (`publish`) puts there: same task name, header fields, body and content
    type, one fresh task id each; on Redis and on the embedded SQL broker."""
    with ExitStack() as stack:
        if broker == "redis":
            url, prefix = stack.enter_context(redis_namespace())
            settings = Settings(_env_file=None, home=tmp_path, broker_url=url, broker_key_prefix=prefix)  # type: ignore[call-arg]
        else:
            settings = Settings(_env_file=None, home=tmp_path)  # type: ignore[call-arg]
        app = create_celery(settings)
        declare_queues(app)
        publish(app, "reference", "train")
        wakeups = [("job-a", "encode"), ("job-b", "train"), ("job-c", "encode")]
        publish_many(app, wakeups)
        got: dict[str, list[object]] = {"encode": [], "train": []}
        with app.connection_for_read() as conn:
            channel = conn.default_channel
            for queue in got:
                while (message := channel.basic_get(queue, no_ack=True)) is not None:
                    got[queue].append(message)
        reference, *train = got["train"]
        assert [m.decode()[0] for m in got["encode"]] == [["job-a"], ["job-c"]]
        assert [m.decode()[0] for m in train] == [["job-b"]]
        for message in [*got["encode"], *train]:
            assert message.content_type == reference.content_type == "application/json"
            assert set(message.headers) == set(reference.headers)
            assert message.headers["task"] == TASK_NAME
            assert message.decode()[1:] == reference.decode()[1:]  # kwargs and embed
        ids = [m.headers["id"] for m in [reference, *got["encode"], *train]]
        assert len(set(ids)) == len(ids)
        app.close()
