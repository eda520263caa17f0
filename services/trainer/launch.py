"""`python -m services.trainer.launch <torchrun options> -m services.trainer.rank ...`: torchrun, bound to
the runner's lifetime (see `guard`). The ranks it starts learn its pid through the environment.

A stop (SIGTERM) is forwarded by torchrun to every rank, which checkpoints at the next step boundary and
exits; torchrun then raises SignalException, reported here as one line and the usual 128 + signal exit
status instead of a traceback.
"""

from __future__ import annotations

import os
import signal
import sys

from services.trainer.guard import LAUNCHER_PID, SUPERVISOR_PID, die_with_parent


def main() -> None:
    die_with_parent(SUPERVISOR_PID)
    os.environ[LAUNCHER_PID] = str(os.getpid())
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(sys.argv[1:])
    except SignalException as exc:
        name = signal.Signals(exc.sigval).name
        sys.stderr.write(f"torchrun stopped by {name}: the ranks were stopped (each checkpoints first)\n")
        sys.exit(128 + int(exc.sigval))


if __name__ == "__main__":
    main()
