"""The tag protocol: parsing one model turn into an action, and rendering observations."""

from __future__ import annotations

import json
import math
import random
import re
import time

import pytest

from segresearch.core.protocol import (
    MAX_JSON_CHARS,
    SEARCH_TOOLS,
    SNIPPET_CHARS,
    STOP_STRINGS,
    AnswerAction,
    KeyframeAction,
    NoAction,
    SearchAction,
    clamp_answer,
    parse_action,
    render_bad_keyframe,
    render_image_results,
    render_search_error,
    render_text_results,
    snippet,
)

ACTION_TYPES = (SearchAction, KeyframeAction, AnswerAction, NoAction)
# Reference semantics of "the first complete element": the leftmost opening tag that has
# its own closing tag somewhere after it; the body ends at the first such closing tag.
REFERENCE_TAG_RE = re.compile(r"<(search|keyframe|answer)>(.*?)</\1>", re.DOTALL)

ANSWER = '<answer>{"bbox_2d": [10, 20, 300, 400], "point_2d": [150, 210]}</answer>'


def _answer(text: str) -> AnswerAction:
    a = parse_action(text)
    assert isinstance(a, AnswerAction), a
    return a


# ------------------------------------------------------------------ well-formed turns


def test_text_search():
    a = parse_action('<search>{"name": "text_search", "query": "who won the Zephyr Prize"}</search>')
    assert a == SearchAction(name="text_search", query="who won the Zephyr Prize")
    assert a.error is None and a.kind == "search"


def test_image_search():
    a = parse_action('<search>{"name": "image_search", "query": "Blue Square logo"}</search>')
    assert a == SearchAction(name="image_search", query="Blue Square logo")


def test_search_with_arguments_object_and_plain_text():
    a = parse_action('<search>{"name": "image_search", "arguments": {"query": "red circle"}}</search>')
    assert a == SearchAction(name="image_search", query="red circle")
    # no JSON at all: clearly a text search for that text
    assert parse_action("<search> capital of France </search>") == SearchAction(
        name="text_search", query="capital of France"
    )


def test_keyframe():
    a = parse_action("<keyframe>12</keyframe>")
    assert a == KeyframeAction(frame=12, raw="12")
    assert a.kind == "keyframe"


def test_answer():
    a = _answer(ANSWER)
    assert a.bbox_2d == [10.0, 20.0, 300.0, 400.0]
    assert a.point_2d == [150.0, 210.0]
    assert a.warnings == [] and a.kind == "answer"
    assert all(isinstance(v, float) for v in a.bbox_2d + a.point_2d)


def test_tags_inside_surrounding_text():
    text = "<think>The logo is blue, so the blue square.</think>\n" + ANSWER + "\nDone."
    assert _answer(text).bbox_2d == [10, 20, 300, 400]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<keyframe>\n  7 \n</keyframe>", KeyframeAction(frame=7, raw="7")),
        (
            '<search>\n  {"name" : "text_search" ,\n "query":   "  blue logo  " }\n</search>',
            SearchAction(name="text_search", query="blue logo"),
        ),
    ],
)
def test_whitespace_and_newlines_inside_tags(text, expected):
    assert parse_action(text) == expected


def test_whitespace_inside_answer():
    a = _answer('<answer>\n  {\n   "bbox_2d" : [ 1 ,\n 2, 3 , 4 ] ,\n\t"point_2d": [2, 3]\n }\n\n</answer>')
    assert (a.bbox_2d, a.point_2d) == ([1, 2, 3, 4], [2, 3])


