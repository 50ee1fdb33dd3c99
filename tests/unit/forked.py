"""Run a test's body in a forked child: for code that must die mid-write (a SIGKILLed
worker), may spin forever (bounded here by a deadline), or sets process-wide state (the
shared region OpenSSL callbacks use) that must not leak into the other tests."""

from __future__ import annotations

import os
import pickle
import signal
import time


def die_in_child(fn) -> None:
    """Run ``fn`` in a forked child that then SIGKILLs itself: no cleanup, no unlock."""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def in_child(fn, timeout: float = 5.0):
    """``fn()`` computed in a forked child (its exception re-raised here), killed after ``timeout``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            try:
                out = ("ok", fn())
            except BaseException as exc:  # noqa: BLE001 (carried to the parent)
                out = ("raised", repr(exc))
            os.write(w, pickle.dumps(out))
        finally:
            os._exit(0)
    os.close(w)
    deadline = time.monotonic() + timeout
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            raise AssertionError(f"still running after {timeout} s")
        time.sleep(0.01)
    with os.fdopen(r, "rb") as f:
        kind, value = pickle.loads(f.read())
    if kind == "raised":
        raise AssertionError(f"the child raised {value}")
    return value
