"""``coord_style: auto`` resolved per model family (``segresearch.agents.coord_style``), and the
graph reading every convention onto one grid: the published tags keep Qwen3-VL's 0-1000 (or
a Qwen2.5-VL's pixels), the tool-calling protocol asks each family for its own convention."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_google_genai import ChatGoogleGenerativeAI
from langchain_openai import ChatOpenAI

from segresearch.agents.backends.hf_local import HFChatModel
from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.context import Context
from segresearch.agents.coord_style import coord_style_for, model_family, resolved_coord_style
from segresearch.cli import build_parser
from segresearch.core.prompts import COORD_NOTES
from segresearch.eval.spec import EvalError, EvalSpec, resolve_spec
from segresearch.graphs.seg_research import graph

QWEN3_SPEC = "openai:Qwen/Qwen3-VL-8B-Instruct@http://127.0.0.1:8000/v1"
QWEN25_SPEC = "openai:Qwen/Qwen2.5-VL-7B-Instruct@http://127.0.0.1:8000/v1"
GEMINI_SPEC = "google_genai:gemini-2.5-pro"
CLAUDE_SPEC = "anthropic:claude-sonnet-4-5"
REPLAY_SPEC = "replay:/tmp/cassette.json"

# (spec, family, auto in tags mode, auto in tools mode)
RESOLUTION = [
    (QWEN3_SPEC, "qwen3", "qwen3", "qwen3"),
    (QWEN25_SPEC, "qwen25", "qwen25", "qwen25"),
    (GEMINI_SPEC, "gemini", "qwen3", "gemini"),
    (CLAUDE_SPEC, "other", "qwen3", "normalized"),
    ("openai:gpt-4o", "other", "qwen3", "normalized"),
    (REPLAY_SPEC, "replay", "qwen3", "qwen3"),
]


@pytest.mark.parametrize(("spec", "family", "tags", "tools"), RESOLUTION)
def test_auto_follows_the_family_and_the_protocol(spec, family, tags, tools):
    """The published tags never ask a model for a convention the checkpoints were not taught
    (qwen3, or a Qwen2.5-VL's pixels); tool calls ask each family for its own."""
    assert model_family(spec) == family
    assert resolved_coord_style(Context(model=spec)) == tags
    assert resolved_coord_style(Context(model=spec, protocol="tools")) == tools
    # an explicit setting is never second-guessed
    for style in ("qwen3", "qwen25", "gemini", "normalized"):
        assert resolved_coord_style(Context(model=spec, protocol="tools", coord_style=style)) == style


def test_the_default_and_the_environment(monkeypatch):
    assert Context().coord_style == "auto"
    assert resolved_coord_style(Context()) == "qwen3"  # the default model is a Qwen3-VL
    monkeypatch.setenv("SEGRESEARCH_COORD_STYLE", "gemini")
    assert Context().coord_style == "gemini"
    monkeypatch.setenv("SEGRESEARCH_COORD_STYLE", "pixels")
    with pytest.raises(ValueError, match="SEGRESEARCH_COORD_STYLE"):
        Context()


def test_chat_model_objects_are_read_by_their_model_name(tmp_path):
    """A LangChain chat model handed in from Python carries its model name; constructing
    the real integration classes opens no connection."""
    assert model_family(ChatOpenAI(model="Qwen/Qwen2.5-VL-7B-Instruct", api_key="k",
                                   base_url="http://127.0.0.1:9/v1")) == "qwen25"
    assert model_family(ChatGoogleGenerativeAI(model="gemini-2.5-flash", google_api_key="k")) == "gemini"
    claude = ChatAnthropic(model="claude-sonnet-4-5", api_key="k")
    assert model_family(claude) == "other"
    assert coord_style_for(claude, "tools") == "normalized" and coord_style_for(claude, "tags") == "qwen3"
    assert model_family(ReplayChatModel(turns=["x"])) == "replay"
    assert model_family(HFChatModel(model_path="/models/Qwen3-VL-2B-Instruct")) == "qwen3"


@pytest.mark.parametrize(("model_type", "family"), [("qwen2_5_vl", "qwen25"), ("qwen3_vl", "qwen3"),
                                                    ("qwen3_vl_moe", "qwen3"), ("llava", "other")])
def test_a_local_checkpoint_is_read_by_its_config(tmp_path, model_type, family):
    """A fine-tuned folder's name rarely names its base model: config.json's model_type
    does, so a Qwen2.5-VL checkpoint answers in its pixels with the published tags."""
    ckpt = tmp_path / f"finetune-{model_type}"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": model_type}))
    assert model_family(f"hf:{ckpt}") == family
    assert model_family(HFChatModel(model_path=str(ckpt))) == family
    assert model_family(f"hf:{tmp_path / 'missing'}") == "other"


def run(scene_dir: Path, turns: list[str], **ctx):
    context = Context(model=ReplayChatModel(turns=turns), segmenter="none", search="none",
                      prompt_variant="search", **ctx)
    return graph.invoke({"query": "the blue square", "media": str(scene_dir / "frames")}, context=context)


def _answer(box, point) -> str:
    return "<thinking>ok</thinking>\n<answer>" + json.dumps({"bbox_2d": box, "point_2d": point}) + "</answer>"


# one box and point, as each convention writes it (the frame is 160x120)
WRITTEN = {
    "qwen3": ([250, 100, 625, 750], [400, 500]),
    "gemini": ([100, 250, 750, 625], [500, 400]),
    "normalized": ([0.25, 0.1, 0.625, 0.75], [0.4, 0.5]),
}


def test_the_graph_reads_every_convention_onto_one_grid(scene_dir):
    """The same answer in three conventions: one state answer (x-first, 0-1000), the same
    pixels, and a system prompt that told the model the convention it used."""
    outs = {}
    for style, (box, point) in WRITTEN.items():
        out = run(scene_dir, ["<thinking>ok</thinking>\n<keyframe> 6 </keyframe>", _answer(box, point)],
                  coord_style=style)
        assert out["stop_reason"] == "answer" and not out.get("answer_note"), out
        assert COORD_NOTES[style] in out["messages"][0].content
        outs[style] = out
    want = {"keyframe": 6, "bbox_2d": [250, 100, 625, 750], "point_2d": [400, 500]}
    for style, out in outs.items():
        assert out["answer"] == want, style
        assert out["answer_px"] == {"keyframe": 6, "bbox_2d": [40, 12, 100, 90], "point_2d": [64, 60]}, style


def test_a_tall_gemini_box_stays_tall(scene_dir):
    """Gemini writes y first: a tall, narrow box read without the swap would come out wide
    and flat, in the state and in the pixels SAM 2 is prompted with."""
    out = run(scene_dir, ["<thinking>ok</thinking>\n<keyframe> 6 </keyframe>",
                          _answer([100, 500, 900, 520], [500, 510])], coord_style="gemini")
    assert out["answer"]["bbox_2d"] == [500, 100, 520, 900] and out["answer"]["point_2d"] == [510, 500]
    x1, y1, x2, y2 = out["answer_px"]["bbox_2d"]
    assert (x1, y1, x2, y2) == (80, 12, 83, 108) and y2 - y1 > x2 - x1


def test_an_evaluation_records_the_resolved_style(tmp_path):
    """eval_config.json records the convention 'auto' stood for, so a folder made when the
    setting meant qwen3 is resumed by the same models; one evaluation is one convention."""
    def spec(*models: str, **ctx) -> EvalSpec:
        return EvalSpec(dataset="okvos", root=str(tmp_path), out=str(tmp_path / "out"), models=list(models),
                        context=Context(run_segmentation=False, **ctx))

    assert resolve_spec(spec(QWEN3_SPEC)).context.coord_style == "qwen3"
    assert resolve_spec(spec(QWEN3_SPEC, QWEN3_SPEC)).context.coord_style == "qwen3"
    assert resolve_spec(spec(QWEN25_SPEC)).context.coord_style == "qwen25"
    assert resolve_spec(spec(QWEN25_SPEC)).coords.size == 864  # pixels of the keyframe shown
    assert resolve_spec(spec(GEMINI_SPEC, protocol="tools")).context.coord_style == "gemini"
    assert resolve_spec(spec(GEMINI_SPEC, protocol="tools")).coords.size == 1000
    with pytest.raises(EvalError, match="different coordinate conventions"):
        resolve_spec(spec(QWEN3_SPEC, QWEN25_SPEC))
    assert resolve_spec(spec(QWEN3_SPEC, QWEN25_SPEC, coord_style="qwen3")).context.coord_style == "qwen3"


def test_the_cli_offers_the_conventions_where_they_mean_something(capsys):
    """``run`` and ``eval`` take every convention and ``auto`` (``--coords`` is the same flag);
    ``segment`` and ``data okvos`` read or write answers on a grid, so only qwen3 / qwen25."""
    parser = build_parser()
    args = parser.parse_args(["run", "--media", "x.jpg", "--query", "q", "--coords", "gemini"])
    assert args.coord_style == "gemini"
    assert parser.parse_args(["run", "--coord-style", "auto"]).coord_style == "auto"
    assert parser.parse_args(["segment", "p.jsonl", "--out", "o", "--coords", "qwen25"]).coord_style == "qwen25"
    with pytest.raises(SystemExit):
        parser.parse_args(["segment", "p.jsonl", "--out", "o", "--coord-style", "auto"])
    assert "invalid choice: 'auto'" in capsys.readouterr().err