@pytest.mark.parametrize(
    "body",
    [
        "{'bbox_2d': [1, 2, 3, 4], 'point_2d': [2, 3]}",  # single quotes
        '{"bbox_2d": [1, 2, 3, 4,], "point_2d": [2, 3],}',  # trailing commas
        "{'bbox_2d': [1, 2, 3, 4,], 'point_2d': [2, 3,],}",  # both
        '```json\n{"bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3]}\n```',  # code fence
        '```\n{"bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3]}\n```',
        '{"bbox_2d": [1.0, 2.0, 3.0, 4.0], "point_2d": [2.0, 3.0]}',  # floats
        '{"bbox_2d": ["1", "2", "3.0", " 4 "], "point_2d": ["2", "3"]}',  # numeric strings
        '{"bbox_2d": [[1, 2, 3, 4]], "point_2d": [2, 3]}',  # [[x1, y1, x2, y2]]
        '{"bbox_2d": [1, 2, 3, 4], "point_2d": [[2, 3]]}',
        '{"bbox": [1, 2, 3, 4], "point": [2, 3]}',  # short keys
        '[{"bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3]}]',  # a list holding the object
        'The target: {"bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3]} (the blue square)',
        '{"bbox_2d": [1e0, 2E0, 0.3e1, 4], "point_2d": [2, 3], "label": "blue square"}',
    ],
)
def test_lenient_answer_json(body):
    a = _answer(f"<answer>{body}</answer>")
    assert (a.bbox_2d, a.point_2d) == ([1.0, 2.0, 3.0, 4.0], [2.0, 3.0])
    assert a.warnings == []


def test_fractional_coordinates_are_kept():
    a = _answer('<answer>{"bbox_2d": [10.25, 20.5, 30.75, 40.125], "point_2d": [15.5, 25.25]}</answer>')
    assert a.bbox_2d == [10.25, 20.5, 30.75, 40.125]
    assert a.point_2d == [15.5, 25.25]


@pytest.mark.parametrize(
    "box",
    [[300, 400, 10, 20], [300, 20, 10, 400], [10, 400, 300, 20]],
)
def test_swapped_box_corners_are_normalised(box):
    a = _answer(f'<answer>{{"bbox_2d": {box}, "point_2d": [150, 210]}}</answer>')
    assert a.bbox_2d == [10, 20, 300, 400]
    assert a.point_2d == [150, 210]
    assert len(a.warnings) == 1 and "swapped" in a.warnings[0]


def test_missing_point_uses_box_centre():
    a = _answer('<answer>{"bbox_2d": [10, 20, 301, 400]}</answer>')
    assert a.point_2d == [155.5, 210.0]
    assert len(a.warnings) == 1 and "point_2d" in a.warnings[0] and "centre" in a.warnings[0]


def test_missing_point_with_swapped_box_centres_the_normalised_box():
    a = _answer('<answer>{"bbox_2d": [300, 400, 10, 20]}</answer>')
    assert a.bbox_2d == [10, 20, 300, 400]
    assert a.point_2d == [155.0, 210.0]
    assert len(a.warnings) == 2


# ------------------------------------------------------------------ several tags


SEARCH = '<search>{"name": "text_search", "query": "q"}</search>'


@pytest.mark.parametrize(
    "text, kind",
    [
        (SEARCH + "\n" + ANSWER, "search"),
        (ANSWER + "\n" + SEARCH, "answer"),
        ("<keyframe>3</keyframe>" + ANSWER, "keyframe"),
        (ANSWER + "<keyframe>3</keyframe>", "answer"),
        # an unclosed answer before a complete search: the first *complete* element wins
        ('<answer>{"bbox_2d": [1, 2, 3, 4]}\n' + SEARCH, "search"),
        ("<keyframe>3 " + ANSWER, "answer"),
    ],
)
def test_first_complete_element_wins(text, kind):
    assert parse_action(text).kind == kind


def test_two_answers_take_the_first():
    first = '<answer>{"bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3]}</answer>'
    a = _answer(first + " or maybe " + ANSWER)
    assert a.bbox_2d == [1, 2, 3, 4]


def test_two_searches_take_the_first():
    a = parse_action(SEARCH + '<search>{"name": "image_search", "query": "other"}</search>')
    assert a == SearchAction(name="text_search", query="q")


# ------------------------------------------------------------------ malformed turns


@pytest.mark.parametrize("tag", ["search", "keyframe", "answer"])
def test_unclosed_tag_names_the_tag(tag):
    a = parse_action(f"I will now <{tag}>{{\"name\": \"text_search\", \"query\": \"q\"}}")
    assert isinstance(a, NoAction)
    assert f"<{tag}>" in a.reason and "closed" in a.reason


