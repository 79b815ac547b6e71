"""RL rollouts in ``tools`` mode: the verl policy (``VerlChatModel``) with tools bound, on the
tiny random-weight Qwen-VL models built like the released checkpoints (published templates,
tokenizer and pixel limits), Qwen3-VL and Qwen2.5-VL alike, and the reward's reading of
tool-call answers.

Why these checks: verl trains on the token stream the policy built, so in ``tools`` mode the
stream must still be exactly what the chat template renders for the final conversation, now
with the tool definitions in the system turn, the model's ``<tool_call>`` blocks as its
assistant turns and the ``ToolMessage`` results as ``<tool_response>`` user turns, while the
loss mask covers the generated ids only. A fake rollout server stands in for vLLM and
returns the tokenisation of scripted replies, ending each with ``<|im_end|>`` as a model ends
a turn that called a tool. Qwen3-VL's published template renders tools; Qwen2.5-VL's processor
template does not, so its rollout renders with our template that adds the Qwen2.5 tool format
(rl/tools_template.py), and "the render of the final conversation" is that template's render.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("verl")

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402
from verl.experimental.agent_loop.agent_loop import AgentLoopWorker, DictConfigWrap  # noqa: E402
from verl.utils.dataset.rl_dataset import RLHFDataset  # noqa: E402
from verl.workers.rollout.replica import TokenOutput  # noqa: E402

from segresearch.agents.content import image_block, text_block  # noqa: E402
from segresearch.agents.context import Context  # noqa: E402
from segresearch.agents.providers import image_placement  # noqa: E402
from segresearch.compat.verl import chat_template_kwargs  # noqa: E402
from segresearch.core.protocol import AnswerAction, KeyframeAction, SearchAction  # noqa: E402
from segresearch.core.tool_protocol import (  # noqa: E402
    parse_tool_calls,
    tool_calls_in_order,
    tool_definitions,
    tool_observation,
)
from segresearch.core.tool_text import parse_tool_call_text  # noqa: E402
from segresearch.graphs.seg_research import graph  # noqa: E402
from segresearch.rl.agent_loop import AGENT_NAME, SegResearchAgentLoop  # noqa: E402
from segresearch.rl.reward import compute_score  # noqa: E402
from segresearch.rl.tools_template import tools_chat_template  # noqa: E402
from segresearch.rl.verl_model import VerlChatModel  # noqa: E402
from segresearch.testing.tiny_vlm import (  # noqa: E402
    CHAT_TEMPLATE,
    build_tiny_qwen_vl,
    install_video_processor_stub,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

FRAME_PX, KEYFRAME_PX = 448, 864


def _call(name: str, args: dict) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": args}) + "\n</tool_call>"


SEARCH = "Who won it?\n" + _call("text_search", {"query": "Zephyr Prize 2030 winner"})
KEYFRAME = _call("keyframe", {"index": 6})
ANSWER = "It is there.\n" + _call("answer", {"keyframe": 6, "bbox_2d": [400, 480, 560, 720], "point_2d": [480, 600]})


def _tiny(tmp_path_factory, family):
    from verl.utils import hf_processor, hf_tokenizer

    install_video_processor_stub()
    path = build_tiny_qwen_vl(tmp_path_factory.mktemp(f"tiny_tools_{family}"), family,
                              pixels="published", template="published")
    return SimpleNamespace(family=family, tok=hf_tokenizer(str(path)), proc=hf_processor(str(path)))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Each family's tiny model, built once for the module when a test first asks for it."""
    built = {}

    def get(family):
        if family not in built:
            built[family] = _tiny(tmp_path_factory, family)
        return built[family]

    return get


@pytest.fixture(params=["qwen3_vl", "qwen2_5_vl"])
def tiny(request, tiny_models):
    """Qwen3-VL (its published template renders tools, tool calls and tool responses) and
    Qwen2.5-VL (its published processor template renders none of them)."""
    return tiny_models(request.param)


@pytest.fixture()
def tiny25(tiny_models):
    return tiny_models("qwen2_5_vl")


def _used_template(tiny, loop):
    """The chat-template kwargs the loop's builder rendered with, checked to be the model's
    own for Qwen3-VL and ours for Qwen2.5-VL."""
    used = chat_template_kwargs(loop.continuous_token_builder)
    if tiny.family == "qwen2_5_vl":
        assert used == {"chat_template": tools_chat_template()}
    else:
        assert used == {}
    return used


