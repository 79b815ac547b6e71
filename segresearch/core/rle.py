"""COCO run-length encoding of binary masks, without pycocotools.

The masks of MeViS and ReVOS (``mask_dict.json``) are COCO RLE dicts ``{"size": [h, w],
"counts": ...}``. ``counts`` is either a list of run lengths (uncompressed RLE) or COCO's
compressed string. Runs go down the columns (column-major order), alternate background /
foreground and start with background (a mask whose first pixel is set starts with a run of
0). The string form writes each run, from the fourth on as the difference to the run two
before it, in groups of 5 bits, least significant first, each group as one character
``48 + bits`` with bit 0x20 set when another group follows and bit 0x10 of the last group
the sign (``maskApi.c``: ``rleToString`` / ``rleFrString``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["RLEError", "decode", "encode", "runs_from_string", "runs_to_string"]


class RLEError(ValueError):
    """A run-length encoding that cannot be a mask of its size."""


def runs_to_string(runs: Sequence[int]) -> str:
    """COCO's compressed string of a list of run lengths."""
    out = []
    for i, run in enumerate(runs):
        x = int(run) - (int(runs[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: a negative difference ends at -1
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def runs_from_string(s: str | bytes) -> list[int]:
    """The run lengths of a COCO compressed string."""
    if isinstance(s, bytes):
        s = s.decode("ascii")
    runs: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise RLEError("RLE string ends inside a run")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise RLEError(f"RLE string holds {s[p]!r}, not a run character")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def encode(mask: np.ndarray) -> dict[str, Any]:
    """A 2-D mask (anything > 0 is set) as a COCO compressed RLE dict."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise RLEError(f"a mask must be 2-D, got shape {m.shape}")
    h, w = m.shape
    flat = (m > 0).flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return {"size": [h, w], "counts": runs_to_string(runs)}


def decode(rle: Mapping[str, Any]) -> np.ndarray:
    """The boolean (h, w) mask of a COCO RLE dict (compressed string or run list)."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise RLEError("an RLE needs 'size' [h, w] and 'counts'") from None
    runs = runs_from_string(counts) if isinstance(counts, (str, bytes)) else [int(c) for c in counts]
    if any(r < 0 for r in runs):
        raise RLEError("RLE has a negative run")
    if sum(runs) != h * w:
        raise RLEError(f"RLE runs cover {sum(runs)} pixels, its size {h}x{w} has {h * w}")
    values = np.zeros(len(runs), bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape((w, h)).T.copy()
