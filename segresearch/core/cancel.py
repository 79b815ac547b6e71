"""Ctrl-C that stops a run within a couple of seconds, in whatever phase it is.

A graph run streams its nodes from worker threads (LangGraph runs a node in a thread pool
whenever ``custom`` events are streamed), and Python delivers SIGINT to the main thread
only. The main thread then stops waiting, but LangGraph waits for the running node before
it lets go, and the interpreter joins every pool thread before it exits: a Ctrl-C during
GrabCut took the rest of the video (about 49 s) to act, and the node's late result was then
saved as if the step had finished normally, so the resumed thread skipped it.

Two parts fix that:

- A process-wide flag, set by the SIGINT handler *before* the main thread is interrupted.
  Long loops check it between small steps (a frame, a batch, a slice of a wait) with
  :func:`check`, which raises :class:`Cancelled`. ``Cancelled`` is a ``KeyboardInterrupt``, so
  nodes that turn ordinary errors into a stop reason (``except Exception``) let it through;
  LangGraph then records the step as failed, not done, and a resumed thread runs it again.
  Nothing sets the flag in a server or a library caller, where every check is a no-op.
- A watchdog for what cannot check a flag (a C call, a blocking HTTP read): if the process
  is still alive :data:`GRACE_S` seconds after Ctrl-C, it says goodbye and ends the process
  with ``os._exit``. The checkpoint database keeps its last finished step (SQLite commits
  are atomic), the run folder's lock is released by the kernel, and the abandoned step has
  no saved result, so a resume runs it again. A second Ctrl-C ends the process at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

__all__ = [
    "GRACE_S",
    "Cancelled",
    "check",
    "requested",
    "request",
    "reset",
    "result",
    "sleep",
    "stop_on_sigint",
]

T = TypeVar("T")

# Seconds a stopped run gets to wind down by itself before the process is ended: short
# enough that Ctrl-C acts within 2 s, long enough for a step that checks the flag (a frame
# of GrabCut, a slice of a wait) to notice it and unwind.
GRACE_S = 1.5
# How often waits look at the flag.
_POLL_S = 0.05
EXIT_INTERRUPTED = 130

_FLAG = threading.Event()


class Cancelled(KeyboardInterrupt):
    """The user stopped the run (Ctrl-C), met in a worker thread. A ``KeyboardInterrupt``
    and so not an ``Exception``: code that turns failures into results (a search error
    shown to the model, a segmentation error kept beside the answer) lets it through, and
    a cancelled step is not recorded as a finished one."""


def requested() -> bool:
    """Whether the run was asked to stop."""
    return _FLAG.is_set()


def request() -> None:
    """Ask every cooperating loop to stop (what the SIGINT handler does)."""
    _FLAG.set()


def reset() -> None:
    """Clear the request (for a process that goes on to start another run)."""
    _FLAG.clear()


def check() -> None:
    """Raise :class:`Cancelled` when the run was asked to stop; call between small steps."""
    if _FLAG.is_set():
        raise Cancelled("interrupted")


def sleep(seconds: float) -> None:
    """``time.sleep`` that ends early, with :class:`Cancelled`, when the run is stopped."""
    if _FLAG.wait(max(0.0, seconds)):
        raise Cancelled("interrupted")


def result(future: Future[T], timeout: float | None = None) -> T:
    """``future.result(timeout)`` that stops waiting, with :class:`Cancelled`, when the run
    is stopped (the work itself is left to finish or be abandoned with the process)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        check()
        left = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
        if left <= 0:
            raise FutureTimeout()
        try:
            return future.result(timeout=left)
        except FutureTimeout:
            # A done future raised its own TimeoutError (an HTTP timeout, say): that is the
            # answer, not a slice of the wait running out.
            if future.done() or (deadline is not None and time.monotonic() >= deadline):
                raise


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


@contextlib.contextmanager
def stop_on_sigint(farewell: Callable[[], Any] | None = None, *,
                   grace: float = GRACE_S) -> Iterator[None]:
    """Within this block, Ctrl-C sets the stop flag, then interrupts the main thread as
    usual (``KeyboardInterrupt``), and arms the watchdog: ``grace`` seconds later, or at a
    second Ctrl-C, ``farewell()`` is called (it prints what survives and how to resume; it
    must be safe to call when the main thread has already printed that) and the process
    exits with status 130 without waiting for threads that are still busy.

    Outside the main thread (where signals cannot be handled), or where SIGINT is ignored
    (the process was started so, e.g. in the background of a script), this does nothing. A block
    left without Ctrl-C restores the previous handler and leaves the flag clear; a block
    left after Ctrl-C (the caller has printed what survives) ends the process there, with
    ``farewell()`` (idempotent) and status 130."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is signal.SIG_IGN):  # ignored on purpose (nohup)
        yield
        return
    fired = threading.Event()

    def leave() -> None:
        if farewell is not None:
            with contextlib.suppress(Exception):
                farewell()
        _flush()
        os._exit(EXIT_INTERRUPTED)

    def watchdog() -> None:
        time.sleep(grace)
        leave()

    def handler(signum: int, frame: Any) -> None:
        if fired.is_set():  # a second Ctrl-C: the user does not want to wait at all
            leave()
        fired.set()
        _FLAG.set()
        threading.Thread(target=watchdog, name="segresearch-ctrl-c", daemon=True).start()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        if fired.is_set():
            # The run has said what it kept and released its folder: end here, rather than
            # in the interpreter's own exit, which joins busy pool threads and tears down
            # every module (seconds with torch and LangChain loaded).
            leave()
        signal.signal(signal.SIGINT, previous)
        _FLAG.clear()
