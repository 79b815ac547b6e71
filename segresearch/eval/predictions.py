"""Prediction files: one JSON object per query per line, appended as queries finish.

The row format is a superset of the published validation dump (``id``, ``data_source``,
``video_path``, ``output``), so either kind of file can be re-scored or segmented. Appends
are single ``write`` calls of whole lines followed by ``fsync``: a run killed mid-write
leaves at most one torn last line, which the reader ignores and the next append cuts off,
so a restarted evaluation finds exactly the queries that finished.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segresearch.tools.segmenters.prompting import KEYFRAME_RE

log = logging.getLogger(__name__)

PUBLISHED_FIELDS = ("id", "data_source", "video_path", "output")


class PredictionsError(ValueError):
    """A predictions file that cannot be used; the message names the file and line."""


@dataclass
class Predictions:
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # by id, file order
    torn_tail: bool = False  # the last line was cut off (a killed writer)
    skipped: list[int] = field(default_factory=list)  # line numbers that were not rows
    duplicates: int = 0


def read_predictions(path: str | os.PathLike[str], *, strict: bool = False) -> Predictions:
    """Rows by id (a later row for the same id replaces the earlier one). Lines that are not
    JSON objects with an ``id`` are skipped and counted (``strict``: refused), except a
    torn last line, which is the expected trace of an interrupted append."""
    path = Path(path)
    out = Predictions()
    if not path.exists():
        return out
    data = path.read_bytes()
    lines = data.split(b"\n")
    last_complete = data.endswith(b"\n")
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        is_tail = n == len(lines) and not last_complete
        try:
            row = json.loads(raw)
            if not isinstance(row, dict) or row.get("id") is None:
                raise ValueError("not an object with an id")
        except (ValueError, UnicodeDecodeError) as e:
            if is_tail:
                out.torn_tail = True
                continue
            if strict:
                raise PredictionsError(f"{path} line {n}: {e}") from None
            out.skipped.append(n)
            continue
        qid = str(row["id"])
        if qid in out.rows:
            out.duplicates += 1
        row["id"] = qid
        out.rows[qid] = row
    if out.skipped:
        log.warning("%s: skipped %d line(s) that are not prediction rows (first: line %d)",
                    path, len(out.skipped), out.skipped[0])
    return out


class PredictionLog:
    """Appends rows to a predictions file, safely across threads of one process."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._repair()

    def _repair(self) -> None:
        """Cut a torn last line so the next row starts on a line of its own."""
        if not self.path.exists():
            return
        with open(self.path, "rb+") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            data = f.read()
            keep = data.rfind(b"\n") + 1
            f.truncate(keep)
            log.warning("%s: removed an incomplete last line (%d bytes) left by an interrupted run",
                        self.path, size - keep)

    def append(self, row: dict[str, Any]) -> None:
        line = (json.dumps(row, ensure_ascii=False, default=str) + "\n").encode("utf-8", "replace")
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(line)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        for r in rows:
            self.append(r)


def first_keyframe(output: str) -> int | None:
    m = KEYFRAME_RE.search(output or "")
    return int(m.group(1)) if m else None


def ability_of(row: dict[str, Any]) -> str | None:
    """The ability of a row: its own field, or the published ``data_source`` suffix."""
    if row.get("ability"):
        return str(row["ability"])
    ds = str(row.get("data_source") or "")
    for prefix in ("Search_RVOS_", "ImageSeg_"):
        if ds.startswith(prefix):
            return ds[len(prefix):]
    return None


def is_published_row(row: dict[str, Any]) -> bool:
    """A row from the published validation dump rather than from our runner."""
    return "stop_reason" not in row and all(k in row for k in PUBLISHED_FIELDS)
