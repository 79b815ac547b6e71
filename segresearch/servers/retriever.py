"""A Search-R1 compatible retrieval server (``POST /retrieve``) over any ``SearchBackend``.

RL rollouts fire many single-query searches at once. An embedding backend pays one model
call per batch, so the server gathers queries that arrive close together into one
``search_text_batch`` call (a micro-batcher on the event loop) instead of one call per
request. Backend calls always run in a worker thread: a slow index must never stall the
event loop, or ``/health`` and request parsing would stall with it.

The response shape is Search-R1's (``{"result": [[doc, ...] per query]}``, with
``{"document": doc, "score": s}`` items when scores are asked for), so Search-R1 / Seg-ReSearch
clients and this project's ``retriever`` backend can talk to it unchanged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import hashlib
import logging
import math
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from segresearch.core.jsonl import iter_jsonl
from segresearch.tools.search import SearchBackend, TextHit, get_backend, split_title

log = logging.getLogger("segresearch.retriever")

DEFAULT_TOPK = 3
BatchSearch = Callable[[list[str], int], list[list[TextHit]]]


class BackendError(RuntimeError):
    """The backend failed on a batch; every request in that batch gets its own copy, so
    tracebacks of unrelated requests do not pile up on one shared exception object."""


# ----------------------------------------------------------------------- batching


@dataclass
class _Pending:
    queries: list[str]
    k: int
    future: asyncio.Future[list[list[TextHit]]]
    enqueued: float


@dataclass
class MicroBatcher:
    """Coalesces concurrent ``search(queries, k)`` calls into few ``batch_search`` calls.

    One consumer task owns the backend: it waits for the first pending request, then for
    more until ``max_batch`` queries are queued or the oldest has waited ``max_wait_s``,
    and runs one backend call (in a single dedicated thread, so batches never overlap and
    the GPU/index sees one batch at a time). While a call runs, new requests queue up and
    form the next batch, so batches grow by themselves under load. Mixed ``k`` are served
    by asking for the largest and trimming, which gives each request exactly its own top-k
    because ranking is a prefix property.
    """

    batch_search: BatchSearch
    max_batch: int = 64
    max_wait_s: float = 0.005
    _queue: deque[_Pending] = field(default_factory=deque, init=False)
    _queued: int = field(default=0, init=False)
    _wake: asyncio.Event | None = field(default=None, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _pool: cf.ThreadPoolExecutor | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1; got {self.max_batch}")
        if self.max_wait_s < 0:
            raise ValueError(f"max_wait_ms must not be negative; got {self.max_wait_s * 1000:g}")

    def _ensure_started(self) -> asyncio.Event:
        # Started on first use rather than only from a lifespan hook, so the batcher also
        # works under test clients and embedders that skip lifespan events.
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._pool = self._pool or cf.ThreadPoolExecutor(1, "segresearch-retriever-batch")
            self._task = asyncio.get_running_loop().create_task(self._consume())
        assert self._wake is not None
        return self._wake

    async def search(self, queries: list[str], k: int) -> list[list[TextHit]]:
        wake = self._ensure_started()
        loop = asyncio.get_running_loop()
        now = loop.time()
        # A request larger than one batch is split, so max_batch bounds every backend call.
        parts = [
            _Pending(queries[i : i + self.max_batch], k, loop.create_future(), now)
            for i in range(0, len(queries), self.max_batch)
        ]
        self._queue.extend(parts)
        self._queued += len(queries)
        wake.set()
        outcomes = await asyncio.gather(*(p.future for p in parts), return_exceptions=True)
        for o in outcomes:
            if isinstance(o, BaseException):
                raise o
        return [hits for part in outcomes for hits in part]  # type: ignore[union-attr]

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(BackendError("the retriever is shutting down"))
        self._queued = 0
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            # The deadline counts from the oldest request's arrival: requests that queued
            # while the previous batch ran are already late and go at once.
            deadline = self._queue[0].enqueued + self.max_wait_s
            while self._queued < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            await self._run(self._take())

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        while self._queue and (not batch or size + len(self._queue[0].queries) <= self.max_batch):
            p = self._queue.popleft()
            size += len(p.queries)
            batch.append(p)
        self._queued -= size
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]  # callers that gave up cost nothing
        if not live:
            return
        queries = [q for p in live for q in p.queries]
        k = max(p.k for p in live)
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._pool, self.batch_search, queries, k
            )
            if len(results) != len(queries):
                raise RuntimeError(
                    f"backend returned {len(results)} result lists for {len(queries)} queries"
                )
            parts, pos = [], 0
            for p in live:
                parts.append([list(hits[: p.k]) for hits in results[pos : pos + len(p.queries)]])
                pos += len(p.queries)
        except asyncio.CancelledError:  # closed mid-batch: its callers must not wait forever
            _fail(live, BackendError("the retriever is shutting down"))
            raise
        except Exception as e:  # noqa: BLE001 - the batch's requests report it, the loop goes on
            _fail(live, e)
            return
        for p, part in zip(live, parts, strict=True):
            if not p.future.done():
                p.future.set_result(part)


def _fail(batch: list[_Pending], e: BaseException) -> None:
    for p in batch:
        if not p.future.done():
            err = BackendError(_describe(e))
            err.__cause__ = e
            p.future.set_exception(err)


def _describe(e: BaseException) -> str:
    return str(e) or type(e).__name__


# ------------------------------------------------------------------- corpus lookups


def _text_key(title: str, text: str) -> bytes:
    # Digests, not the texts themselves: the lookup should not double the corpus in memory.
    return hashlib.blake2b(f"{title}\n{text}".encode(), digest_size=16).digest()


@dataclass
class CorpusIds:
    """Corpus ids and image paths for hits, which carry only titles, texts and names.

    Search-R1 documents have an ``id``; the ``SearchBackend`` interface does not, so ids
    are recovered from the knowledge-base files (a backend whose hits carry ``id`` wins).
    """

    text_ids: dict[bytes, Any] = field(default_factory=dict)
    images: dict[str, tuple[Any, str]] = field(default_factory=dict)
    n_text: int | None = None
    n_images: int | None = None

    @classmethod
    def from_folder(cls, folder: str | Path | None) -> CorpusIds:
        """From a corpus folder (``text_corpus.jsonl``, ``image_corpus.jsonl``) or, lacking
        those, a built index folder (``text_meta.jsonl``, ``images_meta.jsonl``)."""
        out = cls()
        if folder is None:
            return out
        root = Path(folder).expanduser()
        if (root / "text_corpus.jsonl").is_file():
            texts = [
                (row.get("id", n), *split_title(str(row.get("contents", ""))))
                for n, row in enumerate(_jsonl(root / "text_corpus.jsonl"))
            ]
        elif (root / "text_meta.jsonl").is_file():
            texts = [
                (
                    row.get("id", n),
                    str(row.get("title", "")).strip(),
                    str(row.get("text", "")).strip(),
                )
                for n, row in enumerate(_jsonl(root / "text_meta.jsonl"))
            ]
        else:
            texts = None
        if texts is not None:
            for doc_id, title, body in texts:
                out.text_ids.setdefault(_text_key(title, body), doc_id)
            out.n_text = len(texts)
        for name, path_key in (("image_corpus.jsonl", "image_path"), ("images_meta.jsonl", "path")):
            if (root / name).is_file():
                rows = list(_jsonl(root / name))
                for n, row in enumerate(rows):
                    entry = (row.get("id", n), str(row.get(path_key, "")))
                    out.images.setdefault(str(row.get("name", "")).strip(), entry)
                out.n_images = len(rows)
                break
        return out

    def text_doc(self, hit: TextHit) -> dict[str, Any]:
        doc_id = getattr(hit, "id", None)
        if doc_id is None:
            doc_id = self.text_ids.get(_text_key(hit.title, hit.text))
        contents = f"{hit.title}\n{hit.text}" if hit.text else hit.title
        return {"id": doc_id, "contents": contents}

    def image_doc(self, name: str) -> dict[str, Any]:
        doc_id, path = self.images.get(name.strip(), (None, None))
        return {"id": doc_id, "name": name, "image_path": path}


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Corpus rows for id lookups; lines that are not objects carry no id and are passed by."""
    for _, row in iter_jsonl(path, skip_non_objects=True):
        yield row