class ToolServer:
    """Scripted replies, each ended with ``<|im_end|>`` (no stop strings in tools mode)."""

    def __init__(self, tok, replies):
        self.tok, self.replies = tok, list(replies)
        self.calls: list[dict] = []
        self.returned: list[list[int]] = []

    async def generate(self, request_id, *, prompt_ids, sampling_params, image_data=None, **kw):
        self.calls.append({"prompt_ids": list(prompt_ids), "params": dict(sampling_params),
                           "images": list(image_data or [])})
        text = self.replies[len(self.calls) - 1]
        ids = self.tok.encode(text, add_special_tokens=False) + [self.tok.convert_tokens_to_ids("<|im_end|>")]
        ids = ids[: sampling_params["max_tokens"]]
        self.returned.append(ids)
        return TokenOutput(token_ids=ids, log_probs=[-0.5] * len(ids), stop_reason="completed", extra_fields={})


def _loop(tiny, server, template_kwargs=None):
    cfg = OmegaConf.create({
        "actor_rollout_ref": {"rollout": {"prompt_length": 8192, "response_length": 4096,
                                          "multi_turn": {"max_tool_response_length": 2048}}},
        "data": {"apply_chat_template_kwargs": dict(template_kwargs or {}), "mm_processor_kwargs": {}},
    })
    return SegResearchAgentLoop(
        trainer_config=DictConfigWrap(cfg), server_manager=server, tokenizer=tiny.tok, processor=tiny.proc,
        dataset_cls=RLHFDataset, data_config=DictConfigWrap(cfg.data), hf_model_type=tiny.family,
        name=AGENT_NAME, search="none",
    )


def _policy(loop):
    return VerlChatModel(agent_loop=loop, sampling_params={"temperature": 1.0, "logprobs": True},
                         request_id="req0123456789", response_length=4096, max_observation_tokens=2048)


def _frames(n=3):
    return [Image.new("RGB", (FRAME_PX, FRAME_PX), (40 * i, 90, 200)) for i in range(n)]


def _prompt(frames):
    content = [text_block("Find the blue square. Frames:")]
    for i, f in enumerate(frames):
        content += [text_block(f"\nframe {2 * i}: "), image_block(f, fmt="PNG")]
    return [SystemMessage(content="You find objects in videos with tools."), HumanMessage(content=content)]


DEFS = tool_definitions("qwen3", FRAME_PX, True)


def _rollout(tiny, replies):
    """The graph's tools-mode turn cycle, driven by hand: bind, invoke, read the first call
    with the protocol's parser, answer it with ``tool_observation`` (images inside)."""
    server = ToolServer(tiny.tok, replies)
    messages = _prompt(_frames())
    actions, replies_out, held = [], [], {}

    async def go():  # verl's agent loop keeps the event loop it was made on
        model = held["model"] = _policy(_loop(tiny, server))
        bound = model.bind_tools(DEFS)
        for _ in replies:
            msg = await bound.ainvoke(messages)
            replies_out.append(msg)
            messages.append(msg)
            action, _not_run = parse_tool_calls(msg)
            actions.append(action)
            calls = tool_calls_in_order(msg)
            call_id = calls[0]["id"] if calls else ""
            if isinstance(action, SearchAction):
                obs = "1. (Title: Zephyr Prize 2030) It went to the Blue Square collective."
                messages.extend(tool_observation(call_id, obs, [], image_placement(model)))
            elif isinstance(action, KeyframeAction) and action.frame is None:
                messages.extend(tool_observation(call_id, "Pick one of the frames 0, 2, 4.", [], "inside"))
            elif isinstance(action, KeyframeAction):
                kf = Image.new("RGB", (KEYFRAME_PX, KEYFRAME_PX), (10, 20, 230))
                messages.extend(tool_observation(call_id, "frame 6 at high resolution: <image>",
                                                 [image_block(kf, fmt="PNG")], image_placement(model)))
            else:
                break

    asyncio.run(go())
    return held["model"], server, actions, replies_out