@pytest.mark.parametrize("tag", ["search", "keyframe", "answer"])
def test_wrong_closing_tag_is_unclosed(tag):
    other = "answer" if tag != "answer" else "search"
    a = parse_action(f"<{tag}>5</{other}>")
    assert isinstance(a, NoAction)
    assert f"<{tag}>" in a.reason


@pytest.mark.parametrize("text", ["", "   \n\t ", None, 42])
def test_empty_response(text):
    a = parse_action(text)
    assert isinstance(a, NoAction) and a.reason == "empty response"


@pytest.mark.parametrize(
    "text", ["The answer is the blue square.", "<ANSWER>{}</ANSWER>", "< answer >x</ answer >"]
)
def test_no_tag(text):
    a = parse_action(text)
    assert isinstance(a, NoAction)
    assert a.reason == "no <search>, <keyframe> or <answer> tag"


def test_unknown_tool_is_a_search_with_error():
    a = parse_action('<search>{"name": "web_search", "query": "zephyr prize"}</search>')
    assert isinstance(a, SearchAction)
    assert a.name == "web_search" and a.query == "zephyr prize"
    assert a.error is not None and "web_search" in a.error
    assert all(t in a.error for t in SEARCH_TOOLS)


@pytest.mark.parametrize(
    "body, fragment",
    [
        ('{"name": "text_search", "query": ""}', "empty search query"),
        ('{"name": "text_search", "query": "   "}', "empty search query"),
        ('{"name": "image_search"}', "empty search query"),
        ('{"name": "text_search", "query": 17}', "empty search query"),
        ("", "empty search"),
        ("  \n ", "empty search"),
        ('{"name": "text_search", "query": ', "not valid JSON"),
        ('[{"name": "text_search", "query": "q"}]', "JSON object"),
    ],
)
def test_bad_search_call_is_a_search_with_error(body, fragment):
    a = parse_action(f"<search>{body}</search>")
    assert isinstance(a, SearchAction)
    assert a.error is not None and fragment in a.error
    assert a.query == ""


@pytest.mark.parametrize("body", ["the third one", "", "frame", "12.5", "twelve", "3, 5", "#4", "1e3"])
def test_keyframe_non_numeric(body):
    a = parse_action(f"<keyframe>{body}</keyframe>")
    assert isinstance(a, KeyframeAction)
    assert a.frame is None
    assert a.raw == body.strip()


def test_keyframe_raw_is_capped():
    a = parse_action("<keyframe>" + "x" * 500 + "</keyframe>")
    assert a == KeyframeAction(frame=None, raw="x" * 50)


@pytest.mark.parametrize("body", ["frame 12", "Frame12", "FRAME 12", "12.0", " 12.00 ", "\n12\n", "012"])
def test_keyframe_numeric_forms(body):
    a = parse_action(f"<keyframe>{body}</keyframe>")
    assert isinstance(a, KeyframeAction) and a.frame == 12
    assert isinstance(a.frame, int) and not isinstance(a.frame, bool)


def test_keyframe_with_more_digits_than_a_float_holds():
    a = parse_action("<keyframe>" + "9" * 400 + "</keyframe>")
    assert isinstance(a, KeyframeAction) and a.frame is None


@pytest.mark.parametrize(
    "box",
    [
        "[NaN, 0, 1, 1]",
        "[0, Infinity, 1, 1]",
        "[0, 0, -Infinity, 1]",
        "[0, 0, 1, 1e400]",
        '["nan", 0, 1, 1]',
        '[0, "inf", 1, 1]',
        '[0, 0, "-infinity", 1]',
        "[true, 0, 1, 1]",
        "[0, false, 1, 1]",
        '["left", 0, 1, 1]',
        '[0, "", 1, 1]',
        "[null, 0, 1, 1]",
        "[[0, 0], 1, 1]",
        '[{"x": 1}, 0, 1, 1]',
        "[0, 0, 1]",
        "[0, 0, 1, 1, 1]",
        "[]",
        '"0, 0, 1, 1"',
        "12",
        "null",
        "[1" + "0" * 400 + ", 0, 1, 1]",  # an integer beyond float range
    ],
)
def test_invalid_box_values_give_no_action(box):
    a = parse_action(f'<answer>{{"bbox_2d": {box}, "point_2d": [1, 1]}}</answer>')
    assert isinstance(a, NoAction)
    assert "bbox_2d" in a.reason


