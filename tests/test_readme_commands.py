"""Every shell command the README shows, run as written.

A newcomer copies commands from the README before reading anything else, so a command that
no longer parses, names a file the project stopped writing (the evaluation example once
needed a ``test`` split that ``data synthetic`` did not write) or a flag that was renamed
is a broken front door. The fenced ``bash`` blocks are read from README.md itself:

- every command is either run or skipped by a rule below that says why (it needs a GPU, a
  model server, the package index, ...); a rule that no longer matches any command fails,
  so the list cannot go stale;
- every ``segresearch`` command, run or skipped, must parse with the real argument parser
  (fast: a renamed flag fails at once);
- the commands that can run here run block by block, in a scratch folder, exactly as
  written, with two kinds of substitution only: optional arguments written ``[--flag X]``
  are left out, and a server gets a free port in place of the one written (then it must
  answer its health route, and is stopped). Files the README presumes the reader has are
  made beforehand: a small corpus (``corpus.jsonl``, ``image_corpus.jsonl``,
  ``questions.txt``), the cassette of the "Replay cassettes" section (``cassette.json``,
  taken from the README's own example), and for the OK-VOS example a synthetic set at
  ``data/OK_VOS`` with its oracle predictions as ``0.jsonl``. These runs take minutes on
  two cores, so they are marked slow.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent

# (name, pattern searched in the command, why it is not run here)
SKIP_RULES: list[tuple[str, str, str]] = [
    ("pip", r"(^|[\s/])pip3? (install|download)\b",
     "installs packages from the package index; the tests run in an installed environment"),
    ("venv", r"-m venv\b", "creates a virtual environment; the tests already run in one"),
    ("make", r"^make\b",
     "make targets reinstall .venv/ when pyproject.toml changed, then run a command checked "
     "here (demo, serve graph) or this very test suite"),
    ("vllm", r"\bvllm serve\b", "needs vLLM on a GPU"),
    ("operator folders", r"SEGRESEARCH_OUTPUT_ROOT=/data/",
     "reads and writes the operator's own /data folders"),
    ("model server", r"@http://127\.0\.0\.1:800\d/v1",
     "needs an OpenAI-compatible model server on 127.0.0.1 (vllm serve)"),
    ("hosted model", r"--model (anthropic|google_genai):",
     "asks a hosted model: needs the provider's API key and the internet"),
    ("elided", r"(^|\s)\.\.\.(\s|$)", "its arguments are elided with '...'"),
    ("postgres", r"--database postgresql://", "needs PostgreSQL and Redis on the hosts it names"),
    ("training", r"^segresearch train\b(?!.*--(dry-run|show-preset))",
     "trains with verl and vLLM on GPUs"),
    ("benchmarks", r"(^|\s)(\S*/)?bench/\S+\.py\b", "a benchmark: minutes of CPU, run by hand"),
]

# Commands that must stay runnable: a broad skip rule must never swallow them.
MUST_RUN = [
    "segresearch data synthetic --out data/okvos",
    "segresearch eval okvos --root data/okvos --split test --out runs/okvos-synthetic",
    "segresearch eval okvos --root data/OK_VOS --split test --predictions 0.jsonl",
    "segresearch kb build --text corpus.jsonl",
    "segresearch run --media",
    "segresearch demo",
    "segresearch serve retriever",
    "segresearch serve graph",
]

_ASSIGN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Command:
    block: int  # which shell block of the README (0-based)
    heading: str  # the section the block is in
    text: str  # one logical command: continuations joined, comment removed, spaces collapsed

    @property
    def skip(self) -> tuple[str, str] | None:
        for name, pattern, why in SKIP_RULES:
            if re.search(pattern, self.text):
                return name, why
        return None

    @property
    def argv(self) -> list[str]:
        """The words after any leading ``VAR=value`` assignments."""
        words = _split(self.text)
        while words and _ASSIGN.match(words[0]):
            words.pop(0)
        return words

    @property
    def is_assignment(self) -> bool:
        return not self.argv

    @property
    def server(self) -> str | None:
        """The health route of a long-running server command, None for other commands."""
        words = self.argv
        if words[:3] == ["segresearch", "serve", "retriever"]:
            return "/health"
        if words[:3] == ["segresearch", "serve", "graph"]:
            return "/ok"
        return None


def _substitutions(text: str) -> list[tuple[int, int]]:
    """Spans of the outermost ``$(...)`` in ``text`` (quotes inside them respected)."""
    spans: list[tuple[int, int]] = []
    quote, depth, start, i = "", 0, 0, 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = ""
        elif ch == "'" or (ch == '"' and depth):  # inside "...", $( still substitutes
            quote = ch
        elif text.startswith("$(", i):
            if not depth:
                start = i
            depth += 1
            i += 2
            continue
        elif ch == ")" and depth:
            depth -= 1
            if not depth:
                spans.append((start, i + 1))
        i += 1
    return spans


def _split(text: str) -> list[str]:
    """Words as bash splits them, a ``$(...)`` staying inside its word, unexpanded."""
    subs = []
    for a, b in reversed(_substitutions(text)):
        subs.append(text[a:b])
        text = f"{text[:a]}@@SUB{len(subs) - 1}@@{text[b:]}"
    words = shlex.split(text)
    return [re.sub(r"@@SUB(\d+)@@", lambda m: subs[int(m.group(1))], w) for w in words]


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (a ``#`` that starts a word, outside
    quotes and ``$(...)``)."""
    quote = ""
    depth = 0
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif line.startswith("$(", i):
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif ch == "#" and not depth and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def readme_blocks(text: str, languages: tuple[str, ...] = ("bash", "sh", "shell")) -> list[tuple[str, str]]:
    """(section heading, body) of every fenced block in one of ``languages``."""
    blocks: list[tuple[str, str]] = []
    heading = ""
    lang: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        fence = re.match(r"^```\s*(\S*)\s*$", line)
        if lang is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            elif fence:
                lang, body = fence.group(1).lower(), []
        elif fence and not fence.group(1):
            if lang in languages:
                blocks.append((heading, "\n".join(body)))
            lang = None
        else:
            body.append(line)
    return blocks


