"""The launcher of a fleet's child processes: `python -m lora_recipes.fleet.child ARGS` becomes
`python -m lora_recipes ARGS` (the same process, by exec) after two things the plain command
cannot do for itself:

- SIGINT and SIGTERM get their default handling back and are unblocked (a driver started in the
  background by a shell ignores SIGINT, a Ray worker's threads block it, and both would carry over
  into the child through exec), so that the fleet can stop a job the way Ctrl-C stops `train` and
  `evaluate`: a checkpoint, then exit 130;
- on Linux, the child gets SIGTERM when the process that started it dies (prctl
  PR_SET_PDEATHSIG), so a driver or Ray worker killed with -9 leaves no orphan training behind:
  `train` writes a checkpoint and stops, and the next run of the fleet resumes it.

$LORA_RECIPES_FLEET_PARENT holds the parent's PID: a parent that died before the prctl took
effect is noticed, and the child exits at once.
"""

from __future__ import annotations

import os
import signal
import sys

PARENT_ENV = "LORA_RECIPES_FLEET_PARENT"
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl here: the driver still stops its children itself
        pass


def main() -> None:
    stops = {signal.SIGINT, signal.SIGTERM}
    for sig in stops:
        signal.signal(sig, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):  # a Ray worker's threads block them, and exec keeps the mask
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
    _die_with_parent()
    parent = os.environ.get(PARENT_ENV)
    if parent and parent.isdigit() and os.getppid() != int(parent):
        sys.exit(130)  # the parent is already gone
    os.execv(sys.executable, [sys.executable, "-m", "lora_recipes", *sys.argv[1:]])


if __name__ == "__main__":
    main()
