"""``segresearch serve graph``: the LangGraph API server for the graph, on one of two engines.

Both engines are stock ``langgraph-api`` with one of its runtimes:

- **in-memory** (``langgraph-runtime-inmem``; the default): one process, threads kept in the
  state folder between restarts. The quick server for one machine.
- **PostgreSQL + Redis** (``langgraph-runtime-pg``; ``--database`` and ``--redis``): runs are
  queued in PostgreSQL and claimed by whichever replica is free, every finished step is
  committed before the next starts, and a run whose server died is taken up again from its
  last checkpoint by any live replica. Several processes, on several machines, serve one
  set of threads.

This module does what ``langgraph dev`` would do for the first, and what a production
image would do for the second, without either's development defaults: the process that runs
this function *is* the server (uvicorn in-process, no child left behind when it is killed),
the application is wrapped in :mod:`segresearch.servers.gateway` (one door: route allow-list,
token, origin and body rules), the configuration points at the installed package (so it
works from any folder and from a wheel), and the working files go to a state folder.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import socket
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from segresearch.agents.model_spec import ModelSpec
from segresearch.agents.path_policy import OUTPUT_ROOT_ENV
from segresearch.compat.langgraph_api import LOG_FORMATTER, SERVER_LOGGER
from segresearch.core.media import MEDIA_ROOTS_ENV, UPLOAD_ROOT_ENV
from segresearch.core.media_store import STORE_ENV as MEDIA_STORE_ENV
from segresearch.core.urls import redact_url
from segresearch.servers.auth import TOKEN_ENV
from segresearch.servers.gateway import (
    ALLOWED_HOSTS_ENV,
    CORS_ORIGINS_ENV,
    LOOPBACK_ONLY_ENV,
    normalise_origin,
)
from segresearch.servers.web import PAGE_PREFIX

PACKAGE_DIR = Path(__file__).resolve().parents[1]
DEFAULT_STATE_DIR = ".segresearch-server"
DATABASE_ENV = "SEGRESEARCH_DATABASE_URL"
REDIS_ENV = "SEGRESEARCH_REDIS_URL"
MEDIA_MAX_GB_ENV = "SEGRESEARCH_MEDIA_MAX_GB"
# What the request guard adds to run payloads that do not choose (graph_app.RunPayloadGuard).
DURABILITY_ENV = "SEGRESEARCH_DEFAULT_DURABILITY"
# Seconds between a worker's liveness marks in Redis. A run whose worker stopped marking is
# given to another worker after about twice this; langgraph-api's own default (120 s) would
# leave a crashed run waiting four minutes.
DEFAULT_HEARTBEAT_S = 5.0


class ServeError(RuntimeError):
    """The server cannot start as asked; the message is one line for the user."""


def server_config() -> dict[str, object]:
    """The ``langgraph.json`` of this installation (graphs and routes by file path).

    No ``auth`` section: the gateway checks the token on every route, langgraph-api's own
    included, so a second check inside would add nothing but its quirks (the PostgreSQL
    runtime cannot serialise its user object). The request guard runs as middleware of our
    app (``http.app``) on every route. MCP and A2A start runs through protocol adapters that
    the guard does not read, so they are off; inner CORS is off (the gateway owns it).
    """
    graph = PACKAGE_DIR / "graphs" / "seg_research.py"
    app = PACKAGE_DIR / "servers" / "graph_app.py"
    return {
        "dependencies": [str(PACKAGE_DIR.parent)],
        "graphs": {"seg_research": f"{graph}:graph"},
        "http": {
            "app": f"{app}:app",
            "disable_mcp": True,
            "disable_a2a": True,
            "disable_webhooks": True,
            "cors": {"allow_origins": []},
        },
        "env": {},
    }


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so it counts as exposed


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now. SO_REUSEADDR like uvicorn, so a port
    left in TIME_WAIT by a previous run counts as free and only a listener counts as taken."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ServeError(f"cannot resolve host {host!r}: {e.strerror}") from None
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError:
                return False
    return True


def _url(host: str, port: int) -> str:
    h = host.strip("[]")
    return f"http://[{h}]:{port}" if ":" in h else f"http://{h}:{port}"


def _check_url(url: str, schemes: tuple[str, ...], what: str, flag: str) -> str:
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ServeError(f"{flag}: not a valid {what} URL") from None
    if parts.scheme not in schemes or not (parts.hostname or "host=" in parts.query):
        raise ServeError(f"{flag} must be a {what} URL ({' or '.join(s + '://…' for s in schemes)}); "
                         f"got {redact_url(url)!r}")
    return url


@dataclass
class ServeOptions:
    """Everything ``serve graph`` was asked for, checked before anything starts."""

    host: str = "127.0.0.1"
    port: int = 2024
    jobs: int = 32
    state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR
    database: str = ""
    redis: str = ""
    cors_origins: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=list)
    media_max_gb: float | None = None
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    allow_blocking: bool = False
    insecure: bool = False

    @property
    def durable(self) -> bool:
        return bool(self.database)


def resolve_options(opts: ServeOptions, env: Mapping[str, str]) -> ServeOptions:
    """Fill settings from the environment and refuse what cannot work, each as one line."""
    if not 1 <= int(opts.port) <= 65535:
        raise ServeError(f"--port must be between 1 and 65535; got {opts.port}")
    if int(opts.jobs) < 1:
        raise ServeError(f"--jobs must be at least 1; got {opts.jobs}")
    if opts.media_max_gb is not None and not opts.media_max_gb >= 0:
        raise ServeError(f"--media-max-gb must be a number of gigabytes >= 0; got {opts.media_max_gb}")
    if not 1 <= float(opts.heartbeat_s) <= 600:
        raise ServeError(f"--heartbeat must be between 1 and 600 seconds; got {opts.heartbeat_s}")
    database = (opts.database or env.get(DATABASE_ENV, "")).strip()
    redis = (opts.redis or env.get(REDIS_ENV, "")).strip()
    if redis and not database:
        raise ServeError(f"--redis needs --database (or {DATABASE_ENV}): Redis serves the "
                         "PostgreSQL engine only")
    if database:
        database = _check_url(database, ("postgresql", "postgres"), "PostgreSQL", "--database")
        if not redis:
            raise ServeError(f"the PostgreSQL engine also needs Redis (its run queue and live "
                             f"events): pass --redis redis://HOST:PORT/DB or set {REDIS_ENV}")
        redis = _check_url(redis, ("redis", "rediss", "unix"), "Redis", "--redis")
    origins = []
    for raw in opts.cors_origins:
        origin = normalise_origin(raw)
        if origin is None:
            raise ServeError(f"--cors-origin must be an origin like https://app.example.org; got {raw!r}")
        origins.append(origin)
    hosts = []
    for raw in opts.allowed_hosts:
        name = raw.strip().lower()
        if not name or any(c in name for c in "/@ ,") or name.startswith(("http:", "https:")):
            raise ServeError(f"--allowed-host must be a host name like api.example.org; got {raw!r}")
        hosts.append(name)
    return ServeOptions(host=opts.host, port=int(opts.port), jobs=int(opts.jobs),
                        state_dir=opts.state_dir, database=database, redis=redis,
                        cors_origins=origins, allowed_hosts=hosts, media_max_gb=opts.media_max_gb,
                        heartbeat_s=float(opts.heartbeat_s), allow_blocking=opts.allow_blocking,
                        insecure=opts.insecure)


def shipped_data() -> Path:
    """The data the package ships (demo knowledge base and cassette): readable by clients
    when the operator names no roots, so the page's demo works and nothing else is exposed."""
    return PACKAGE_DIR / "assets"