def readme_commands(text: str) -> list[Command]:
    out: list[Command] = []
    for n, (heading, body) in enumerate(readme_blocks(text)):
        pending = ""
        for raw in body.splitlines():
            line = raw.rstrip()
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            logical = " ".join(_strip_comment(pending + line).split())
            pending = ""
            if logical:
                out.append(Command(n, heading, logical))
    return out


def _commands() -> list[Command]:
    return readme_commands(README.read_text(encoding="utf-8"))


def _runnable_blocks() -> list[object]:
    """The blocks with something to run, named after their section (``evaluation-2``: the
    section's second shell block), so a test id says where in the README to look."""
    blocks: dict[int, bool] = {}
    headings: dict[int, str] = {}
    for c in _commands():
        blocks[c.block] = blocks.get(c.block, False) or (c.skip is None and not c.is_assignment)
        headings[c.block] = c.heading
    out = []
    for b, runs in blocks.items():
        slug = re.sub(r"[^a-z0-9]+", "-", headings[b].lower()).strip("-") or "top"
        nth = sum(1 for k in headings if k <= b and headings[k] == headings[b])
        if runs:
            out.append(pytest.param(b, id=f"{slug}-{nth}"))
    return out


# ----------------------------------------------------------------------------- fast checks


def test_the_parser_reads_what_bash_reads():
    text = """# Top
## Section
```bash
A=$(python -c "print('#not a comment')")   # a comment
segresearch run --media x \\
    --query "a # b" --out runs/x   # trailing
# a whole-line comment
```
```python
print("not shell")
```
"""
    cmds = readme_commands(text)
    assert [c.text for c in cmds] == [
        "A=$(python -c \"print('#not a comment')\")",
        'segresearch run --media x --query "a # b" --out runs/x',
    ]
    assert cmds[0].is_assignment and not cmds[1].is_assignment
    assert cmds[1].heading == "Section"
    assert cmds[1].argv == ["segresearch", "run", "--media", "x", "--query", "a # b", "--out", "runs/x"]


