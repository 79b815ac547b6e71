"""``segresearch run``: one query on one video or image, printed as it goes, resumable from
a checkpoint database, optionally paused for a person to review the answer."""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from segresearch.agents.context import Context
from segresearch.agents.coord_style import resolved_coord_style
from segresearch.agents.path_policy import resolve_output
from segresearch.cli.arguments import RUN_SETTINGS
from segresearch.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RUN_ERROR,
    Farewell,
    die,
    peak_memory_mb,
)
from segresearch.cli.console import RunPrinter
from segresearch.cli.context_args import context_overrides
from segresearch.cli.model_check import check_model
from segresearch.core import cancel
from segresearch.core.events import ASK_USER, ERROR, SEGMENT
from segresearch.core.media import IMAGE_EXTS, VIDEO_EXTS, MediaError, open_media
from segresearch.core.media_store import MEDIA_SCHEME, get_store
from segresearch.core.prompts import system_prompt
from segresearch.graphs.outputs import missing_outputs
from segresearch.graphs.run_folders import (
    RunDirError,
    claim_run_dir,
    latest_threads,
    lock_run_dir,
    new_run_dir,
    release_run_dir,
    save_run_settings,
    thread_state,
)
from segresearch.graphs.seg_research import build_graph
from segresearch.graphs.seg_research import graph as default_graph
from segresearch.tools.segmenters import remove_partial_outputs


def stream(ctx: Any, query: str | None, media: Any, printer: Any, graph: Any = None,
           config: dict[str, Any] | None = None, review: Any = None) -> dict[str, Any]:
    """Run (or, with ``query`` None, resume) the graph, printing as it goes. With a
    checkpointer every step is saved before the next begins, so a killed run resumes from
    its last finished step; ``review`` answers the graph's pauses (review and ask_user,
    ``answer_pauses``)."""
    if graph is None:
        graph = default_graph
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


class ReviewUnanswered(Exception):
    """``--review`` met the end of stdin: nobody is there to accept, edit or reject."""


def ask_review(out_dir: Path) -> Callable[[dict[str, Any]], Any]:
    """The terminal side of ``--review``: show the answer, save its picture, read a reply."""

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
        objects = pause.get("objects_px") or []
        if len(objects) > 1:
            print(f"review{where}: {len(objects)} objects ({w}x{h} frames):", file=sys.stderr)
            for k, o in enumerate(objects):
                name = f" {o['label']}" if o.get("label") else ""
                print(f"  {k}{name}: keyframe {o.get('keyframe')}, box {o.get('bbox_2d')}, "
                      f"point {o.get('point_2d')}", file=sys.stderr)
            print("  Enter accepts; 'r' rejects; 'drop K' leaves object K out; 'edit K x1 y1 x2 y2 "
                  "[px py]' changes it (optionally 'frame N' before the numbers); several joined "
                  "with ';'; plain numbers change object 0:", file=sys.stderr)
        else:
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
        return terminal_reply(line)

    return ask


_CHANGE = re.compile(r"(edit|drop)\s+(-?\d+)\b\s*(.*)", re.IGNORECASE | re.DOTALL)


def terminal_reply(line: str) -> Any:
    """A line typed at the review prompt as the reply the graph reads: '' accepts, 'r'
    rejects, 'drop K' / 'edit K [frame N] x1 y1 x2 y2 [px py]' change object K (several
    joined with ';' make a list), plain '[frame N] x1 y1 x2 y2 [px py]' edits the answer (the
    first object). Anything else goes back as typed: the graph says why and asks again."""
    line = line.strip()
    if not line:
        return "accept"
    if line.lower() in ("r", "reject", "n", "no"):
        return "reject"
    parts = [p.strip() for p in line.split(";") if p.strip()]
    matches = [_CHANGE.fullmatch(p) for p in parts]
    if parts and all(matches):
        changes: list[dict[str, Any]] = []
        for m in matches:
            assert m is not None
            k = int(m.group(2))
            if m.group(1).lower() == "drop":
                changes.append({"decision": "drop", "object": k})
            else:
                changes.append({"decision": "edit", "object": k, "answer_px": _typed_edit(m.group(3))})
        return changes[0] if len(changes) == 1 else changes
    return _typed_edit(line) or line