def test_tool_trajectory_is_token_exact(tiny):
    model, server, actions, replies = _rollout(tiny, [SEARCH, KEYFRAME, ANSWER])
    assert [type(a) for a in actions] == [SearchAction, KeyframeAction, AnswerAction]
    assert actions[0].query == "Zephyr Prize 2030 winner" and actions[1].frame == 6
    assert actions[2].keyframe == 6 and actions[2].bbox_2d == [400, 480, 560, 720]
    assert [m.content for m in replies] == ["Who won it?", "", "It is there."]
    assert all(m.response_metadata["finish_reason"] == "tool_calls" for m in replies)
    assert image_placement(model) == "inside"
    t = model.trajectory
    stream = t.stream
    # (1) the stream is the processor's render of the final conversation with the tools
    # (the turns the model wrote appear as structured tool_calls), + the last "\n"
    assert [m["role"] for m in t.messages] == ["system", "user", "assistant", "tool", "assistant", "tool",
                                               "assistant"]
    assert all("tool_calls" in m for m in t.messages if m["role"] == "assistant")
    used = _used_template(tiny, model.agent_loop)
    text = tiny.proc.apply_chat_template(t.messages, tools=DEFS, tokenize=False, **used)
    full = tiny.proc(text=[text], images=t.images, return_tensors="pt")["input_ids"][0].tolist()
    assert stream == full[: len(stream)] and full[len(stream):] == tiny.tok.encode("\n", add_special_tokens=False)
    # the tools are in the system turn, as the template renders them
    system = tiny.tok.decode(t.prompt_ids).split("<|im_start|>user")[0]
    assert "# Tools" in system and '"name": "answer"' in system and "<tool_call>" in system
    assert server.calls[0]["prompt_ids"] == t.prompt_ids
    assert "<tool_response>\nframe 6 at high resolution: <|vision_start|>" in text
    # (2) mask 1 on exactly the generated ids; no stop strings in tools mode
    gen = [tok for tok, m in zip(t.response_ids, t.mask, strict=True) if m == 1]
    assert gen == [tok for ids in server.returned for tok in ids]
    assert all(c["params"]["stop"] == [] for c in server.calls)
    assert len(t.logprobs) == len(t.mask) and all(lp == 0.0 for lp, m in zip(t.logprobs, t.mask, strict=True) if m == 0)
    # (3) each call saw the stream so far with its images; the keyframe's image is the 4th
    for c in server.calls:
        assert stream[: len(c["prompt_ids"])] == c["prompt_ids"]
    assert [im.size for im in t.images] == [(FRAME_PX, FRAME_PX)] * 3 + [(KEYFRAME_PX, KEYFRAME_PX)]
    # (4) M-RoPE positions of the stream equal those of the processor's render
    fake = SimpleNamespace(processor=tiny.proc, tokenizer=tiny.tok, mm_processor_kwargs={},
                           _get_mm_processor_kwargs=lambda audios=None: {})
    ids = torch.tensor([stream])
    ref = torch.tensor([full[: len(stream)]])
    out = SimpleNamespace(multi_modal_data={"images": t.images}, mm_processor_kwargs=None)
    mm = AgentLoopWorker._compute_multi_modal_inputs(fake, out, ids)
    assert mm["image_grid_thw"].shape[0] == 4
    pos = AgentLoopWorker._compute_position_ids(fake, ids, torch.ones_like(ids), dict(mm))
    assert pos.shape == (1, 4, len(stream))
    assert torch.equal(pos, AgentLoopWorker._compute_position_ids(fake, ref, torch.ones_like(ref), dict(mm)))
    assert int(pos[0, 1:].max()) < len(stream) - 1  # images advance positions by less than their tokens


def test_malformed_call_is_invalid_and_the_stream_keeps_what_was_written(tiny):
    broken = '<tool_call>\n{"name": "keyframe", "arguments": {"index": 6,}\n</tool_call>'
    model, server, actions, replies = _rollout(tiny, [broken, KEYFRAME, ANSWER])
    assert replies[0].tool_calls == [] and len(replies[0].invalid_tool_calls) == 1
    assert "not valid JSON" in replies[0].invalid_tool_calls[0]["error"]
    # the graph reads it as a keyframe call without a frame (the tags' treatment of the same)
    assert isinstance(actions[0], KeyframeAction) and actions[0].frame is None
    assert [type(a) for a in actions[1:]] == [KeyframeAction, AnswerAction]
    t = model.trajectory
    # an unparsed reply stays verbatim in the conversation, so the render still equals the stream
    assert t.messages[2] == {"role": "assistant", "content": broken}
    gen = [tok for tok, m in zip(t.response_ids, t.mask, strict=True) if m == 1]
    assert gen == [tok for ids in server.returned for tok in ids]
    assert tiny.tok.decode(server.returned[0], skip_special_tokens=True) == broken


