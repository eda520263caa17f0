"""`python -m services.trainer.launch <torchrun options> -m services.trainer.rank ...`: torchrun, bound to
the runner's lifetime (see `guard`). The ranks it starts learn its pid through the environment."""

from __future__ import annotations

import os
import sys

from services.trainer.guard import LAUNCHER_PID, SUPERVISOR_PID, die_with_parent


def main() -> None:
    die_with_parent(SUPERVISOR_PID)
    os.environ[LAUNCHER_PID] = str(os.getpid())
    from torch.distributed.run import main as torchrun_main

    torchrun_main(sys.argv[1:])


if __name__ == "__main__":
    main()
