"""Starting ``segresearch serve graph`` and watching subprocesses, for tests and benchmarks.

Tests and ``bench/server.py`` drive the real command on a free loopback port; these helpers
are the one copy of "start it, wait until it answers, say why it did not".
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx


class ServerDidNotStart(RuntimeError):
    """The server exited or never answered; the message ends with its log's tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_graph_server(state_dir: Path, env: Mapping[str, str], log_path: Path, *, jobs: int = 32,
                       port: int | None = None, timeout: float = 90,
                       args: Sequence[str] = ()) -> tuple[subprocess.Popen, str]:
    """``segresearch serve graph [args]`` on a loopback port, once ``/ok`` answers (with the
    token from ``env`` when it sets one): (process, URL)."""
    port = port or free_port()
    with log_path.open("a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "segresearch", "serve", "graph", "--port", str(port),
                                 "--jobs", str(jobs), "--state-dir", str(state_dir), *args],
                                env=dict(env), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    token = env.get("SEGRESEARCH_API_TOKEN", "").strip()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/ok", timeout=1, headers=headers).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise ServerDidNotStart("server did not start:\n" + log_path.read_text()[-3000:])


def wait_for_output(proc: subprocess.Popen, log: Path, needle: str, timeout: float = 60) -> bool:
    """Whether ``needle`` appeared in the process's log file before it exited or ``timeout``
    passed (the process is killed when it did not)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if needle in log.read_text():
            return True
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    return False
