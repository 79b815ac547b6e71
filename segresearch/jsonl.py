"""Reading JSON Lines files whose every line must be an object (corpora, manifests)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def iter_jsonl(
    path: Path, error: type[Exception] = ValueError, *, skip_non_objects: bool = False
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a line that is not a JSON object
    raises ``error`` naming the file and line, since a silently skipped line would change
    what an index or an evaluation contains. Readers that only look rows up (by id or text)
    may ``skip_non_objects``; invalid JSON is an error either way."""
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
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