def _typed_edit(text: str) -> dict[str, Any]:
    """'[frame N] x1 y1 x2 y2 [px py]' as an edit (the box centre when no point is typed)."""
    edit: dict[str, Any] = {}
    m = re.match(r"frame\s+(\d+)\s*", text)
    if m:
        edit["keyframe"] = int(m.group(1))
        text = text[m.end():]
    nums = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", text)]
    if len(nums) >= 4:
        edit["bbox_2d"] = nums[:4]
        edit["point_2d"] = nums[4:6] if len(nums) >= 6 else [(nums[0] + nums[2]) / 2, (nums[1] + nums[3]) / 2]
    return edit


class QuestionUnanswered(ReviewUnanswered):
    """``--ask-user`` met the end of stdin: nobody is there to answer the model's question."""


def ask_question() -> Callable[[dict[str, Any]], Any]:
    """The terminal side of ``--ask-user``: show the model's question, read one line."""

    def ask(pause: dict[str, Any]) -> Any:
        if pause.get("problem"):
            print(f"ask_user: {pause['problem']}", file=sys.stderr)
        print(f"the model asks: {pause.get('question')}", file=sys.stderr)
        print("  type your answer (one line):", file=sys.stderr)
        try:
            return input("> ").strip()
        except EOFError:
            raise QuestionUnanswered(
                "--ask-user got no reply: stdin ended (EOF), so nobody answered the model's "
                "question; run it in a terminal, pipe the answers (one line each), or give "
                "--ask-user-reply TEXT to answer every question without asking") from None

    return ask


def answer_pauses(review: Callable[[dict[str, Any]], Any] | None,
                  question: Callable[[dict[str, Any]], Any] | None) -> Callable[[dict[str, Any]], Any] | None:
    """One callback for ``stream``: each pause goes to the side that answers its kind."""
    if review is None and question is None:
        return None

    def answer(pause: dict[str, Any]) -> Any:
        kind = pause.get("type") if isinstance(pause, dict) else None
        side = question if kind == ASK_USER else review
        if side is None:  # a pause this run did not ask for (a thread resumed with other flags)
            raise ReviewUnanswered(f"the run paused for {kind or 'a reply'}, which this command "
                                   "was not started to answer")
        return side(pause)

    return answer


def stdin_problem() -> str | None:
    """Why nobody could answer a question on stdin (None when someone could): no stdin, a
    closed one, or /dev/null. A terminal, a pipe or a file of answers is read line by line."""
    stream_in = sys.stdin
    if stream_in is None or stream_in.closed:
        why = "there is no stdin"
    else:
        try:
            mode = os.fstat(stream_in.fileno()).st_mode
        except (OSError, ValueError, AttributeError):
            return None  # e.g. a replaced stream without a file: it is read as given
        if not (stat.S_ISCHR(mode) and not stream_in.isatty()):
            return None
        why = "stdin is not interactive (/dev/null)"
    return (f"--ask-user pauses the run to ask you the model's questions on the terminal, but {why}; "
            "run it in a terminal, pipe the answers, or give --ask-user-reply TEXT")


def cmd_run(args: argparse.Namespace) -> int:
    """``run``, with Ctrl-C acting within about two seconds in every phase (model turn,
    search, index build, segmentation) and the thread left resumable: see
    ``segresearch.core.cancel``."""
    farewell = Farewell()
    with cancel.stop_on_sigint(farewell.say):
        try:
            return _run(args, farewell)
        except KeyboardInterrupt:  # before the run folder was claimed
            farewell.say()
            return EXIT_INTERRUPTED


