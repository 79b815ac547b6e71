"""A process's own peak resident memory over one step, for the memory benchmarks.

``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is the process's peak, but a child spawned
from a large process starts with its parent's: Linux keeps the larger of the two when the
child execs (``vfork`` then ``exec``, what ``subprocess`` does), so a benchmark's or a test
runner's child would report the parent's peak whenever it is higher. So the step's peak is
the kernel's high-water mark of this process's own memory (``VmHWM``), restarted from the
current size just before the step (``/proc/self/clear_refs``, Linux 4.0 and later); where
that is not possible it falls back to ``ru_maxrss``, which is still right in a process
started from a small one.
"""

from __future__ import annotations

import os
import re
import resource
import sys


def rss_mb() -> float:
    """The resident size now, in MiB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_mb()  # no /proc: the best there is


def reset_peak() -> bool:
    """Restart the process's peak from its current size; False where the OS cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mb() -> float:
    """The process's own peak resident size since :func:`reset_peak` (or its start), MiB."""
    try:
        with open("/proc/self/status") as f:
            found = re.search(r"VmHWM:\s+(\d+)\s+kB", f.read())
        if found:
            return int(found.group(1)) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class StepPeak:
    """``with StepPeak() as mem: step()``: then ``mem.mb`` is the peak resident size during
    the step minus the size just before it (what the step cost), ``mem.peak``/``mem.base``
    the two sizes in MiB."""

    def __enter__(self) -> StepPeak:
        reset_peak()
        self.base = rss_mb()
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = max(peak_mb(), rss_mb())
        self.mb = self.peak - self.base
