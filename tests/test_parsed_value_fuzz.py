"""Model text becomes values where JSON is parsed: nothing a model can write there escapes.

A ``"\\ud800"`` or ``"\\u0000"`` escape is plain ASCII in the model's text, so cleaning the
raw text does not touch it; ``json.loads`` turns it into a lone surrogate or a NUL. Random
JSON (lone surrogate and NUL escapes, control characters, huge numbers, NaN/Infinity
literals, nesting, odd keys) goes through the real graph inside ``<search>``, ``<keyframe>``
and ``<answer>`` with a search backend that records what it is asked, and every run must end
with a documented stop reason, clean values in its state and readable UTF-8 files.
(``random.Random(seed)``: hypothesis is not a dependency.)"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.context import Context
from segresearch.core.protocol import (
    AnswerAction,
    NoAction,
    SearchAction,
    clean_value,
    parse_action,
)
from segresearch.graphs.seg_research import graph
from segresearch.tools.search import SearchBackend, TextHit

STOPS = {"answer", "no_action", "max_turns", "max_tokens"}
# The lenient parser's Python-literal fallback compiles what the model wrote; "\/" is a valid
# JSON escape but an invalid Python one, which the compiler warns about (harmlessly).
pytestmark = pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")
T = "<thinking>x</thinking>"
CHUNKS, PER_CHUNK = 6, 50  # 300 graph runs


# ------------------------------------------------------------------ generator


def _escape(rng: random.Random) -> str:
    """One JSON string piece a model can write: mostly the escapes that turn into bad text."""
    kind = rng.randrange(9)
    if kind == 0:
        return f"\\u{rng.randint(0xD800, 0xDFFF):04x}"  # a lone surrogate
    if kind == 1:
        return "\\u0000"
    if kind == 2:
        return f"\\u{rng.randint(1, 0x1F):04X}"  # a control character
    if kind == 3:
        return "\\ud83d\\ude00"  # a valid pair
    if kind == 4:
        return rng.choice(["\\n", "\\t", '\\"', "\\\\", "\\/", "\\b"])
    if kind == 5:
        return chr(rng.randint(0xD800, 0xDFFF))  # a raw lone surrogate in the text itself
    if kind == 6:
        return rng.choice(["\x00", "\x07", "\x1b", "\u202e", "\ufeff", "é", "中"])
    return rng.choice(["blue", "square", "the", " ", "Zephyr", "2030", "<answer>", "</search>"])


def _string(rng: random.Random) -> str:
    return '"' + "".join(_escape(rng) for _ in range(rng.randint(0, 8))) + '"'


def _number(rng: random.Random) -> str:
    return rng.choice([
        str(rng.randint(-50, 1050)), f"{rng.uniform(-10, 1010):.3f}", "0", "-0", "0.0",
        "9" * rng.randint(20, 400), "-" + "9" * rng.randint(20, 400), "1e308", "-1e308", "1e999",
        "NaN", "Infinity", "-Infinity", "1E-400", "4.9e-324",
    ])


def _value(rng: random.Random, depth: int = 0) -> str:
    kind = rng.randrange(7 if depth < 4 else 4)
    if kind == 0:
        return _string(rng)
    if kind == 1:
        return _number(rng)
    if kind == 2:
        return rng.choice(["true", "false", "null"])
    if kind == 3:
        return _string(rng) if rng.random() < 0.5 else _number(rng)
    if kind in (4, 5):
        return "[" + ", ".join(_value(rng, depth + 1) for _ in range(rng.randint(0, 4))) + "]"
    return _object(rng, {}, depth + 1)


def _object(rng: random.Random, fixed: dict[str, str], depth: int = 0) -> str:
    """An object with the given members (raw JSON values) plus random ones, odd keys included."""
    members = [(json.dumps(k), v) for k, v in fixed.items()]
    for _ in range(rng.randint(0, 3)):
        members.append((_string(rng), _value(rng, depth + 1)))
    rng.shuffle(members)
    return "{" + ", ".join(f"{k}: {v}" for k, v in members) + "}"


def _coords(rng: random.Random, n: int) -> str:
    """Mostly well-formed coordinates (zeros, lines, outside the frame), sometimes anything."""
    if rng.random() < 0.3:
        return _value(rng)
    choice = rng.randrange(4)
    if choice == 0:
        nums = ["0"] * n
    elif choice == 1:
        nums = [str(rng.randint(-200, 1200)) for _ in range(n)]
    elif choice == 2:
        v = str(rng.randint(0, 1000))
        nums = [v] * n
    else:
        nums = [_number(rng) for _ in range(n)]
    return "[" + ", ".join(nums) + "]"


def _search(rng: random.Random) -> str:
    name = rng.choice(['"text_search"', '"text_search"', '"image_search"', _string(rng)])
    query = _string(rng) if rng.random() < 0.8 else _value(rng)
    body = _object(rng, {"name": name, "query": query})
    if rng.random() < 0.2:  # the arguments-object form
        body = _object(rng, {"name": name, "arguments": _object(rng, {"query": query})})
    return T + f"<search>{body}</search>"


def _keyframe(rng: random.Random) -> str:
    body = rng.choice(["6", " 6 ", "frame 6", "4", _number(rng), _string(rng), _value(rng)])
    return T + f"<keyframe>{body}</keyframe>"


def _answer(rng: random.Random) -> str:
    fixed = {"bbox_2d": _coords(rng, 4), "point_2d": _coords(rng, 2)}
    if rng.random() < 0.1:
        fixed = {"bbox": fixed["bbox_2d"], "point": fixed["point_2d"]}
    body = _object(rng, fixed)
    if rng.random() < 0.1:
        body = "[" + body + "]"
    if rng.random() < 0.1:
        body = "'" + body  # stray text around the object
    return T + f"<answer>{body}</answer>"


def turns_for(rng: random.Random) -> list[str]:
    """A search, a keyframe and an answer, each body fuzzed; sometimes a bare random value."""
    turns = [_search(rng), _keyframe(rng), _answer(rng)]
    if rng.random() < 0.15:
        tag = rng.choice(["search", "keyframe", "answer"])
        turns[rng.randrange(3)] = T + f"<{tag}>{_value(rng)}</{tag}>"
    return turns


# ------------------------------------------------------------------ checks


def _strings(value: Any) -> Iterator[str]:
    """Every string of a value, dict keys included (messages as their content)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
    elif hasattr(value, "content"):
        yield from _strings(value.content)


