"""Our routes and request checks inside the LangGraph API server (``langgraph.json`` ``"http"``).

langgraph-api accepts any JSON in a run's ``context`` and ``input`` and only finds out what
is wrong once a worker has picked the run up: a typo in a context key, a frame count of a
million or a knowledge base under ``/etc`` would surface as a failed run after queueing, or
not at all. ``RunPayloadGuard`` checks run and assistant payloads, and state a client writes
into a thread (``POST /threads/{id}/state``, ``POST /threads`` with ``supersteps``, a command's
``update`` and ``goto`` inputs), when they arrive and answers at once: 422 with one line per
problem for a malformed context or input, 403 for a path outside ``SEGRESEARCH_MEDIA_ROOTS``.
The graph still checks for itself; this is the early, explicit answer an API client deserves.
A run that resumes a pause (``command.resume``: a review or a question) is checked against the
thread's pending interrupt too (``review_check``): 422 for a reply the node would refuse, 409
when nothing is pending; one that names no ``context`` runs under the paused run's.

langgraph-api runs the middleware registered on this app on every route (its own and ours);
the gateway in front of the whole server (``gateway.py``) has checked the token before, so a
client without it learns nothing about which paths exist.

On the durable engine a run that does not choose its checkpoint durability gets ``"sync"``
(``SEGRESEARCH_DEFAULT_DURABILITY``, set by ``serve graph --database``): every finished step
is committed before the next starts, so a crash redoes at most the step in flight, where
langgraph-api's default (``"async"``) may also lose the step before it.

The routes under ``/segresearch/`` serve what a UI needs besides the graph's state: the
images the model saw (content-addressed PNGs) and how the server is configured; the web page
and its own routes (uploads, run folders) live in ``web.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from segresearch import __version__
from segresearch.agents.client_settings import validate_context
from segresearch.agents.context import FIELD_NAMES, Context, ContextError
from segresearch.agents.path_policy import (
    KB_ROOTS_ENV,
    MODEL_ROOTS_ENV,
    OUTPUT_ROOT_ENV,
    PathRefused,
    check_input,
)
from segresearch.compat.langgraph_api import RUN_CREATION, payload_kind
from segresearch.core import media_store
from segresearch.core.envvars import env_str, setting
from segresearch.core.media import MEDIA_ROOTS_ENV, UPLOAD_ROOT_ENV
from segresearch.servers import review_check, web
from segresearch.servers.auth import auth_enabled


def _route_path(scope: Scope) -> str:
    """Patterns are matched without a mount prefix (``root_path``): with ``mount_prefix`` set,
    the full path would match none of them and every run would skip the checks."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return path.rstrip("/") or "/"


def _kind_of(scope: Scope) -> str | None:
    """Which requests carry run payloads is langgraph-api's route table, kept (and checked
    against the installed release) in ``compat.langgraph_api``."""
    return payload_kind(scope.get("method", ""), _route_path(scope))


Check = tuple[str, Callable[[], object]]


def _write_checks(where: str, value: Any) -> list[Check]:
    """Checks for a write to a thread's state, in each shape LangGraph takes one: a mapping,
    ``[key, value]`` pairs (a command's ``update``), or a list of mappings or of
    ``[values, as_node]`` pairs (``values`` beside ``as_node: "__copy__"``). Whichever node a
    write claims to come from, the graph's nodes read what it wrote as they read run input."""
    if isinstance(value, dict):
        return [(where, functools.partial(check_input, value))]
    checks: list[Check] = []
    for i, item in enumerate(value if isinstance(value, list) else []):
        if isinstance(item, list) and len(item) == 2:
            item = {item[0]: item[1]} if isinstance(item[0], str) else item[0]
        if isinstance(item, dict):
            checks.append((f"{where}[{i}]", functools.partial(check_input, item)))
    return checks


def _command_checks(where: str, command: Any) -> list[Check]:
    """A command's ``update`` and the input of every node its ``goto`` sends to (a ``Send``
    runs that node on the client's input instead of the thread's state). ``resume`` is the
    review node's reply, judged by ``review_check``."""
    if not isinstance(command, dict):
        return []
    checks = _write_checks(f"{where}.update", command.get("update"))
    goto = command.get("goto")
    for i, send in enumerate(goto if isinstance(goto, list) else [goto]):
        if isinstance(send, dict):
            at = f"{where}.goto[{i}]" if isinstance(goto, list) else f"{where}.goto"
            checks += _write_checks(f"{at}.input", send.get("input"))
    return checks


def _superstep_checks(supersteps: Any) -> list[Check]:
    """``POST /threads`` with ``supersteps`` writes state without a run: into the new thread,
    or into an existing one with ``if_exists: "do_nothing"``. Each update is written as if node
    ``as_node`` had run (``"__input__"``: as the run input), and its command may schedule nodes
    (``goto``, ``Send``) that the thread's next run executes on what was written, so each is
    checked as a run's input and command are (see ``compat.langgraph_api``)."""
    checks: list[Check] = []
    for i, step in enumerate(supersteps if isinstance(supersteps, list) else []):
        updates = step.get("updates") if isinstance(step, dict) else None
        for j, update in enumerate(updates if isinstance(updates, list) else []):
            if isinstance(update, dict):
                at = f"supersteps[{i}].updates[{j}]"
                checks += _write_checks(f"{at}.values", update.get("values"))
                checks += _command_checks(f"{at}.command", update.get("command"))
    return checks


