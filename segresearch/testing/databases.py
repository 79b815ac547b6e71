"""Throwaway PostgreSQL and Redis servers on free loopback ports, for tests and benchmarks.

Debian's packages (``postgresql``, ``redis-server``) provide the binaries; each server gets
a fresh data folder under the caller's temporary folder, listens on 127.0.0.1 only, and is
stopped and removed on exit. PostgreSQL refuses to run as root, so as root the cluster is
made and started as the ``postgres`` system user (its folder handed over first).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from segresearch.testing.servers import free_port


class ServiceUnavailable(RuntimeError):
    """The binaries are not installed here; tests skip with this message."""


def postgres_bindir() -> Path:
    """The folder with ``initdb`` and ``pg_ctl`` (Debian keeps them out of PATH)."""
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
        bindir = Path(out.stdout.strip())
        if (bindir / "initdb").exists():
            return bindir
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    if shutil.which("initdb"):
        return Path(shutil.which("initdb")).parent  # type: ignore[arg-type]
    raise ServiceUnavailable("PostgreSQL is not installed (apt-get install postgresql)")


def _as_postgres(cmd: list[str], folder: Path) -> list[str]:
    """``cmd`` run as the ``postgres`` user when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return cmd
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceUnavailable("running as root and there is no 'postgres' user to run "
                                 "PostgreSQL as") from None
    for p in folder.parents:
        if p == Path("/"):
            break
        with contextlib.suppress(OSError):  # the user must be able to reach its folder
            os.chmod(p, os.stat(p).st_mode | 0o011)
    os.chown(folder, user.pw_uid, user.pw_gid)
    return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(cmd)]


@contextlib.contextmanager
def postgres_server(folder: Path, port: int | None = None) -> Iterator[str]:
    """A PostgreSQL cluster for the duration of the block: yields its URL
    (``postgresql://postgres@127.0.0.1:PORT/postgres``, trust auth on loopback)."""
    bindir = postgres_bindir()
    port = port or free_port()
    data = folder / "pgdata"
    data.mkdir(parents=True)
    run = lambda cmd: subprocess.run(_as_postgres(cmd, data), capture_output=True, text=True,  # noqa: E731
                                     timeout=120, check=False)
    made = run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                "--no-sync", "-E", "UTF8"])
    if made.returncode != 0:
        raise RuntimeError(f"initdb failed: {made.stderr[-2000:]}")
    opts = (f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200")
    started = run([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l",
                   str(data / "server.log"), "-w", "-t", "60", "start"])
    if started.returncode != 0:
        log = (data / "server.log").read_text(errors="replace") if (data / "server.log").exists() else ""
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr[-1000:]} {log[-2000:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(data, ignore_errors=True)


def create_database(url: str, name: str) -> str:
    """A new empty database on the server of ``url``; returns its URL."""
    import psycopg  # optional: psycopg comes with the server extra

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + f"/{name}"


@contextlib.contextmanager
def redis_server(folder: Path, port: int | None = None) -> Iterator[str]:
    """A Redis server with no persistence for the duration of the block: yields its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise ServiceUnavailable("Redis is not installed (apt-get install redis-server)")
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("Redis did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


def new_deployment(services: dict) -> tuple[str, str]:
    """(database URL, Redis URL) of a fresh deployment on a test session's servers: its own
    database and its own Redis database number (``services`` counts them)."""
    services["n"] = services.get("n", 0) + 1
    n = services["n"]
    if n > 15:
        raise RuntimeError("more deployments than Redis has databases (16)")
    return (create_database(services["pg"], f"segresearch_{n}"),
            services["redis"].rsplit("/", 1)[0] + f"/{n}")