def _clean(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in s


class _Recorder(SearchBackend):
    """Echoes each query into its hit (so the query reaches the next prompt) and keeps it."""

    name = "recorder"

    def __init__(self) -> None:
        self.queries: list[str] = []

    def search_text(self, query: str, k: int) -> list[TextHit]:
        self.queries.append(query)
        return [TextHit(f"About {query}", "body of " + query, 1.0)]


def _check_run(turns: list[str], scene_dir: Path, out_dir: Path) -> None:
    backend = _Recorder()
    ctx = Context(model=ReplayChatModel(turns=turns), search=backend, segmenter="none", max_turns=2,
                  output_dir=str(out_dir))
    final = graph.invoke({"query": "the blue square", "media": str(scene_dir / "frames")}, context=ctx)
    why = (turns, final.get("stop_reason"), final.get("error"))
    assert final["stop_reason"] in STOPS, why
    state = {k: final.get(k) for k in ("answer", "answer_px", "answer_note", "searches", "events",
                                       "messages", "error")}
    bad = [s for s in _strings(state) if not _clean(s)]
    assert not bad, (why, bad[:3])
    assert all(_clean(q) for q in backend.queries), (why, backend.queries)
    if final["stop_reason"] == "answer":
        box = final["answer"]["bbox_2d"]
        assert (box[2] > box[0] and box[3] > box[1]) or final["answer_note"], why
    run_dir = Path(final["run_dir"])
    raw = (run_dir / "trajectory.json").read_bytes()
    traj = json.loads(raw.decode("utf-8"))  # strict UTF-8
    assert traj["stop_reason"] == final["stop_reason"] and traj["answer_note"] == final["answer_note"]
    report = (run_dir / "report.md").read_bytes()
    assert b"\x00" not in report and report.decode("utf-8").startswith("# the blue square")


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_fuzzed_json_through_the_graph(chunk, scene_dir, tmp_path):
    rng = random.Random(1800 + chunk)
    for i in range(PER_CHUNK):
        _check_run(turns_for(rng), scene_dir, tmp_path / f"run{i}")


def test_the_generator_reaches_every_outcome():
    """The fuzz set is worth its time: it parses into searches with bad text, answers with
    and without area, and malformed answers, not just into parse failures."""
    rng = random.Random(1800)
    seen: dict[str, int] = {}
    for _ in range(CHUNKS * PER_CHUNK):
        for turn in turns_for(rng):
            a = parse_action(turn)
            raw = json.loads(json.dumps(a.__dict__, default=str))  # noqa: F841 - must not raise
            kind = type(a).__name__
            if isinstance(a, SearchAction) and not a.error and "\ufffd" in a.query:
                kind = "search with a replaced character"
            if isinstance(a, AnswerAction) and not any(a.bbox_2d):
                kind = "all-zero answer"
            seen[kind] = seen.get(kind, 0) + 1
    for kind in ("SearchAction", "search with a replaced character", "KeyframeAction",
                 "AnswerAction", "all-zero answer", "NoAction"):
        assert seen.get(kind, 0) >= 5, seen


# ------------------------------------------------------------------ the parse boundary


def test_parsed_values_are_cleaned_keys_included():
    a = parse_action('<search>{"name": "text_search", "query": "a\\ud800b\\u0000c\\ud83d\\ude00"}</search>')
    assert isinstance(a, SearchAction) and a.query == "a\ufffdb\ufffdc\U0001f600" and not a.error
    a = parse_action('<search>{"name": "text_\\udfffsearch", "query": "q"}</search>')
    assert isinstance(a, SearchAction) and a.error and "\ufffd" in a.name and _clean(a.error)
    a = parse_action('<answer>{"bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3], "\\ud800": "\\u0000"}</answer>')
    assert isinstance(a, AnswerAction)
    assert clean_value({"\ud800": ["\x00", ("\udc00",)], 1: 2.5}) == {"\ufffd": ["\ufffd", ("\ufffd",)], 1: 2.5}


def test_clean_values_are_returned_as_they_are():
    value = {"a": ["b", {"c": 1}], "d": None}
    assert clean_value(value) is value


def test_a_raw_lone_surrogate_given_to_the_parser_is_cleaned():
    a = parse_action("<search>who is \ud800 this\x00</search>")
    assert isinstance(a, SearchAction) and a.query == "who is \ufffd this\ufffd"
    assert isinstance(parse_action("<answer>" + "[" * 995 + "]" * 995 + "</answer>"), NoAction)


def test_a_query_with_undecodable_bytes_still_gets_its_trajectory(scene_dir, tmp_path):
    """A query from a command line with bytes that are not UTF-8 (Python keeps them as lone
    surrogates) is refused (``error:input``, as the CLI refuses it before a run), yet the
    trajectory writer must not fail on it."""
    ctx = Context(model=ReplayChatModel(turns=[T + "<keyframe> 6 </keyframe>", T + "hmm"]),
                  search="none", segmenter="none", output_dir=str(tmp_path / "o"))
    final = graph.invoke({"query": "the \udcff square", "media": str(scene_dir / "frames")}, context=ctx)
    traj = json.loads((tmp_path / "o" / "trajectory.json").read_text(encoding="utf-8"))
    assert traj["query"] == "the \ufffd square" and final["stop_reason"] == "error:input"
    assert (tmp_path / "o" / "report.md").read_text(encoding="utf-8").startswith("# the \ufffd square")