def _absolute_roots(raw: str) -> str:
    """Roots made absolute before the server changes into its state folder, so a relative
    root means what it meant where the operator typed it."""
    return ":".join(str(Path(p).expanduser().resolve()) for p in raw.split(":") if p.strip())


# The operator's settings that name files: made absolute against the launch folder, because
# the server runs in its state folder (the in-memory runtime keeps its files in ./.langgraph_api).
_OPERATOR_PATHS = ("SEGRESEARCH_KB", "SEGRESEARCH_SYSTEM_PROMPT_FILE", "SEGRESEARCH_SAM2_CHECKPOINT",
                   "SEGRESEARCH_SEARCH_CACHE")


def _absolute_operator_paths(out: dict[str, str]) -> None:
    for name in _OPERATOR_PATHS:
        value = out.get(name, "").strip()
        if value and value.lower() != "off" and not Path(value).expanduser().is_absolute():
            out[name] = str(Path(value).expanduser().resolve())
    model = ModelSpec.parse(out.get("SEGRESEARCH_MODEL", ""))
    if model.names_file and model.target and not Path(model.target).expanduser().is_absolute():
        out["SEGRESEARCH_MODEL"] = model.with_target(str(Path(model.target).expanduser().resolve()))


def server_environment(opts: ServeOptions, env: Mapping[str, str], state: Path) -> dict[str, str]:
    """The variables the server process runs with: ours (roots, stores) and langgraph-api's
    (read once, when it is imported)."""
    cfg = server_config()
    out = dict(env)
    _absolute_operator_paths(out)
    out.setdefault(MEDIA_STORE_ENV, str(state / "media"))
    # Served, the path policy is always on. Without roots named, clients read only their
    # uploads and the shipped data: never the folder the server happened to start in.
    roots = out.get(MEDIA_ROOTS_ENV, "").strip()
    out[MEDIA_ROOTS_ENV] = _absolute_roots(roots) if roots else str(shipped_data())
    for name in ("SEGRESEARCH_KB_ROOTS", "SEGRESEARCH_MODEL_ROOTS"):
        if out.get(name, "").strip():
            out[name] = _absolute_roots(out[name])
    out[OUTPUT_ROOT_ENV] = str(Path(out.get(OUTPUT_ROOT_ENV, "").strip() or state / "runs").expanduser().resolve())
    out[UPLOAD_ROOT_ENV] = str(Path(out.get(UPLOAD_ROOT_ENV, "").strip() or state / "uploads").expanduser().resolve())
    out[MEDIA_STORE_ENV] = str(Path(out[MEDIA_STORE_ENV]).expanduser().resolve())
    if opts.media_max_gb is not None:
        out[MEDIA_MAX_GB_ENV] = repr(float(opts.media_max_gb))
    out[CORS_ORIGINS_ENV] = ",".join(opts.cors_origins)
    out[ALLOWED_HOSTS_ENV] = ",".join(opts.allowed_hosts)
    out[LOOPBACK_ONLY_ENV] = "1" if is_loopback(opts.host) else "0"
    out.update({
        "LANGGRAPH_RUNTIME_EDITION": "pg" if opts.durable else "inmem",
        "DATABASE_URI": opts.database if opts.durable else ":memory:",
        "REDIS_URI": opts.redis if opts.durable else "fake",
        "N_JOBS_PER_WORKER": str(opts.jobs),
        "LANGSERVE_GRAPHS": json.dumps(cfg["graphs"]),
        "LANGGRAPH_HTTP": json.dumps(cfg["http"]),
        "LANGGRAPH_API_URL": _url(opts.host, opts.port),
        "LANGGRAPH_ALLOW_BLOCKING": str(opts.allow_blocking).lower(),
        "LANGGRAPH_DISABLE_FILE_PERSISTENCE": "false",
        "ALLOW_PRIVATE_NETWORK": "false",
        # Run-starting protocol routes that the request checks do not read (also closed
        # in the gateway).
        "FF_V2_EVENT_STREAMING": "false",
        "LANGGRAPH_NO_VERSION_CHECK": "true",
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    })
    for stale in ("LANGGRAPH_AUTH", "MIGRATIONS_PATH", "LANGSMITH_LANGGRAPH_API_VARIANT"):
        out.pop(stale, None)
    if opts.durable:
        out["LG_BG_JOB_HEARTBEAT"] = f"{opts.heartbeat_s:g}"
        # One event loop per job breaks langgraph-runtime-pg ("Future attached to a different
        # loop"): whatever the environment says, jobs share the server's loop.
        out["BG_JOB_ISOLATED_LOOPS"] = "false"
        # A finished step is committed before the next starts, so a crash redoes at most
        # the step in flight (the default, "async", may lose the step before it too).
        out.setdefault(DURABILITY_ENV, "sync")
    else:
        out["MIGRATIONS_PATH"] = "__inmem"
    return out


