"""What every command shares: exit codes, the one-line ``error:`` and the Ctrl-C line.

Kept free of the graph and of the models, since ``segresearch --help`` imports it.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

from segresearch.cli.console import terminal_safe

try:  # POSIX; on Windows the summary has no peak-memory line
    import resource
except ImportError:  # pragma: no cover - not on our platforms
    resource = None  # type: ignore[assignment]

EXIT_OK, EXIT_RUN_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PORT_MAX = 65535


def die(msg: str, code: int = EXIT_USAGE) -> int:
    # a message may quote model or search text, or a file name: no escape reaches the terminal
    print(f"error: {terminal_safe(msg)}", file=sys.stderr)
    return code


def peak_memory_mb() -> float | None:
    """This process's peak resident memory so far, in MiB (None where the OS does not say):
    what a long video cost, printed with a run's summary. Linux reports KiB, macOS bytes."""
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / (1 << 10)


def fresh_line() -> str:
    """A terminal has echoed ``^C`` with no newline; a log has not."""
    return "\n" if sys.stderr.isatty() else ""


class Farewell:
    """The line Ctrl-C leaves, said once by whoever gets there first: the main thread, or
    the watchdog of ``segresearch.core.cancel`` when a step does not stop in time. ``text`` is
    made when it is said, so it reports what the folder holds at that moment."""

    def __init__(self) -> None:
        self.text: Callable[[], str] = lambda: "interrupted"
        self._said = False
        # re-entrant: a second Ctrl-C runs the handler in the main thread, maybe mid-say
        self._lock = threading.RLock()

    def say(self) -> None:
        with self._lock:
            if self._said:
                return
            self._said = True
            print(f"{fresh_line()}{self.text()}", file=sys.stderr, flush=True)
