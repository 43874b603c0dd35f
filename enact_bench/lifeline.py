"""A child process's lifeline to its parent: the child ends within a second when the process that
started it ends, by any signal (SIGKILL included), so that no case process, torchrun launcher,
DDP rank or `plan` worker outlives `enact-bench` (on a GPU it would hold memory and overlap a
`--resume`).

- `end_with_parent(parent_pid)`, called by the child first thing: on Linux
  prctl(PR_SET_PDEATHSIG, SIGKILL), so the kernel kills the child when its parent ends (see
  prctl(2): the signal is sent when the *thread* that forked the child ends; enact-bench starts
  children from its main thread); elsewhere, or with `whole_group=True`, a daemon thread that
  polls getppid() every POLL_S and ends the process (and, for a group leader, its whole process
  group) once the parent is gone. A parent that ended before the call is caught too: getppid() is
  then no longer `parent_pid`.
- `fork_pool(n)`: a multiprocessing "fork" Pool whose workers call end_with_parent.
- `python -m enact_bench.lifeline PARENT_PID CMD...`: arms the lifeline, then execs CMD (the
  PDEATHSIG setting survives execve), for a program that cannot call end_with_parent itself
  (torchrun). CMD's own children find CMD's pid in $ENACT_BENCH_PARENT_PID.

Nothing here imports torch or the rest of enact_bench.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

PARENT_ENV = "ENACT_BENCH_PARENT_PID"  # the pid a child's parent must have (set by the launcher)
POLL_S = 0.2
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _set_parent_death_signal(sig: int) -> bool:
    """prctl(PR_SET_PDEATHSIG, sig) on Linux; False where it is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def expected_parent(parent_pid: int | None = None) -> int:
    """`parent_pid`, else $ENACT_BENCH_PARENT_PID (removed from the environment, so that this
    process's own children do not take it for theirs), else the current parent."""
    text = os.environ.pop(PARENT_ENV, None)
    if parent_pid is not None:
        return parent_pid
    return int(text) if text and text.isdigit() else os.getppid()


def _end(whole_group: bool) -> None:
    if whole_group and os.getpgrp() == os.getpid():  # only a group of our own (start_new_session)
        try:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        except OSError:
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def _watch(parent_pid: int, whole_group: bool, poll_s: float) -> None:
    import time

    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    _end(whole_group)


def end_with_parent(parent_pid: int | None = None, *, whole_group: bool = False, poll_s: float = POLL_S) -> None:
    """End this process (SIGKILL) when `parent_pid` ends; see the module docstring.
    `whole_group`: this process leads its own process group (a case process and what it
    started): end the whole group, from the watching thread."""
    parent = expected_parent(parent_pid)
    armed = False if whole_group else _set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:  # the parent ended before the lifeline was in place
        _end(whole_group)
    if not armed:
        threading.Thread(target=_watch, args=(parent, whole_group, poll_s), daemon=True,
                         name="enact-bench-lifeline").start()


def fork_pool(processes: int):
    """multiprocessing's "fork" Pool of `processes` workers, each ending with this process."""
    import multiprocessing as mp

    return mp.get_context("fork").Pool(processes, initializer=end_with_parent, initargs=(os.getpid(),))


def wrap_command(cmd: list[str]) -> list[str]:
    """`cmd` run through this module's exec wrapper, tied to this process (Linux); elsewhere the
    wrapper's lifeline could not survive exec, and `cmd` is returned as it is."""
    if not sys.platform.startswith("linux"):
        return list(cmd)
    return [sys.executable, "-m", __name__, str(os.getpid()), *cmd]


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not argv[0].isdigit():
        print(f"usage: python -m {__name__} PARENT_PID CMD [ARGS...]", file=sys.stderr)
        sys.exit(2)
    end_with_parent(int(argv[0]))
    os.environ[PARENT_ENV] = str(os.getpid())  # CMD keeps this pid: its children's parent
    os.execvp(argv[1], argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