# ------------------------------------------------------------------------- the app


def _problems(e: ValidationError) -> str:
    parts = []
    for err in e.errors(include_url=False):
        where = ".".join(str(x) for x in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit``: a declared length is
    checked before reading and a chunked body is counted as it streams, so an oversized
    upload is never held in memory whole."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPException(400, f"invalid Content-Length header: {declared!r}") from None
        if size > limit:
            raise HTTPException(413, f"request body of {size} bytes exceeds the {limit}-byte limit")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"request body exceeds the {limit}-byte limit")
    return bytes(body)


def _score(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None  # JSON has no NaN/inf


def create_app(
    backend: SearchBackend,
    *,
    max_batch: int = 64,
    max_wait_ms: float = 5.0,
    max_queries: int = 256,
    max_topk: int = 50,
    batching: bool = True,
    max_body_bytes: int = 1 << 20,
    kb: str | Path | None = None,
) -> FastAPI:
    """The retrieval app over ``backend``.

    ``kb`` is the knowledge-base folder used to recover document ids and image paths
    (default: the backend's own ``folder`` when it has one). ``batching=False`` serves
    every request with its own backend call, for comparison.
    """
    for name, value in (
        ("max_queries", max_queries),
        ("max_topk", max_topk),
        ("max_body_bytes", max_body_bytes),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1; got {value}")
    corpus = CorpusIds.from_folder(kb if kb is not None else getattr(backend, "folder", None))
    batcher = MicroBatcher(backend.search_text_batch, max_batch, max_wait_ms / 1000.0)

    class RetrieveRequest(BaseModel):
        # Strict: "3" is not a topk and 1 is not a query; silently coercing would hide
        # client bugs that change what is retrieved.
        model_config = ConfigDict(strict=True)

        queries: list[str] = Field(min_length=1, max_length=max_queries)
        topk: int | None = Field(default=DEFAULT_TOPK, ge=1, le=max_topk)
        return_scores: bool = False
        collection: Literal["text", "image"] = "text"

        @field_validator("queries")
        @classmethod
        def _no_blank_queries(cls, v: list[str]) -> list[str]:
            blank = [i for i, q in enumerate(v) if not q.strip()]
            if blank:
                raise ValueError(f"queries must not be empty (empty at index {blank[0]})")
            return v

    async def search_text(queries: list[str], k: int) -> list[list[TextHit]]:
        if batching:
            return await batcher.search(queries, k)
        results = await asyncio.to_thread(backend.search_text_batch, queries, k)
        if len(results) != len(queries):
            raise BackendError(
                f"backend returned {len(results)} result lists for {len(queries)} queries"
            )
        return [list(hits[:k]) for hits in results]

    def search_images(queries: list[str], k: int) -> list[list[tuple[str, float]]]:
        # Only names and scores leave the thread; the decoded images are dropped here
        # because clients get paths, never pixels.
        return [[(h.name, h.score) for h in backend.search_images(q, k)] for q in queries]

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await batcher.close()

    app = FastAPI(title="SegResearch retriever", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.backend = backend
    app.state.corpus = corpus

    # The body is parsed by hand (size cap, 400 vs 422), so the schema is declared here
    # for the OpenAPI docs.
    schema = {"content": {"application/json": {"schema": RetrieveRequest.model_json_schema()}}}

    @app.post("/retrieve", openapi_extra={"requestBody": {**schema, "required": True}})
    async def retrieve(request: Request) -> JSONResponse:
        raw = await _read_body(request, max_body_bytes)
        try:
            req = RetrieveRequest.model_validate_json(raw)
        except ValidationError as e:
            if any(err["type"] == "json_invalid" for err in e.errors()):
                raise HTTPException(
                    400, f"request body is not valid JSON: {_problems(e)}"
                ) from None
            raise HTTPException(422, _problems(e)) from None
        k = req.topk or DEFAULT_TOPK
        try:
            if req.collection == "image":
                image_hits = await asyncio.to_thread(search_images, req.queries, k)
                result = [
                    [(corpus.image_doc(name), score) for name, score in hits] for hits in image_hits
                ]
            else:
                text_hits = await search_text(req.queries, k)
                result = [[(corpus.text_doc(h), h.score) for h in hits] for hits in text_hits]
        except Exception as e:  # noqa: BLE001 - any backend failure is the service's, not the client's
            msg = _describe(e)
            log.warning("search failed for %d queries: %s", len(req.queries), msg)
            raise HTTPException(503, f"search backend failed: {msg}") from None
        if req.return_scores:
            body = [[{"document": d, "score": _score(s)} for d, s in hits] for hits in result]
        else:
            body = [[d for d, _ in hits] for hits in result]
        # JSONResponse directly: the payload is plain JSON already, and FastAPI's generic
        # encoder would walk it again on every request.
        return JSONResponse({"result": body})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "backend": backend.name,
            "documents": corpus.n_text,
            "images": corpus.n_images,
            "batching": batching,
        }

    return app


# ---------------------------------------------------------------------- serving


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket bound before uvicorn starts, so a taken port is an ``OSError``
    the caller can report (uvicorn itself would ``sys.exit``) and port 0 gives a free
    port with no race. A port outside 0-65535 is a ValueError: ``getaddrinfo`` would
    silently wrap it round (99999 listens on 34463)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be a whole number between 0 (any free port) and 65535; "
                         f"got {port!r}")
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.contextmanager
def serve_in_thread(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, startup_timeout: float = 20.0
) -> Iterator[str]:
    """Run ``app`` under uvicorn in a background thread; yields its base URL and stops it
    (gracefully) on exit. For tests and benchmarks that need a real HTTP server."""
    import uvicorn  # optional: [server] or [rl] extra; only serving needs it, not create_app

    sock = bind_socket(host, port)
    url = _url(sock)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="segresearch-retriever"
    )
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the retriever server failed to start (see its log)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the retriever server did not start in {startup_timeout:g} s")
            time.sleep(0.01)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def serve(
    kb: str,
    host: str = "127.0.0.1",
    port: int = 8001,
    *,
    search: str = "local",
    log_level: str = "info",
    access_log: bool = False,
    **opts: Any,
) -> None:
    """Serve ``get_backend(search, kb)`` until interrupted. Everything that can go wrong
    before serving (no knowledge base, unknown backend, port taken) raises here, before
    uvicorn takes over. ``opts`` go to :func:`create_app`."""
    import uvicorn  # optional: [server] or [rl] extra; only serving needs it, not create_app

    backend = get_backend(search, kb)
    app = create_app(backend, kb=kb, **opts)
    try:
        sock = bind_socket(host, port)
    except OSError as e:
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    try:
        config = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on")
        server = uvicorn.Server(config)  # configures logging, so the line below shows
        logging.getLogger("uvicorn.error").info(
            "retriever (%s backend, %s documents) on %s",
            backend.name,
            app.state.corpus.n_text,
            _url(sock),
        )
        server.run(sockets=[sock])
    finally:
        sock.close()


__all__ = [
    "BackendError",
    "CorpusIds",
    "MicroBatcher",
    "bind_socket",
    "create_app",
    "serve",
    "serve_in_thread",
]
