"""Events have one definition (``segresearch.core.events``) and one published schema: what real
runs emit validates against it, the checked-in schema is the generated one, the web page
handles every type, and the README's tables are the schema's."""

from __future__ import annotations

import json
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.context import Context
from segresearch.core import event_schema, events
from segresearch.graphs.seg_research import build_graph

T = "<thinking>ok</thinking>\n"
BOX = '{"bbox_2d": [100, 200, 300, 400], "point_2d": [200, 300]}'
ROOT = Path(__file__).resolve().parents[1]
KINDS = ("TrajectoryEvent", "StreamEvent", "Pending", "ReviewRequest", "AskUserRequest")


def _search(q: str, name: str = "text_search") -> str:
    return T + "<search>" + json.dumps({"name": name, "query": q}) + "</search>"


class Seen:
    """What runs emitted, by the union each belongs to (as a client receives it: JSON)."""

    def __init__(self) -> None:
        self.by_kind: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}

    def add(self, kind: str, obj: Any) -> None:
        self.by_kind[kind].append(json.loads(json.dumps(obj)))

    def stream(self, g, payload, cfg, ctx) -> dict[str, Any]:
        """Run ``g`` streaming custom events and node updates; returns the thread's values."""
        for mode, chunk in g.stream(payload, cfg, context=ctx, stream_mode=["custom", "updates"]):
            if mode == "custom":
                self.add("StreamEvent", chunk)
                continue
            for node, update in chunk.items():
                if node == "__interrupt__":
                    for it in update:
                        self.add("AskUserRequest" if it.value.get("type") == "ask_user" else "ReviewRequest",
                                 it.value)
                    continue
                for ev in (update or {}).get("events") or []:
                    self.add("TrajectoryEvent", ev)
                if (update or {}).get("pending") is not None:
                    self.add("Pending", update["pending"])
        values = g.get_state(cfg).values
        run_dir = values.get("run_dir")
        if run_dir and (Path(run_dir) / "trajectory.json").is_file():  # what a reader of the file sees
            for ev in json.loads((Path(run_dir) / "trajectory.json").read_text())["events"]:
                self.add("TrajectoryEvent", ev)
        return values


@pytest.fixture(scope="module")
def seen(scene_dir, kb_dir, tmp_path_factory) -> Seen:
    """Runs through search (good, failing, unknown tool), keyframes (valid and not), a format
    reminder, an answer, segmentation with progress, a review refused then edited, a
    degenerate answer, a skipped segmentation and the error endings."""
    tmp = tmp_path_factory.mktemp("events")
    kb = tmp / "kb"  # a knowledge base no earlier test opened: its first use says so (status)
    shutil.copytree(kb_dir, kb)
    frames = str(scene_dir / "frames")
    s = Seen()
    g = build_graph(checkpointer=InMemorySaver())

    turns = [_search("Zephyr Prize 2030"), _search("anything", "bogus_tool"),
             T + "<keyframe> 5 </keyframe>", T + "no action here", T + "<keyframe> 6 </keyframe>",
             T + f"<answer>{BOX}</answer>"]
    ctx = Context(model=ReplayChatModel(turns=turns), kb=str(kb), search="bm25", segmenter="grabcut",
                  feedback_retries=1, output_dir=str(tmp / "full"))
    out = s.stream(g, {"query": "the blue square", "media": frames}, {"configurable": {"thread_id": "full"}}, ctx)
    assert out["stop_reason"] == "answer" and out["masks_dir"]

    cfg = {"configurable": {"thread_id": "review"}}
    ctx = Context(model=ReplayChatModel(turns=[T + "<keyframe> 6 </keyframe>", T + f"<answer>{BOX}</answer>"]),
                  search="none", segmenter="grabcut", review=True, output_dir=str(tmp / "review"))
    s.stream(g, {"query": "the blue square", "media": frames}, cfg, ctx)
    s.stream(g, Command(resume="bogus"), cfg, ctx)  # refused: asks again with a problem
    out = s.stream(g, Command(resume={"bbox_2d": [60, 40, 100, 80], "point_2d": [80, 60]}), cfg, ctx)
    assert out["reviewed"]["decision"] == "edit"

    cfg = {"configurable": {"thread_id": "ask"}}  # a question back to the user (tools protocol)
    ask = [{"tool_calls": [{"name": "ask_user", "args": {"question": "Which one?"}}]},
           {"tool_calls": [{"name": "answer", "args": {"keyframe": 6, "bbox_2d": [100, 200, 300, 400],
                                                       "point_2d": [200, 300]}}]}]
    ctx = Context(model=ReplayChatModel(turns=ask), protocol="tools", ask_user=True, search="none",
                  segmenter="none")
    s.stream(g, {"query": "the square", "media": frames}, cfg, ctx)
    s.stream(g, Command(resume=""), cfg, ctx)  # refused: asks again with a problem
    assert s.stream(g, Command(resume="the blue one"), cfg, ctx)["questions"][0]["reply"] == "the blue one"

    cfg = {"configurable": {"thread_id": "verify"}}  # a verify round that corrects the masks
    script = [T + "<keyframe> 6 </keyframe>", T + f"<answer>{BOX}</answer>",
              T + '<verify>{"frame": 6, "points": [[200, 300]], "labels": [1], "box": [100, 200, 300, 400]}</verify>']
    ctx = Context(model=ReplayChatModel(turns=script), search="none", segmenter="grabcut", verify_rounds=1,
                  output_dir=str(tmp / "verify"))
    assert s.stream(g, {"query": "the blue square", "media": frames}, cfg, ctx)["corrections"]

    endings = [
        ([T + '<answer>{"bbox_2d": [0, 0, 0, 0], "point_2d": [0, 0]}</answer>'], frames, {}),  # degenerate
        ([T + '<answer>{"bbox_2d": [-5, 0, 1200, 900], "point_2d": [50, 50]}</answer>'], frames, {}),  # clamped
        ([_search("a")], frames, {}),  # the model fails on turn 2 (the cassette runs out)
        ([T], str(tmp / "missing"), {}),  # no media
    ]
    for k, (script, media, extra) in enumerate(endings):
        ctx = Context(model=ReplayChatModel(turns=script), search="none", prompt_variant="search",
                      segmenter="none", **extra)
        s.stream(g, {"query": "q", "media": media}, {"configurable": {"thread_id": f"end-{k}"}}, ctx)
    return s


