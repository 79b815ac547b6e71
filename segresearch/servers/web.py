"""The web page of ``segresearch serve graph`` and the few routes only the page needs.

The page (``servers/web/``: one HTML file, one stylesheet and native ES script modules in
``js/``, no build step, nothing fetched from elsewhere) talks to the LangGraph API itself
for threads, runs, streams and the context schema. What the API lacks is served here, each
route behind the same bearer token and the same path policy as the API:

- ``PUT /segresearch/uploads?name=clip.mp4``: a raw request body (no multipart parser is
  needed), written under the upload root with a byte cap, opened with the project's own media
  reader before it is kept, then renamed into place as ``<sha256><ext>`` (one file per
  content, whatever its name); the answer is a path the run input may name. Uploads count
  against the storage budget (``SEGRESEARCH_MEDIA_MAX_GB``, see ``core/media_budget.py``).
- ``GET /segresearch/library``: media under the configured roots a person may pick.
- ``GET /segresearch/setup``: whether the server's default model answers (its own model
  server probed, never one a client names) and the recorded demo's settings when the path
  policy lets clients read the shipped demo files; ``POST /segresearch/demo-media`` renders
  the demo clip once and keeps it as an upload. A fresh install has no model server, and
  the page starts with the demo instead of a model that cannot answer.
- ``GET /segresearch/threads/{id}/result``, ``/files/{name}``, ``/masks.zip``,
  ``/frames/{fid}.jpg``: what a run left in its folder, found from the thread's stored state
  (not from anything the request names) and served only from under the output root.

Only the page's own files are public (``public_paths``, asked by ``auth.is_public``): the page
must load before it can ask for the token. Everything carrying data needs the token when auth is on.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from langgraph_sdk import get_client
from PIL import Image
from starlette.concurrency import run_in_threadpool

from segresearch.agents.backends.openai_compat import API_KEY_ENV_VARS
from segresearch.agents.context import DEFAULT_MODEL, Context, ContextError
from segresearch.agents.model_spec import ModelSpec
from segresearch.agents.path_policy import resolve_client_path, served_output, upload_root
from segresearch.core.envvars import env_str, setting
from segresearch.core.media import (
    IMAGE_EXTS,
    MEDIA_ROOTS_ENV,
    VIDEO_EXTS,
    MediaError,
    as_uint8_rgb,
    open_media,
    resolved_roots,
)
from segresearch.core.media_budget import stamp_upload, upload_meta
from segresearch.core.media_store import note_upload
from segresearch.core.shared_cache import LoadOnce
from segresearch.core.urls import redact_url
from segresearch.demo import demo_cassette, demo_kb, demo_query
from segresearch.graphs.preflight import probe_endpoint
from segresearch.testing.scenes import render_scene, write_video
from segresearch.tools.segmenters.writers import read_mask
from segresearch.tools.visualize import MASK_COLOUR, OBJECT_COLOURS, overlay_mask

WEB_DIR = Path(__file__).resolve().parent / "web"
PAGE_PREFIX = "/segresearch/ui"
# A script module's file name: what the page's ``import`` statements name under ``js/``.
_MODULE_NAME = re.compile(r"[a-z][a-z0-9_-]*\.js")


def _page_files() -> dict[str, str]:
    """The page's own files by their path under PAGE_PREFIX (public, so that a browser can
    load the page and then ask for the token). The script modules are the plain ``.js`` files
    of ``web/js``, listed once at import: each becomes one exact route, so no request ever
    names a file, and nothing outside the folder or added to it later can be served."""
    modules = sorted(p.name for p in (WEB_DIR / "js").iterdir()
                     if _MODULE_NAME.fullmatch(p.name) and p.is_file() and not p.is_symlink())
    return {"": "index.html", "app.css": "app.css", **{f"js/{name}": f"js/{name}" for name in modules}}


PAGE_FILES = _page_files()
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}
MAX_UPLOAD_MB_ENV = "SEGRESEARCH_MAX_UPLOAD_MB"
# Names a run folder holds that a client may fetch one by one (masks go through the zip and
# the frame route); anything else in the folder, and anything outside it, is not served.
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_UPLOAD_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
_LIBRARY_LIMIT = 200
_UPLOAD_NAMES = 8
_LIBRARY_DEPTH = 3
_FRAME_SIDE = 960

router = APIRouter()


def max_upload_bytes() -> int:
    """The upload cap, read on every request so that an operator's value is the one in force
    (a malformed value falls back to the default rather than disabling the cap)."""
    return int(setting(MAX_UPLOAD_MB_ENV) * (1 << 20))


# ------------------------------------------------------------------------ page


def _page_file(name: str) -> Response:
    path = WEB_DIR / PAGE_FILES[name]
    return FileResponse(path, media_type=_TYPES[path.suffix], headers={
        # Small files that change with the package: revalidate, so an upgrade shows at once.
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                   "media-src 'self' blob:; style-src 'self'; script-src 'self'; "
                                   "connect-src 'self'; object-src 'none'; base-uri 'none'; "
                                   "frame-ancestors 'none'",
        "Referrer-Policy": "no-referrer",
    })


@router.get(PAGE_PREFIX, include_in_schema=False)
def page_redirect() -> Response:
    return RedirectResponse(PAGE_PREFIX + "/", status_code=307)


@router.get(PAGE_PREFIX + "/", include_in_schema=False)
def page() -> Response:
    return _page_file("")


def _page_route(name: str) -> Callable[[], Response]:
    def serve() -> Response:
        return _page_file(name)
    return serve


for _name in PAGE_FILES:
    if _name:  # the page itself is served above, at PAGE_PREFIX + "/"
        router.add_api_route(f"{PAGE_PREFIX}/{_name}", _page_route(_name), methods=["GET"],
                             name=f"page_file:{_name}", include_in_schema=False)


def public_paths() -> frozenset[str]:
    """Exact paths that need no token (auth.py asks): the page, its stylesheet and its
    script modules."""
    return frozenset({PAGE_PREFIX, *(f"{PAGE_PREFIX}/{name}" for name in PAGE_FILES)})


# --------------------------------------------------------------------- uploads


def _upload_dir() -> Path:
    root = upload_root()
    if root is None:
        raise HTTPException(status_code=503, detail="this server takes no uploads "
                                                    "(no SEGRESEARCH_UPLOAD_ROOT; `segresearch serve graph` sets one)")
    return root


def _safe_name(name: str) -> tuple[str, str]:
    """(stem, extension) of a client's file name, reduced to harmless characters; the
    extension must be one the media reader opens."""
    base = Path(name.replace("\\", "/")).name
    ext = Path(base).suffix.lower()
    if ext not in IMAGE_EXTS | VIDEO_EXTS:
        kinds = ", ".join(sorted(IMAGE_EXTS | VIDEO_EXTS))
        raise HTTPException(status_code=422, detail=f"unsupported file type {ext or '(none)'}; "
                                                    f"upload an image or a video ({kinds})")
    stem = _UPLOAD_NAME.sub("_", Path(base).stem).strip("._")[:48] or "upload"
    return stem, ext


def _too_big(limit: int) -> HTTPException:
    return HTTPException(status_code=413, detail=f"the file is larger than this server's upload "
                                                 f"limit of {limit / (1 << 20):g} MB ({MAX_UPLOAD_MB_ENV})")


# Leading bytes of every format the media reader takes (IMAGE_EXTS | VIDEO_EXTS), each
# mapped to one canonical extension: the stored name follows the content, not the client's
# name, so the same bytes are one file whatever they were called.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", ".png"),
    (0, b"\xff\xd8\xff", ".jpg"),
    (0, b"GIF87a", ".gif"),
    (0, b"GIF89a", ".gif"),
    (0, b"II*\x00", ".tif"),
    (0, b"MM\x00*", ".tif"),
    (0, b"BM", ".bmp"),
    (0, b"\x00\x00\x01\xba", ".mpg"),
    (0, b"\x00\x00\x01\xb3", ".mpg"),
)
_QUICKTIME_ATOMS = (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


def _content_ext(head: bytes) -> str | None:
    """The canonical extension of the format ``head`` (a file's first bytes) starts like,
    or None when it is none the server knows (the client's extension is used then)."""
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"AVI "):
        return ".webp" if head[8:12] == b"WEBP" else ".avi"
    if head[4:8] == b"ftyp":
        return ".mov" if head[8:12] == b"qt  " else ".mp4"
    if head[4:8] in _QUICKTIME_ATOMS:
        return ".mov"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska, or its WebM profile
        return ".webm" if b"webm" in head[:64] else ".mkv"
    return next((ext for at, magic, ext in _MAGIC if head[at:at + len(magic)] == magic), None)


def _stored_upload(root: Path, digest: str, ext: str, sniffed: bool) -> Path | None:
    """The upload already holding these bytes, if any. A sniffed format has one name; an
    unrecognised one may have been kept under any extension the reader takes."""
    for e in [ext] if sniffed else [ext, *sorted(IMAGE_EXTS | VIDEO_EXTS)]:
        p = root / f"{digest}{e}"
        if p.is_file():
            return p
    return None


def _record_name(dest: Path, label: str) -> None:
    """Remember the names a file was uploaded under (newest first, a few), for the library:
    a hidden sidecar, rewritten atomically; losing a name to a race only loses a label."""
    meta = upload_meta(dest, "names.json")
    try:
        names = json.loads(meta.read_text()).get("names", [])
    except (OSError, ValueError, AttributeError):
        names = []
    names = [label, *(n for n in names if isinstance(n, str) and n != label)][:_UPLOAD_NAMES]
    tmp = meta.with_name(f".{meta.name}.{uuid.uuid4().hex}.tmp")
    try:
        meta.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"names": names}))
        os.replace(tmp, meta)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _upload_label(path: Path) -> str | None:
    try:
        names = json.loads(upload_meta(path, "names.json").read_text()).get("names") or []
    except (OSError, ValueError, AttributeError):
        return None
    return names[0] if names and isinstance(names[0], str) else None


