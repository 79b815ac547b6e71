"""Whatever bytes a model returns, the run ends with a defined stop reason and a trajectory.

Generated outputs: random printable and binary-ish text, and adversarial shapes around the
protocol's tags (lone surrogates, NUL bytes, deep JSON nesting, huge and non-finite numbers,
unclosed and repeated tags, enormous strings)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.context import Context
from segresearch.graphs.seg_research import graph

STOPS = {"answer", "no_action", "max_turns", "max_tokens"}
T = "<thinking>x</thinking>"


def _adversarial() -> list[str]:
    deep = "[" * 5000 + "]" * 5000
    return [
        T + '<answer>{"bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3], "x": "\ud800"}</answer>',
        T + "\ud800\udfff\udc00 <answer>{\"bbox_2d\": [1, 2, 3, 4], \"point_2d\": [2, \"\ud83d\"]}</answer>",
        "\x00" * 50 + T + "<answer>{\"bbox_2d\": [1,\x002,3,4], \"point_2d\": [1, 1]}</answer>",
        T + "<answer>" + deep + "</answer>",
        T + '<answer>{"bbox_2d": ' + deep + ', "point_2d": [1, 1]}</answer>',
        T + '<search>{"name": "text_search", "query": ' + deep + "}</search>",
        T + '<answer>{"bbox_2d": [' + "9" * 5000 + ', 2, 3, 4], "point_2d": [1, 1]}</answer>',
        T + '<answer>{"bbox_2d": [1e999, -1e999, NaN, Infinity], "point_2d": [1, 1]}</answer>',
        T + '<answer>{"bbox_2d": [1e308, 1e308, 1e308, 1e308], "point_2d": [1e308, -1e308]}</answer>',
        T + "<keyframe> " + "9" * 5000 + " </keyframe>",
        T + "<keyframe> -3 </keyframe>",
        T + "<keyframe> ٣ </keyframe>",  # a non-ASCII digit
        T + "<answer><answer></answer></answer>",
        T + "<search></search>",
        T + '<search>{"name": "image_search", "query": "' + "q" * 200_000 + '"}</search>',
        T + "<answer>" * 1000,
        "</answer><answer>" * 100,
        T + '<answer>{"bbox_2d": [1, 2, 3, 4], "point_2d": [1, 1]} trailing</answer>',
        T + '<answer>{"bbox_2d": [1, 2, 3], "point_2d": [1]}</answer>',
        T + '<answer>{"bbox_2d": "1,2,3,4", "point_2d": null}</answer>',
        T + '<answer>{"bbox_2d": [true, false, 3, 4], "point_2d": [1, 1]}</answer>',
        T + '<answer>{"bbox_2d": [5000, 5000, 6000, 6000], "point_2d": [5500, 5500]}</answer>',
        T + '<answer>{"bbox_2d": [-90, 10, -5, 50], "point_2d": [-50, 30]}</answer>',
        "",
        " \n\t ",
        "\ufeff" + T + '<answer>{"bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3]}</answer>',
    ]


def _random(rng: random.Random, n: int) -> list[str]:
    pieces = ["<search>", "</search>", "<answer>", "</answer>", "<keyframe>", "</keyframe>",
              "<thinking>", "</thinking>", "{", "}", "[", "]", '"', ",", ":", "bbox_2d",
              "point_2d", "name", "query", "text_search", "image_search", "1", "-7", "1e9",
              "\x00", "\ud800", "\udfff", "é", "\u202e", "\\", "\n", " ", "null", "true"]
    out = []
    for _ in range(n):
        k = rng.randint(0, 40)
        out.append("".join(rng.choice(pieces) if rng.random() < 0.7 else chr(rng.randint(0, 0x10FFFF))
                           for _ in range(k)))
    return out


CASES = _adversarial() + _random(random.Random(7), 40)


@pytest.mark.parametrize("output", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_every_model_output_ends_defined_with_a_trajectory(output, scene_dir, tmp_path):
    out_dir = tmp_path / "run"
    ctx = Context(model=ReplayChatModel(turns=[output] * 3), search="none", segmenter="none",
                  max_turns=2, output_dir=str(out_dir))
    final = graph.invoke({"query": "the blue square", "media": str(scene_dir / "frames")}, context=ctx)
    assert final["stop_reason"] in STOPS, (final["stop_reason"], final.get("error"))
    traj = json.loads((Path(final["run_dir"]) / "trajectory.json").read_text(encoding="utf-8"))
    assert traj["stop_reason"] == final["stop_reason"]
    text = json.dumps(final["messages"][-1].content if final["messages"] else "", ensure_ascii=False)
    text.encode("utf-8")  # no lone surrogate survives into the state
    assert "\x00" not in text
    if final["stop_reason"] == "answer":
        box = final["answer"]["bbox_2d"]
        # a zero-area box is kept as the model's answer, never without saying so
        assert (box[2] > box[0] and box[3] > box[1]) or final["answer_note"]


def test_a_box_outside_the_frame_is_kept_as_an_answer_with_a_note(scene_dir, tmp_path):
    """DESIGN: a well-formed answer whose box has no area is still the model's answer (the
    published loop's "model chose to finish"); a feedback retry is for unreadable turns only."""
    outside = T + '<answer>{"bbox_2d": [1200, 100, 1500, 300], "point_2d": [1300, 200]}</answer>'
    good = T + '<answer>{"bbox_2d": [100, 100, 300, 300], "point_2d": [200, 200]}</answer>'
    ctx = Context(model=ReplayChatModel(turns=[outside, good]), search="none", segmenter="none",
                  feedback_retries=1)
    final = graph.invoke({"query": "q", "media": str(scene_dir / "frames")}, context=ctx)
    assert final["stop_reason"] == "answer" and final["turns"] == 1
    assert final["answer"]["bbox_2d"] == [1000, 100, 1000, 300]  # clamped like every answer
    assert final["answer_note"] == "degenerate box [1200, 100, 1500, 300]: no area inside the frame"
    ev = [e for e in final["events"] if e["type"] == "model"][0]
    assert ev["action"]["type"] == "answer" and ev["answer_note"] == final["answer_note"]


def test_lone_surrogate_output_keeps_its_trajectory(scene_dir, tmp_path):
    bad = T + '<answer>{"bbox_2d": [100, 100, 300, 300], "point_2d": [200, 200], "note": "\ud800"}</answer>'
    ctx = Context(model=ReplayChatModel(turns=[bad]), search="none", segmenter="none",
                  output_dir=str(tmp_path / "o"))
    final = graph.invoke({"query": "q", "media": str(scene_dir / "frames")}, context=ctx)
    assert final["stop_reason"] == "answer"
    traj = (tmp_path / "o" / "trajectory.json").read_text(encoding="utf-8")
    assert "\ufffd" in traj and (tmp_path / "o" / "report.md").is_file()
