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
    first_problem: str = ""  # why the first skipped line is not a row ("line 3: not JSON")


def read_predictions(path: str | os.PathLike[str], *, strict: bool = False,
                     warn: bool = True) -> Predictions:
    """Rows by id (a later row for the same id replaces the earlier one). Lines that are not
    JSON objects with an ``id`` are skipped and counted (``strict``: refused; ``warn``:
    logged), except a torn last line, which is the expected trace of an interrupted append."""
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
                raise ValueError(_NOT_A_ROW)
        except (ValueError, UnicodeDecodeError) as e:
            if is_tail:
                out.torn_tail = True
                continue
            why = _line_problem(e)
            if strict:
                raise PredictionsError(f"{path} line {n}: {why}") from None
            out.skipped.append(n)
            out.first_problem = out.first_problem or f"line {n}: {why}"
            continue
        qid = str(row["id"])
        if qid in out.rows:
            out.duplicates += 1
        row["id"] = qid
        out.rows[qid] = row
    if out.skipped and warn:
        _warn_skipped(path, out)
    return out


def _warn_skipped(path: Path, found: Predictions) -> None:
    log.warning("%s: skipped %d line(s) that are not prediction rows (first: %s)",
                path, len(found.skipped), found.first_problem)


_NOT_A_ROW = 'not a JSON object with an "id"'


def _line_problem(e: Exception) -> str:
    if isinstance(e, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(e, json.JSONDecodeError):
        return f"not JSON ({e.msg})"
    return str(e)


def read_usable_predictions(path: str | os.PathLike[str]) -> tuple[Path, Predictions]:
    """A predictions file a user named, refused (``PredictionsError``, one line naming the
    file) unless at least one of its rows can be segmented: an object with an ``id`` and an
    ``output`` text. ``eval --predictions`` and ``segment`` both read through here, so a
    file one of them refuses the other refuses too, instead of scoring every query as a
    miss and calling that a result."""
    p = Path(path).expanduser()
    if not p.exists():
        raise PredictionsError(f"predictions file not found: {p}")
    if not p.is_file():
        raise PredictionsError(f"predictions file {p} is not a regular file; give the .jsonl "
                               "file of prediction rows")
    try:
        found = read_predictions(p, warn=False)  # said below, in the refusal or a warning
    except OSError as e:
        raise PredictionsError(f"cannot read predictions file {p}: {e.strerror or e}") from None
    fmt = 'one JSON object per line with "id" and "output"'
    if not found.rows:
        if found.first_problem:
            why = found.first_problem
        elif found.torn_tail:
            why = "its only line is not a complete JSON row"
        else:
            why = "the file is empty"
        raise PredictionsError(f"{p} holds no prediction rows ({why}); expected {fmt}")
    if found.skipped:
        _warn_skipped(p, found)
    no_output = [i for i, r in found.rows.items() if not isinstance(r.get("output"), str)]
    if len(no_output) == len(found.rows):
        raise PredictionsError(
            f"{p}: none of its {len(found.rows)} rows has an \"output\" text (the model's saved "
            f"output, e.g. id {no_output[0]!r}); expected {fmt}")
    if no_output:
        log.warning("%s: %d row(s) have no \"output\" text and are scored as empty masks (e.g. id %r)",
                    p, len(no_output), no_output[0])
    return p, found


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
