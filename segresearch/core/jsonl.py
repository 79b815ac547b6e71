"""Reading the text files a user hands us: JSON Lines whose every line must be an object
(corpora, manifests) and whole UTF-8 files (prompts, query lists), every problem naming the
file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def not_utf8(data: bytes, e: UnicodeDecodeError, of: str = "") -> str:
    """Says where text stops being UTF-8 and how to fix it, for messages that already name
    the file (Python's own codec error names neither the file nor the cure); ``of`` says
    what the position counts in (" of the line")."""
    return (f"not UTF-8 text (byte 0x{data[e.start]:02x} at byte {e.start + 1}{of}); save the "
            "file as UTF-8")


def read_utf8(path: Path, what: str, error: type[Exception] = ValueError) -> str:
    """The whole of a text file the user named (a prompt, a list of queries), with every
    failure as ``error`` naming ``what`` and the file: missing, a folder, unreadable, not
    UTF-8."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a folder; give the file") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is {not_utf8(data, e)}") from None


def iter_jsonl(
    path: Path, error: type[Exception] = ValueError, *, skip_non_objects: bool = False
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a line that is not a JSON object
    raises ``error`` naming the file and line, since a silently skipped line would change
    what an index or an evaluation contains. Readers that only look rows up (by id or text)
    may ``skip_non_objects``; invalid JSON is an error either way."""
    with path.open("rb") as f:  # decoded line by line, so an error names its line
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(f"{path}:{n}: {not_utf8(raw, e, ' of the line')}") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{n}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                if skip_non_objects:
                    continue
                raise error(f"{path}:{n}: expected a JSON object")
            yield n, row
