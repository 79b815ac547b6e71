"""Markdown tables for the benchmark scripts (first column left, numbers right-aligned)."""

from __future__ import annotations


def markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    rule = ["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]  # numbers right
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
             "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join([r[0].ljust(widths[0])]
                                + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)])
              + " |" for r in rows]
    return "\n".join(lines)