def test_tags_mode_is_unchanged_by_the_tools_support(tiny):
    """Without bound tools the policy stops at the tag stop strings and records plain turns."""
    server = ToolServer(tiny.tok, ["<thinking>x</thinking>\n<keyframe> 6 </keyframe>"])

    async def go():
        model = _policy(_loop(tiny, server))
        return model, await model.ainvoke(_prompt(_frames(1)))

    model, msg = asyncio.run(go())
    assert chat_template_kwargs(model.agent_loop.continuous_token_builder) == {}  # the model's own template
    assert server.calls[0]["params"]["stop"] == ["</search>", "</keyframe>"]
    assert msg.tool_calls == [] and "# Tools" not in tiny.tok.decode(model.trajectory.prompt_ids)
    assert model.trajectory.messages[-1] == {"role": "assistant", "content": msg.content}


def test_qwen25_vl_rollout_renders_the_tokenizer_tool_format_with_images(tiny25):
    """On Qwen2.5-VL the prompt's system turn is what the Qwen2.5-VL tokenizer template renders
    for the tools (the format the model was tuned with), the frames are the processor's image
    placeholders, and the published processor template alone would have shown no tools."""
    tiny = tiny25
    model, server, actions, _ = _rollout(tiny, [KEYFRAME, ANSWER])
    assert [type(a) for a in actions] == [KeyframeAction, AnswerAction]
    t = model.trajectory
    prompt = tiny.tok.decode(t.prompt_ids)
    system = prompt.split("<|im_start|>user")[0]
    text_only = [{"role": "system", "content": t.messages[0]["content"]}, {"role": "user", "content": "q"}]
    assert system == tiny.tok.apply_chat_template(text_only, tools=DEFS, tokenize=False).split("<|im_start|>user")[0]
    assert "<|vision_start|><|image_pad|>" in prompt
    assert "# Tools" not in tiny.proc.apply_chat_template(text_only, tools=DEFS, tokenize=False)
    # the keyframe came back inside the tool response, as image placeholders
    response = tiny.tok.decode(t.response_ids)
    assert "<tool_response>\nframe 6 at high resolution: <|vision_start|><|image_pad|>" in response
    assert server.calls[1]["images"][-1].size == (KEYFRAME_PX, KEYFRAME_PX)


def test_a_tags_trajectory_on_a_loop_that_switched_templates_gets_the_same_tokens(tiny25):
    """The switch to our template stays on the loop; a tags-mode trajectory there renders
    exactly the tokens it renders with the processor's own template."""
    tiny = tiny25
    reply = "<thinking>x</thinking>\n<keyframe> 6 </keyframe>"

    async def tags_stream(loop):
        model = _policy(loop)
        await model.ainvoke(_prompt(_frames(2)))
        return model.trajectory.stream

    async def go():  # verl's agent loop keeps the event loop it was made on
        switched = _loop(tiny, ToolServer(tiny.tok, [KEYFRAME]))
        await _policy(switched).bind_tools(DEFS).ainvoke(_prompt(_frames(1)))
        used = chat_template_kwargs(switched.continuous_token_builder)
        switched.server_manager = ToolServer(tiny.tok, [reply])
        return used, await tags_stream(switched), await tags_stream(_loop(tiny, ToolServer(tiny.tok, [reply])))

    used, on_switched, on_fresh = asyncio.run(go())
    assert used == {"chat_template": tools_chat_template()}
    assert on_switched == on_fresh


