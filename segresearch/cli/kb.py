"""``segresearch kb``: build a local knowledge base, and query one."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from segresearch.cli.common import EXIT_OK, die
from segresearch.cli.console import terminal_safe
from segresearch.core.jsonl import read_utf8
from segresearch.core.protocol import snippet
from segresearch.tools.search.kb import EmbedderError, KBError, build_kb, open_kb


def cmd_kb(args: argparse.Namespace) -> int:
    """Local knowledge-base tools. Every problem (a missing corpus or folder, an index built
    with another embedder, damaged files) is one ``error:`` line and exit 2: the cause is
    always in the arguments or the files, where a traceback does not help."""
    try:
        return _kb_build(args) if args.kb_command == "build" else _kb_query(args)
    except (KBError, EmbedderError, OSError, UnicodeDecodeError) as e:
        return die(" ".join((str(e) or type(e).__name__).split()))


def _kb_build(args: argparse.Namespace) -> int:
    if args.approx_threshold is not None and args.approx_threshold < 0:
        return die(f"--approx-threshold must be at least 0; got {args.approx_threshold}")
    if args.batch_size < 1:
        return die(f"--batch-size must be at least 1; got {args.batch_size}")
    extra: dict[str, Any] = {}
    if args.approx_threshold is not None:
        extra["approx_threshold"] = args.approx_threshold
    t0 = time.perf_counter()
    out = build_kb(args.text, args.out, args.images, embedder=args.embedder,
                   progress=not args.no_progress, batch_size=args.batch_size,
                   nprobe=args.nprobe, **extra)
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    print(f"wrote {out}: {m['count']} passages, {m['image_count']} images, embedder "
          f"{m['embedder']} (dim {m['dim']}), {m['index_type']} index, "
          f"{time.perf_counter() - t0:.1f} s")
    return EXIT_OK


def _kb_query(args: argparse.Namespace) -> int:
    """Queries go to the index in chunks, so a long --queries file streams its answers and
    costs one embedding call per chunk rather than one per line."""
    if args.k < 1:
        return die(f"--k must be at least 1; got {args.k}")
    queries = [q for q in args.query if q.strip()]
    if args.queries:
        if args.queries == "-":
            lines = sys.stdin.read().splitlines()
        else:
            try:
                lines = read_utf8(Path(args.queries).expanduser(), "queries file").splitlines()
            except ValueError as e:
                return die(str(e))
        queries += [ln.strip() for ln in lines if ln.strip()]
    if not queries:
        return die("give at least one QUERY or --queries FILE (one query per line)")
    kb = open_kb(args.dir, args.embedder, progress=sys.stderr.isatty())
    chunk = 64
    for i in range(0, len(queries), chunk):
        part = queries[i : i + chunk]
        for q, hits in zip(part, kb.search_text_batch(part, args.k), strict=True):
            if args.json:
                print(json.dumps({"query": q, "hits": [
                    {"title": h.title, "text": h.text, "score": round(h.score, 6)} for h in hits
                ]}), flush=True)
                continue
            print(terminal_safe(f"query: {q}"))  # corpus text may hold escape sequences
            if not hits:
                print("No results found.")
            for n, h in enumerate(hits, 1):
                print(terminal_safe(f"{n}. (Title: {h.title}) {snippet(h.text)}  [score {h.score:.4f}]"))
            print(flush=True)
    return EXIT_OK