def test_every_readme_command_is_run_or_skipped_for_a_listed_reason():
    cmds = _commands()
    assert len(cmds) > 30, "the README's shell blocks were not found"
    used = {c.skip[0] for c in cmds if c.skip}
    stale = [name for name, _, _ in SKIP_RULES if name not in used]
    assert not stale, f"skip rules that match no README command any more (remove them): {stale}"
    runnable = [c.text for c in cmds if c.skip is None]
    for start in MUST_RUN:
        assert any(t.startswith(start) for t in runnable), (
            f"no runnable README command starts with {start!r}; a skip rule swallowed it or "
            "the README lost it")


def test_every_readme_segresearch_command_parses():
    """Run or skipped, a ``segresearch`` command the README shows must be accepted by the
    real parser: a renamed or misspelt flag fails here in a second."""
    from segresearch.cli import build_parser

    parser = build_parser()
    checked = 0
    for c in _commands():
        words = Command(c.block, c.heading, _drop_optional(c.text)).argv
        if not words or words[0] != "segresearch" or "..." in words:  # elided: cannot parse
            continue
        try:
            parser.parse_args(words[1:])
        except SystemExit as e:
            pytest.fail(f"README command does not parse (exit {e.code}): {c.text}")
        checked += 1
    assert checked > 20


def _help(*args: str) -> str:
    from segresearch.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit) as e:
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            parser.parse_args([*args, "--help"])
    assert e.value.code == 0
    return " ".join(buf.getvalue().split())


def test_help_texts_name_every_choice():
    run = _help("run")
    assert "local | bm25 | hybrid | retriever | ddg | tavily | serper | none" in run
    for sub in ("okvos", "images"):
        text = _help("eval", sub)
        assert "sam2 | grabcut | auto" in text and "| none (refused here" in text
        assert "hybrid" in text
    assert "in-video" in _help("eval", "okvos")
    assert "in-video" not in _help("eval", "images") and "shard images" in _help("eval", "images")
    synthetic = _help("data", "synthetic")
    assert "--split NAME split to write, repeatable (default: train and test" in synthetic
    assert "--videos N videos per split (default 3" in synthetic and "16 queries per video" in synthetic


# ----------------------------------------------------------------------------- running them


def _drop_optional(text: str) -> str:
    """``segresearch demo [--out runs/demo]`` → ``segresearch demo``."""
    return re.sub(r"\s+\[--[^\]]*\]", "", text)


def _free_port() -> int:
    from segresearch.testing.servers import free_port

    return free_port()


def _with_port(text: str, port: int) -> str:
    if re.search(r"--port \d+", text):
        return re.sub(r"--port \d+", f"--port {port}", text)
    return f"{text} --port {port}"