def _media_info(path: Path, name: str) -> dict[str, Any]:
    """Open the received file as media (what a run would do): a header is not enough, a
    frame must decode. The reader's message names its path; the client knows the file by
    its own name, not by the server's temporary one."""
    try:
        media = open_media(path, roots=None)
        try:
            media.frame(media.frame_ids[0])
            return {"kind": media.kind, "frames": len(media), "width": media.width,
                    "height": media.height, "note": media.note}
        finally:
            media.close()
    except (MediaError, IndexError, OSError) as e:
        reason = str(e).replace(f"'{path}'", "it").replace(str(path), "it")
        raise HTTPException(status_code=422, detail=f"{name} is not usable as media: {reason}") from None


def _keep_upload(tmp: Path, digest: str, stem: str, ext: str, name: str) -> dict[str, Any]:
    """Keep the received file once per content: ``<sha256><ext>``, the extension that of
    the format its bytes are (``_content_ext``; the client's when unrecognised). The same
    bytes under any name are one file; a repeat answers with the existing path
    (``reused``). Only a file that opens as media is kept, renamed into place atomically;
    the names it was uploaded under go to a hidden sidecar (``label``: the newest). A new
    file counts against the storage budget (SEGRESEARCH_MEDIA_MAX_GB), which may evict
    older uploads and images."""
    with tmp.open("rb") as f:
        sniffed = _content_ext(f.read(64))
    ext = sniffed or ext
    work = tmp if tmp.suffix == ext else tmp.with_name(f"{tmp.stem}{ext}")
    label = f"{stem}{Path(name).suffix.lower()}"
    try:
        if work != tmp:
            os.replace(tmp, work)  # the reader picks its decoder by the extension
        info = _media_info(work, name)
        dest = _stored_upload(tmp.parent, digest, ext, sniffed is not None)
        reused = dest is not None
        if dest is not None:
            stamp_upload(dest)  # used now: the evictor re-checks this stamp before deleting
        else:
            dest = tmp.parent / f"{digest}{ext}"
            os.chmod(work, 0o644)
            os.replace(work, dest)
    finally:
        with contextlib.suppress(OSError):
            work.unlink(missing_ok=True)
    _record_name(dest, label)
    note_upload(dest, _file_bytes(dest), new=not reused)
    return {"path": str(dest), "name": dest.name, "label": label, "reused": reused, **info}


