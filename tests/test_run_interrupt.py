"""Exit codes that tell the truth for ``segresearch run``: Ctrl-C acts within 2 s in every
phase (model turn, search, index build, segmentation) and leaves the thread resumable; a
resumed thread writes everything a finished run writes, or says what is missing and exits
non-zero; ``--review`` at the end of stdin, non-finite numbers, yes/no variables that are
neither and ports out of range are refused."""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import os
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver

from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.context import Context
from segresearch.cli import main
from segresearch.core import cancel
from segresearch.graphs.outputs import missing_outputs
from segresearch.graphs.run_folders import save_run_settings
from segresearch.graphs.seg_research import build_graph

EXE = str(Path(sys.executable).parent / "segresearch")
T = "<thinking>ok</thinking>\n"
# The blue square of the conftest scene at frame 6 (qwen3 coordinates).
TURNS = [T + "<keyframe> 6 </keyframe>",
         T + '<answer>{"bbox_2d": [400, 480, 560, 720], "point_2d": [480, 600]}</answer>']
# Ctrl-C must act within this many seconds, whatever the run is doing.
LIMIT_S = 2.0


@pytest.fixture(autouse=True)
def _clear_stop_flag():
    cancel.reset()
    yield
    cancel.reset()


def _complete(run_dir: Path, frames: int) -> None:
    """What every finished run with masks leaves, checked file by file."""
    for name in ("trajectory.json", "report.md", "frames_shown.jpg", "keyframe_annotated.jpg",
                 "overlay.mp4"):
        assert (run_dir / name).is_file(), f"{name} missing from {sorted(os.listdir(run_dir))}"
    assert len(list((run_dir / "masks").glob("*.png"))) == frames
    assert not [p for p in os.listdir(run_dir) if ".tmp-" in p or ".old-" in p]


# ---------------------------------------------------------------- the stop flag


def test_the_stop_flag_cuts_waits_short_and_is_not_an_ordinary_error():
    cancel.check()  # nothing asked: a no-op
    t0 = time.monotonic()
    threading.Timer(0.2, cancel.request).start()
    with pytest.raises(cancel.Cancelled):
        cancel.sleep(30)
    assert time.monotonic() - t0 < 1.5
    # code that turns failures into results (``except Exception``) lets it through
    assert issubclass(cancel.Cancelled, KeyboardInterrupt) and not issubclass(cancel.Cancelled, Exception)
    with pytest.raises(cancel.Cancelled):
        cancel.check()
    cancel.reset()
    with cf.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(time.sleep, 1.0)
        threading.Timer(0.1, cancel.request).start()
        t0 = time.monotonic()
        with pytest.raises(cancel.Cancelled):
            cancel.result(slow, timeout=30)
        assert time.monotonic() - t0 < 0.6
        cancel.reset()
        slow.result()  # the abandoned call still runs to its end in its thread
        # a call that fails with its own TimeoutError says so at once, not at the deadline
        own = pool.submit(lambda: (_ for _ in ()).throw(TimeoutError("read timed out")))
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="read timed out"):
            cancel.result(own, timeout=30)
        assert time.monotonic() - t0 < 0.5
        assert cancel.result(pool.submit(lambda: 7), timeout=5) == 7


# ------------------------------------------------------- the graph, in process


def _graph(db: Path) -> Any:
    return build_graph(checkpointer=SqliteSaver(sqlite3.connect(str(db), check_same_thread=False)))


def test_a_cancelled_model_turn_is_not_done_and_runs_again(scene_dir, tmp_path):
    g, cfg = _graph(tmp_path / "g.db"), {"configurable": {"thread_id": "t"}}
    out = tmp_path / "out"
    slow = Context(model=ReplayChatModel(turns=TURNS, latency=30), search="none",
                   segmenter="grabcut", output_dir=str(out))
    threading.Timer(0.5, cancel.request).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        for _ in g.stream({"query": "the blue square", "media": str(scene_dir / "frames")}, cfg,
                          context=slow, stream_mode=["updates", "custom"], durability="sync"):
            pass
    assert time.monotonic() - t0 < LIMIT_S + 1  # the 30 s turn was cut short
    snap = g.get_state(cfg)
    assert snap.next == ("reason",) and snap.values.get("turns") == 0  # not recorded as done
    cancel.reset()
    fast = Context(model=ReplayChatModel(turns=TURNS), search="none", segmenter="grabcut",
                   output_dir=str(out))
    final = {}
    for _mode, chunk in g.stream(None, cfg, context=fast, stream_mode=["values"], durability="sync"):
        final = chunk
    assert final["stop_reason"] == "answer" and final["turns"] == 2
    _complete(out, 12)
    assert missing_outputs(out, final) == []