@pytest.mark.parametrize(
    "point",
    ["[NaN, 1]", "[1, Infinity]", "[true, 1]", '["x", 1]', "[1]", "[1, 2, 3]", "[1" + "0" * 400 + ", 1]"],
)
def test_invalid_point_values_give_no_action(point):
    a = parse_action(f'<answer>{{"bbox_2d": [0, 0, 5, 5], "point_2d": {point}}}</answer>')
    assert isinstance(a, NoAction)
    assert "point_2d" in a.reason


@pytest.mark.parametrize(
    "body",
    ["", "the blue square", "[1, 2, 3, 4]", '{"box": [1, 2, 3, 4]}', "{bbox_2d: [1, 2, 3, 4]}", "{{{"],
)
def test_answer_without_a_usable_object(body):
    a = parse_action(f"<answer>{body}</answer>")
    assert isinstance(a, NoAction)
    assert "answer" in a.reason or "bbox_2d" in a.reason


def test_huge_answer_body_is_refused_fast():
    body = '{"bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3], "note": "' + "x" * (MAX_JSON_CHARS + 10) + '"}'
    t = time.perf_counter()
    a = parse_action(f"<answer>{body}</answer>")
    assert time.perf_counter() - t < 0.5
    assert isinstance(a, NoAction)
    assert str(MAX_JSON_CHARS) in a.reason


def test_huge_search_body_is_refused_fast():
    t = time.perf_counter()
    a = parse_action('<search>{"name": "text_search", "query": "' + "y" * 100_000 + '"}</search>')
    assert time.perf_counter() - t < 0.5
    assert isinstance(a, SearchAction) and a.error is not None


@pytest.mark.parametrize(
    "text",
    [
        "<answer>" * 30_000,
        "<answer><search><keyframe>" * 10_000,
        "[" * 200_000,
        "<answer>" + "{" * 200_000 + "</answer>",
        "<answer>" + "x " * 500_000 + '{"bbox_2d": [1, 2, 3, 4]}</answer>',
    ],
    ids=["unclosed-answers", "unclosed-mixed", "brackets", "braces", "long-prose"],
)
def test_huge_degenerate_turns_are_fast(text):
    t = time.perf_counter()
    a = parse_action(text)
    assert time.perf_counter() - t < 1.0
    assert isinstance(a, NoAction)


def test_surrounding_whitespace_does_not_count_towards_the_limit():
    t = time.perf_counter()
    a = parse_action("<answer>" + " \n" * 500_000 + '{"bbox_2d": [1, 2, 3, 4]}' + " " * 10_000 + "</answer>")
    assert time.perf_counter() - t < 1.0
    assert isinstance(a, AnswerAction) and a.bbox_2d == [1, 2, 3, 4]


def test_deep_nesting_does_not_raise():
    for body in ("[" * 3000, "(" * 3000, '{"a":' * 700 + "1" + "}" * 700, "[" * 900 + "]" * 900):
        assert isinstance(parse_action(f"<answer>{body}</answer>"), NoAction)


# ------------------------------------------------------------------ generated fuzz set


VALID_TURNS = [
    ANSWER,
    "<think>The blue square is the logo.</think>\n<answer>{'bbox_2d': [12.5, 40, 88, 97.25], "
    "'point_2d': [50, 66]}</answer>",
    '<search>{"name": "text_search", "query": "Zephyr Prize 2030 winner"}</search>',
    '<search>{"name": "image_search", "query": "Blue Square logo"}</search>',
    "<think>frame 5 shows it best</think> <keyframe>5</keyframe>",
]
POOL = [
    "<", ">", "/", "{", "}", "[", "]", '"', "'", ",", ":", "\n", " ", "NaN", "-", ".", "1e9",
    "<answer>", "</answer>", "<search>", "</search>", "<keyframe>", "</keyframe>",
    "```", "é", "🙂", "\u200b", "\x00", "中文", "\ufeff", "ℕ", "²", "١٢", "true",
]