def test_later_calls_may_describe_the_same_tools_anew_but_not_change_them(tiny25):
    """With Qwen2.5-VL's pixel answers the graph describes the answer tool on the keyframe's
    grid once one was picked; the rollout keeps the tools its system turn rendered (the policy
    cannot see any other), and only a call with other tools is refused."""
    tiny = tiny25
    first, later = tool_definitions("qwen25", FRAME_PX, True), tool_definitions("qwen25", KEYFRAME_PX, True)
    assert first != later
    server = ToolServer(tiny.tok, [KEYFRAME, ANSWER, ANSWER])

    async def go():
        model = _policy(_loop(tiny, server))
        messages = _prompt(_frames(1))
        msg = await model.bind_tools(first).ainvoke(messages)
        call_id = tool_calls_in_order(msg)[0]["id"]
        messages += [msg, *tool_observation(call_id, "frame 6", [], "inside")]
        second = await model.bind_tools(later).ainvoke(messages)
        messages += [second, *tool_observation(tool_calls_in_order(second)[0]["id"], "again", [], "inside")]
        with pytest.raises(ValueError, match="fixed by its first call"):
            await model.bind_tools(later[-1:]).ainvoke(messages)
        return model, second

    model, second = asyncio.run(go())
    assert second.tool_calls[0]["name"] == "answer" and model.trajectory.tools == first
    assert len(server.calls) == 2


def test_a_template_without_tools_that_ours_does_not_extend_is_refused(tiny25):
    """A chat template that renders no tools and is not the Qwen2.5-VL one (here our reduced
    test template, given as verl's data.apply_chat_template_kwargs.chat_template): a rollout
    would train a policy that never saw its tools, so the first call says so instead."""
    tiny = tiny25
    server = ToolServer(tiny.tok, [KEYFRAME])

    async def go():
        loop = _loop(tiny, server, {"chat_template": CHAT_TEMPLATE})
        return await _policy(loop).bind_tools(DEFS).ainvoke(_prompt(_frames(1)))

    with pytest.raises(ValueError, match="renders tools"):
        asyncio.run(go())
    assert server.calls == []


# ------------------------------------------------------------------ text format and reward


def test_tool_call_text_parsing():
    """Qwen's ``<tool_call>`` blocks read as LangChain reads a provider's calls: valid ones
    as ``tool_calls``, the others as ``invalid_tool_calls`` with the reason, in order."""
    text = ("thinking\n" + _call("keyframe", {"index": 3}) + "\n<tool_call>\n{bad json\n</tool_call>"
            + '\n<tool_call>\n{"name": "answer", "arguments": "{\\"keyframe\\": 3}"}\n</tool_call>'
            + "\n<tool_call>\n{\"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"text_search\"")
    p = parse_tool_call_text(text, id_prefix="c")
    assert p.content == "thinking"
    assert [(c["name"], c["args"], c["id"]) for c in p.tool_calls] == [("keyframe", {"index": 3}, "c_0"),
                                                                        ("answer", {"keyframe": 3}, "c_2")]
    assert [(c["id"], c["name"]) for c in p.invalid_tool_calls] == [("c_1", None), ("c_3", None),
                                                                     ("c_4", "text_search")]
    assert "not valid JSON" in p.invalid_tool_calls[0]["error"] and "name" in p.invalid_tool_calls[1]["error"]
    msg = AIMessage(content=p.content, tool_calls=p.tool_calls, invalid_tool_calls=p.invalid_tool_calls)
    assert msg.tool_calls[0]["name"] == "keyframe"
    assert parse_tool_call_text("no calls here").content == "no calls here"


GT = json.dumps({"6": {"bbox_2d": [400, 480, 560, 720], "point_2d": [480, 600], "max_conn_area": 0.8}})