def test_resume_finishes_a_step_that_ended_after_ctrl_c(scene_dir, tmp_path, capsys):
    """The finding: Ctrl-C during segmentation, the step finished anyway and its result was
    saved, but ``finish`` never ran; the resume then printed "stop reason: answer", exit 0,
    over a folder holding only masks/ and overlay.mp4."""
    cassette = tmp_path / "c.json"
    cassette.write_text(json.dumps(TURNS))
    db, out = tmp_path / "runs.db", tmp_path / "out"
    g, cfg = _graph(db), {"configurable": {"thread_id": "seg1"}}
    settings = {"model": f"replay:{cassette}", "search": "none", "segmenter": "grabcut",
                "output_dir": str(out)}
    save_run_settings(g, "seg1", {"context": settings})
    ctx = Context(**settings)
    with pytest.raises(KeyboardInterrupt):  # what the main thread met, the flag unset
        for mode, chunk in g.stream({"query": "the blue square", "media": str(scene_dir / "frames")},
                                    cfg, context=ctx, stream_mode=["updates", "custom"],
                                    durability="sync"):
            if mode == "custom" and chunk.get("type") == "progress" and chunk.get("step") == "segment":
                raise KeyboardInterrupt
    snap = g.get_state(cfg)
    assert snap.next == () and [t.name for t in snap.tasks] == ["segment"]  # saved, not applied
    assert (out / "masks").is_dir() and not (out / "trajectory.json").exists()

    assert main(["run", "--db", str(db), "--thread", "seg1"]) == 0
    err = capsys.readouterr().err
    assert "resuming thread seg1" in err and "at segment" in err
    _complete(out, 12)

    # a finished thread given again reports; one that lost part of its folder says what
    (out / "report.md").unlink()
    assert main(["run", "--db", str(db), "--thread", "seg1"]) == 1
    err = capsys.readouterr().err
    assert "report.md" in err and err.count("error:") == 1


def test_a_picture_that_cannot_be_made_is_reported_not_a_traceback(scene_dir, tmp_path, monkeypatch):
    """The record (trajectory, report) is written whatever happens to a picture, and the
    run says which file is missing and why, with exit 1."""
    from segresearch.core.media_recipes import ImageUnavailable
    from segresearch.graphs import outputs

    def gone(state):
        raise ImageUnavailable("image 0123456789ab is no longer available")

    monkeypatch.setattr(outputs, "_frames_sheet", gone)
    cassette = tmp_path / "c.json"
    cassette.write_text(json.dumps(TURNS))
    out = tmp_path / "out"
    code = main(["run", "--media", str(scene_dir / "frames"), "--query", "the blue square",
                 "--model", f"replay:{cassette}", "--search", "none", "--segmenter", "grabcut",
                 "--out", str(out)])
    assert code == 1
    assert (out / "trajectory.json").is_file() and (out / "report.md").is_file()
    assert not (out / "frames_shown.jpg").exists()


# --------------------------------------------------------------- --review at EOF


def test_review_at_the_end_of_stdin_refuses_and_the_thread_waits(scene_dir, tmp_path, monkeypatch, capsys):
    cassette = tmp_path / "c.json"
    cassette.write_text(json.dumps(TURNS))
    db, out = tmp_path / "runs.db", tmp_path / "out"
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # </dev/null
    code = main(["run", "--media", str(scene_dir / "frames"), "--query", "the blue square",
                 "--model", f"replay:{cassette}", "--search", "none", "--segmenter", "grabcut",
                 "--review", "--db", str(db), "--thread", "rv", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    line = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "--review got no reply" in line[0]
    assert f"--db {db} --thread rv" in line[0]
    assert not (out / "masks").exists()  # nothing was accepted, so nothing was segmented
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))  # Enter accepts
    assert main(["run", "--db", str(db), "--thread", "rv"]) == 0
    _complete(out, 12)