@router.put("/segresearch/uploads")
async def upload(request: Request, name: str) -> JSONResponse:
    """The body is the file itself, streamed to disk with the cap enforced while it arrives
    (a client's Content-Length is only an early refusal, never trusted)."""
    limit = max_upload_bytes()
    stem, ext = _safe_name(name)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_big(limit)
    root = _upload_dir()
    await run_in_threadpool(root.mkdir, parents=True, exist_ok=True)
    tmp = root / f".part-{uuid.uuid4().hex}{ext}"
    f = await run_in_threadpool(tmp.open, "wb")
    digest = hashlib.sha256()
    size = 0
    try:
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_big(limit)
                digest.update(chunk)
                await run_in_threadpool(f.write, chunk)
        finally:
            await run_in_threadpool(f.close)
        if size == 0:
            raise HTTPException(status_code=422, detail="the file is empty")
        info = await run_in_threadpool(_keep_upload, tmp, digest.hexdigest(), stem, ext,
                                       Path(name.replace("\\", "/")).name)
    finally:
        with contextlib.suppress(OSError):
            await run_in_threadpool(tmp.unlink, missing_ok=True)
    return JSONResponse({**info, "bytes": size}, status_code=201)


# --------------------------------------------------------------------- library


def _media_kind(p: Path) -> str | None:
    ext = p.suffix.lower()
    return "video" if ext in VIDEO_EXTS else "image" if ext in IMAGE_EXTS else None