def startup_lines(opts: ServeOptions, env: Mapping[str, str]) -> list[str]:
    """What the operator reads at start: where it listens, what clients may touch, and a
    warning when anyone on the machine can use it."""
    token_on = bool(env.get(TOKEN_ENV, "").strip())
    engine = (f"PostgreSQL {redact_url(opts.database)} + Redis {redact_url(opts.redis)}" if opts.durable
              else "in-memory (one process)")
    lines = [
        f"segresearch: LangGraph API at {_url(opts.host, opts.port)} · engine: {engine} · "
        f"{opts.jobs} concurrent runs per process · auth: {'on' if token_on else 'off'}",
        f"segresearch: media roots: {', '.join(env[MEDIA_ROOTS_ENV].split(':'))} and uploads "
        f"{env[UPLOAD_ROOT_ENV]} · outputs under {env[OUTPUT_ROOT_ENV]}",
        f"segresearch: web page at {_url(opts.host, opts.port)}{PAGE_PREFIX}/",
    ]
    if opts.cors_origins:
        lines.append(f"segresearch: cross-origin requests allowed from {', '.join(opts.cors_origins)}")
    if not token_on:
        lines.append(f"segresearch: warning: no {TOKEN_ENV} is set, so any program on this "
                     "machine (and any user of it) can start runs and read results; set a "
                     "token if others share the machine")
    return lines


def _check_installed(durable: bool) -> None:
    needed = ["langgraph_api", "uvicorn", "fastapi"]
    needed.append("langgraph_runtime_pg" if durable else "langgraph_runtime_inmem")
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise ServeError(f"{', '.join(missing)} not installed (install the server extra: "
                         "pip install 'segresearch[server]')")