# ------------------------------------------------------------- refused settings


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "3"])
def test_temperature_must_be_a_finite_number_in_range(value, scene_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", "--media", str(scene_dir / "frames"), "--query", "q", "--model",
                 "replay:x.json", f"--temperature={value}", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "temperature" in err[0] and err[0].startswith("error:")
    assert not out.exists()


def test_a_yes_no_variable_that_is_neither_is_refused(scene_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEGRESEARCH_REVIEW", "maybe")
    code = main(["run", "--media", str(scene_dir / "frames"), "--query", "q", "--model",
                 "replay:x.json", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "SEGRESEARCH_REVIEW" in err[0] and "'maybe'" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("port", ["99999", "65536", "-1"])
def test_serve_ports_out_of_range_are_refused(port, kb_dir, tmp_path, capsys):
    for argv in (["serve", "retriever", "--kb", str(kb_dir), "--search", "bm25", "--port", port],
                 ["serve", "graph", "--port", port, "--state-dir", str(tmp_path / "st")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--port must be between" in err[0] and port in err[0]


def test_the_retriever_socket_never_wraps_a_port_round():
    from segresearch.servers.retriever import bind_socket

    with pytest.raises(ValueError, match="between 0"):
        bind_socket("127.0.0.1", 99999)
    sock = bind_socket("127.0.0.1", 0)
    try:
        assert 0 < sock.getsockname()[1] <= 65535
    finally:
        sock.close()


# ----------------------------------------------------- real Ctrl-C, real process


class _Run:
    """``segresearch run`` in a process of its own, its output read line by line."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        # SIGINT as a terminal delivers it, even when the tests were started in the
        # background of a shell (which starts them with SIGINT ignored)
        self.proc = subprocess.Popen([EXE, "run", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "COLUMNS": "200", **(env or {})},
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line)
        self._q.put(None)

    def wait_for(self, needle: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if needle in line:
                return
        self.proc.kill()
        pytest.fail(f"{needle!r} never appeared:\n{''.join(self.lines)}")

    def ctrl_c(self, settle: float = 0.0) -> tuple[int, float]:
        """SIGINT after ``settle`` seconds; (exit status, seconds until the process ended)."""
        time.sleep(settle)
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(30)
        finally:
            self.proc.kill()
        elapsed = time.monotonic() - t0
        while (line := self._q.get(timeout=5)) is not None:
            self.lines.append(line)
        return code, elapsed

    @property
    def output(self) -> str:
        return "".join(self.lines)


def _resume(db: Path, thread: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, "run", "--db", str(db), "--thread", thread, "--json"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def _interrupted_then_resumed(run: _Run, db: Path, thread: str, out: Path, frames: int,
                              settle: float = 0.0, env: dict[str, str] | None = None) -> str:
    code, elapsed = run.ctrl_c(settle)
    assert code == 130, run.output
    assert elapsed < LIMIT_S, f"Ctrl-C took {elapsed:.2f} s:\n{run.output}"
    assert f"resume with: segresearch run --db {db} --thread {thread}" in run.output
    res = _resume(db, thread, env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"resuming thread {thread}" in res.stderr
    final = json.loads(res.stdout.strip().splitlines()[-1])
    assert final["stop_reason"] == "answer"
    _complete(out, frames)
    return res.stdout


def test_ctrl_c_during_a_model_turn_acts_at_once_and_the_resume_finishes(scene_dir, tmp_path, capsys):
    cassette = tmp_path / "slow.json"
    cassette.write_text(json.dumps({"latency": 1.0, "turns": [TURNS[0], TURNS[0], TURNS[1]]}))
    db, out = tmp_path / "runs.db", tmp_path / "out"
    run = _Run(["--media", str(scene_dir / "frames"), "--query", "the blue square", "--model",
                f"replay:{cassette}", "--search", "none", "--segmenter", "grabcut",
                "--db", str(db), "--thread", "m1", "--out", str(out)])
    run.wait_for("frame 6 at high resolution")  # turn 2 (1 s) has begun
    code, elapsed = run.ctrl_c(settle=0.3)
    assert code == 130 and elapsed < LIMIT_S, f"{elapsed:.2f} s:\n{run.output}"
    assert f"resume with: segresearch run --db {db} --thread m1" in run.output
    assert "turn 1 " in run.output and "turn 2 " not in run.output
    # the resume (in this process: the real-signal part is above) redoes only the cut turn
    assert main(["run", "--db", str(db), "--thread", "m1"]) == 0
    printed = capsys.readouterr()
    assert "resuming thread m1 from" in printed.err and "at reason" in printed.err
    assert "turn 1 " not in printed.out and "turn 2 " in printed.out and "turn 3 " in printed.out
    _complete(out, 12)


class _EmbedServer:
    """An OpenAI-style /embeddings endpoint that takes ``delay`` seconds per request."""

    def __init__(self, delay: float) -> None:
        outer = self
        self.delay = delay

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(outer.delay)
                vecs = []
                for text in body["input"]:
                    v = [0.0] * 32
                    for w in text.lower().split():
                        v[zlib.crc32(w.encode()) % 32] += 1.0
                    vecs.append(v)
                data = json.dumps({"data": [{"index": i, "embedding": v}
                                            for i, v in enumerate(vecs)]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/embeddings"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_ctrl_c_during_a_first_use_index_build(scene_dir, tmp_path):
    corpus = tmp_path / "kb"
    corpus.mkdir()
    with (corpus / "text_corpus.jsonl").open("w") as f:
        for i in range(64 * 12):
            f.write(json.dumps({"id": i, "contents": f"Document {i}\nshape number {i} is blue"}) + "\n")
    server = _EmbedServer(delay=0.4)  # 12 batches of 64: about 5 s of building
    env = {"SEGRESEARCH_KB_EMBEDDER": f"http:{server.url}", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    cassette = tmp_path / "c.json"
    cassette.write_text(json.dumps(TURNS))
    db, out = tmp_path / "runs.db", tmp_path / "out"
    try:
        run = _Run(["--media", str(scene_dir / "frames"), "--query", "the blue square", "--model",
                    f"replay:{cassette}", "--search", "local", "--kb", str(corpus),
                    "--segmenter", "grabcut", "--db", str(db), "--thread", "k1", "--out", str(out)],
                   env)
        run.wait_for("opening the knowledge base")
        _interrupted_then_resumed(run, db, "k1", out, 12, settle=1.5, env=env)
    finally:
        server.close()
    # the interrupted build left nothing half made beside the index
    left = [p.name for p in (tmp_path / "cache").rglob("*") if ".building-" in p.name]
    assert left == []


@pytest.mark.slow
def test_ctrl_c_during_a_search_that_does_not_answer(scene_dir, tmp_path):
    silent = socket.socket()  # accepts connections and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    cassette = tmp_path / "c.json"
    cassette.write_text(json.dumps(
        [T + '<search>{"name": "text_search", "query": "blue square"}</search>', *TURNS]))
    db, out = tmp_path / "runs.db", tmp_path / "out"
    try:
        run = _Run(["--media", str(scene_dir / "frames"), "--query", "the blue square", "--model",
                    f"replay:{cassette}", "--search", "retriever", "--retriever-url", url,
                    "--segmenter", "grabcut", "--db", str(db), "--thread", "s1", "--out", str(out)])
        run.wait_for("→ text_search")
        code, elapsed = run.ctrl_c(settle=0.5)
    finally:
        silent.close()  # the resume's search then fails fast, and the model goes on
    assert code == 130 and elapsed < LIMIT_S, run.output
    res = _resume(db, "s1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resuming thread s1" in res.stderr and "at search" in res.stderr
    _complete(out, 12)


@pytest.mark.slow
def test_ctrl_c_during_an_http_model_call_that_cannot_be_cut(scene_dir, tmp_path):
    """A blocking HTTP read checks no flag: the watchdog ends the process in time, and the
    turn, never saved, is asked again on resume."""
    from segresearch.testing.counting_model import CountingModelServer

    server = CountingModelServer(TURNS, delay=60)
    db, out = tmp_path / "runs.db", tmp_path / "out"
    try:
        run = _Run(["--media", str(scene_dir / "frames"), "--query", "the blue square [tag:h1]",
                    "--model", server.spec(), "--search", "none", "--segmenter", "grabcut",
                    "--db", str(db), "--thread", "h1", "--out", str(out)])
        assert server.wait_for_turn("h1", 0, timeout=180), run.output
        server.delay = 0
        _interrupted_then_resumed(run, db, "h1", out, 12, settle=0.3)
        assert server.turns_served("h1") == {0: 1, 1: 1}  # the cut turn was not counted as served
    finally:
        server.close()


@pytest.mark.slow
def test_ctrl_c_during_grabcut_on_real_footage(shared_dir, tmp_path):
    frames = shared_dir / "data" / "videos" / "toy_horse"
    n = len(list(frames.glob("*.jpg")))
    cassette = tmp_path / "c.json"
    cassette.write_text(json.dumps([
        T + "<keyframe> 0 </keyframe>",
        T + '<answer>{"bbox_2d": [300, 300, 700, 700], "point_2d": [500, 500]}</answer>']))
    db, out = tmp_path / "runs.db", tmp_path / "out"
    run = _Run(["--media", str(frames), "--query", "the horse", "--model", f"replay:{cassette}",
                "--search", "none", "--segmenter", "grabcut", "--db", str(db), "--thread", "g1",
                "--out", str(out)])
    run.wait_for("→ answer")
    _interrupted_then_resumed(run, db, "g1", out, n, settle=2.0)