def _check_invariants(text: str, action) -> None:
    assert isinstance(action, ACTION_TYPES), (text, action)
    if isinstance(action, AnswerAction):
        box, pt = action.bbox_2d, action.point_2d
        assert len(box) == 4 and len(pt) == 2
        assert all(isinstance(v, float) and math.isfinite(v) for v in box + pt), action
        assert box[0] <= box[2] and box[1] <= box[3], action
        assert all(isinstance(w, str) for w in action.warnings)
    elif isinstance(action, SearchAction):
        assert isinstance(action.name, str) and isinstance(action.query, str)
        if action.error is None:
            assert action.name in SEARCH_TOOLS
            assert action.query and action.query == action.query.strip()
        else:
            assert isinstance(action.error, str) and action.error
    elif isinstance(action, KeyframeAction):
        assert action.frame is None or (isinstance(action.frame, int) and not isinstance(action.frame, bool))
        assert isinstance(action.raw, str)
    else:
        assert isinstance(action.reason, str) and action.reason

    # The outcome agrees with the reference "first complete element" semantics, and the
    # element decides alone: the same body in a bare element parses the same way.
    ref = REFERENCE_TAG_RE.search(text)
    if ref is None:
        assert isinstance(action, NoAction), (text, action)
        return
    tag, body = ref.group(1), ref.group(2)
    expected_kinds = {"search": {"search"}, "keyframe": {"keyframe"}, "answer": {"answer", "none"}}
    assert action.kind in expected_kinds[tag], (text, action)
    assert parse_action(f"<{tag}>{body}</{tag}>") == action


def _mutations(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        s = rng.choice(VALID_TURNS)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            if op < 0.35 and s:  # delete a structural character
                idx = [i for i, c in enumerate(s) if c in "<>/{}[]\"',:"] or [0]
                i = rng.choice(idx)
                s = s[:i] + s[i + 1 :]
            elif op < 0.7:  # insert something
                i = rng.randint(0, len(s))
                s = s[:i] + rng.choice(POOL) + s[i:]
            elif op < 0.85:  # replace a digit with junk
                idx = [i for i, c in enumerate(s) if c.isdigit()] or [0]
                i = rng.choice(idx)
                s = s[:i] + rng.choice(["NaN", "x", "", "9" * 30, "-", "1.5", "'"]) + s[i + 1 :]
            else:  # delete a random span
                i = rng.randint(0, len(s))
                j = min(len(s), i + rng.randint(1, 8))
                s = s[:i] + s[j:]
        out.append(s)
    return out


def _random_unicode(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        chars = [chr(rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x2FFF), rng.randint(0x1F300, 0x1F6FF)]))
                 for _ in range(rng.randint(0, 60))]
        s = "".join(chars)
        if rng.random() < 0.5:
            i = rng.randint(0, len(s))
            s = s[:i] + rng.choice(["<answer>", "<search>", "<keyframe>"]) + s[i:]
        if rng.random() < 0.5:
            s = s + rng.choice(["</answer>", "</search>", "</keyframe>"])
        out.append(s)
    return out


def _nested(rng: random.Random, n: int) -> list[str]:
    tags = ["search", "keyframe", "answer"]
    inner = ['{"bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3]}', "7", '{"name": "text_search", "query": "q"}']
    out = []
    for _ in range(n):
        s = rng.choice(inner)
        for _ in range(rng.randint(1, 3)):
            t = rng.choice(tags)
            close = f"</{t}>" if rng.random() < 0.8 else ""
            s = f"<{t}>{s}{close}"
        out.append(s)
    return out


def _fuzz_cases() -> list[str]:
    rng = random.Random(0)
    return _mutations(rng, 300) + _random_unicode(rng, 80) + _nested(rng, 60)


def test_fuzz_set_is_large_and_deterministic():
    cases = _fuzz_cases()
    assert len(cases) == 440
    assert cases == _fuzz_cases()
    assert len(set(cases)) > 300