def _env(cwd: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGRESEARCH_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _readme_json_after(heading: str) -> str:
    for h, body in readme_blocks(README.read_text(encoding="utf-8"), ("json",)):
        if h == heading:
            return body
    raise AssertionError(f"README has no json block under {heading!r}")


def _prepare(cwd: Path) -> None:
    """The files the README presumes its reader has."""
    from PIL import Image

    docs = [
        (0, "2025 Las Vegas Grand Prix\nThe 2025 Las Vegas Grand Prix was won by a fictional "
            "driver of the test corpus."),
        (1, "Cobalt Squares\nThe Cobalt Squares are a fictional club whose emblem is a blue square."),
        (2, "Tessellate Cup\nThe 2031 Tessellate Cup was won by the Cobalt Squares."),
    ]
    (cwd / "corpus.jsonl").write_text(
        "".join(json.dumps({"id": i, "contents": c}) + "\n" for i, c in docs), encoding="utf-8")
    (cwd / "images").mkdir()
    Image.new("RGB", (32, 32), (20, 40, 200)).save(cwd / "images" / "square.png")
    (cwd / "image_corpus.jsonl").write_text(json.dumps(
        {"id": 0, "name": "Cobalt Squares emblem", "image_path": "images/square.png"}) + "\n",
        encoding="utf-8")
    (cwd / "questions.txt").write_text("who won the 2031 Tessellate Cup\nCobalt Squares emblem\n",
                                       encoding="utf-8")
    cassette = _readme_json_after("Replay cassettes")
    json.loads(cassette)  # the README's example must itself be valid JSON
    (cwd / "cassette.json").write_text(cassette, encoding="utf-8")


def _prepare_okvos(cwd: Path) -> None:
    """A synthetic stand-in for OK-VOS where the README expects it, and a saved
    predictions file (``0.jsonl``) in the published dump's format."""
    from segresearch.testing.okvos import make_synthetic_okvos, write_oracle_predictions

    root = cwd / "data" / "OK_VOS"
    make_synthetic_okvos(root, "test", n_videos=1)
    write_oracle_predictions(root, "test", cwd / "0.jsonl")


def _run_server(c: Command, prelude: str, cwd: Path, env: dict[str, str]) -> None:
    port = _free_port()
    text = _with_port(_drop_optional(c.text), port)
    # ``exec`` after the leading assignments (``VAR=x exec cmd`` keeps them in the
    # command's environment), so the process we stop is the server itself
    head, rest = re.fullmatch(r"((?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*)(.*)", text).groups()
    script = f"{prelude}\n{head}exec {rest}"
    log = (cwd / f"server-{port}.log").open("w")
    proc = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}{c.server}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"README server command exited {proc.returncode} before answering: "
                            f"{c.text}\n{(cwd / log.name).read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    assert r.status == 200
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"README server command did not answer {url}: {c.text}")
                time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()


def _run_block(block: int, cwd: Path) -> list[str]:
    cmds = [c for c in _commands() if c.block == block]
    env = _env(cwd)
    prelude = ""
    ran = []
    for c in cmds:
        if c.skip:
            continue
        if c.is_assignment:
            prelude += c.text + "\n"
            continue
        if c.server:
            _run_server(c, prelude, cwd, env)
        else:
            r = subprocess.run(["bash", "-c", f"{prelude}\n{_drop_optional(c.text)}"], cwd=cwd,
                               env=env, capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, (f"README command failed with exit {r.returncode}: {c.text}\n"
                                       f"{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        ran.append(c.text)
    return ran


@pytest.mark.slow
@pytest.mark.parametrize("block", _runnable_blocks())
def test_readme_block_runs_as_written(block, tmp_path):
    cmds = [c for c in _commands() if c.block == block]
    cwd = tmp_path / "work"
    cwd.mkdir()
    _prepare(cwd)
    if any("data/OK_VOS" in c.text for c in cmds if not c.skip):
        _prepare_okvos(cwd)
    ran = _run_block(block, cwd)
    assert ran
    # what the newcomer examples promise, beyond exit codes
    if any(t.startswith("segresearch eval okvos --root data/okvos --split test") for t in ran):
        results = json.loads((cwd / "runs" / "okvos-synthetic" / "results.json").read_text())
        assert results["counts"]["queries"] == 48 and results["overall"]["J&F"] > 0.9
        masks = cwd / "runs" / "okvos-synthetic-masks"
        assert len([p for p in masks.iterdir() if p.is_dir()]) == 48
    if any("--model replay:cassette.json" in t for t in ran):
        traj = json.loads((cwd / "runs" / "replayed" / "trajectory.json").read_text())
        assert traj["stop_reason"] == "answer"
        assert len(list((cwd / "runs" / "replayed" / "masks").glob("*.png"))) == 24
    if any(t.startswith("segresearch kb build") for t in ran):
        assert (cwd / "kb" / "manifest.json").is_file()
