"""The folders runs write into and the SQLite database a resumable run lives in.

A run owns its output folder while it writes it (a lock file held with ``flock``), and a run
started with a checkpoint database keeps its settings beside LangGraph's checkpoints, so
that a resume needs only the database and the thread id. Every refusal is a ``RunDirError``
whose text is one line saying what to give instead.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from segresearch.core.media_store import configure_store
from segresearch.graphs.seg_research import build_graph

try:
    import fcntl
except ImportError:  # no flock (Windows): the folder checks still stand, unlocked
    fcntl = None  # type: ignore[assignment]


class RunDirError(Exception):
    """Why a run cannot have the folder it asked for (one ``error:`` line)."""


LOCK_NAME = ".lock"


def new_run_dir(parent: Path = Path("runs")) -> Path:
    """A fresh folder no other run has: the second alone is shared by runs started
    together (in one shell loop, or by several users), so a random suffix is added and the
    folder is created exclusively, trying another name on the rare clash."""
    parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        path = parent / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RunDirError(f"cannot make a new run folder under {parent}")


def lock_run_dir(path: Path) -> int:
    """Hold ``path/.lock`` (with this pid in it) while this process writes the folder, so
    two runs never write masks and reports into one folder. The kernel drops the lock when
    the process ends, however it ends, so a killed run's lock file stops nobody; a run that
    ends normally removes it (``release_run_dir``). A lock file removed by its previous
    holder just as we locked it is not ours: we lock the one now at the path instead."""
    if fcntl is None:
        return os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    for _ in range(100):
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise RunDirError(f"another segresearch run{who} is writing to {path}; wait for it "
                              "to finish or give another --out") from None
        if same_file(fd, path / LOCK_NAME):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # unlinked by the run that held it: try the current file
    raise RunDirError(f"cannot lock {path / LOCK_NAME}: it keeps being replaced")


def same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def release_run_dir(path: Path, fd: int, *, remove_empty: bool = False) -> None:
    """Give up the folder's lock: remove ``.lock`` (while still holding it, and only if it
    is the file we locked) and close it, so a finished folder holds the run's files and
    nothing else. ``remove_empty``: the folder was made for this run and nothing was
    written into it (the run failed first); leave no empty folder behind."""
    try:
        if same_file(fd, path / LOCK_NAME):
            (path / LOCK_NAME).unlink(missing_ok=True)
        if remove_empty:
            try:
                path.rmdir()  # only succeeds when empty
            except OSError:
                pass
    finally:
        os.close(fd)


def keep_paths(out: Path, paths: list[str]) -> set[str]:
    """Names directly in ``out`` that clearing must not touch, because the run itself
    needs them (its checkpoint database, its media)."""
    keep = {LOCK_NAME}
    real = out.resolve()
    for p in paths:
        rp = Path(p).expanduser().resolve()
        if rp.is_relative_to(real) and rp != real:
            keep.add(rp.relative_to(real).parts[0])
    return keep


def claim_run_dir(out: Path, *, overwrite: bool, reuse: bool, needed: list[str],
                  db: str | None = None) -> int:
    """Make ``out`` this run's own: locked first (so clearing never races another run),
    then refused when it holds an earlier run's files, since a new report beside old masks
    reads as one run; ``--overwrite`` clears it, a resumed run keeps what it wrote."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    fd = lock_run_dir(out)
    try:
        own = [db, db + "-wal", db + "-shm", db + "-journal", db + ".media"] if db else []
        keep = keep_paths(out, own)
        left = sorted(e.name + ("/" if e.is_dir() else "") for e in out.iterdir() if e.name not in keep)
        if not left or reuse:
            return fd
        if not overwrite:
            shown = ", ".join(left[:3]) + (", …" if len(left) > 3 else "")
            raise RunDirError(f"--out {out} is not empty ({shown}); give a new folder, or add "
                              "--overwrite to clear it first")
        real = out.resolve()
        if real == Path.home().resolve() or Path.cwd().resolve().is_relative_to(real):
            raise RunDirError(f"--overwrite will not clear {out}: it is the home folder or holds "
                              "the current one")
        inside = [p for p in needed if Path(p).expanduser().resolve().is_relative_to(real)]
        if inside:
            raise RunDirError(f"--overwrite will not clear {out}: it holds this run's input {inside[0]}")
        for e in out.iterdir():
            if e.name in keep:
                continue
            if e.is_dir() and not e.is_symlink():
                shutil.rmtree(e)
            else:
                e.unlink()
        return fd
    except BaseException:
        release_run_dir(out, fd)  # a refused folder keeps no lock file of ours
        raise