@pytest.mark.filterwarnings("ignore::SyntaxWarning")  # ast.literal_eval on junk such as "1e9x"
def test_fuzz_never_raises_and_has_defined_outcome():
    kinds = set()
    for text in _fuzz_cases():
        a = parse_action(text)
        _check_invariants(text, a)
        assert parse_action(text) == a  # deterministic
        kinds.add(a.kind)
    assert kinds == {"search", "keyframe", "answer", "none"}  # the set exercises every outcome


@pytest.mark.parametrize("turn", VALID_TURNS)
def test_every_truncation_before_the_closing_tag_is_no_action(turn):
    tag = re.search(r"<(search|keyframe|answer)>", turn).group(1)
    opening_at = turn.index(f"<{tag}>")
    assert turn.endswith(f"</{tag}>")
    full = parse_action(turn)
    assert full.kind == tag and getattr(full, "error", None) is None
    for cut in range(len(turn)):  # every proper prefix, down to the empty string
        prefix = turn[:cut]
        a = parse_action(prefix)
        _check_invariants(prefix, a)
        assert isinstance(a, NoAction), (prefix, a)
        if cut >= opening_at + len(tag) + 2:
            assert f"<{tag}>" in a.reason and "closed" in a.reason


def test_truncations_after_a_complete_element_keep_it():
    text = SEARCH + "\n" + ANSWER
    for cut in range(len(SEARCH), len(text) + 1):
        assert parse_action(text[:cut]) == SearchAction(name="text_search", query="q")


# ------------------------------------------------------------------ round trips


def _render_answer(box, point, style: int) -> str:
    if style == 0:
        return "<answer>" + json.dumps({"bbox_2d": box, "point_2d": point}) + "</answer>"
    if style == 1:
        return f"<answer>{{'bbox_2d': {box!r}, 'point_2d': {point!r},}}</answer>"
    if style == 2:
        return "<answer>\n```json\n" + json.dumps({"bbox_2d": [box], "point_2d": point}, indent=2) + "\n```\n</answer>"
    return "<think>located it</think>\n<answer>" + json.dumps({"point_2d": point, "bbox_2d": box}) + "</answer>\n"


def test_answer_round_trip():
    rng = random.Random(0)
    for i in range(300):
        as_int = rng.random() < 0.5
        vals = [rng.randint(0, 1000) if as_int else round(rng.uniform(0, 1000), rng.randint(0, 3)) for _ in range(4)]
        box = [min(vals[0], vals[2]), min(vals[1], vals[3]), max(vals[0], vals[2]), max(vals[1], vals[3])]
        point = [rng.randint(0, 1000) if as_int else round(rng.uniform(0, 1000), 2) for _ in range(2)]
        a = _answer(_render_answer(box, point, i % 4))
        assert a.bbox_2d == [float(v) for v in box]
        assert a.point_2d == [float(v) for v in point]
        assert a.warnings == []


def test_search_and_keyframe_round_trip():
    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789'\"{}[],:é中🙂-"
    for _ in range(200):
        query = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))).strip() or "q"
        name = rng.choice(SEARCH_TOOLS)
        a = parse_action(
            "<search>" + json.dumps({"name": name, "query": query}, ensure_ascii=rng.random() < 0.5) + "</search>"
        )
        assert a == SearchAction(name=name, query=query)
        fid = rng.randint(0, 100_000)
        assert parse_action(f"<keyframe>{rng.choice(['', ' ', 'frame '])}{fid}</keyframe>").frame == fid


# ------------------------------------------------------------------ clamp_answer


def test_clamp_answer_clamps_and_rounds():
    a = AnswerAction(bbox_2d=[-5.4, 10.6, 1200.2, 999.4], point_2d=[1000.7, -0.2])
    box, point, notes = clamp_answer(a, 1000, 1000)
    assert box == [0, 11, 1000, 999]
    assert point == [1000, 0]
    assert all(type(v) is int for v in box + point)
    assert notes == ["coordinates were clamped to the frame"]


