"""Ordinary mistakes a user makes with ``segresearch run`` and the graph: each is one
``error:`` line naming the flag, file or text to fix, a non-zero exit, no traceback and no
half-written folder; escape sequences in model or search text never reach the terminal."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from segresearch.cli import main
from segresearch.cli.console import terminal_safe
from segresearch.cli.model_check import check_model
from segresearch.graphs.run_folders import (
    LOCK_NAME,
    RunDirError,
    claim_run_dir,
    lock_run_dir,
    release_run_dir,
    same_file,
)

T = "<thinking>ok</thinking>\n"
ANSWER = '<answer>{"bbox_2d": [100, 100, 600, 600], "point_2d": [300, 300]}</answer>'


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "img.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    return path


def _cassette(tmp_path: Path, *turns: str) -> Path:
    path = tmp_path / "cassette.json"
    path.write_text(json.dumps(list(turns) or [T + ANSWER]))
    return path


def _run(tmp_path, image, *extra, query="the red square", cassette=None) -> list[str]:
    cassette = cassette or _cassette(tmp_path)
    return ["run", "--media", str(image), "--query", query, "--model", f"replay:{cassette}",
            "--search", "none", "--segmenter", "none", *extra]


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------ the query


@pytest.mark.parametrize("query", ["", "   ", "\t\n"])
def test_a_blank_query_says_it_is_empty(tmp_path, image, capsys, monkeypatch, query):
    monkeypatch.chdir(tmp_path)
    assert main(_run(tmp_path, image, query=query)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--query is empty" in line and not (tmp_path / "runs").exists()


def test_a_query_that_is_not_utf8_is_refused_before_a_folder_is_made(tmp_path, image):
    cassette = _cassette(tmp_path)
    # bytes as a Latin-1 terminal sends "café": Python decodes argv with surrogateescape
    args = [a.encode() for a in _run(tmp_path, image, cassette=cassette, query="x")]
    args[args.index(b"--query") + 1] = b"caf\xe9 \xff"
    proc = subprocess.run([sys.executable.encode(), b"-m", b"segresearch", *args], cwd=tmp_path,
                          capture_output=True, timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    line = _one_error_line(err)
    assert "--query is not valid UTF-8" in line and "0xe9" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("query", "says"), [
    ("car \udce9 x", "lone surrogate U+DCE9"),
    ("   ", "the query is empty"),
    (42, "must be a string, not int"),
])
def test_the_graph_refuses_the_same_queries(scene_dir, tmp_path, query, says):
    from segresearch.agents.backends.replay import ReplayChatModel
    from segresearch.agents.context import Context
    from segresearch.graphs.seg_research import graph

    out_dir = tmp_path / "out"
    ctx = Context(model=ReplayChatModel(turns=[T + ANSWER]), search="none", segmenter="grabcut",
                  output_dir=str(out_dir))
    out = graph.invoke({"query": query, "media": str(scene_dir / "frames")}, context=ctx)
    assert out["stop_reason"] == "error:input" and says in out["error"]
    assert out["turns"] == 0 and not (out_dir / "masks").exists()
    traj = json.loads((out_dir / "trajectory.json").read_text(encoding="utf-8"))
    assert traj["stop_reason"] == "error:input"  # the refusal is recorded, in valid UTF-8


# ------------------------------------------------------------------ --media, --model


@pytest.mark.parametrize("url", ["http://example.com/clip.mp4", "https://x.org/a.jpg", "s3://b/k.mp4"])
def test_a_media_url_says_urls_are_not_read(tmp_path, image, capsys, monkeypatch, url):
    monkeypatch.chdir(tmp_path)
    args = _run(tmp_path, image)
    args[args.index("--media") + 1] = url
    assert main(args) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert url in line and "URLs are not read" in line and not (tmp_path / "runs").exists()


def test_an_image_listed_with_a_video_or_folder_exits_2_with_no_folder(tmp_path, image, capsys,
                                                                       monkeypatch, scene_dir):
    from segresearch.testing.scenes import render_scene, write_video

    monkeypatch.chdir(tmp_path)
    video = write_video(render_scene(n_frames=3, size=(64, 48))[0], tmp_path / "clip.mp4")
    for other, what in ((video, "is a video"), (scene_dir / "frames", "is a folder")):
        args = _run(tmp_path, image)
        i = args.index("--media")
        args[i + 1:i + 2] = [str(image), str(other)]
        assert main(args) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert str(other) in line and what in line and "each must be an image" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("spec", "says"), [
    ("openai:fake@notaurl", "'notaurl' after '@' is not an http:// or https:// URL"),
    ("openai:fake@localhost:8000/v1", "write fake@http://localhost:8000/v1"),
    ("openai:fake@127.0.0.1:8000", "write fake@http://127.0.0.1:8000/v1"),
    ("openai:fake@ftp://host/v1", "not an http:// or https:// URL"),
    ("openai:fake@http://127.0.0.1:99999/v1", "malformed port"),
    ("openai:fake@http:///v1", "names no host"),
])
def test_a_malformed_model_url_is_named_as_such(monkeypatch, spec, says):
    for var in ("OPENAI_API_KEY", "SEGRESEARCH_OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    problem = check_model(spec, 5.0)
    assert problem is not None and says in problem and "No API key" not in problem


def test_the_hosted_api_without_a_key_is_refused_before_the_run(monkeypatch, tmp_path, image, capsys):
    for var in ("OPENAI_API_KEY", "SEGRESEARCH_OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    args = _run(tmp_path, image)
    args[args.index("--model") + 1] = "openai:gpt-4o"
    assert main(args) == 2
    assert "No API key" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ --db and --thread


def test_db_that_is_not_a_database_a_folder_or_under_a_file(tmp_path, image, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "settings.json").write_text('{"a": 1}')
    (tmp_path / "folder").mkdir()
    cases = {"settings.json": "is not a SQLite database", "folder": "is a folder",
             "settings.json/runs.db": "settings.json is a file, not a folder"}
    for db, says in cases.items():
        assert main(_run(tmp_path, image, "--db", db)) == 2, db
        line = _one_error_line(capsys.readouterr().err)
        assert f"--db {db}" in line and says in line, line
    assert (tmp_path / "settings.json").read_text() == '{"a": 1}'  # not touched
    assert not (tmp_path / "runs").exists()


def test_db_that_cannot_be_written(tmp_path, image, capsys, monkeypatch):
    """A read-only place (root ignores file modes, so the refusal SQLite gives is simulated)."""
    monkeypatch.chdir(tmp_path)
    real = sqlite3.connect

    def read_only(path, *a, **k):
        conn = real(f"file:{path}?mode=ro", *a, uri=True, **k)
        return conn

    (tmp_path / "ro.db").touch()
    monkeypatch.setattr(sqlite3, "connect", read_only)
    assert main(_run(tmp_path, image, "--db", "ro.db")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--db ro.db cannot be opened for writing" in line and "readonly" in line


def test_an_unknown_thread_says_so_and_names_the_known_ones(tmp_path, image, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--db", "none.db", "--thread", "nosuchthread"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--db none.db does not exist" in line and not (tmp_path / "none.db").exists()
    assert main(_run(tmp_path, image, "--db", "t.db", "--thread", "first")) == 0
    capsys.readouterr()
    assert main(["run", "--db", "t.db", "--thread", "nosuchthread"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "thread nosuchthread is not in t.db" in line and "first" in line
    assert "--media and --query" not in line


# ------------------------------------------------------------------ the run folder's lock


def test_a_finished_or_failed_run_leaves_no_lock(tmp_path, image, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(_run(tmp_path, image, "--out", "ok")) == 0
    assert not (tmp_path / "ok" / LOCK_NAME).exists() and (tmp_path / "ok" / "trajectory.json").is_file()
    bad = _run(tmp_path, image, "--out", "bad")
    bad[bad.index("--search") + 1] = "bogus"
    assert main(bad) == 1
    assert not (tmp_path / "bad" / LOCK_NAME).exists() and (tmp_path / "bad" / "trajectory.json").is_file()
    capsys.readouterr()


def test_a_refused_folder_keeps_no_lock_file_of_ours(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not empty"):
        claim_run_dir(out, overwrite=False, reuse=False, needed=[])
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_lock_is_exclusive_then_released_and_taken_again(tmp_path):
    fd = lock_run_dir(tmp_path)
    assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
    with pytest.raises(RunDirError, match=f"pid {os.getpid()}"):
        lock_run_dir(tmp_path)
    release_run_dir(tmp_path, fd)
    assert not (tmp_path / LOCK_NAME).exists()
    fd = lock_run_dir(tmp_path)  # a fresh lock file, held again
    with pytest.raises(RunDirError):
        lock_run_dir(tmp_path)
    release_run_dir(tmp_path, fd)


def test_a_lock_file_replaced_while_locking_is_not_trusted(tmp_path, monkeypatch):
    """The previous holder removes .lock just as we lock it: the lock we got is on a file
    nobody else will ever open, so the current file must be locked instead."""
    import fcntl

    real_flock, swapped = fcntl.flock, []

    def flock_then_swap(fd, op):
        real_flock(fd, op)
        if not swapped:  # first attempt: the file is unlinked and remade under us
            swapped.append(True)
            (tmp_path / LOCK_NAME).unlink()
            (tmp_path / LOCK_NAME).write_text("")

    monkeypatch.setattr(fcntl, "flock", flock_then_swap)
    fd = lock_run_dir(tmp_path)
    monkeypatch.setattr(fcntl, "flock", real_flock)
    assert same_file(fd, tmp_path / LOCK_NAME) and swapped
    with pytest.raises(RunDirError):
        lock_run_dir(tmp_path)  # the current file is the locked one
    release_run_dir(tmp_path, fd)


def test_an_empty_folder_made_for_a_run_is_removed_with_its_lock(tmp_path):
    made = tmp_path / "made"
    made.mkdir()
    release_run_dir(made, lock_run_dir(made), remove_empty=True)
    assert not made.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    fd = lock_run_dir(kept)
    (kept / "trajectory.json").write_text("{}")
    release_run_dir(kept, fd, remove_empty=True)
    assert sorted(p.name for p in kept.iterdir()) == ["trajectory.json"]


# ------------------------------------------------------------------ files the run reads


def test_a_binary_system_prompt_file_is_named(tmp_path, image, capsys, monkeypatch, scene_dir):
    from segresearch.agents.backends.replay import ReplayChatModel
    from segresearch.agents.context import Context
    from segresearch.graphs.seg_research import graph

    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompt.txt").write_bytes(b"\x89PNG\r\n\x1a\n\xad\x00binary")
    assert main(_run(tmp_path, image, "--system-prompt-file", "prompt.txt")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "system prompt file prompt.txt is not UTF-8 text (byte 0x89 at byte 1)" in line
    assert "codec" not in line and not (tmp_path / "runs").exists()
    ctx = Context(model=ReplayChatModel(turns=[T + ANSWER]), search="none", segmenter="none",
                  system_prompt_file=str(tmp_path / "prompt.txt"))
    out = graph.invoke({"query": "q", "media": str(scene_dir / "frames")}, context=ctx)
    assert out["stop_reason"] == "error:config" and "prompt.txt is not UTF-8 text" in out["error"]


def test_a_corpus_that_is_not_utf8_names_file_and_line(tmp_path):
    from segresearch.tools.search.bm25 import BM25KnowledgeBase
    from segresearch.tools.search.kb import KBError
    from segresearch.tools.search.kb.index import read_text_corpus

    corpus = tmp_path / "text_corpus.jsonl"
    corpus.write_bytes(b'{"id": 1, "contents": "Title\\nfine"}\n{"id": 2, "contents": "caf\xe9"}\n')
    with pytest.raises(KBError, match=r"text_corpus.jsonl:2: not UTF-8 text \(byte 0xe9 at byte 27 of the line\)"):
        read_text_corpus(corpus)
    with pytest.raises(ValueError, match=r"text_corpus.jsonl:2: not UTF-8"):
        BM25KnowledgeBase(tmp_path)


def test_a_queries_file_that_is_not_utf8_is_named(tmp_path, capsys, kb_dir):
    (tmp_path / "q.txt").write_bytes(b"caf\xe9\n")
    assert main(["kb", "query", str(kb_dir), "--queries", str(tmp_path / "q.txt")]) == 2
    assert "queries file" in _one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------------ the search cache


@pytest.mark.parametrize(("make", "says"), [
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: p.write_text("not a database, just text " * 20), "is not a SQLite database"),
    (lambda p: None, "is a file, not a folder"),  # its parent below is a file
])
def test_an_unusable_search_cache_is_one_error_naming_it(tmp_path, make, says):
    from segresearch.tools.search.cache import SearchCache, SearchCacheError

    path = tmp_path / "cache.db"
    if says == "is a file, not a folder":
        (tmp_path / "notes").write_text("x")
        path = tmp_path / "notes" / "cache.db"
    make(path)
    with pytest.raises(SearchCacheError) as e:
        SearchCache(path, ttl=60)
    assert str(path) in str(e.value) and says in str(e.value)


def test_a_read_only_search_cache_is_refused(tmp_path, monkeypatch):
    """Simulated, as for --db: root may write anywhere."""
    from segresearch.tools.search.cache import SearchCache, SearchCacheError

    path = tmp_path / "cache.db"
    SearchCache(path, ttl=60).close()
    real = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda p, *a, **k: real(f"file:{p}?mode=ro", *a, uri=True, **k))
    with pytest.raises(SearchCacheError, match="cannot be opened for writing .*readonly"):
        SearchCache(path, ttl=60)


def test_the_run_stops_before_the_first_turn_on_a_bad_search_cache(scene_dir, kb_dir, tmp_path):
    from segresearch.agents.backends.replay import ReplayChatModel
    from segresearch.agents.context import Context
    from segresearch.graphs.seg_research import graph

    ctx = Context(model=ReplayChatModel(turns=[T + ANSWER]), search="bm25", kb=str(kb_dir),
                  search_cache=str(tmp_path), segmenter="none")
    out = graph.invoke({"query": "the blue square", "media": str(scene_dir / "frames")}, context=ctx)
    assert out["stop_reason"] == "error:config" and out["turns"] == 0
    assert f"search cache {tmp_path} is a folder" in out["error"]


# ------------------------------------------------------------------ what reaches the terminal


@pytest.mark.parametrize(("text", "shown"), [
    ("look \x1b[2J\x1b[H here", "look  here"),                     # clear screen, cursor home
    ("a\x1b]0;PWNED\x07b", "ab"),                                  # OSC title, BEL-terminated
    ("a\x1b]52;c;ZXZpbA==\x1b\\b", "ab"),                          # OSC clipboard, ST-terminated
    ("x\x9b31mred\x9b0m", "xred"),                                 # 8-bit CSI
    ("cr\rover\x08\x07\x7f", "crover"),                             # C0 and DEL
    ("open \x1b]0;title\nnext", "open \nnext"),                    # unterminated: to the line end
    ("tab\tand\nnewline, café 中文", "tab\tand\nnewline, café 中文"),  # kept
])
def test_terminal_safe(text, shown):
    assert terminal_safe(text) == shown


def test_model_and_search_text_reach_the_terminal_without_escapes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "text_corpus.jsonl").write_text(json.dumps(
        {"id": 0, "contents": "Red square\nThe \x1b]0;owned\x07red \x1b[2Jsquare wins."}) + "\n")
    image = tmp_path / "img.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    thinking = "<thinking>Look \x1b[2J\x1b]0;PWNED\x07 closer.</thinking>\n"
    cassette = _cassette(tmp_path, thinking + '<search>{"name": "text_search", "query": "red \x1b[31msquare"}</search>',
                         T + ANSWER)
    args = _run(tmp_path, image, "--out", "o", cassette=cassette)
    args[args.index("--search") + 1:args.index("--search") + 2] = ["bm25", "--kb", str(kb)]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err and "\x07" not in out + err
    shown = " ".join(out.split())  # the terminal's line wrapping aside
    assert "thinking: Look closer." in shown and "The red square wins." in shown
    traj = json.loads((tmp_path / "o" / "trajectory.json").read_text(encoding="utf-8"))
    assert "\x1b[2J" in traj["messages"][2]["text"]  # the record keeps the true text


def test_a_config_error_is_said_once(tmp_path, image, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = _run(tmp_path, image)
    args[args.index("--search") + 1] = "bogus"
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert (out + err).count("unknown search backend 'bogus'") == 1
    assert "stop reason: error:config" in out and err.startswith("error: the run stopped with error:config")


# ------------------------------------------------------------------ data synthetic


def test_synthetic_set_size_is_capped(tmp_path, capsys):
    assert main(["data", "synthetic", "--out", str(tmp_path / "syn"), "--videos", "1000000000"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--videos must be between 1 and 1000" in line and not (tmp_path / "syn").exists()


def test_a_failed_synthetic_split_leaves_nothing_partial(tmp_path, monkeypatch):
    import pandas as pd

    from segresearch.testing import okvos

    root = tmp_path / "syn"
    okvos.make_synthetic_okvos(root, "train", n_videos=1)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    real, calls = okvos.render_scene, []

    def render_then_fail(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(okvos, "render_scene", render_then_fail)
    with pytest.raises(OSError, match="disk full"):
        okvos.make_synthetic_okvos(root, "train", n_videos=5)
    # the earlier split is there, whole, and nothing else
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert len(pd.read_parquet(root / "train.parquet")) == 16
    calls.clear()
    with pytest.raises(OSError):
        okvos.make_synthetic_okvos(root, "test", n_videos=5)
    assert not (root / "test").exists() and not (root / "test.parquet").exists()


def test_a_killed_synthetic_run_is_cleaned_up_by_the_next(tmp_path):
    from segresearch.testing.okvos import make_synthetic_okvos

    root = tmp_path / "syn"
    (root / ".train.tmp-0123abcd" / "JPEGImages" / "vid000").mkdir(parents=True)
    (root / ".train.parquet.tmp-0123abcd").write_bytes(b"half")
    (root / ".test.tmp-89abcdef").mkdir()
    (root / "notes.txt").write_text("mine")
    make_synthetic_okvos(root, "train", n_videos=1)
    names = sorted(p.name for p in root.iterdir())
    assert names == [".test.tmp-89abcdef", "notes.txt", "train", "train.parquet"]  # only train's


def test_kb_query_prints_corpus_text_without_escapes(tmp_path, capsys):
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "text_corpus.jsonl").write_text(json.dumps(
        {"id": 0, "contents": "Blue \x1b[2Jsquare\nIts \x1b]0;owned\x07logo is blue."}) + "\n")
    assert main(["kb", "query", str(kb), "blue \x1b[31msquare", "--k", "1"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "query: blue square" in out and "(Title: Blue square) Its logo is blue." in out


def test_a_relative_db_keeps_its_media_beside_it_after_the_folder_changes(tmp_path, monkeypatch):
    """``--db t.db`` names a folder relative to where the command ran: the process-wide
    media store must keep pointing there when the working folder changes later (a server
    moves into its state folder; a test suite moves back)."""
    from segresearch.core.media_store import configure_store, get_store

    before = get_store().directory
    monkeypatch.chdir(tmp_path)
    try:
        store = configure_store("t.db.media")
        monkeypatch.chdir("/")
        assert store.directory == tmp_path / "t.db.media"
    finally:
        configure_store(before)
