"""Retrieval accuracy of the knowledge-base search backends: dense ``local``, lexical ``bm25``
and their reciprocal-rank fusion ``hybrid``, on a labelled query set.

``bench/retrieval_queries.jsonl`` holds one query a line, ``{"query", "id", "kind"}``: ``id``
is the ``text_corpus.jsonl`` id of the document that answers it, and ``kind`` is
``paraphrase`` (a question about the fact, in other words than the document's title, as a
VLM agent would ask it) or ``named`` (the query names the document's entity). A query is a
hit at k when the answer document (its title and text, as ``split_title`` cuts its
``contents``) is among the backend's top k text hits. Every backend answers the same queries
one at a time through ``search_text`` (as the agent's tool does); queries/s times that loop,
after a warm-up query, so building or loading an index is not counted (it is printed apart).

Ids that occur on more than one corpus line name no single document; queries labelled with
one are left out and reported.

    python bench/retrieval.py [--kb /work/shared/data/local_kb] [--queries FILE]
                              [--backends local,bm25,hybrid]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _tables import markdown  # bench/ is on sys.path when a script runs

from segresearch.core.jsonl import iter_jsonl
from segresearch.tools.search import SearchBackend, get_backend, split_title

DEFAULT_KB = "/work/shared/data/local_kb"
DEFAULT_QUERIES = Path(__file__).resolve().with_name("retrieval_queries.jsonl")
BACKENDS = ("local", "bm25", "hybrid")
KS = (1, 3)


def load_corpus(kb: Path) -> tuple[dict[Any, tuple[str, str]], set[Any]]:
    """id -> (title, text) of the knowledge base's text corpus, and the ids that occur more
    than once (kept out of the mapping: they do not say which document is meant)."""
    docs: dict[Any, tuple[str, str]] = {}
    seen: Counter[Any] = Counter()
    for _, row in iter_jsonl(kb / "text_corpus.jsonl"):
        seen[row["id"]] += 1
        docs[row["id"]] = split_title(str(row["contents"]))
    dupes = {i for i, n in seen.items() if n > 1}
    return {i: d for i, d in docs.items() if i not in dupes}, dupes


def load_queries(path: Path) -> list[dict[str, Any]]:
    rows = [row for _, row in iter_jsonl(path)]
    for row in rows:
        missing = {"query", "id", "kind"} - set(row)
        if missing:
            raise ValueError(f"{path}: query {row!r} lacks {sorted(missing)}")
    return rows


def score(backend: SearchBackend, queries: list[dict[str, Any]],
          docs: dict[Any, tuple[str, str]], ks: tuple[int, ...] = KS) -> dict[str, Any]:
    """Hits at each k, overall and per kind, and queries/s, for ``backend`` on ``queries``
    (all of whose ids must be in ``docs``)."""
    depth = max(ks)
    backend.search_text(queries[0]["query"], depth)  # warm-up: lazy loads, first embed
    kinds = sorted({q["kind"] for q in queries})
    hits = {kind: dict.fromkeys(ks, 0) for kind in ["all", *kinds]}
    misses: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    ranked = [[(h.title, h.text) for h in backend.search_text(q["query"], depth)]
              for q in queries]
    elapsed = time.perf_counter() - t0
    for q, got in zip(queries, ranked, strict=True):
        want = docs[q["id"]]
        rank = got.index(want) + 1 if want in got else None
        for k in ks:
            if rank is not None and rank <= k:
                hits["all"][k] += 1
                hits[q["kind"]][k] += 1
        if rank != 1:
            misses.append({**q, "rank": rank, "top": got[0][0] if got else None})
    counts = Counter(q["kind"] for q in queries)
    counts["all"] = len(queries)
    acc = {kind: {k: hits[kind][k] / counts[kind] for k in ks} for kind in hits}
    return {"acc": acc, "n": dict(counts), "qps": len(queries) / elapsed, "misses": misses}


def best(results: dict[str, dict[str, Any]]) -> str:
    """The backend with the highest overall top-1, ties broken by top-3 (then by name)."""
    return max(sorted(results), key=lambda b: (results[b]["acc"]["all"][1],
                                               results[b]["acc"]["all"][3]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kb", default=DEFAULT_KB, help="knowledge-base folder (text_corpus.jsonl)")
    ap.add_argument("--queries", type=Path, default=DEFAULT_QUERIES, help="labelled queries")
    ap.add_argument("--backends", default=",".join(BACKENDS),
                    help=f"comma-separated, among {', '.join(BACKENDS)}")
    ap.add_argument("--misses", action="store_true", help="list each backend's top-1 misses")
    args = ap.parse_args(argv)
    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown or not names:
        ap.error(f"unknown backend(s) {unknown}; choose among {list(BACKENDS)}")
    kb = Path(args.kb).expanduser()
    if not (kb / "text_corpus.jsonl").is_file():
        print(f"skipped: no knowledge base at {kb} (no text_corpus.jsonl); pass --kb FOLDER",
              file=sys.stderr)
        return 0

    docs, dupes = load_corpus(kb)
    queries = load_queries(args.queries)
    unknown_ids = sorted({q["id"] for q in queries if q["id"] not in docs and q["id"] not in dupes})
    if unknown_ids:
        print(f"error: query ids not in {kb}/text_corpus.jsonl: {unknown_ids}", file=sys.stderr)
        return 2
    dropped = [q for q in queries if q["id"] in dupes]
    queries = [q for q in queries if q["id"] not in dupes]
    if dropped:
        print(f"  left out {len(dropped)} queries whose id occurs on several corpus lines "
              f"(ids {sorted({q['id'] for q in dropped})})", file=sys.stderr)
    if dupes:
        print(f"  note: the corpus repeats id(s) {sorted(dupes)}", file=sys.stderr)
    if not queries:
        print("error: no queries left to score", file=sys.stderr)
        return 2

    results: dict[str, dict[str, Any]] = {}
    for name in names:
        t0 = time.perf_counter()
        backend = get_backend(name, str(kb))
        load = time.perf_counter() - t0
        results[name] = score(backend, queries, docs)
        print(f"  {name}: loaded in {load:.1f} s, {results[name]['qps']:.1f} queries/s",
              file=sys.stderr)
        if args.misses:
            for m in results[name]["misses"]:
                print(f"    miss (rank {m['rank']}) [{m['kind']}] {m['query']!r} -> {m['top']!r}",
                      file=sys.stderr)

    kinds = sorted(k for k in results[names[0]]["n"] if k != "all")
    n = results[names[0]]["n"]
    header = ["backend", "top-1", "top-3"]
    for kind in kinds:
        header += [f"{kind} top-1", f"{kind} top-3"]
    header.append("queries/s")
    rows = []
    for name in names:
        acc = results[name]["acc"]
        row = [name, f"{acc['all'][1]:.3f}", f"{acc['all'][3]:.3f}"]
        for kind in kinds:
            row += [f"{acc[kind][1]:.3f}", f"{acc[kind][3]:.3f}"]
        rows.append([*row, f"{results[name]['qps']:.1f}"])
    per_kind = ", ".join(f"{n[k]} {k}" for k in kinds)
    print(f"\nText retrieval accuracy on {kb}: {n['all']} queries ({per_kind}); a hit = the "
          "answer document among the top k.\n")
    print(markdown(header, rows))
    print()
    top = best(results)
    acc = results[top]["acc"]["all"]
    print(f"Best: {top} (top-1 {acc[1]:.3f}, top-3 {acc[3]:.3f}; ranked by top-1, then top-3).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