def check_services(opts: ServeOptions, timeout: float = 5.0) -> None:
    """Reach PostgreSQL and Redis before the server starts, so a wrong URL or a server that is
    down is one line naming it (the runtime would fail its startup with a long traceback)."""
    if not opts.durable:
        return
    import psycopg  # optional: the durable engine's client, [server] extra (langgraph-runtime-pg)
    import redis  # optional: the durable engine's client, [server] extra (langgraph-runtime-pg)

    try:
        with psycopg.connect(opts.database, connect_timeout=max(1, int(timeout))) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ServeError(f"cannot use the PostgreSQL database {redact_url(opts.database)}: "
                         f"{reason.replace(opts.database, redact_url(opts.database))}") from None
    try:
        client = redis.Redis.from_url(opts.redis, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, ValueError, OSError) as e:
        raise ServeError(f"cannot use Redis at {redact_url(opts.redis)}: {' '.join(str(e).split())}") from None


def serve_graph(
    host: str = "127.0.0.1",
    port: int = 2024,
    jobs: int = 32,
    state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR,
    allow_blocking: bool = False,
    extra_env: Mapping[str, str] | None = None,
    insecure: bool = False,
    database: str = "",
    redis: str = "",
    cors_origins: Iterable[str] = (),
    media_max_gb: float | None = None,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    allowed_hosts: Iterable[str] = (),
) -> int:
    """Serve until signalled; return the exit status.

    Runs in the calling process: it changes this process's environment and working folder
    (langgraph-api reads its configuration from the environment when imported), so call it
    from a process of its own, as the CLI does. Raises ``ServeError`` for anything found
    before the server starts.
    """
    env = {**os.environ, **(extra_env or {})}
    opts = resolve_options(ServeOptions(
        host=host, port=port, jobs=jobs, state_dir=state_dir, database=database, redis=redis,
        cors_origins=list(cors_origins), allowed_hosts=list(allowed_hosts),
        media_max_gb=media_max_gb, heartbeat_s=heartbeat_s,
        allow_blocking=allow_blocking, insecure=insecure), env)
    if not env.get(TOKEN_ENV, "").strip() and not is_loopback(host) and not insecure:
        raise ServeError(
            f"refusing to serve on {host} without authentication: set {TOKEN_ENV} "
            "(clients then send 'Authorization: Bearer <token>'), bind 127.0.0.1, "
            "or pass --insecure"
        )
    _check_installed(opts.durable)
    check_services(opts)
    if not port_free(host, opts.port):
        raise ServeError(f"port {opts.port} on {host} is already in use (another server?); "
                         "choose another with --port")
    state = Path(state_dir).expanduser().resolve()
    try:
        state.mkdir(parents=True, exist_ok=True)
        # For the operator's reference (and LangGraph's own tools): what is being served.
        (state / "langgraph.json").write_text(json.dumps(server_config(), indent=2) + "\n",
                                              encoding="utf-8")
    except OSError as e:
        raise ServeError(f"cannot write the server state folder {state}: {e.strerror}") from None
    server_env = server_environment(opts, env, state)
    for line in startup_lines(opts, server_env):
        print(line, flush=True)
    os.environ.clear()
    os.environ.update(server_env)
    # The in-memory runtime keeps its threads in ./.langgraph_api between restarts.
    os.chdir(state)
    return _run_uvicorn(opts)


def _run_uvicorn(opts: ServeOptions) -> int:
    import uvicorn  # optional: [server] extra, checked by _check_installed first

    config = uvicorn.Config(
        "segresearch.servers.gateway:build", factory=True, host=opts.host, port=opts.port,
        # "on", not "auto": a runtime that fails to start must stop the server, not leave
        # it answering every request with an error.
        lifespan="on", access_log=False, log_config=_log_config(), proxy_headers=False,
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits on a failed startup
        if server.started:
            raise
        code = e.code if isinstance(e.code, int) else 1
        print(f"segresearch: error: the server did not start (exit {code}; see the lines above)",
              file=sys.stderr)
        return code or 1
    if not server.started:
        print("segresearch: error: the server did not start (see the lines above)", file=sys.stderr)
        return 1
    return 0


def _log_config() -> dict[str, object]:
    """langgraph-api's structured log lines on stdout, as ``langgraph dev`` prints them."""
    return {
        "version": 1,
        "incremental": False,
        "disable_existing_loggers": False,
        "formatters": {"simple": {"class": LOG_FORMATTER}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "simple",
                                 "stream": "ext://sys.stdout"}},
        "loggers": {"uvicorn": {"level": "WARNING"}, "uvicorn.error": {"level": "WARNING"},
                    SERVER_LOGGER: {"level": "WARNING"}},
        "root": {"handlers": ["console"]},
    }
