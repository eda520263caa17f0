"""One rank: `python -m mmdlm.training` guarded by `guard`, leaving a pid file and, when it fails, an error
file (`<state>/errors/rank-<r>.json`: type, message, traceback, time) from which the runner reports THAT
rank's error as the job's error, instead of torchrun's summary of whichever rank it saw first."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from services.trainer.guard import LAUNCHER_PID, STATE_DIR, die_with_parent


def _state_dir() -> Path | None:
    value = os.environ.get(STATE_DIR)
    return Path(value) if value else None


def _write(path: Path, payload: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    tmp.replace(path)


def main() -> int:
    die_with_parent(LAUNCHER_PID)
    rank = int(os.environ.get("RANK", "0"))
    state = _state_dir()
    if state is not None:
        _write(
            state / "pids" / f"rank-{rank}.json", {"rank": rank, "pid": os.getpid(), "pgid": os.getpgid(0)}
        )
    from mmdlm.training.__main__ import main as train_main

    try:
        code = train_main(sys.argv[1:])
    except BaseException as exc:
        if state is not None and not (isinstance(exc, SystemExit) and exc.code in (0, None)):
            _write(
                state / "errors" / f"rank-{rank}.json",
                {"rank": rank, "type": type(exc).__name__, "message": str(exc),
                 "traceback": traceback.format_exc(), "time": time.time()},
            )  # fmt: skip
        raise
    if code and state is not None:
        _write(
            state / "errors" / f"rank-{rank}.json",
            {"rank": rank, "type": "ConfigError", "message": f"exited with status {code} (invalid config)",
             "traceback": "", "time": time.time(), "exit_code": code},
        )  # fmt: skip
    return code


if __name__ == "__main__":
    sys.exit(main())
