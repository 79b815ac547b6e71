"""langgraph-api contact beyond its documented surface (written against langgraph-api 0.11.1).

The served graph's request checks (``servers/graph_app.py``, ``servers/review_check.py``)
recognise langgraph-api's routes by path, and the gateway (``servers/gateway.py``) wraps its
application object; the server's logging names its formatter class. Route shapes change
between releases (0.11 added the v2 event-streaming routes), and a new route that takes a run
payload would pass the checks unseen. ``tests/test_compat.py`` therefore reads the installed
release's route table: every route pattern here must match a route it serves, and every
writing route the gateway lets through must be either checked here or named in
:data:`WITHOUT_RUN_PAYLOAD`; either failure names the installed langgraph-api.
"""

from __future__ import annotations

import re
from typing import Any

TESTED_VERSION = "0.11.1"

_ID = r"[^/]+"

# (method, path, kind) of every request that creates or reconfigures a run or an assistant or
# writes a thread's state; the kind says where the payloads are in its JSON body. Patterns
# match whole paths, so /runs/crons/search, /assistants/search and the like never count.
PAYLOAD_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("POST", re.compile(r"/runs(/stream|/wait|/crons)?"), "run"),
    ("POST", re.compile(r"/runs/batch"), "batch"),
    ("POST", re.compile(rf"/threads/{_ID}/runs(/stream|/wait|/crons)?"), "run"),
    ("PATCH", re.compile(rf"/runs/crons/{_ID}"), "run"),
    ("POST", re.compile(r"/assistants"), "assistant"),
    ("PATCH", re.compile(rf"/assistants/{_ID}"), "assistant"),
    ("POST", re.compile(rf"/threads/{_ID}/state"), "state"),
    # Its ``supersteps`` (0.11.1: ``api/threads.create_thread`` → the runtime's
    # ``Threads.State.bulk`` → ``Pregel.abulk_update_state``) write state without a run, into the
    # new thread or, with ``if_exists: "do_nothing"``, an existing one: ``values`` as if node
    # ``as_node`` had run (``"__input__"``: as the run input) and commands whose ``update`` and
    # ``goto`` (a ``Send`` with an input the client chose) the thread's next run acts on; a
    # command's ``resume`` is ignored there. So they are checked like a run's input and command.
    ("POST", re.compile(r"/threads"), "thread"),
)

# The routes that start a run now (not a cron); group 1 is the thread part, if any.
RUN_CREATION = re.compile(rf"(/threads/{_ID})?/runs(/stream|/wait)?")
# The thread-run creations only; group 1 is the thread id.
THREAD_RUN_CREATION = re.compile(rf"/threads/({_ID})/runs(?:/stream|/wait)?")

# Writing routes (POST, PUT, PATCH) of langgraph-api 0.11.1 that the gateway lets through and
# that carry no run, assistant or state payload: route template → why it needs no check.
WITHOUT_RUN_PAYLOAD: dict[tuple[str, str], str] = {
    ("POST", "/runs/cancel"): "cancels runs by id",
    ("POST", "/runs/crons/search"): "a query",
    ("POST", "/runs/crons/count"): "a query",
    ("POST", "/threads/{thread_id}/runs/{run_id}/cancel"): "cancels one run",
    ("POST", "/threads/search"): "a query",
    ("POST", "/threads/count"): "a query",
    ("POST", "/threads/prune"): "deletes threads",
    ("PATCH", "/threads/{thread_id}"): "thread metadata and TTL",
    ("POST", "/threads/{thread_id}/copy"): "copies checkpoints already written",
    ("POST", "/threads/{thread_id}/history"): "a query",
    ("POST", "/threads/{thread_id}/state/checkpoint"): "reads the state at a checkpoint",
    ("POST", "/assistants/search"): "a query",
    ("POST", "/assistants/count"): "a query",
    ("POST", "/assistants/{assistant_id}/latest"): "picks a version already checked",
    ("POST", "/assistants/{assistant_id}/versions"): "a query",
    ("PUT", "/store/items"): "the key-value store; no run reads it",
    ("POST", "/store/items/search"): "a query",
    ("POST", "/store/namespaces"): "a query",
}

# langgraph-api's structured log formatter and its server logger (``langgraph dev`` output).
LOG_FORMATTER = "langgraph_api.logging.Formatter"
SERVER_LOGGER = "langgraph_api.server"


def payload_kind(method: str, path: str) -> str | None:
    """Where the run payloads of a request are ("run", "batch", "assistant", "state", "thread"), or None
    when the request carries none; ``path`` without any mount prefix."""
    for m, pattern, kind in PAYLOAD_ROUTES:
        if m == method and pattern.fullmatch(path):
            return kind
    return None


def server_app() -> tuple[Any, Any]:
    """(langgraph-api's ASGI application, the app that runs its lifespan). Importing
    ``langgraph_api.server`` reads the server's configuration from the environment, so this
    runs once the environment is prepared. The lifespan is its Starlette router's (0.11.1:
    ``app.router``), since the app's own middleware expects a runtime that the lifespan
    starts."""
    from langgraph_api.server import app  # heavy: builds langgraph-api's whole app (server extra)

    router = getattr(app, "router", None)
    return app, (router if router is not None else app)


def writing_routes() -> list[tuple[str, str]]:
    """(method, path template) of every POST, PUT and PATCH route langgraph-api registers
    for the API (``langgraph_api.api.protected_routes`` in 0.11.1). Imports the server's
    configuration, so call it in a process whose environment names a runtime."""
    from langgraph_api.api import protected_routes  # heavy: server extra
    from starlette.routing import Mount  # server extra, beside langgraph-api

    out: list[tuple[str, str]] = []

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            if isinstance(route, Mount):
                walk(list(route.routes), prefix + route.path)
                continue
            for method in sorted(getattr(route, "methods", None) or ()):
                if method in ("POST", "PUT", "PATCH"):
                    out.append((method, prefix + route.path))

    walk(list(protected_routes), "")
    return out
