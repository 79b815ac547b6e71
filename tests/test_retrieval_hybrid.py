"""Reciprocal-rank fusion in the ``hybrid`` backend, with fake dense and lexical backends (no
FAISS build), and (slow) its accuracy on the shared knowledge base's labelled queries."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from segresearch.tools.search import (
    BM25KnowledgeBase,
    HybridKnowledgeBase,
    ImageHit,
    SearchBackend,
    TextHit,
    get_backend,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED_KB = Path("/work/shared/data/local_kb")

DOCS = {
    "alpha": "Alpha\nThe alpha document is about red apples.",
    "beta": "Beta\nThe beta document is about green pears.",
    "gamma": "Gamma\nThe gamma document is about yellow bananas.",
    "delta": "Delta\nThe delta document is about purple plums.",
}


class FakeRanking(SearchBackend):
    """Answers every query with a fixed ranking of the tiny KB's documents and images."""

    def __init__(self, kb: BM25KnowledgeBase, order: list[str], images: list[str]) -> None:
        self.by_title = {t.lower(): (t, b) for t, b in kb.docs}
        self.order, self.image_order = order, images
        self.calls: list[int] = []

    def search_text(self, query: str, k: int) -> list[TextHit]:
        self.calls.append(k)
        return [TextHit(*self.by_title[n], 1.0 / (i + 1)) for i, n in enumerate(self.order[:k])]

    def search_images(self, query: str, k: int) -> list[ImageHit]:
        img = Image.new("RGB", (4, 4))
        return [ImageHit(n, img, 1.0) for n in self.image_order[:k]]


@pytest.fixture
def tiny_kb(tmp_path: Path) -> BM25KnowledgeBase:
    (tmp_path / "images").mkdir()
    with (tmp_path / "text_corpus.jsonl").open("w") as f:
        for i, contents in enumerate(DOCS.values()):
            f.write(json.dumps({"id": i, "contents": contents}) + "\n")
    with (tmp_path / "image_corpus.jsonl").open("w") as f:
        for i, name in enumerate(["apple", "pear", "plum"]):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "images" / f"{name}.png")
            f.write(json.dumps({"id": i, "name": name, "image_path": f"images/{name}.png"}) + "\n")
    return BM25KnowledgeBase(tmp_path)


def hybrid(kb: BM25KnowledgeBase, dense: list[str], lexical: list[str],
           dense_img: tuple[str, ...] = (), lexical_img: tuple[str, ...] = ()) -> HybridKnowledgeBase:
    return HybridKnowledgeBase(FakeRanking(kb, dense, list(dense_img)),
                               FakeRanking(kb, lexical, list(lexical_img)))


def titles(hits: list[TextHit]) -> list[str]:
    return [h.title for h in hits]


def test_doc_ranked_well_by_both_comes_first(tiny_kb):
    # beta is second for both; alpha and gamma each top only one ranking
    h = hybrid(tiny_kb, ["alpha", "beta", "delta"], ["gamma", "beta", "delta"])
    hits = h.search_text("fruit", 4)
    # beta 2/62 > delta (third for both) 2/63 > alpha, gamma 1/61 each (tie: dense first)
    assert titles(hits) == ["Beta", "Delta", "Alpha", "Gamma"]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].score == pytest.approx(2 / 62)
    assert (hits[0].title, hits[0].text) == tiny_kb.docs[1]


def test_doc_found_by_one_backend_still_appears(tiny_kb):
    h = hybrid(tiny_kb, ["alpha", "beta"], ["beta", "gamma"])
    got = titles(h.search_text("fruit", 10))
    assert got[0] == "Beta"
    assert set(got) == {"Alpha", "Beta", "Gamma"}  # nothing invented, nothing dropped
    # a dense-only top hit outranks a lexical-only second hit (rank 1 beats rank 2)
    assert got.index("Alpha") < got.index("Gamma")


def test_k_is_respected_and_depth_passed_down(tiny_kb):
    h = hybrid(tiny_kb, ["alpha", "beta", "gamma", "delta"], ["delta", "gamma", "beta", "alpha"])
    for k in (1, 2, 3):
        assert len(h.search_text("fruit", k)) == k
    assert all(n >= h.depth for n in h.dense.calls + h.lexical.calls)
    assert [len(r) for r in h.search_text_batch(["a", "b"], 2)] == [2, 2]
    assert titles(h.search_text_batch(["a"], 4)[0]) == titles(h.search_text("a", 4))


def test_images_fused_by_name(tiny_kb):
    h = hybrid(tiny_kb, [], [], dense_img=["pear", "apple"], lexical_img=["plum", "pear"])
    hits = h.search_images("fruit", 3)
    assert [x.name for x in hits] == ["pear", "plum", "apple"]  # pear, seen by both, once
    assert len(h.search_images("fruit", 1)) == 1


def test_with_real_bm25_as_lexical(tiny_kb):
    """The fused result keeps BM25's exact-word match when the dense side ranks it last."""
    h = HybridKnowledgeBase(FakeRanking(tiny_kb, ["alpha", "beta", "gamma", "delta"], []),
                            tiny_kb)
    assert titles(h.search_text("purple plums", 2)) == ["Delta", "Alpha"]
    images = h.search_images("plum", 1)
    assert [x.name for x in images] == ["plum"]


def _bench():
    if str(ROOT / "bench") not in sys.path:  # as when the script runs: its helpers beside it
        sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("bench_retrieval", ROOT / "bench/retrieval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_hybrid_top3_on_labelled_queries():
    if not (SHARED_KB / "text_corpus.jsonl").is_file():
        pytest.skip(f"no shared knowledge base at {SHARED_KB}")
    bench = _bench()
    docs, dupes = bench.load_corpus(SHARED_KB)
    queries = [q for q in bench.load_queries(bench.DEFAULT_QUERIES) if q["id"] not in dupes]
    assert len(queries) >= 60
    top3 = {name: bench.score(get_backend(name, str(SHARED_KB)), queries, docs)["acc"]["all"][3]
            for name in ("local", "bm25", "hybrid")}
    assert top3["hybrid"] >= max(top3["local"], top3["bm25"]) - 0.05, top3