def test_reward_reads_tool_call_answers():
    """A tools-mode response earns what the same actions earn as tags."""
    tools = (SEARCH + "user\n<tool_response>\n1. (Title: x) " + _call("answer", {"keyframe": 1}) + "\n</tool_response>\n"
             + KEYFRAME + "user\n<tool_response>\nframe 6\n</tool_response>\n" + ANSWER)
    tags = ('<thinking>a</thinking>\n<search>{"name": "text_search", "query": "Zephyr Prize 2030 winner"}</search>'
            "<information>x</information><thinking>b</thinking>\n<keyframe> 6 </keyframe>"
            '<thinking>c</thinking>\n<answer>{"bbox_2d": [400, 480, 560, 720], "point_2d": [480, 600]}</answer>')
    r_tools, r_tags = compute_score("s", tools, GT), compute_score("s", tags, GT)
    for k in ("iou_score", "box_l1_score", "point_l1_score", "keyframe_score", "format_score", "tp_score",
              "process_score", "score", "num_search"):
        assert r_tools[k] == r_tags[k], k
    assert r_tools["score"] == pytest.approx(4.8)
    # the answer's own keyframe decides the frame; a wrong frame scores no outcome
    wrong = KEYFRAME + _call("answer", {"keyframe": 2, "bbox_2d": [400, 480, 560, 720], "point_2d": [480, 600]})
    r = compute_score("s", wrong, GT)
    assert r["iou_score"] == 0.0 and r["format_score"] == 1.0
    # without a keyframe argument the first keyframe call's frame is used, but the format fails
    no_kf = KEYFRAME + _call("answer", {"bbox_2d": [400, 480, 560, 720], "point_2d": [480, 600]})
    r = compute_score("s", no_kf, GT)
    assert r["iou_score"] == 1.0 and r["format_score"] == 0.0
    # malformed JSON in the answer: no outcome, no format; searches still count
    bad = SEARCH + KEYFRAME + '<tool_call>\n{"name": "answer", "arguments": {"keyframe": 6,\n</tool_call>'
    r = compute_score("s", bad, GT)
    assert (r["iou_score"], r["format_score"], r["score"]) == (0.0, 0.0, 0.0)
    assert r["tp_score"] == pytest.approx(1 - 0.3) and r["num_search"] == 1.0
    # the row may name the reading: a tags row ignores tool calls
    assert compute_score("s", SEARCH + KEYFRAME + ANSWER, GT, {"protocol": "tags"})["score"] == 0.0


def test_tag_reading_unchanged_next_to_tool_calls():
    """A response with the published tags is read by the published rules even if a tool-call
    block appears in it."""
    tags = ('<thinking>b</thinking>\n<keyframe> 6 </keyframe>' + _call("answer", {"keyframe": 6})
            + '<thinking>c</thinking>\n<answer>{"bbox_2d": [400, 480, 560, 720], "point_2d": [480, 600]}</answer>')
    r = compute_score("s", tags, GT)
    assert r["format_score"] == 1.0 and r["iou_score"] == 1.0 and r["num_search"] == 0.0


# ------------------------------------------------------------------ through the graph


SHOWN = [0, 2, 4, 6, 8, 11]


def test_agent_loop_rolls_out_tools_mode_through_the_graph(tiny, scene_dir, kb_dir, monkeypatch):
    """The verl agent loop with ``protocol: tools`` (a config setting): the graph binds its
    tools to the policy, routes on its tool calls and ends with stop reason ``answer``; the
    trajectory is the template's render of the final conversation with the tools."""
    server = ToolServer(tiny.tok, [SEARCH, KEYFRAME, ANSWER])
    frames = [str(scene_dir / "frames" / f"{i:05d}.jpg") for i in SHOWN]
    info = {"question": "the blue square", "frames": frames, "coord_style": "qwen3", "frame_size": FRAME_PX}

    async def go():
        cfg = OmegaConf.create({
            "actor_rollout_ref": {"rollout": {"prompt_length": 8192, "response_length": 4096,
                                              "multi_turn": {"max_tool_response_length": 2048}}},
            "data": {"apply_chat_template_kwargs": {}, "mm_processor_kwargs": {}},
        })
        loop = SegResearchAgentLoop(
            trainer_config=DictConfigWrap(cfg), server_manager=server, tokenizer=tiny.tok, processor=tiny.proc,
            dataset_cls=RLHFDataset, data_config=DictConfigWrap(cfg.data), hf_model_type=tiny.family,
            name=AGENT_NAME, protocol="tools", search="local", kb=str(kb_dir), frame_size=FRAME_PX,
            keyframe_size=KEYFRAME_PX,
        )
        return await loop.run({"temperature": 1.0, "logprobs": True},
                              raw_prompt=[{"role": "user", "content": "the blue square"}], extra_info=info)

    seen = {}
    original = SegResearchAgentLoop._output

    def capture(self, model, final, seconds):
        seen["traj"], seen["loop"] = model.trajectory, model.agent_loop
        return original(self, model, final, seconds)

    monkeypatch.setattr(SegResearchAgentLoop, "_output", capture)
    out = asyncio.run(go())
    ex = out.extra_fields
    assert ex["stop_reason"] == "answer", ex
    assert ex["answer"] == {"keyframe": 6, "bbox_2d": [400, 480, 560, 720], "point_2d": [480, 600]}
    assert ex["num_search"] == 1
    ids = out.prompt_ids + out.response_ids
    assert "# Tools" in tiny.tok.decode(out.prompt_ids) and "<tool_response>" in tiny.tok.decode(out.response_ids)
    gen = [t for t, m in zip(out.response_ids, out.response_mask, strict=True) if m == 1]
    assert gen == [t for turn in server.returned for t in turn]
    images = out.multi_modal_data["images"]
    assert len(images) == len(SHOWN) + 1
    for c in server.calls:
        assert ids[: len(c["prompt_ids"])] == c["prompt_ids"]
    t = seen["traj"]
    full_text = tiny.proc.apply_chat_template(t.messages, tools=t.tools, tokenize=False,
                                              **_used_template(tiny, seen["loop"]))
    full = tiny.proc(text=[full_text], images=images, return_tensors="pt")["input_ids"][0].tolist()
    assert ids == full[: len(ids)] and full[len(ids):] == tiny.tok.encode("\n", add_special_tokens=False)
    # the reward reads the rollout's tool-call answer
    text = tiny.tok.decode(out.response_ids, skip_special_tokens=True)
    gt = {"6": {"bbox_2d": [400, 480, 560, 720], "point_2d": [480, 600], "max_conn_area": 1.0}}
    r = compute_score("Search_RVOS_one-hop", text, json.dumps(gt))
    assert r["iou_score"] == 1.0 and r["format_score"] == 1.0 and r["num_search"] == 1.0