def _checks(kind: str, body: Any) -> list[Check]:
    """(where, check) for every part of ``body`` that configures a run or names files.

    ``config.configurable`` matters as much as ``context``: when a run has no context the
    server turns its configurable into the context, and a run's ``checkpoint`` keys are
    merged into configurable too. Only Context field names are checked there; the server
    puts its own keys (thread_id, headers, ...) beside them.
    """
    if kind == "batch":
        if not isinstance(body, list):
            return []
        out: list[Check] = []
        for i, item in enumerate(body):
            out += [(f"runs[{i}] {where}", fn) for where, fn in _checks("run", item)]
        return out
    if not isinstance(body, dict):
        return []
    if kind == "state":
        return _write_checks("values", body.get("values"))
    if kind == "thread":
        return _superstep_checks(body.get("supersteps"))

    checks: list[Check] = []
    context = body.get("context")
    if isinstance(context, dict):
        checks.append(("context", functools.partial(validate_context, context)))
    config = body.get("config")
    configurable = config.get("configurable") if isinstance(config, dict) else None
    for where, mapping in (("config.configurable", configurable), ("checkpoint", body.get("checkpoint"))):
        if isinstance(mapping, dict):
            fields = {k: v for k, v in mapping.items() if k in FIELD_NAMES}
            if fields:
                checks.append((where, functools.partial(validate_context, fields)))
    if kind == "run":
        run_input = body.get("input")
        if isinstance(run_input, dict):
            checks.append(("input", functools.partial(check_input, run_input)))
        checks += _command_checks("command", body.get("command"))
    return checks


def _validate(kind: str, body: Any) -> tuple[int, list[str]] | None:
    """(status, problems) when the payload must be refused, else None.

    Runs in a worker thread: the checks resolve paths on disk, which must not block the
    server's event loop (langgraph-api treats that as an error in development mode).
    """
    problems: list[str] = []
    refused = False
    checks = _checks(kind, body)
    for where, check in checks:
        try:
            check()
        except ContextError as e:
            problems += [f"{where}: {line}" for line in e.problems]
            refused = refused or isinstance(e, PathRefused)
    if not problems:
        return None
    return (403 if refused else 422), problems


async def _review_reply_refusal(kind: str, scope: Scope, payload: Any) -> tuple[int, dict[str, Any]] | None:
    """(status, body) for a ``command.resume`` the paused review node would not take (422) or
    a resume to a thread with nothing pending (409); see ``review_check``. A separate step
    after ``_validate``: it awaits the thread's state through the in-process client rather
    than blocking a worker thread on it."""
    if kind != "run" or scope.get("method") != "POST":
        return None
    if not review_check.resume_of(payload)[0]:
        return None
    return await review_check.resume_verdict(_route_path(scope), payload, web._client())


async def _with_paused_context(kind: str, scope: Scope, payload: Any) -> Any:
    """``payload`` with the context of the run it resumes, when a resume (``command.resume``,
    a reply to a review or a question) names none; else None (the body goes on unchanged).

    A resume is a new run, and langgraph-api gives a run without ``context`` the defaults:
    the reply would reach a different model (the server's own, not the one that asked), with
    other settings, and the run would fail or answer differently. The paused run's context
    was checked when it was sent; the graph checks it again as it does any run's. A client
    that sends its own context keeps it."""
    if kind != "run" or scope.get("method") != "POST" or not isinstance(payload, dict) or "context" in payload:
        return None
    if not review_check.resume_of(payload)[0]:
        return None
    thread_id = review_check.thread_of(_route_path(scope))
    if thread_id is None:
        return None
    try:
        runs = await web._client().runs.list(thread_id, limit=1)  # newest first
    except Exception:  # noqa: BLE001 - not ours to answer: the run goes on as sent
        return None
    context = ((runs[0] if runs else {}).get("kwargs") or {}).get("context")
    return {**payload, "context": context} if isinstance(context, dict) and context else None


DURABILITY_ENV = "SEGRESEARCH_DEFAULT_DURABILITY"


def _with_durability(kind: str, scope: Scope, payload: Any) -> Any:
    """``payload`` with the server's default durability where a run payload chose none, or
    None when there is nothing to add (the body is then forwarded byte for byte)."""
    default = setting(DURABILITY_ENV)
    if not default:
        return None
    if kind == "batch" and isinstance(payload, list):
        items = [_default_durability(p, default, thread=False) for p in payload]
        return items if any(new is not old for new, old in zip(items, payload, strict=True)) else None
    match = RUN_CREATION.fullmatch(_route_path(scope)) if kind == "run" else None
    if match:
        new = _default_durability(payload, default, thread=match.group(1) is not None)
        return new if new is not payload else None
    return None