def _run(args: argparse.Namespace, farewell: Farewell) -> int:
    graph = config = None
    saved: dict[str, Any] = {}
    resuming = False
    if args.thread and not args.db:
        return die("--thread needs --db FILE (the checkpoint database the thread lives in)")
    if args.db and (args.thread or args.media or args.query):
        thread = args.thread or uuid.uuid4().hex[:12]
        starting = bool(args.media or args.query)
        if args.thread and not starting and not Path(args.db).expanduser().exists():
            return die(f"--db {args.db} does not exist, so it holds no thread {args.thread}; give "
                       "the database the run was started with (or --media and --query to start "
                       "a new run)")
        try:
            graph, (config, snap), saved = thread_state(args.db, thread)
        except RunDirError as e:
            return die(str(e))
        if args.thread and not starting and not snap.values:
            return die(_no_such_thread(graph, args.db, args.thread, bool(saved)))
        # A step that finished after Ctrl-C leaves its result saved but not yet applied: the
        # snapshot then has no ``next`` node, yet the thread has not finished (``tasks``).
        steps = list(snap.next) or [t.name for t in snap.tasks]
        if snap.values and not steps:
            if args.media or args.query:
                return die(f"thread {thread} in {args.db} has finished; use a new --thread")
            return _finished_thread(snap.values, saved)
        resuming = bool(steps)
        if resuming:
            print(f"resuming thread {thread} from {args.db} at {', '.join(steps)}", file=sys.stderr)
        elif starting:
            print(f"thread {thread} (resume with: segresearch run --db {args.db} --thread {thread})",
                  file=sys.stderr)
    if not resuming and (not args.media or args.query is None):
        return die("--media and --query are required (except to resume a --thread)")
    media: Any = None
    if not resuming:
        problem = _query_problem(args.query) or _media_args_problem(args.media)
        if problem:
            return die(problem)
        media = args.media if len(args.media) > 1 else args.media[0]
        try:
            m = open_media(media)
            m.frame(m.frame_ids[0])  # unreadable first frame: say so now, not mid-run
        except MediaError as e:
            return die(str(e))
    overrides: dict[str, Any] = {**(saved.get("context") or {}), **context_overrides(args, RUN_SETTINGS)}
    saved_out = overrides.pop("output_dir", None)
    try:
        ctx = Context(output_dir="", **overrides)  # the folder is claimed once settings are valid
    except (ValueError, TypeError) as e:
        return die(str(e))
    if isinstance(ctx.model, str):
        problem = check_model(ctx.model, ctx.request_timeout)
        if problem:
            return die(problem)
    asks = ctx.ask_user and ctx.ask_user_reply is None  # the model's questions come to us
    if asks and stdin_problem():
        return die(str(stdin_problem()))
    if ctx.system_prompt_file:  # a file the user named: refused before a folder is made
        try:
            system_prompt(ctx.use_search, resolved_coord_style(ctx), ctx.system_prompt_file)
        except ValueError as e:
            return die(f"--system-prompt-file: {e}")
    try:
        if args.out or saved_out:
            out = resolve_output(str(args.out or saved_out))
            reuse = resuming and bool(saved_out) and (
                not args.out or resolve_output(saved_out).resolve() == out.resolve())
            needed = list(args.media or []) + ([args.db] if args.db else [])
            created = not out.exists()
            lock = claim_run_dir(out, overwrite=args.overwrite, reuse=reuse, needed=needed, db=args.db)
        else:
            out = new_run_dir(resolve_output("runs"))
            created = True
            lock = lock_run_dir(out)
    except (RunDirError, OSError) as e:
        return die(str(e))
    ctx.output_dir = str(out)
    if (ctx.review or asks) and graph is None:  # a pause needs somewhere to keep the run meanwhile
        graph = build_graph(checkpointer=InMemorySaver())
        config = {"configurable": {"thread_id": "review"}}
    if args.db and not resuming:
        public = {k: v for k, v in ctx.public_dict().items() if k in overrides or k == "output_dir"}
        save_run_settings(graph, config["configurable"]["thread_id"], {"context": public})
    printer = RunPrinter()
    review = answer_pauses(ask_review(out) if ctx.review else None, ask_question() if asks else None)
    thread_id = config["configurable"]["thread_id"] if args.db else None
    farewell.text = lambda: _interrupted_line(out, args.db, thread_id)
    if resuming:  # what a killed step left half-written (we hold the folder's lock)
        remove_partial_outputs(out)
    kept = False  # the folder stays for a resume even when nothing is in it yet
    try:
        final = stream(ctx, None if resuming else args.query, media, printer, graph, config, review)
    except KeyboardInterrupt:
        kept = True
        farewell.say()
        return EXIT_INTERRUPTED
    except ReviewUnanswered as e:
        kept = True
        what = "a reply" if isinstance(e, QuestionUnanswered) else "the review"
        how = (f"; the thread waits for {what}: resume with segresearch run --db {args.db} "
               f"--thread {thread_id}" if args.db
               else f"; start it with --db FILE to keep {what} waiting for later")
        return die(f"{e}{how}")
    finally:
        release_run_dir(out, lock, remove_empty=created and not kept)
    problem = _unfinished(final, ctx) or _missing_outputs(final, out)
    # else the error: line below says it
    printer.summary(final, show_error=problem is None, peak_mb=peak_memory_mb())
    if args.json:
        keys = ("answer", "answer_px", "objects", "objects_px", "object_masks_dirs", "masks_dir", "stop_reason",
                "turns", "searches", "corrections", "questions", "error", "run_dir")
        print(json.dumps({k: final.get(k) for k in keys}))
    if problem:
        die(problem)
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
    known = latest_threads(graph, 6)
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
