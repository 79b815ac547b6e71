"""Latency of the ``local`` knowledge base, and what FAISS costs as the corpus grows.

(a) The ``text_search`` tool over a real 185-passage knowledge base against the embedder's
    own time to encode one query: the tool should add little to the embedding it cannot avoid
    (target: p50 ratio ≤ 1.2).
(b) FAISS alone on synthetic corpora (dim 384, unit vectors): the exact flat index against
    the approximate IVF index the knowledge base switches to above its threshold, with the
    same construction code (``segresearch.tools.search.kb.index.make_index``). Targets at 1M
    vectors: approximate p50 ≤ 10 ms, recall@3 against exact ≥ 0.95. The synthetic data is
    clustered (documents around topics, queries near documents) because uniformly random
    vectors have no neighbourhoods at all and say nothing about an index for embeddings.
(c) Server throughput, when ``bench/_server_throughput.py`` (another module) is present.

    python bench/search.py [--kb DIR] [--max-size 100000] [--skip-tool] [--skip-faiss]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED_KB = ROOT.parent / "shared" / "data" / "local_kb"
DEMO_KB = ROOT / "segresearch" / "assets" / "demo_kb"


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def table(title: str, header: list[str], rows: list[tuple[Any, ...]]) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, r in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


# ----------------------------------------------------------------- (a) tool


def _open_kb(kb: Path, workdir: Path) -> Any:
    from segresearch.tools.search.kb import LocalKB, build_kb

    if (kb / "manifest.json").is_file():
        return LocalKB(kb)
    images = kb / "image_corpus.jsonl"
    out = build_kb(kb / "text_corpus.jsonl", workdir / "kb",
                   images if images.is_file() else None, progress=True)
    return LocalKB(out)


def tool_latency(kb_dir: Path, rounds: int) -> None:
    from segresearch.tools.search import make_search_tools

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        kb = _open_kb(kb_dir, Path(tmp))
        print(f"knowledge base {kb_dir}: {kb.manifest['count']} passages, embedder "
              f"{kb.embedder.name}, {kb.index_type} index (ready in {time.perf_counter() - t0:.1f} s)")
        tool = make_search_tools(kb)["text_search"]
        queries = [f"{d['title']}" for d in kb.docs[:40]]
        queries += ["who won the race in Qatar", "logo of the Chinese phone maker",
                    "which actor played the lead in the 2013 Superman film"]
        for q in queries[:5]:  # warm-up: thread pool, caches
            tool.invoke({"query": q})
            kb.embedder.encode_queries([q])
        enc, tl = [], []
        for _ in range(rounds):
            for q in queries:  # interleaved, so machine noise hits both sides alike
                t = time.perf_counter()
                kb.embedder.encode_queries([q])
                enc.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                out = tool.invoke({"query": q})
                tl.append((time.perf_counter() - t) * 1000)
                assert out.startswith("<information>1. (Title: "), out[:80]
        ratio = statistics.median(tl) / statistics.median(enc)
        table(
            f"(a) text_search tool vs the embedder alone ({len(enc)} calls each; target p50 ratio ≤ 1.2)",
            ["what", "p50 ms", "p95 ms"],
            [(f"embedder.encode_queries([q]) ({kb.embedder.name})", f"{pct(enc, 50):.2f}",
              f"{pct(enc, 95):.2f}"),
             ('make_search_tools(kb)["text_search"].invoke', f"{pct(tl, 50):.2f}",
              f"{pct(tl, 95):.2f}"),
             ("ratio tool / embedder", f"{ratio:.3f}", f"{pct(tl, 95) / pct(enc, 95):.3f}")],
        )


# ---------------------------------------------------------------- (b) FAISS


def synthetic(
    n: int, n_queries: int, dim: int, seed: int, hard: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Documents scattered around n/100 topic directions (cosine to their topic ≈ 0.71, to
    a topic mate ≈ 0.5) and queries that paraphrase a random document (cosine ≈ 0.8), all
    unit length, so a query's 2nd and 3rd neighbours are its document's topic mates, well
    above chance, as related passages are for real embeddings. ``hard``: looser topics
    (cosine to the topic ≈ 0.5); at 1M vectors the 2nd and 3rd neighbours are then hardly
    closer than the best of a million random directions (≈ 0.25 in 384-d), near chance,
    which no partitioned index finds reliably. Generated in chunks so 1M × 384 needs no
    temporaries beyond the 1.5 GB result."""
    spread, qnoise = (1.7, 0.75) if hard else (1.0, 0.75)
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((max(10, n // 100), dim), dtype=np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    x = np.empty((n, dim), np.float32)
    for a in range(0, n, 100_000):
        b = min(n, a + 100_000)
        v = topics[rng.integers(0, len(topics), b - a)]
        v += spread * rng.standard_normal((b - a, dim), dtype=np.float32) / np.sqrt(dim)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        x[a:b] = v
    q = x[rng.integers(0, n, n_queries)] + qnoise * rng.standard_normal(
        (n_queries, dim), dtype=np.float32) / np.sqrt(dim)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, np.ascontiguousarray(q, dtype=np.float32)


def _latencies(index: Any, q: np.ndarray, k: int, params: Any = None) -> list[float]:
    out = []
    for i in range(len(q)):
        t = time.perf_counter()
        if params is None:
            index.search(q[i : i + 1], k)
        else:
            index.search(q[i : i + 1], k, params=params)
        out.append((time.perf_counter() - t) * 1000)
    return out


def _recall(truth: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean([len(set(t) & set(g)) / len(t) for t, g in zip(truth, got, strict=True)]))


def faiss_scaling(sizes: list[int], dim: int, n_lat: int, n_recall: int, hard: bool) -> None:
    import faiss

    from segresearch.tools.search.kb.index import default_nlist, default_nprobe, make_index

    k = 3
    rows, sweep = [], []
    for n in sizes:
        t = time.perf_counter()
        x, q = synthetic(n, n_recall, dim, seed=n, hard=hard)
        gen_s = time.perf_counter() - t
        t = time.perf_counter()
        flat, _ = make_index(x, approx=False)
        flat_build = time.perf_counter() - t
        _, truth = flat.search(q, k)
        lat_flat = _latencies(flat, q[:n_lat], k)
        rows.append((f"{n:,}", "flat (exact)", f"{flat_build:.1f}", f"{pct(lat_flat, 50):.2f}",
                     f"{pct(lat_flat, 95):.2f}", "1.000", "-"))
        del flat
        gc.collect()
        t = time.perf_counter()
        ivf, info = make_index(x, approx=True)
        ivf_build = time.perf_counter() - t
        del x
        gc.collect()
        _, got = ivf.search(q, k)
        lat_ivf = _latencies(ivf, q[:n_lat], k)
        rows.append((f"{n:,}", "ivf_flat (approx)", f"{ivf_build:.1f}", f"{pct(lat_ivf, 50):.2f}",
                     f"{pct(lat_ivf, 95):.2f}", f"{_recall(truth, got):.3f}",
                     f"nlist={info['nlist']} nprobe={info['nprobe']}"))
        nl = default_nlist(n)
        for npr in sorted({max(1, nl // 256), max(1, nl // 128), max(1, nl // 64),
                           default_nprobe(nl), min(nl, 2 * default_nprobe(nl))}):
            p = faiss.SearchParametersIVF(nprobe=npr)
            _, g = ivf.search(q, k, params=p)
            lat = _latencies(ivf, q[: min(n_lat, 100)], k, p)
            sweep.append((f"{n:,}", npr, f"{_recall(truth, g):.3f}", f"{pct(lat, 50):.2f}",
                          "default" if npr == default_nprobe(nl) else ""))
        del ivf
        gc.collect()
        print(f"  {n:,} vectors: generated in {gen_s:.1f} s, flat {flat_build:.1f} s, "
              f"ivf {ivf_build:.1f} s", file=sys.stderr)
    table(f"(b) FAISS alone, {'HARD ' if hard else ''}synthetic data, dim {dim}, unit vectors, "
          f"k={k}, single-query latency over "
          f"{n_lat} queries, recall@3 of approximate vs exact over {n_recall} queries "
          f"({faiss.omp_get_max_threads()} threads; targets at 1M: approx p50 ≤ 10 ms, "
          "recall@3 ≥ 0.95)",
          ["vectors", "index", "build s", "p50 ms", "p95 ms", "recall@3", "params"], rows)
    table("    nprobe sweep (IVF, same data)", ["vectors", "nprobe", "recall@3", "p50 ms", ""],
          sweep)


# ------------------------------------------------------------- (c) server


def server_throughput_rows(kb_dir: str) -> tuple[list[str], list[tuple[Any, ...]]] | None:
    """(header, rows) from ``bench/_server_throughput.py`` (``rows(kb_dir) -> list[tuple]``,
    written separately), or None when that module is absent; its ``HEADER`` names the
    columns when it has one."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        import _server_throughput  # type: ignore[import-not-found]
    except ModuleNotFoundError as e:
        if e.name == "_server_throughput":
            return None
        raise
    got = [tuple(f"{c:.1f}" if isinstance(c, float) else c for c in r)
           for r in _server_throughput.rows(kb_dir)]
    if not got:
        return [], []
    header = getattr(_server_throughput, "HEADER", None)
    if header is None:  # its documented row shape today: (label, requests/s, p50 ms, p95 ms)
        header = (["config", "requests/s", "p50 ms", "p95 ms"] if len(got[0]) == 4
                  else [f"col{i + 1}" for i in range(len(got[0]))])
    return list(header), got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kb", help="built index or corpus folder (default ../shared/data/local_kb, "
                                 "else the demo KB)")
    ap.add_argument("--sizes", default="10000,100000,1000000",
                    help="synthetic corpus sizes, comma-separated")
    ap.add_argument("--max-size", dest="max_size", type=int, default=None,
                    help="skip synthetic sizes above this (1M needs ~5 GB RAM, minutes to build)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--rounds", type=int, default=3, help="passes over the tool queries")
    ap.add_argument("--latency-queries", dest="n_lat", type=int, default=200)
    ap.add_argument("--recall-queries", dest="n_recall", type=int, default=1000)
    ap.add_argument("--hard", action="store_true",
                    help="synthetic data with weak clusters (a stress test for the IVF index)")
    ap.add_argument("--skip-tool", action="store_true")
    ap.add_argument("--skip-faiss", action="store_true")
    args = ap.parse_args(argv)
    kb = Path(args.kb) if args.kb else (SHARED_KB if SHARED_KB.is_dir() else DEMO_KB)
    if not args.skip_tool:
        tool_latency(kb, args.rounds)
    if not args.skip_faiss:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        if args.max_size is not None:
            sizes = [s for s in sizes if s <= args.max_size]
        if sizes:
            faiss_scaling(sizes, args.dim, args.n_lat, args.n_recall, args.hard)
    got = server_throughput_rows(str(kb))
    if got is not None:
        header, rows = got
        table("(c) retrieval server throughput (bench/_server_throughput.py)", header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