def _validator(kind: str) -> Draft202012Validator:
    doc = {**event_schema.json_schema(), "anyOf": [{"$ref": f"#/$defs/{kind}"}]}
    Draft202012Validator.check_schema(doc)
    return Draft202012Validator(doc)


@pytest.mark.parametrize("kind", KINDS)
def test_every_emitted_event_validates_against_the_schema(seen, kind):
    validator = _validator(kind)
    for obj in seen.by_kind[kind]:
        errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
        assert not errors, f"{kind} {obj} does not fit the schema: {[e.message for e in errors][:3]}"


def test_the_runs_cover_every_shape(seen):
    """So that the validation above has seen each type (and each optional key of note)."""
    for kind in KINDS:
        assert {o["type"] for o in seen.by_kind[kind]} == set(event_schema.tags(kind)), kind
    traj = seen.by_kind["TrajectoryEvent"]
    assert any(e["type"] == "model" and e.get("answer_note") for e in traj)
    assert any(e["type"] == "model" and e.get("notes") for e in traj)
    assert any(e["type"] == "segment" and "skipped" in e for e in traj)
    assert any(e["type"] == "segment" and "keyframe_area" in e for e in traj)
    assert {e["kind"] for e in traj if e["type"] == "error"} >= {"model", "media"}
    assert any(e["type"] == "tool" and e.get("error") for e in traj)
    assert any(e["type"] == "tool" and e.get("valid") is False for e in traj)
    assert any(r.get("problem") for r in seen.by_kind["ReviewRequest"])
    assert any(e["type"] == "verify" and e.get("correction") and e.get("picture") for e in traj)
    assert any(r.get("problem") for r in seen.by_kind["AskUserRequest"])


def test_a_payload_the_schema_does_not_describe_is_refused():
    """The schema is closed and typed: an extra key, a missing one or a wrong type fails."""
    validator = _validator("StreamEvent")
    good = {"type": "keyframe", "frame": 6, "valid": True}
    assert validator.is_valid(good)
    assert not validator.is_valid({**good, "shown": True})
    assert not validator.is_valid({"type": "keyframe", "frame": 6})
    assert not validator.is_valid({**good, "valid": "yes"})
    assert not validator.is_valid({"type": "nonsense"})


def test_checked_in_schema_is_the_generated_one():
    shipped = resources.files("segresearch") / "assets" / "events.schema.json"
    assert shipped.read_text(encoding="utf-8") == event_schema.schema_text(), (
        "regenerate: python -m segresearch.core.event_schema > segresearch/assets/events.schema.json")


def test_type_constants_are_the_schema_tags():
    constants = {v for k, v in vars(events).items() if k.isupper() and isinstance(v, str)}
    assert constants == {t for kind in KINDS for t in event_schema.tags(kind)} | {events.NONE}


def _handled_in_js() -> set[str]:
    """The ``type`` values the page's scripts compare against (``x.type === "media"``,
    ``case "media":``), over every .js file of the page, whatever its module split."""
    found: set[str] = set()
    for path in sorted((ROOT / "segresearch" / "servers" / "web").rglob("*.js")):
        text = path.read_text(encoding="utf-8")
        found |= set(re.findall(r"\.type\s*[!=]==?\s*[\"']([a-z_]+)[\"']", text))
        found |= set(re.findall(r"\bcase\s+[\"']([a-z_]+)[\"']\s*:", text))
    return found


def test_the_web_page_handles_every_event_type():
    wanted = set(event_schema.tags("TrajectoryEvent")) | set(event_schema.tags("StreamEvent"))
    missing = wanted - _handled_in_js()
    assert not missing, f"segresearch/servers/web/**/*.js never looks at event types {sorted(missing)}"


@pytest.mark.parametrize("kind", ["StreamEvent", "TrajectoryEvent"])
def test_readme_event_tables_are_the_schemas(kind):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = event_schema.markdown_table(kind)
    assert table in readme, (
        f"README.md's {kind} table differs from the schema; paste "
        f"segresearch.core.event_schema.markdown_table({kind!r}):\n{table}")
