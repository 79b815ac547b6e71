"""``segresearch serve graph``: the LangGraph API server as a deployment, not a dev toy.

``langgraph dev`` on its own is the right engine (in-memory runtime, no key, no network) with
the wrong defaults for serving: it runs one run at a time, picks another port without failing
when the asked one is taken, reads ``langgraph.json`` from whatever folder it starts in and
writes its state there, and its Studio bypass lets any request in that claims to come from
Studio. This module starts it with a generated ``langgraph.json`` whose paths point at the
installed package (so it works from any folder and from a wheel), many concurrent runs per
worker, our auth and request checks mounted, and a state folder of its own.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from segresearch.agents.media_store import STORE_ENV as MEDIA_STORE_ENV
from segresearch.agents.path_policy import OUTPUT_ROOT_ENV
from segresearch.servers.auth import TOKEN_ENV
from segresearch.tools.media import MEDIA_ROOTS_ENV, UPLOAD_ROOT_ENV

PACKAGE_DIR = Path(__file__).resolve().parents[1]
DEFAULT_STATE_DIR = ".segresearch-server"
# What langgraph-api logs when it silently moves to another port (langgraph_api.cli).
_PORT_MOVED = b"is already in use, using port"


class ServeError(RuntimeError):
    """The server cannot start as asked; the message is one line for the user."""


def server_config() -> dict[str, object]:
    """The ``langgraph.json`` for this installation.

    ``disable_studio_auth``: in ``langgraph dev`` a request with ``x-auth-scheme: langsmith``
    otherwise skips our authenticate handler entirely. ``auth_first``: our request checks
    run after authentication, so clients without the token cannot probe the file system.
    MCP and A2A start runs through protocol adapters that the request checks do not read,
    so they are off.
    """
    graph = PACKAGE_DIR / "graphs" / "seg_research.py"
    auth = PACKAGE_DIR / "servers" / "auth.py"
    app = PACKAGE_DIR / "servers" / "graph_app.py"
    return {
        "dependencies": [str(PACKAGE_DIR.parent)],
        "graphs": {"seg_research": f"{graph}:graph"},
        "auth": {"path": f"{auth}:auth", "disable_studio_auth": True},
        "http": {
            "app": f"{app}:app",
            "enable_custom_route_auth": True,
            "middleware_order": "auth_first",
            "disable_mcp": True,
            "disable_a2a": True,
        },
        "env": {},
    }


def find_langgraph() -> str:
    """The ``langgraph`` executable of this environment first: a ``langgraph`` from another
    environment on PATH would import another copy of everything (or none of this package)."""
    if importlib.util.find_spec("langgraph_api") is None:
        raise ServeError(
            "langgraph-cli[inmem] is not installed (install the server extra: "
            "pip install 'segresearch[server]')"
        )
    local = Path(sys.executable).parent / "langgraph"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("langgraph")
    if found:
        return found
    raise ServeError(
        "the langgraph command is not installed (install the server extra: "
        "pip install 'segresearch[server]')"
    )


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


def _pump(src: IO[bytes], moved: threading.Event, proc: subprocess.Popen) -> None:
    """Copy the server's output through, and stop it if it moved to another port: a client
    configured for the asked port would otherwise talk to whatever holds that port."""
    for line in iter(src.readline, b""):
        with contextlib.suppress(OSError, ValueError):
            buffer = getattr(sys.stdout, "buffer", None)
            if buffer is not None:
                buffer.write(line)
                buffer.flush()
            else:
                sys.stdout.write(line.decode("utf-8", "replace"))
                sys.stdout.flush()
        if _PORT_MOVED in line and not moved.is_set():
            moved.set()
            with contextlib.suppress(OSError):
                proc.terminate()


def serve_graph(
    host: str = "127.0.0.1",
    port: int = 2024,
    jobs: int = 32,
    state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR,
    allow_blocking: bool = False,
    extra_env: Mapping[str, str] | None = None,
    insecure: bool = False,
) -> int:
    """Run the server until it exits or is signalled; return its exit status.

    Raises ``ServeError`` for anything found before the server starts (missing extra, port
    taken, an exposed host without a token) and when the server moved to another port.
    """
    if not 1 <= int(port) <= 65535:
        raise ServeError(f"--port must be between 1 and 65535; got {port}")
    if int(jobs) < 1:
        raise ServeError(f"--jobs must be at least 1; got {jobs}")
    env = {**os.environ, **(extra_env or {})}
    token_on = bool(env.get(TOKEN_ENV, "").strip())
    if not token_on and not is_loopback(host) and not insecure:
        raise ServeError(
            f"refusing to serve on {host} without authentication: set {TOKEN_ENV} "
            "(clients then send 'Authorization: Bearer <token>'), bind 127.0.0.1, "
            "or pass --insecure"
        )
    exe = find_langgraph()
    if not port_free(host, port):
        raise ServeError(
            f"port {port} on {host} is already in use (another server?); choose another with --port"
        )

    state = Path(state_dir).expanduser().resolve()
    try:
        state.mkdir(parents=True, exist_ok=True)
        config_path = state / "langgraph.json"
        config_path.write_text(json.dumps(server_config(), indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise ServeError(f"cannot write the server state folder {state}: {e.strerror}") from None

    env.setdefault(MEDIA_STORE_ENV, str(state / "media"))
    # Served, the path policy is always on: clients read under the folder the server was
    # started in unless the operator names roots, and write only under the state folder.
    if not env.get(MEDIA_ROOTS_ENV, "").strip():
        env[MEDIA_ROOTS_ENV] = os.getcwd()
    if not env.get(OUTPUT_ROOT_ENV, "").strip():
        env[OUTPUT_ROOT_ENV] = str(state / "runs")
    # Files uploaded through the web page land here and are readable as media (path policy).
    if not env.get(UPLOAD_ROOT_ENV, "").strip():
        env[UPLOAD_ROOT_ENV] = str(state / "uploads")
    env["LANGGRAPH_CLI_NO_ANALYTICS"] = "1"
    env["LANGGRAPH_NO_VERSION_CHECK"] = "1"
    roots = [p for p in env.get(MEDIA_ROOTS_ENV, "").split(":") if p.strip()]
    print(
        f"segresearch: LangGraph API at {_url(host, port)} · {jobs} concurrent runs per worker · "
        f"media roots: {', '.join(roots)} · outputs under {env[OUTPUT_ROOT_ENV]} · "
        f"auth: {'on' if token_on else 'off'}",
        flush=True,
    )
    from segresearch.servers.web import PAGE_PREFIX  # fastapi: the server extra, checked above

    print(f"segresearch: web page at {_url(host, port)}{PAGE_PREFIX}/", flush=True)

    cmd = [exe, "dev", "--config", str(config_path), "--no-browser", "--no-reload",
           "--host", host, "--port", str(port), "--n-jobs-per-worker", str(jobs)]
    if allow_blocking:
        cmd.append("--allow-blocking")
    # Its own session: a terminal's Ctrl-C reaches only us and is forwarded once (a second
    # SIGINT would make uvicorn skip its graceful shutdown).
    proc = subprocess.Popen(cmd, cwd=state, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    moved = threading.Event()
    pump = threading.Thread(target=_pump, args=(proc.stdout, moved, proc), daemon=True)
    pump.start()

    signals_seen = 0

    def forward(signum: int, _frame: object) -> None:
        nonlocal signals_seen
        signals_seen += 1
        with contextlib.suppress(OSError):
            if signals_seen == 1:
                proc.send_signal(signum)
            else:  # a second signal means "now": the graceful shutdown takes too long
                proc.kill()

    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, forward)
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pump.join(timeout=5)
    if moved.is_set():
        raise ServeError(
            f"port {port} on {host} was taken while the server started; choose another with --port"
        )
    return 128 - code if code < 0 else code