def _default_durability(run: Any, default: str, *, thread: bool) -> Any:
    """A stateless run (no thread) is deleted when it ends unless it asks to be kept, and
    then has no checkpointer, so there is nothing to make durable (and langgraph fails a
    "sync" run without a checkpointer)."""
    if not isinstance(run, dict) or "durability" in run or "checkpoint_during" in run:
        return run
    if not thread and run.get("on_completion", "delete") != "keep":
        return run
    return {**run, "durability": default}


async def _read_body(receive: Receive) -> tuple[bytes, Message | None]:
    """Buffered whole: the checks need the complete JSON before any of it reaches the server.
    A disconnect is returned so it can be handed on and the server sees the client leave."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), None


def _with_length(scope: Scope, length: int) -> Scope:
    """The scope with a Content-Length that matches a rewritten body."""
    headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode())]}


class RunPayloadGuard:
    """Pure ASGI, so the body is read once and handed on unchanged and streaming responses
    (``/runs/stream``) pass through untouched; ``BaseHTTPMiddleware`` would buffer them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = _kind_of(scope) if scope["type"] == "http" else None
        if kind is None:
            await self.app(scope, receive, send)
            return
        body, disconnect = await _read_body(receive)
        if disconnect is None:
            try:
                payload = orjson.loads(body) if body else None
            except orjson.JSONDecodeError:
                payload = None  # the server answers malformed JSON itself, in its own words
            verdict = await run_in_threadpool(_validate, kind, payload) if payload is not None else None
            if verdict is not None:
                status, problems = verdict
                await JSONResponse({"detail": problems}, status_code=status)(scope, receive, send)
                return
            refusal = await _review_reply_refusal(kind, scope, payload)
            if refusal is not None:
                await JSONResponse(refusal[1], status_code=refusal[0])(scope, receive, send)
                return
            inherited = await _with_paused_context(kind, scope, payload)
            payload = inherited if inherited is not None else payload
            changed = _with_durability(kind, scope, payload) if payload is not None else None
            if changed is not None or inherited is not None:
                body = orjson.dumps(changed if changed is not None else inherited)
                scope = _with_length(scope, len(body))

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                if disconnect is not None:
                    return disconnect
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


app = FastAPI(
    title="segresearch",
    version=__version__,
    # langgraph-api serves its own /docs and /openapi.json (with these routes merged in).
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)
app.add_middleware(RunPayloadGuard)
# The routes themselves, not include_router: langgraph-api wraps every route of this app in
# its auth middleware and needs each to be a plain route (FastAPI's included-router entry is not).
app.router.routes.extend(web.router.routes)

@app.get("/segresearch/media/{digest}")
def media(digest: str) -> Response:
    """A sync route on purpose: FastAPI runs it in a thread, so reading the store from disk
    never blocks the event loop. Anything that is not a known digest is a plain 404: the
    route must not become a way to ask the server about arbitrary names."""
    try:  # png_bytes refuses anything that is not a digest before touching the disk
        data = media_store.get_store().png_bytes(digest)
    except KeyError:
        raise HTTPException(status_code=404, detail="unknown image") from None
    return Response(
        content=data,
        media_type="image/png",
        # Content-addressed, so it never changes; "private" because access may need a token.
        headers={
            "Cache-Control": "private, max-age=31536000, immutable",
            "X-Content-Type-Options": "nosniff",
        },
    )


def _split_roots(raw: str) -> list[str]:
    return [p.strip() for p in raw.split(":") if p.strip()]


@app.get("/segresearch/info")
def info() -> dict[str, Any]:
    """What a client needs to form valid requests: which folders it may name. Whether auth
    is on is a bool; the token itself never leaves the server's environment."""
    roots = _split_roots(env_str(MEDIA_ROOTS_ENV))
    return {
        "version": __version__,
        # Empty: paths are not restricted (a server for one local user).
        "media_roots": roots,
        "media_roots_restricted": bool(roots),
        # Narrower roots for knowledge bases and model files; empty: the media roots apply.
        "kb_roots": _split_roots(env_str(KB_ROOTS_ENV)),
        "model_roots": _split_roots(env_str(MODEL_ROOTS_ENV)),
        "output_root": env_str(OUTPUT_ROOT_ENV) or None,
        "auth": auth_enabled(),
        "uploads": bool(env_str(UPLOAD_ROOT_ENV)),
        "upload_limit_mb": web.max_upload_bytes() / (1 << 20),
        "page": web.PAGE_PREFIX + "/",
        # "postgres": runs survive a crash and several replicas share threads; "memory": one process.
        "engine": "postgres" if env_str("LANGGRAPH_RUNTIME_EDITION") == "pg" else "memory",
        "defaults": _defaults(),
        # Bytes the media store and uploads hold against SEGRESEARCH_MEDIA_MAX_GB (a scan
        # at most a minute old): used, budget, evictable, pinned (see core/media_store.py).
        "storage": media_store.storage_info(),
    }


def _defaults() -> dict[str, Any]:
    """The context a run gets for every field it leaves out (the server's environment): a
    form shows them, so a person sees what "unset" means on this server."""
    try:
        return Context().public_dict()
    except (ValueError, TypeError):  # a malformed SEGRESEARCH_<FIELD>: runs will say so
        return {}
