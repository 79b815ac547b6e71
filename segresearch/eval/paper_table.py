"""The paper's numbers, read from a small table so a report can show them beside ours.

A reproduction is judged against published numbers; typing them next to ours by hand is
where mistakes creep in, so ``eval --paper-table FILE`` reads them once, checks them before
any query runs (a typo in a group or metric name would otherwise just leave a column
empty), and the report and ``results.md`` print each next to ours with the difference.

Two formats, values in percent as papers print them (``55.1``, not ``0.551``):

CSV: a header row ``group`` followed by metric names, then one row per group; an empty
cell (or ``-``) is a number the paper does not report; rows starting with ``#`` are notes::

    # Seg-Research 4B, OK-VOS test (paper, table 2)
    group,J&F,J,F
    one-hop,60.1,58.0,62.2
    overall,55.3,53.4,57.2

JSON: an object of groups, each an object of metrics (``null`` for not reported)::

    {"one-hop": {"J&F": 60.1, "J": 58.0, "F": 62.2}, "overall": {"J&F": 55.3}}

Groups are those of our tables (OK-VOS: one-hop, multi-hop, relational, in-video and
overall; MeViS: referring and overall; ReVOS: referring, reasoning and overall; image
sets: the set's abilities, e.g. ReasonSeg's short and long queries, and overall), matched
ignoring case, spaces and underscores. Metrics: J&F, J, F for the video sets (and R, the
robustness score, for ReVOS); gIoU, cIoU for image sets.

:func:`layout` gives the columns of each benchmark's own results table, in the order its
paper prints them (``results.paper_layout_markdown`` prints our row, and the paper's
when given, in that order):

- OK-VOS: the main table (one row per ability, then overall; J&F, J, F).
- MeViS: one row, J, F, J&F.
- ReVOS: one row, J, F, J&F of referring, of reasoning and of overall, then R (overall).
- ReasonSeg: one row per split (``val`` / ``test``, from ``--split`` or the folder's
  name), gIoU and cIoU; a set with both short and long queries (``is_sentence``) shows
  short, long and overall, as the test split is printed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VIDEO_METRICS = ("J&F", "J", "F")
REVOS_METRICS = (*VIDEO_METRICS, "R")
IMAGE_METRICS = ("gIoU", "cIoU")
# ReasonSeg's query groups (its ``is_sentence``), as its tables name them
REASONSEG_GROUPS = ("short", "long")
SPLITS = ("train", "val", "test")
OVERALL = "overall"
MAX_BYTES = 1 << 20  # a table of a few rows; anything larger is the wrong file
_NOT_REPORTED = {"", "-", "–", "—", "n/a", "na", "none", "null"}


class PaperTableError(ValueError):
    """A paper table that cannot be used; one line naming the file and what to fix."""


def metrics_for(dataset: str) -> tuple[str, ...]:
    """The metric columns a paper table may hold for ``dataset`` ("images": gIoU, cIoU;
    the video sets okvos, mevis, revos: J&F, J, F; revos also R)."""
    if dataset == "images":
        return IMAGE_METRICS
    return REVOS_METRICS if dataset == "revos" else VIDEO_METRICS


def split_name(results: dict[str, Any]) -> str:
    """The split of an evaluation as a paper's column names it: ``--split``, else the
    image set folder's name when it is one of ReasonSeg's (``.../ReasonSeg/val``)."""
    ds = results.get("dataset") or {}
    if ds.get("split"):
        return str(ds["split"])
    root = Path(str((results.get("settings") or {}).get("root") or ds.get("root") or "")).name
    return root if root in SPLITS else ""


def layout(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The columns of a benchmark's results table in its paper's order, as (heading, our
    group, metric); empty for OK-VOS, whose paper's layout is the main table itself."""
    name = (results.get("dataset") or {}).get("name")
    if name == "mevis":
        return [(k, OVERALL, k) for k in ("J", "F", "J&F")]
    if name == "revos":
        cols = [(f"{g} {k}", g, k) for g in ("referring", "reasoning", OVERALL) for k in ("J", "F", "J&F")]
        return [*cols, ("R", OVERALL, "R")]
    if name == "images":
        split = split_name(results)
        ours = results.get("by_ability") or {}
        groups = [*REASONSEG_GROUPS, OVERALL] if all(g in ours for g in REASONSEG_GROUPS) else [OVERALL]
        return [(" ".join(x for x in (split, "" if g == OVERALL and len(groups) == 1 else g, k) if x), g, k)
                for g in groups for k in IMAGE_METRICS]
    return []


def _norm(name: str) -> str:
    return re.sub(r"[\s_-]+", "-", name.strip().lower())


@dataclass(frozen=True)
class PaperTable:
    """Published numbers by group and metric, as fractions (like our own results)."""

    file: str
    rows: dict[str, dict[str, float]]

    def match_groups(self, allowed: Iterable[str]) -> PaperTable:
        """The same table with group names spelled as ours; a group we never report is an
        error rather than a row that silently stays empty."""
        canon: dict[str, str] = {}
        for g in [*allowed, OVERALL]:
            canon.setdefault(_norm(g), g)
        rows: dict[str, dict[str, float]] = {}
        for name, values in self.rows.items():
            ours = canon.get(_norm(name))
            if ours is None:
                raise PaperTableError(
                    f"--paper-table {self.file}: unknown group {name!r}; groups of this "
                    f"evaluation: {', '.join(dict.fromkeys(canon.values()))}"
                )
            if ours in rows:
                raise PaperTableError(f"--paper-table {self.file}: group {ours!r} appears twice")
            rows[ours] = values
        return PaperTable(self.file, rows)

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "rows": self.rows}


