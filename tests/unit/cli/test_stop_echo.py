"""What `mmdlm logs --follow` shows of a cancelled training job comes from the trainer's supervisor: a
traceback a process prints because WE stopped it (a rank interrupted inside a collective) is folded
into its exception line; a traceback of a genuine failure is forwarded whole."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from services.trainer.supervise import AttemptDirs, RankLogTail, StopEcho, Torchrun

# A stand-in for a rank: on SIGTERM it fails the way a rank whose peer already left does.
RANK = """
import signal, sys, time
def on_term(*_):
    raise RuntimeError("Connection closed by peer [127.0.0.1]:29500")
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
if sys.argv[1] == "crash":
    raise ValueError("a real bug")
time.sleep(60)
"""


def run(tmp_path: Path, mode: str, stop: bool) -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    ready = threading.Event()

    def sink(line: str, stream: str) -> None:
        lines.append((stream, line))
        if line == "ready":
            ready.set()

    proc = Torchrun([sys.executable, "-c", RANK, mode], dict(os.environ), AttemptDirs(tmp_path / mode), sink)
    proc.start()
    assert ready.wait(30), lines
    if stop:
        proc.stop(grace_s=10)
    assert proc.wait(30) != 0
    proc.wait_readers()
    return lines


def test_a_stop_we_asked_for_shows_no_traceback(tmp_path: Path) -> None:
    lines = run(tmp_path, "wait", stop=True)
    stderr = [line for stream, line in lines if stream == "stderr"]
    assert not any("Traceback" in line or line.startswith("  File") for line in stderr), stderr
    assert stderr == ["RuntimeError: Connection closed by peer [127.0.0.1]:29500" + StopEcho.NOTE], stderr


def test_a_genuine_failure_keeps_its_traceback(tmp_path: Path) -> None:
    stderr = [line for stream, line in run(tmp_path, "crash", stop=False) if stream == "stderr"]
    assert stderr[0] == "Traceback (most recent call last):", stderr
    assert stderr[-1] == "ValueError: a real bug", stderr


def test_rank_logs_fold_chained_tracebacks_once_stopping(tmp_path: Path) -> None:
    dirs = AttemptDirs(tmp_path)
    log = dirs.logs / "run" / "attempt_0" / "1" / "stderr.log"
    log.parent.mkdir(parents=True)
    stopping = threading.Event()
    seen: list[str] = []
    tail = RankLogTail(
        dirs, lambda rank, stream, line: seen.append(f"[rank{rank}] {line}"), echo=StopEcho(stopping)
    )
    before = 'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\nOSError: disk full\n'
    log.write_text(before)
    tail.poll()
    assert seen == [f"[rank1] {line}" for line in before.splitlines()]  # before the stop: whole
    stopping.set()
    seen.clear()
    with log.open("a") as handle:
        handle.write(
            "step 7 loss 4.2\n"
            "Traceback (most recent call last):\n"
            '  File "loop.py", line 9, in step\n'
            "    dist.all_reduce(t)\n"
            "RuntimeError: Connection closed by peer\n"
            "\n"
            "During handling of the above exception, another exception occurred:\n"
            "\n"
            "Traceback (most recent call last):\n"
            '  File "rank.py", line 3, in main\n'
            "KeyboardInterrupt\n"
        )
    tail.poll(final=True)
    assert seen == [
        "[rank1] step 7 loss 4.2",
        f"[rank1] RuntimeError: Connection closed by peer{StopEcho.NOTE}",
        "[rank1] ",
        f"[rank1] KeyboardInterrupt{StopEcho.NOTE}",
    ], seen
    assert "Traceback" in log.read_text()  # the file (uploaded to the store) keeps every line