def test_a_verify_round_keeps_the_stream_the_render_of_the_final_conversation(tiny, scene_dir, tmp_path):
    """With ``verify_rounds`` the graph's one tool set (the verify tools included) is in the
    rollout's system turn from the first call, and the verify turns (the pictures of the
    masks answering the answer call, a reasoning tool called there and reminded, then a
    correction) are awaited on the async-only policy and join the stream as rendered."""
    correct = _call("correct_masks", {"frame": 6, "points": [[300, 700]], "labels": [1]})
    server = ToolServer(tiny.tok, [KEYFRAME, ANSWER, KEYFRAME, correct])

    async def go():
        model = _policy(_loop(tiny, server))
        ctx = Context(model=model, protocol="tools", search="none", segmenter="grabcut", verify_rounds=1,
                      coord_style="qwen3", frame_size=FRAME_PX, keyframe_size=FRAME_PX,
                      output_dir=str(tmp_path / "out"))
        out = await graph.ainvoke({"query": "the blue square", "media": str(scene_dir / "frames")}, context=ctx)
        return model, out

    model, out = asyncio.run(go())
    assert out["stop_reason"] == "answer" and not out.get("error"), out.get("error")
    (ev,) = [e for e in out["events"] if e["type"] == "verify"]
    assert ev["decision"] == "correct" and ev["turns"] == 2 and len(out["corrections"]) == 1
    t = model.trajectory
    assert [d["function"]["name"] for d in t.tools] == ["keyframe", "answer", "accept_masks", "correct_masks"]
    assert "accept_masks" in t.messages[0]["content"]
    assert len(server.calls) == 4 and [m["role"] for m in t.messages].count("assistant") == 4
    used = _used_template(tiny, model.agent_loop)
    text = tiny.proc.apply_chat_template(t.messages, tools=t.tools, tokenize=False, **used)
    full = tiny.proc(text=[text], images=t.images, return_tensors="pt")["input_ids"][0].tolist()
    stream = t.stream
    assert stream == full[: len(stream)] and full[len(stream):] == tiny.tok.encode("\n", add_special_tokens=False)
    assert len(t.images) == len(out["frame_ids"]) + 1 + len(ev["frames"])  # frames, keyframe, the masks
    gen = [tok for tok, m in zip(t.response_ids, t.mask, strict=True) if m == 1]
    assert gen == [tok for ids in server.returned for tok in ids]
    assert "keyframe cannot be called while you check the masks" in tiny.tok.decode(t.response_ids)