def _metric(name: str, metrics: Sequence[str], path: Path) -> str:
    want = {m.lower().replace(" ", ""): m for m in metrics}
    found = want.get(name.strip().lower().replace(" ", ""))
    if found is None:
        raise PaperTableError(
            f"--paper-table {path}: unknown metric {name.strip()!r}; use {', '.join(metrics)}"
        )
    return found


def _value(raw: Any, where: str, path: Path) -> float | None:
    """A percent from a cell: ``None`` for "not reported", else a number in [0, 100]."""
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in _NOT_REPORTED):
        return None
    if isinstance(raw, bool):
        raise PaperTableError(f"--paper-table {path}: {where}: {raw!r} is not a number")
    if isinstance(raw, str):
        try:
            v = float(raw.strip().rstrip("%").strip())
        except ValueError:
            raise PaperTableError(
                f"--paper-table {path}: {where}: {raw.strip()!r} is not a number "
                "(give percent, e.g. 55.1, or leave the cell empty)"
            ) from None
    elif isinstance(raw, (int, float)):
        v = float(raw)
    else:
        raise PaperTableError(f"--paper-table {path}: {where}: {raw!r} is not a number")
    if not math.isfinite(v) or not 0 <= v <= 100:
        raise PaperTableError(
            f"--paper-table {path}: {where}: {v:g} is not a percentage between 0 and 100"
        )
    return v


Record = tuple[str, list[tuple[str, Any, str]]]  # group, then (metric, raw cell, where)


def _from_csv(text: str, path: Path, metrics: Sequence[str]) -> list[Record]:
    records: list[Record] = []
    header: list[str] | None = None
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        if header is None:
            if row[0].strip().lower() not in ("group", "ability"):
                raise PaperTableError(
                    f"--paper-table {path}: the first row must be the header "
                    f"'group,{','.join(metrics)}' (got {','.join(row)[:60]!r})"
                )
            header = [_metric(c, metrics, path) for c in row[1:] if c.strip()]
            if not header:
                raise PaperTableError(
                    f"--paper-table {path}: the header names no metric (use {', '.join(metrics)})"
                )
            if len(set(header)) != len(header):
                raise PaperTableError(f"--paper-table {path}: a metric column appears twice")
            continue
        values = row[1:]
        if any(c.strip() for c in values[len(header):]):
            raise PaperTableError(
                f"--paper-table {path} line {lineno}: {len(values)} values for "
                f"{len(header)} metric columns"
            )
        group = row[0].strip()
        records.append((group, [(m, raw, f"line {lineno} ({group}, {m})")
                                for m, raw in zip(header, values, strict=False)]))
    if header is None:
        raise PaperTableError(f"--paper-table {path}: no header row 'group,{','.join(metrics)}'")
    return records


def _from_json(data: Any, path: Path, metrics: Sequence[str]) -> list[Record]:
    if not isinstance(data, dict):
        raise PaperTableError(
            f"--paper-table {path}: expected an object of groups, e.g. "
            f'{{"overall": {{"{metrics[0]}": 55.1}}}}'
        )
    records: list[Record] = []
    for group, values in data.items():
        if not isinstance(values, dict):
            raise PaperTableError(
                f"--paper-table {path}: group {group!r} must be an object of metrics, e.g. "
                f'{{"{metrics[0]}": 55.1}}'
            )
        records.append((group.strip(), [(_metric(name, metrics, path), raw, f"{group}, {name}")
                                        for name, raw in values.items()]))
    return records


def read_paper_table(path: str | os.PathLike[str], dataset: str) -> PaperTable:
    """Read and check a paper table (see the module docstring) for ``dataset``; every
    problem is a :class:`PaperTableError` naming the file."""
    p = Path(path).expanduser()
    metrics = metrics_for(dataset)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise PaperTableError(f"--paper-table {p}: file not found") from None
    except OSError as e:
        raise PaperTableError(f"--paper-table {p}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
        raise PaperTableError(f"--paper-table {p}: not a regular file")
    if st.st_size > MAX_BYTES:
        raise PaperTableError(
            f"--paper-table {p}: {st.st_size} bytes is not a small table of the paper's numbers"
        )
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise PaperTableError(f"--paper-table {p}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise PaperTableError(f"--paper-table {p}: not UTF-8 text (save it as UTF-8)") from None
    if p.suffix.lower() == ".json" or text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PaperTableError(
                f"--paper-table {p}: not JSON ({e.msg}, line {e.lineno}); "
                f"`segresearch eval {dataset} --help` describes --paper-table"
            ) from None
        records = _from_json(data, p, metrics)
    else:
        records = _from_csv(text, p, metrics)

    rows: dict[str, dict[str, float]] = {}
    seen: set[str] = set()
    for group, cells in records:
        if not group:
            raise PaperTableError(f"--paper-table {p}: a row has no group name")
        if _norm(group) in seen:
            raise PaperTableError(f"--paper-table {p}: group {group!r} appears twice")
        seen.add(_norm(group))
        row = rows.setdefault(group, {})
        for metric, raw, where in cells:
            v = _value(raw, where, p)
            if v is not None:
                row[metric] = v
    numbers = [v for r in rows.values() for v in r.values()]
    if not numbers:
        raise PaperTableError(f"--paper-table {p}: holds no numbers")
    if max(numbers) <= 1.0 and any(v > 0 for v in numbers):
        raise PaperTableError(
            f"--paper-table {p}: every value is at most 1, which looks like fractions; "
            "give percent as the paper prints them (e.g. 55.1)"
        )
    fractions = {g: {m: v / 100 for m, v in r.items()} for g, r in rows.items() if r}
    return PaperTable(str(p.resolve()), fractions)