def _scan(root: Path, label: str) -> list[dict[str, Any]]:
    """Videos, images and folders of frames under ``root``, shallow and bounded: a root may
    be a whole disk, and the list is for a person to pick from, not an index."""
    out: list[dict[str, Any]] = []
    stack = [(root, 0)]
    while stack and len(out) < _LIBRARY_LIMIT:
        folder, depth = stack.pop()
        try:
            entries = sorted(folder.iterdir(), key=lambda p: p.name.lower())
        except OSError:
            continue
        frames = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
        if len(frames) >= 2 and folder != root:
            out.append({"path": str(folder), "kind": "frames", "root": label, "frames": len(frames)})
            continue
        for p in entries:
            if p.name.startswith("."):
                continue
            if p.is_dir() and depth < _LIBRARY_DEPTH and not p.is_symlink():
                stack.append((p, depth + 1))
            elif p.is_file() and (kind := _media_kind(p)):
                out.append({"path": str(p), "kind": kind, "root": label})
    return out


def _library() -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    up = upload_root()
    if up is not None and up.is_dir():
        ups = sorted((p for p in up.iterdir() if p.is_file() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
        items += [{"path": str(p), "kind": _media_kind(p) or "file", "root": "uploads",
                   **({"label": lab} if (lab := _upload_label(p)) else {})} for p in ups[:50]]
    for root in resolved_roots(env_str(MEDIA_ROOTS_ENV)):
        if up is not None and (root == up or root.is_relative_to(up)):
            continue
        items += _scan(root, str(root))
    seen: set[str] = set()
    unique = [i for i in items if not (i["path"] in seen or seen.add(i["path"]))]
    return {"items": unique[:_LIBRARY_LIMIT], "truncated": len(unique) > _LIBRARY_LIMIT,
            "upload_limit_mb": max_upload_bytes() / (1 << 20), "uploads": up is not None}


@router.get("/segresearch/library")
def library() -> dict[str, Any]:
    """Sync: walking folders runs in a worker thread, never on the event loop."""
    return _library()


# ----------------------------------------------------------- getting started

# How long the page waits for the operator's model server before calling it absent: a
# server on the same machine answers in milliseconds, and the page must not stall.
_MODEL_PROBE_S = 2.0


def _model_status(spec: str) -> dict[str, Any]:
    """Whether the server's own model can answer, so the page says so before a run fails
    on it. Only the operator's setting is probed (never an address a client names): an
    OpenAI-compatible server by its ``/models`` route, a replay or checkpoint file by its
    existence; a hosted endpoint is not called, only its key looked for."""
    parsed = ModelSpec.parse(spec)
    out: dict[str, Any] = {"spec": spec, "ok": None, "reason": None, "address": None}
    if not parsed.backend:
        return {**out, "ok": False, "reason": "malformed"}
    if parsed.backend == "openai":
        try:
            _, url = parsed.openai_endpoint()
        except ValueError:
            return {**out, "ok": False, "reason": "malformed"}
        if url:
            ok = probe_endpoint(url, _MODEL_PROBE_S) is None
            return {**out, "ok": ok, "reason": None if ok else "unreachable", "address": redact_url(url)}
        has_key = any(env_str(v) for v in API_KEY_ENV_VARS)
        return {**out, "ok": has_key, "reason": None if has_key else "no-key"}
    if parsed.names_file:
        ok = bool(parsed.target) and Path(parsed.target).expanduser().exists()
        return {**out, "ok": ok, "reason": None if ok else "missing"}
    return out


def _demo() -> dict[str, Any] | None:
    """The recorded demo (the CLI demo's replay policy and knowledge base) as page
    settings, when the path policy lets a client name both files; None otherwise."""
    try:
        cassette = resolve_client_path(demo_cassette(), "model", name="model")
        kb = resolve_client_path(demo_kb(), "kb", name="kb")
    except ContextError:  # PathRefused included: this server keeps its files to itself
        return None
    return {"model": f"replay:{cassette}", "search": "local", "kb": str(kb),
            "query": demo_query(), "media": upload_root() is not None}


@router.get("/segresearch/setup")
def setup() -> dict[str, Any]:
    """What a person needs before the first run: whether the server's default model
    answers, and the recorded demo they can try instead (sync: the probe may wait)."""
    try:
        model = Context().model
    except (ValueError, TypeError):  # a malformed SEGRESEARCH_<FIELD>: runs will say so
        model = env_str("SEGRESEARCH_MODEL") or DEFAULT_MODEL
    return {"model": _model_status(str(model)), "demo": _demo()}


def _demo_clip() -> dict[str, Any]:
    """The demo clip kept as an upload (one file per content: asking again reuses it)."""
    root = _upload_dir()
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".part-{uuid.uuid4().hex}.mp4"
    try:
        frames, _ = render_scene()
        write_video(frames, tmp)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        return _keep_upload(tmp, digest, "demo_clip", ".mp4", "demo_clip.mp4")
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


@router.post("/segresearch/demo-media")
def demo_media() -> JSONResponse:
    """The demo clip, rendered and stored like an upload, so the recorded demo runs on
    the media it was recorded on without the person finding that file first."""
    if _demo() is None:
        raise HTTPException(status_code=404, detail="this server does not offer the recorded demo")
    return JSONResponse(_demo_clip(), status_code=201)


# ------------------------------------------------------------- run folders


def _client() -> Any:
    """The in-process client of the server this app is mounted in (no network hop; the
    request reaching our route was already authenticated); made on first use."""
    return _CLIENT.get(None, _make_client)


def _make_client() -> Any:
    return get_client(url=None, api_key=None)


_CLIENT: LoadOnce[Any] = LoadOnce(name="server.graph_client")


async def _values(thread_id: str) -> dict[str, Any]:
    try:
        uuid.UUID(thread_id)
    except ValueError:
        raise HTTPException(status_code=404, detail="unknown thread") from None
    try:
        state = await _client().threads.get_state(thread_id)
    except httpx.HTTPStatusError as e:
        if e.response.status_code in (404, 422):
            raise HTTPException(status_code=404, detail="unknown thread") from None
        raise
    return (state.get("values") or {}) if isinstance(state, dict) else {}


def _folder(values: dict[str, Any], key: str) -> Path | None:
    raw = values.get(key)
    if not isinstance(raw, str) or not raw:
        return None
    p = served_output(raw)
    return p if p is not None and p.is_dir() else None


def _result(values: dict[str, Any]) -> dict[str, Any]:
    run_dir, masks_dir = _folder(values, "run_dir"), _folder(values, "masks_dir")
    files = sorted(p.name for p in run_dir.iterdir() if p.is_file() and _FILE_NAME.fullmatch(p.name)) if run_dir else []
    masks = sorted(p.name for p in masks_dir.glob("*.png")) if masks_dir else []
    frame_ids: list[int] = []
    try:
        media = values.get("media")
        if media and masks:
            frame_ids = list(open_media(media).frame_ids)
    except (MediaError, TypeError, ValueError):
        frame_ids = []
    return {"run_dir": str(run_dir) if run_dir else None, "files": files, "masks": len(masks),
            "frame_ids": frame_ids, "overlay": "overlay.mp4" in files}


@router.get("/segresearch/threads/{thread_id}/result")
async def result(thread_id: str) -> dict[str, Any]:
    """What the run folder of a thread holds, for the page's result panel and history."""
    values = await _values(thread_id)
    return await run_in_threadpool(_result, values)


_MEDIA_TYPES = {".json": "application/json", ".md": "text/markdown; charset=utf-8",
                ".jpg": "image/jpeg", ".png": "image/png", ".mp4": "video/mp4"}


@router.get("/segresearch/threads/{thread_id}/files/{name}")
async def run_file(thread_id: str, name: str) -> Response:
    """One file of the thread's run folder, by plain name only (no sub-folders, no dots
    in front); a name that is not there, or a folder outside the output root, is a 404."""
    if not _FILE_NAME.fullmatch(name) or ".." in name:
        raise HTTPException(status_code=404, detail="no such file")
    values = await _values(thread_id)
    run_dir = await run_in_threadpool(_folder, values, "run_dir")
    if run_dir is None:
        raise HTTPException(status_code=404, detail="this run has no folder")
    path = run_dir / name
    real = await run_in_threadpool(path.resolve)
    if real.parent != run_dir or not await run_in_threadpool(real.is_file):
        raise HTTPException(status_code=404, detail="no such file")
    return FileResponse(real, media_type=_MEDIA_TYPES.get(real.suffix.lower(), "application/octet-stream"),
                        headers={"Cache-Control": "private, no-cache", "X-Content-Type-Options": "nosniff"})


def _zip(masks_dir: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:  # PNGs are compressed already
        for p in sorted(masks_dir.glob("*.png")):
            if p.is_file() and not p.is_symlink():
                z.write(p, arcname=f"masks/{p.name}")
    return buf.getvalue()


@router.get("/segresearch/threads/{thread_id}/masks.zip")
async def masks_zip(thread_id: str) -> Response:
    """Built when asked: masks are a few KB a frame, and a folder that is replaced by a
    later run on the thread is then never served half old, half new."""
    values = await _values(thread_id)
    masks_dir = await run_in_threadpool(_folder, values, "masks_dir")
    if masks_dir is None:
        raise HTTPException(status_code=404, detail="this run has no masks")
    data = await run_in_threadpool(_zip, masks_dir)
    return Response(data, media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="masks-{thread_id[:8]}.zip"',
        "Cache-Control": "private, no-cache"})


def _overlay_folders(values: dict[str, Any]) -> list[tuple[tuple[int, int, int], Path]]:
    """The mask folders a frame is tinted with: each object's in its own colour (the overlay
    video's) when the answer named several, else the masks folder. Every folder passes the
    output policy (``_folder``); an object folder it refuses is left out, not the frame."""
    dirs = values.get("object_masks_dirs")
    if isinstance(dirs, list) and len(dirs) > 1:
        out = []
        for k, raw in enumerate(dirs):
            folder = _folder({"d": raw}, "d")
            if folder is not None:
                out.append((OBJECT_COLOURS[k % len(OBJECT_COLOURS)], folder))
        return out
    masks_dir = _folder(values, "masks_dir")
    return [] if masks_dir is None else [(MASK_COLOUR, masks_dir)]


def _frame_jpeg(values: dict[str, Any], fid: int, overlay: bool, max_side: int) -> bytes:
    try:  # open_media applies the media roots again: a stored state is not trusted
        media = open_media(values["media"])
        frame = media.frame(fid)
        name = media.frame_name(fid)
    except (MediaError, KeyError, TypeError):
        raise HTTPException(status_code=404, detail="no such frame") from None
    scale = min(1.0, max_side / max(frame.size))
    if scale < 1:
        frame = frame.resize((round(frame.width * scale), round(frame.height * scale)), Image.Resampling.BILINEAR)
    rgb = as_uint8_rgb(frame)
    for colour, folder in _overlay_folders(values) if overlay else ():
        mask = read_mask(folder / f"{name}.png")
        if mask is not None:
            if mask.shape != rgb.shape[:2]:
                mask = cv2.resize(mask.astype(np.uint8), (rgb.shape[1], rgb.shape[0]),
                                  interpolation=cv2.INTER_NEAREST) > 0
            rgb = overlay_mask(rgb, mask, colour)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


@router.get("/segresearch/threads/{thread_id}/frames/{fid}.jpg")
async def frame(thread_id: str, fid: int, overlay: bool = False, max_side: int = _FRAME_SIDE) -> Response:
    """A frame of the thread's media (for review, at its own proportions), with the run's
    mask tinted on it when ``overlay`` is set: mask frames a browser shows whatever video
    codecs it has, and small ones make the history's thumbnails."""
    values = await _values(thread_id)
    side = min(max(int(max_side), 32), _FRAME_SIDE)
    data = await run_in_threadpool(_frame_jpeg, values, fid, overlay, side)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, no-cache"})


def temp_upload_files(root: Path) -> list[Path]:
    """Leftover partial uploads (tests check none stay behind after a refusal)."""
    return sorted(root.glob(".part-*")) if root.is_dir() else []


__all__ = ["PAGE_PREFIX", "max_upload_bytes", "public_paths", "router", "temp_upload_files"]

