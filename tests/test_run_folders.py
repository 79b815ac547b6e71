"""Run folders of ``segresearch run``: one folder per run, never shared or mixed with an
earlier run; readable files; and the small things a user meets around a run (Ctrl-C,
--version, option help, the no-server hint, progress, the frames contact sheet)."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from segresearch import __version__
from segresearch.cli import build_parser, main
from segresearch.cli.console import RunPrinter
from segresearch.cli.model_check import check_model
from segresearch.testing.scenes import render_scene, write_frames
from segresearch.testing.servers import wait_for_output

T = "<thinking>ok</thinking>\n"
TURNS = [T + "<keyframe> 6 </keyframe>",
         T + '<answer>{"bbox_2d": [100, 200, 300, 400], "point_2d": [200, 300]}</answer>']


def _cassette(tmp_path: Path, latency: float = 0.0) -> Path:
    path = tmp_path / f"cassette-{latency}.json"
    path.write_text(json.dumps({"latency": latency, "turns": TURNS} if latency else TURNS))
    return path


def _run_args(scene_dir: Path, cassette: Path, *extra: str, query: str = "the blue square") -> list[str]:
    return ["run", "--media", str(scene_dir / "frames"), "--query", query, "--model", f"replay:{cassette}",
            "--search", "none", "--segmenter", "grabcut", *extra]


def _spawn(args: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    # A shell that started the tests in the background may have left SIGINT ignored, and a
    # Python started that way never turns SIGINT into KeyboardInterrupt: undo that.
    with log.open("w") as f:
        return subprocess.Popen([sys.executable, "-m", "segresearch", *args], stdout=f, stderr=subprocess.STDOUT,
                                cwd=cwd, env={**os.environ, "COLUMNS": "200"},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(proc: subprocess.Popen, log: Path, needle: str, timeout: float = 60) -> None:
    if not wait_for_output(proc, log, needle, timeout):
        pytest.fail(f"never saw {needle!r}:\n{log.read_text()[-2000:]}")


def test_concurrent_runs_without_out_get_their_own_complete_folders(scene_dir, tmp_path):
    cassette = _cassette(tmp_path)
    procs = [_spawn(_run_args(scene_dir, cassette, "--json", query=f"query {i}"), tmp_path / f"{i}.log", cwd=tmp_path)
             for i in range(3)]
    folders = []
    for i, p in enumerate(procs):
        assert p.wait(120) == 0, (tmp_path / f"{i}.log").read_text()
        final = json.loads((tmp_path / f"{i}.log").read_text().strip().splitlines()[-1])
        folders.append(tmp_path / final["run_dir"])
        traj = json.loads((folders[-1] / "trajectory.json").read_text())
        assert traj["query"] == f"query {i}"
        assert (folders[-1] / "report.md").is_file() and len(os.listdir(folders[-1] / "masks")) == 12
    assert len(set(folders)) == 3
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(f.name for f in folders)
    assert all(f.name.startswith("run-") and len(f.name.rsplit("-", 1)[1]) == 6 for f in folders)


def test_a_non_empty_out_is_refused_unless_overwrite_clears_it(scene_dir, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "99999.png").write_bytes(b"old")
    (out / "notes.txt").write_text("an earlier run")
    assert main(_run_args(scene_dir, _cassette(tmp_path), "--out", str(out))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not empty" in err[0] and "--overwrite" in err[0]
    assert (out / "notes.txt").is_file() and not (out / "trajectory.json").exists()

    assert main(_run_args(scene_dir, _cassette(tmp_path), "--out", str(out), "--overwrite")) == 0
    assert not (out / "notes.txt").exists() and not (out / "masks" / "99999.png").exists()
    assert len(os.listdir(out / "masks")) == 12 and (out / "trajectory.json").is_file()


def test_a_second_run_on_the_same_out_is_refused_at_once(scene_dir, tmp_path, capsys):
    out, log = tmp_path / "out", tmp_path / "first.log"
    first = _spawn(_run_args(scene_dir, _cassette(tmp_path, latency=2), "--out", str(out)), log)
    try:
        _wait_for(first, log, "turn 1")
        t0 = time.perf_counter()
        assert main(_run_args(scene_dir, _cassette(tmp_path), "--out", str(out), "--overwrite")) == 2
        assert time.perf_counter() - t0 < 10
        err = capsys.readouterr().err
        assert f"another segresearch run (pid {first.pid}) is writing to {out}" in err
        assert first.poll() is None  # the first run goes on, its folder untouched
    finally:
        first.kill()
        first.wait(10)


def test_run_outputs_are_readable_by_others(scene_dir, tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    out = tmp_path / "out"
    assert main(_run_args(scene_dir, _cassette(tmp_path), "--out", str(out))) == 0
    seen = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in out.rglob("*")}
    assert {"trajectory.json", "report.md", "frames_shown.jpg", "keyframe_annotated.jpg",
            "masks", "masks/00006.png"} <= set(seen)
    for name, mode in seen.items():
        want = (0o777 if (out / name).is_dir() else 0o666) & ~umask
        assert mode == want, f"{name}: {oct(mode)}, expected {oct(want)}"


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"segresearch {__version__}"


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


@pytest.mark.parametrize("command", [None, "run", "demo"])
def test_every_option_has_help(command):
    parser = build_parser()
    if command:
        parser = _subparser(parser, command)
    missing = [a.option_strings[0] for a in parser._actions
               if a.option_strings and (not a.help or a.help == argparse.SUPPRESS)]
    assert not missing


def test_ctrl_c_says_what_was_kept_and_exits_130(scene_dir, tmp_path):
    out, db, log = tmp_path / "out", tmp_path / "runs.db", tmp_path / "run.log"
    proc = _spawn(_run_args(scene_dir, _cassette(tmp_path, latency=2), "--out", str(out),
                            "--db", str(db), "--thread", "t1"), log)
    _wait_for(proc, log, "turn 1")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith(f"interrupted: kept {out}") and "did not finish" in last
    assert last.endswith(f"resume with: segresearch run --db {db} --thread t1")


def test_the_no_server_hint_names_a_spec_that_works(scene_dir, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["run", "--media", str(scene_dir / "frames"), "--query", "q",
                 "--model", f"openai:Qwen/Qwen3-VL-4B-Instruct@http://127.0.0.1:{port}/v1"]) == 2
    err = capsys.readouterr().err
    hinted = err.split("then use --model ", 1)[1].split(")", 1)[0]
    assert hinted.startswith("openai:")
    problem = check_model(hinted, timeout=1.0)  # at worst unreachable here, never a bad spec
    assert problem is None or "not reachable" in problem


def test_frames_shown_keeps_the_aspect_of_the_media(tmp_path):
    frames, _ = render_scene(n_frames=6, size=(320, 120))
    write_frames(frames, tmp_path / "wide")
    out = tmp_path / "out"
    assert main(["run", "--media", str(tmp_path / "wide"), "--query", "q", "--model",
                 f"replay:{_cassette(tmp_path)}", "--search", "none", "--segmenter", "none",
                 "--num-frames", "6", "--out", str(out)]) == 0
    with Image.open(out / "frames_shown.jpg") as sheet:
        w, h = sheet.size
    # 3 × 2 tiles: square tiles give 1.5, the media's 320:120 gives 4 (less a little for the gaps)
    assert 3.8 < w / h < 4.1


def test_progress_shows_a_bar_per_step_on_a_terminal_and_status_lines_in_a_log(capsys):
    plain = RunPrinter(console=Console(file=io.StringIO()))
    plain.custom({"type": "status", "message": "loading the model"})
    plain.close()
    assert "… loading the model" in capsys.readouterr().err  # not a terminal: a plain line, kept in the log

    printer = RunPrinter(console=Console(file=io.StringIO()))
    printer.err = Console(file=io.StringIO(), force_terminal=True, width=80)  # bars: a terminal
    printer.custom({"type": "progress", "step": "index", "label": "kb", "done": 3, "total": 10})
    printer.custom({"type": "progress", "step": "segment", "label": "grabcut", "done": 1, "total": 12})
    for ev in ({"type": "final", "stop_reason": "answer"}, {"type": "media"}, {"type": "turn"}, "noise"):
        printer.custom(ev)  # repeated by updates, or not ours: ignored
    printer.custom({"type": "progress", "step": "segment", "label": "grabcut", "done": 12, "total": 12})
    printer.custom({"type": "progress", "step": "generate", "label": "tokens", "done": 5, "total": 40})
    printer.close()
    err = capsys.readouterr().err
    # one bar per step, each with its own total (tqdm redraws at most every 0.1 s, so the
    # counts shown in between are not asserted); progress in a log is tested in
    # test_newcomer_path.py (a line every few seconds, none for a short step)
    assert "index (kb):" in err and "/10 " in err
    assert "segment (grabcut):" in err and "/12 " in err
    assert "generate (tokens):" in err and "/40 " in err


def test_status_on_a_terminal_is_a_transient_spinner(capsys):
    term = io.StringIO()
    printer = RunPrinter(console=Console(file=io.StringIO()))
    printer.err = Console(file=term, force_terminal=True, width=80)
    printer.custom({"type": "status", "message": "loading the model"})
    printer.custom({"type": "status", "message": "still loading"})
    printer.updates({})  # the next printed block takes the spinner down
    drawn = term.getvalue()
    assert "still loading" in drawn and drawn.endswith("\x1b[2K")  # drawn, then erased
    assert "… loading the model" not in drawn + capsys.readouterr().err  # no plain line on a terminal
