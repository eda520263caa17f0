"""Launch torchrun for one attempt and supervise it: its own process group, every rank's log lines, a
SIGTERM-then-SIGKILL stop that reaches every rank, and the error message of the rank that failed.

Layout of one attempt (under the job's scratch dir):
    attempt-<n>/train.json           the resolved TrainConfig the ranks load
    attempt-<n>/logs/<run>/attempt_0/<rank>/{stdout,stderr}.log   torchrun --redirects 3 --log-dir
    attempt-<n>/state/pids/rank-<r>.json, state/errors/rank-<r>.json   written by `services.trainer.rank`
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.trainer.guard import STATE_DIR, SUPERVISOR_PID

logger = logging.getLogger(__name__)

LineSink = Callable[[str, str], None]  # (line, stream)
_RANK_LOG = re.compile(r"attempt_\d+/(\d+)/(stdout|stderr)\.log$")
_ROOT_CAUSE = re.compile(r"rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)


@dataclass
class AttemptDirs:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "train.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def rank_logs(self) -> dict[tuple[int, str], Path]:
        """(rank, stream) -> file, for every rank log torchrun has created so far."""
        found: dict[tuple[int, str], Path] = {}
        for path in sorted(self.logs.glob("*/attempt_*/*/*.log")):
            m = _RANK_LOG.search(path.as_posix())
            if m:
                found[(int(m.group(1)), m.group(2))] = path
        return found


def torchrun_command(dirs: AttemptDirs, nproc_per_node: int, python: str = sys.executable) -> list[str]:
    """The command of a single-node job; the guarded launcher wraps torchrun (see `guard`)."""
    return [
        python, "-m", "services.trainer.launch",
        "--standalone", f"--nproc-per-node={nproc_per_node}", "--max-restarts=0",
        "--monitor-interval=0.2", "--redirects=3", f"--log-dir={dirs.logs}",
        "-m", "services.trainer.rank", "--config", str(dirs.config),
    ]  # fmt: skip


@dataclass
class _Tail:
    offset: int = 0
    partial: bytes = b""


_TRACEBACK_STARTS = (
    "Traceback (most recent call last):",
    "During handling of the above exception",
    "The above exception was the direct cause",
)


class StopEcho:
    """While a stop we asked for is under way (cancel, a lost lease), a Python traceback in a rank's or
    torchrun's output is the stop's echo (a rank interrupted inside a collective whose peer already
    left, an interrupted import), not the job's error. Such a traceback is folded into its last line,
    the exception, so the job log (and `mmdlm logs --follow`) ends cleanly. The rank log files keep
    every line (uploaded to the store). Tracebacks that started before the stop pass unchanged."""

    NOTE = " (traceback not shown: the job was being stopped)"

    def __init__(self, stopping: threading.Event) -> None:
        self.stopping = stopping
        self._inside: set[object] = set()  # sources in the middle of a folded traceback

    def __call__(self, source: object, line: str) -> str | None:
        """The line to forward for `source` (a rank and stream, or torchrun's stream), or None."""
        if source in self._inside:
            if not line.strip() or line[:1].isspace() or line.startswith(_TRACEBACK_STARTS):
                return None
            self._inside.discard(source)
            return line + self.NOTE
        if self.stopping.is_set() and line.startswith(_TRACEBACK_STARTS):
            self._inside.add(source)
            return None
        return line


@dataclass
class RankLogTail:
    """Follows every rank's stdout/stderr file; `poll()` hands new complete lines to `sink`."""

    dirs: AttemptDirs
    sink: Callable[[int, str, str], None]  # (rank, stream, line)
    keep: int = 200
    echo: StopEcho | None = None  # folds the tracebacks of a stop we asked for
    _tails: dict[Path, _Tail] = field(default_factory=dict)
    recent: dict[int, collections.deque[str]] = field(default_factory=dict)

    def poll(self, final: bool = False) -> None:
        for (rank, stream), path in self.dirs.rank_logs().items():
            tail = self._tails.setdefault(path, _Tail())
            try:
                with path.open("rb") as handle:
                    handle.seek(tail.offset)
                    data = handle.read()
            except OSError:
                continue
            tail.offset += len(data)
            lines = (tail.partial + data).split(b"\n")
            tail.partial = lines.pop()
            if final and tail.partial:
                lines.append(tail.partial)
                tail.partial = b""
            for raw in lines:
                line = raw.decode("utf-8", errors="replace").rstrip("\r")
                if stream == "stderr":
                    self.recent.setdefault(rank, collections.deque(maxlen=self.keep)).append(line)
                shown = line if self.echo is None else self.echo((rank, stream), line)
                if shown is not None:
                    self.sink(rank, stream, shown)


class Torchrun:
    """One torchrun process tree. `stop()` is safe from any thread and idempotent."""

    def __init__(self, command: list[str], env: dict[str, str], dirs: AttemptDirs, sink: LineSink) -> None:
        self.command = command
        self.env = env
        self.dirs = dirs
        self.sink = sink
        self.proc: subprocess.Popen[bytes] | None = None
        self.launcher_stderr: collections.deque[str] = collections.deque(maxlen=400)
        self.stopping = threading.Event()
        self.echo = StopEcho(self.stopping)  # shared with the RankLogTail of this attempt
        self._readers: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> Torchrun:
        self.dirs.state.mkdir(parents=True, exist_ok=True)
        env = {**self.env, SUPERVISOR_PID: str(os.getpid()), STATE_DIR: str(self.dirs.state)}
        self.proc = subprocess.Popen(
            self.command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, cwd=self.dirs.root,
        )  # fmt: skip
        for stream, pipe in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
            t = threading.Thread(
                target=self._read, args=(stream, pipe), daemon=True, name=f"torchrun-{stream}"
            )
            t.start()
            self._readers.append(t)
        logger.info("started torchrun (pid %d): %s", self.proc.pid, " ".join(self.command))
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _read(self, stream: str, pipe: object) -> None:
        assert pipe is not None
        for raw in iter(pipe.readline, b""):  # type: ignore[attr-defined]
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            if stream == "stderr":
                self.launcher_stderr.append(line)
            shown = self.echo(("torchrun", stream), line)
            if shown is not None:
                self.sink(shown, stream)

    def poll(self) -> int | None:
        assert self.proc is not None
        return self.proc.poll()

    def wait_readers(self, timeout_s: float = 5.0) -> None:
        for t in self._readers:
            t.join(timeout_s)

    def rank_pids(self) -> list[int]:
        pids = []
        for path in (self.dirs.state / "pids").glob("rank-*.json"):
            try:
                pids.append(int(json.loads(path.read_text())["pid"]))
            except (OSError, ValueError, KeyError):
                continue
        return pids

    def stop(self, grace_s: float) -> None:
        """SIGTERM the launcher's group (torchrun forwards it to every rank, which checkpoints at the next
        step boundary and exits), SIGKILL what is left after `grace_s` (torchrun itself kills its ranks
        after its --shutdown-timeout, 30 s by default). Returns at once; a timer thread does the SIGKILL."""
        with self._lock:
            if self.stopping.is_set() or self.proc is None:
                return
            self.stopping.set()
        logger.info("stopping torchrun (pid %d): SIGTERM, SIGKILL in %gs", self.proc.pid, grace_s)
        _signal_group(self.proc.pid, signal.SIGTERM)
        timer = threading.Timer(grace_s, self.kill)
        timer.daemon = True
        timer.start()

    def kill(self) -> None:
        """SIGKILL the launcher group and every rank's own group (ranks are session leaders)."""
        if self.proc is None:
            return
        for pid in self.rank_pids():
            _signal_group(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            logger.warning("torchrun (pid %d) still running: SIGKILL", self.proc.pid)
        _signal_group(self.proc.pid, signal.SIGKILL)

    def wait(self, timeout_s: float | None = None) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def failure_message(torchrun: Torchrun, logs: RankLogTail, returncode: int, lines: int) -> str:
    """The job error of a failed attempt: the first rank that failed, its error and last traceback lines."""
    errors = []
    for path in (torchrun.dirs.state / "errors").glob("rank-*.json"):
        try:
            errors.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    if errors:
        first = min(errors, key=lambda e: e.get("time", 0.0))
        trace = [line for line in str(first.get("traceback", "")).strip().splitlines() if line.strip()]
        text = [f"rank {first['rank']} failed: {first['type']}: {first['message']}", *trace[-lines:]]
        others = sorted(e["rank"] for e in errors if e is not first)
        if others:
            text.append(f"(ranks {others} failed after it)")
        return "\n".join(text)
    summary = "\n".join(torchrun.launcher_stderr)
    cause = summary.split("Root Cause", 1)[-1] if "Root Cause" in summary else ""
    m = _ROOT_CAUSE.search(cause)
    if m:
        rank, code = int(m.group(1)), int(m.group(2))
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        tail = [line for line in logs.recent.get(rank, []) if line.strip()][-lines:]
        return f"rank {rank} {how}" + ("\n" + "\n".join(tail) if tail else "")
    tail = [line for line in torchrun.launcher_stderr if line.strip()][-lines:]
    return f"torchrun exited with status {returncode}" + ("\n" + "\n".join(tail) if tail else "")


def wait_gone(pids: list[int], timeout_s: float) -> bool:
    """True when none of `pids` exists any more (zombies of other parents count as gone)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