# The settings of each CLI run beside LangGraph's own tables in the same database, so that
# a resume needs only --db and --thread (checkpoints hold the state, not the Context).
RUNS_TABLE = "CREATE TABLE IF NOT EXISTS segresearch_runs (thread_id TEXT PRIMARY KEY, settings TEXT NOT NULL)"


def thread_state(db: str, thread: str) -> tuple[Any, Any, dict[str, Any]]:
    """(graph with a SQLite checkpointer, (config, state snapshot), saved run settings)
    for the thread ``thread`` of the database ``db``."""
    from langgraph.checkpoint.sqlite import (
        SqliteSaver,  # optional: [server] or [dev] extra; only --db needs it
    )

    path = Path(db).expanduser()
    conn = open_db(path)
    # Images the model saw are kept beside the database, so a resumed run finds them.
    configure_store(path.with_name(path.name + ".media"))
    graph = build_graph(checkpointer=SqliteSaver(conn))
    config: dict[str, Any] = {"configurable": {"thread_id": thread}}
    snap = graph.get_state(config)
    with conn:
        conn.execute(RUNS_TABLE)
        row = conn.execute("SELECT settings FROM segresearch_runs WHERE thread_id = ?", (thread,)).fetchone()
    saved = json.loads(row[0]) if row else {}
    return graph, (config, snap), saved


def open_db(path: Path) -> sqlite3.Connection:
    """A connection to the checkpoint database ``--db`` names, proven readable and
    writable now: otherwise the first checkpoint of the run would fail inside the graph
    with a bare ``sqlite3`` error (a JSON file given by mistake, a folder, a read-only
    place). Raises RunDirError with the reason and what to give instead."""
    if path.is_dir():
        raise RunDirError(f"--db {path} is a folder; give a file name, e.g. {path / 'runs.db'}")
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise RunDirError(f"--db {path}: {blocker} is a file, not a folder; give a path in a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"--db {path}: cannot make its folder {path.parent} "
                          f"({e.strerror or e}); give a path in a writable folder") from None
    conn = None
    try:
        conn = sqlite3.connect(str(path), check_same_thread=False)
        with conn:  # reads the header (not a database?) and writes (read-only?)
            conn.execute(RUNS_TABLE)
    except sqlite3.Error as e:
        if conn is not None:
            conn.close()
        why = str(e)
        if "not a database" in why:
            raise RunDirError(f"--db {path} is not a SQLite database ({why}); give a new file "
                              "name, or the database an earlier `segresearch run --db` made") from None
        raise RunDirError(f"--db {path} cannot be opened for writing ({why}); give a file in a "
                          "folder you can write to") from None
    return conn


def save_run_settings(graph: Any, thread: str, settings: dict[str, Any]) -> None:
    conn = graph.checkpointer.conn
    with conn:
        conn.execute(RUNS_TABLE)
        conn.execute("INSERT OR REPLACE INTO segresearch_runs VALUES (?, ?)", (thread, json.dumps(settings)))


def latest_threads(graph: Any, limit: int) -> list[str]:
    """The ids of the last ``limit`` threads started in the graph's database, newest first."""
    rows = graph.checkpointer.conn.execute(
        "SELECT thread_id FROM segresearch_runs ORDER BY rowid DESC LIMIT ?", (limit,)).fetchall()
    return [r[0] for r in rows]
