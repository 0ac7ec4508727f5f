"""Child processes that die with their parent: a test run stopped by `timeout`, CI or a SIGKILL must not leave a
ComfyUI server (or a pytest run) behind, training at 100% CPU. Linux's parent-death signal does it in the kernel,
whatever way the parent ends; elsewhere the children are only stopped by an orderly teardown."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent_hook(sig: int = signal.SIGKILL):
    """A `preexec_fn` for subprocess.Popen: the child gets `sig` when the process that started it ends."""
    parent = os.getpid()

    def arm() -> None:
        if not sys.platform.startswith("linux"):
            return
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent already ended before the signal was armed
            os._exit(1)

    return arm
