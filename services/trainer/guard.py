"""Process-tree guards for torchrun: no rank may outlive the worker that launched it.

    runner (Celery pool child) --Popen, own session--> launch.py (torchrun agent) --> rank.py x N

torchrun starts every rank in a session of its own, so a signal to torchrun's process group does not
reach them, and a SIGKILLed agent leaves them running (C.2: cancel not reaching GPU processes). Both
wrappers therefore ask the kernel to SIGKILL them when their parent dies (PR_SET_PDEATHSIG), then check
that the parent they expect is still the one they have (it may have died before the call).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
SUPERVISOR_PID = "MMDLM_TRAIN_SUPERVISOR_PID"  # set by the runner for launch.py
LAUNCHER_PID = "MMDLM_TRAIN_LAUNCHER_PID"  # set by launch.py for the ranks
STATE_DIR = "MMDLM_TRAIN_STATE_DIR"  # where ranks write pid and error files


def die_with_parent(expected_parent_env: str) -> None:
    """SIGKILL this process when its parent exits; exit now if the expected parent is already gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    expected = os.environ.get(expected_parent_env)
    if expected and os.getppid() != int(expected):
        sys.stderr.write(f"parent {expected} is gone (parent is now {os.getppid()}); exiting\n")
        os._exit(1)