def test_clamp_answer_uses_width_for_x_and_height_for_y():
    a = AnswerAction(bbox_2d=[400.0, 400.0, 500.0, 500.0], point_2d=[460.0, 460.0])
    box, point, notes = clamp_answer(a, 448, 300)
    assert box == [400, 300, 448, 300]
    assert point == [448, 300]
    assert notes


def test_clamp_answer_inside_only_rounds():
    a = AnswerAction(bbox_2d=[10.2, 20.7, 30.49, 40.51], point_2d=[15.4, 25.6])
    box, point, notes = clamp_answer(a, 1000, 1000)
    assert box == [10, 21, 30, 41]
    assert point == [15, 26]
    assert notes == []


def test_clamp_answer_boundaries_are_inclusive():
    a = AnswerAction(bbox_2d=[0.0, 0.0, 1000.0, 1000.0], point_2d=[1000.0, 0.0])
    assert clamp_answer(a, 1000, 1000) == ([0, 0, 1000, 1000], [1000, 0], [])


# ------------------------------------------------------------------ observations


def test_snippet_limits():
    assert SNIPPET_CHARS == 320
    exact = "a" * 320
    assert snippet(exact) == exact
    long = "b" * 321
    s = snippet(long)
    assert len(s) == 320 and s == "b" * 319 + "…"
    assert snippet("word " * 200).endswith("…") and len(snippet("word " * 200)) == 320


def test_snippet_collapses_whitespace():
    assert snippet("  The  Zephyr\nPrize\t\t2030 \r\n went ") == "The Zephyr Prize 2030 went"
    # collapsing happens before cutting: 400 chars with double spaces fit after collapsing
    assert snippet("ab  " * 100) == " ".join(["ab"] * 100)
    assert snippet("ab  " * 200) == " ".join(["ab"] * 200)[:319] + "…"
    assert snippet("x" * 10, limit=5) == "xxxx…"
    assert snippet("") == ""


def test_render_text_results_exact_format():
    out = render_text_results([("T", "text"), ("U", "text")])
    assert out == "<information>1. (Title: T) text\n2. (Title: U) text</information>"


def test_render_text_results_cuts_and_flattens_text():
    long = "Line one\nline two " + "z" * 400
    out = render_text_results([("Zephyr Prize 2030", long), ("Other", "short")])
    assert out.startswith("<information>1. (Title: Zephyr Prize 2030) Line one line two zzz")
    assert out.endswith("…\n2. (Title: Other) short</information>")
    first = out[len("<information>") :].split("\n")[0]
    assert first == "1. (Title: Zephyr Prize 2030) " + snippet(long)
    assert len(snippet(long)) == 320
    assert out.count("\n") == 1


def test_render_empty_results():
    assert render_text_results([]) == "<information>No results found.</information>"
    assert render_image_results([]) == "<information>No results found.</information>"


def test_render_image_results():
    out = render_image_results(["Blue Square logo", "Red Circle symbol"])
    assert out == (
        "<information>1. (Title: Blue Square logo) <image>\n"
        "2. (Title: Red Circle symbol) <image>\n</information>"
    )
    assert out.count("<image>") == 2
    assert render_image_results(["A"]) == "<information>1. (Title: A) <image>\n</information>"


def test_render_search_error():
    out = render_search_error("the text index is not loaded")
    assert out == "<information>Search failed: the text index is not loaded</information>"
    assert out.startswith("<information>")


def test_render_bad_keyframe():
    assert render_bad_keyframe([0, 2, 4, 6, 8, 11]) == "Frame index not in [0, 2, 4, 6, 8, 11]"
    assert render_bad_keyframe((3, 5)) == "Frame index not in [3, 5]"


def test_stop_strings_close_the_tool_tags_only():
    assert sorted(STOP_STRINGS) == ["</keyframe>", "</search>"]
    # a turn cut right after a stop string still parses as that tool call
    for turn in (SEARCH, "<keyframe>4</keyframe>"):
        stop = next(s for s in STOP_STRINGS if turn.endswith(s))
        assert parse_action(turn[: turn.index(stop) + len(stop)]).kind in ("search", "keyframe")
