"""Crash-safe file writing shared by every output: a reader sees the old file or the new one,
never half of either, and a finished file gets the mode an ordinary ``open`` would give."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path


@functools.cache
def _umask() -> int:
    """The process umask, read without changing it where Linux allows: setting it to read
    it back would, for an instant, give files other threads create the wrong mode."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def created_mode(base: int = 0o666) -> int:
    """The mode an ordinary ``open``/``mkdir`` would give: ``tempfile`` makes files 0600
    and folders 0700, which a finished output must not keep (others on the machine, a web
    server or a shared results folder could not read it)."""
    return base & ~_umask()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling and rename it over ``path`` (same folder, so the
    rename is atomic); the temporary file is removed whatever happens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, created_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
