"""The verl agent loop on tiny random-weight Qwen3-VL and Qwen2.5-VL: token exactness, masks,
images, budgets, failures, GRPO advantages and registration.

Each model is built like the released checkpoint (published chat template, tokenizer added
tokens and image-processor pixel limits), and the loop runs at the published recipe's sizes
(frames 448 px, keyframe 864 px), so images expand to the token counts a real run sees.

A fake rollout server stands in for vLLM: it answers with scripted token sequences (the
tokenisation of scripted turns), applying stop strings the way vLLM does (the token that
completes a stop string is the last one returned) and the per-call ``max_tokens``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("verl")

from omegaconf import OmegaConf  # noqa: E402
from verl.experimental.agent_loop.agent_loop import (  # noqa: E402
    AgentLoopWorker,
    DictConfigWrap,
)
from verl.utils.dataset.rl_dataset import RLHFDataset  # noqa: E402
from verl.workers.rollout.replica import TokenOutput  # noqa: E402

from segresearch.agents.context import Context  # noqa: E402
from segresearch.compat.verl import agent_loop_registry  # noqa: E402
from segresearch.core import shared_cache  # noqa: E402
from segresearch.rl.agent_loop import AGENT_NAME, SegResearchAgentLoop, refuse_unrollable  # noqa: E402
from segresearch.rl.reward import compute_score  # noqa: E402
from segresearch.testing.tiny_vlm import (  # noqa: E402
    build_tiny_qwen_vl,
    install_video_processor_stub,
    published_template,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SHOWN = [0, 2, 4, 6, 8, 11]
FAMILIES = ("qwen3_vl", "qwen2_5_vl")
FRAME_PX, KEYFRAME_PX = 448, 864  # the published recipe's frame and keyframe sizes
# <|image_pad|> tokens per image under the published pixel limits: one token per merged
# (patch·2)² square, sides rounded to a multiple of it (Qwen3-VL 32 px, Qwen2.5-VL 28 px).
PUBLISHED_TOKENS = {"qwen3_vl": {FRAME_PX: 14 * 14, KEYFRAME_PX: 27 * 27},
                    "qwen2_5_vl": {FRAME_PX: 16 * 16, KEYFRAME_PX: 31 * 31}}


def _tiny(tmp_path_factory, family: str) -> SimpleNamespace:
    from verl.utils import hf_processor, hf_tokenizer

    install_video_processor_stub()
    path = build_tiny_qwen_vl(tmp_path_factory.mktemp(f"tiny_rl_{family}"), family,
                              pixels="published", template="published")
    tok = hf_tokenizer(str(path))
    proc = hf_processor(str(path))
    assert proc is not None
    assert proc.chat_template == published_template(family)  # verl renders with this one
    return SimpleNamespace(path=path, tok=tok, proc=proc, family=family,
                           frame_size=FRAME_PX, keyframe_size=KEYFRAME_PX)


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    """Published template, tokenizer and pixel limits; Qwen3-VL first."""
    return _tiny(tmp_path_factory, request.param)


class FakeServer:
    """Scripted turns per request id, cut like vLLM cuts at stop strings and max_tokens."""

    def __init__(self, tok, scripts, on_call=None, latency: float = 0.0):
        self.tok, self.scripts, self.on_call, self.latency = tok, scripts, on_call, latency
        self.calls: list[dict] = []
        self.turn: dict[str, int] = {}
        self.returned: dict[str, list[list[int]]] = {}

    async def generate(self, request_id, *, prompt_ids, sampling_params, image_data=None, **kw):
        i = self.turn.get(request_id, 0)
        self.turn[request_id] = i + 1
        self.calls.append({"request_id": request_id, "prompt_ids": list(prompt_ids),
                           "params": dict(sampling_params), "images": list(image_data or [])})
        if self.on_call:
            self.on_call(i)
        if self.latency:
            await asyncio.sleep(self.latency)
        scripts = self.scripts(request_id) if callable(self.scripts) else self.scripts
        text = scripts[i]
        ids = self.tok.encode(text, add_special_tokens=False)
        stops = sampling_params.get("stop") or []
        cut = len(ids)
        for k in range(1, len(ids) + 1):
            if any(s in self.tok.decode(ids[:k]) for s in stops):
                cut = k
                break
        ids = ids[:cut]
        if cut == len(self.tok.encode(text, add_special_tokens=False)) and not any(s in text for s in stops):
            ids = ids + [self.tok.convert_tokens_to_ids("<|im_end|>")]  # natural end of turn
        ids = ids[: sampling_params["max_tokens"]]
        self.returned.setdefault(request_id, []).append(ids)
        return TokenOutput(token_ids=ids, log_probs=[-0.01 * (j + 1) for j in range(len(ids))],
                           stop_reason="completed", extra_fields={"min_global_steps": 7, "max_global_steps": 7})


def make_loop(tiny, server, response_length=2048, observation_length=2048, **settings):
    cfg = OmegaConf.create({
        "actor_rollout_ref": {"rollout": {"prompt_length": 8192, "response_length": response_length,
                                          "multi_turn": {"max_tool_response_length": observation_length}}},
        "data": {"apply_chat_template_kwargs": {}, "mm_processor_kwargs": {}},
    })
    settings.setdefault("search", "none")
    settings.setdefault("frame_size", tiny.frame_size)
    settings.setdefault("keyframe_size", tiny.keyframe_size)
    return SegResearchAgentLoop(
        trainer_config=DictConfigWrap(cfg), server_manager=server, tokenizer=tiny.tok,
        processor=tiny.proc, dataset_cls=RLHFDataset, data_config=DictConfigWrap(cfg.data),
        hf_model_type=tiny.family, name=AGENT_NAME, **settings,
    )


def row(scene_dir: Path, question="the blue square", steps=None, frame_size=FRAME_PX):
    frames = [str(scene_dir / "frames" / f"{i:05d}.jpg") for i in SHOWN]
    return {"raw_prompt": [{"role": "user", "content": question}], "data_source": "Search_RVOS_one-hop",
            "extra_info": {"question": question, "frames": frames, "steps": steps, "coord_style": "qwen3",
                           "frame_size": frame_size}}


SEARCH = '<thinking>who is it</thinking>\n<search>{"name": "text_search", "query": "Zephyr Prize 2030 winner"}</search>'
KEYFRAME = "<thinking>look closer</thinking>\n<keyframe> 6 </keyframe>"
ANSWER = '<thinking>there</thinking>\n<answer>{"bbox_2d": [400, 480, 560, 720], "point_2d": [480, 600]}</answer>'


def run_one(tiny, scene_dir, scripts, *, kb=None, response_length=2048, on_call=None, **settings):
    async def go():
        server = FakeServer(tiny.tok, scripts, on_call=on_call)
        if kb is not None:
            settings.update(search="local", kb=str(kb))
        loop = make_loop(tiny, server, response_length=response_length, **settings)
        out = await loop.run({"temperature": 1.0, "top_p": 1.0, "logprobs": True},
                             **row(scene_dir, frame_size=tiny.frame_size))
        return out, server

    return asyncio.run(go())


def render_full(tiny, messages, images):
    text = tiny.proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    return tiny.proc(text=[text], images=images or None, return_tensors="pt")["input_ids"][0].tolist()


def test_token_exact_multimodal_trajectory(tiny, scene_dir, kb_dir):
    out, server = run_one(tiny, scene_dir, [SEARCH, KEYFRAME, ANSWER], kb=kb_dir)
    assert out.extra_fields["stop_reason"] == "answer", out.extra_fields
    assert out.extra_fields["answer"] == {"keyframe": 6, "bbox_2d": [400, 480, 560, 720], "point_2d": [480, 600]}
    assert out.extra_fields["observations_truncated"] == 0
    ids = out.prompt_ids + out.response_ids
    images = out.multi_modal_data["images"]
    assert [im.size for im in images] == [(FRAME_PX, FRAME_PX)] * 6 + [(KEYFRAME_PX, KEYFRAME_PX)]
    # (1) the ids are the processor's rendering (published template) of the final
    # conversation wherever the model did not generate: the whole conversation, re-rendered,
    # equals the stream (+ the final "\n" after the last <|im_end|>)
    full = render_full(tiny, _LAST["messages"], images)
    assert ids == full[: len(ids)] and full[len(ids):] == tiny.tok.encode("\n", add_special_tokens=False)
    # the prompt is exactly what the first generate call saw
    assert server.calls[0]["prompt_ids"] == out.prompt_ids
    # each call saw the stream so far, and the images whose placeholders it holds
    for call in server.calls:
        assert ids[: len(call["prompt_ids"])] == call["prompt_ids"]
        assert _vision_blocks(tiny, call["prompt_ids"]) == len(call["images"])
    # (2) mask 1 marks exactly the generated tokens, in order
    gen = [t for t, m in zip(out.response_ids, out.response_mask, strict=True) if m == 1]
    assert gen == [t for turn in server.returned.values() for ids_ in turn for t in ids_]
    assert len(out.response_logprobs) == len(out.response_ids)
    assert all(lp == 0.0 for lp, m in zip(out.response_logprobs, out.response_mask, strict=True) if m == 0)
    # (3) one image per vision block, in order, each expanded to the published token count
    assert _vision_blocks(tiny, ids) == len(images)
    grid = tiny.proc.image_processor(images=images, return_tensors="pt")["image_grid_thw"]
    per_image = (grid.prod(dim=1) // 4).tolist()
    expected = PUBLISHED_TOKENS[tiny.family]
    assert per_image == [expected[FRAME_PX]] * 6 + [expected[KEYFRAME_PX]]
    assert _pad_runs(tiny, ids) == per_image
    assert len(out.prompt_ids) > 6 * expected[FRAME_PX] and out.response_ids.count(_pad(tiny)) == expected[KEYFRAME_PX]
    # stop strings went to the server with the budget
    p = server.calls[0]["params"]
    assert p["stop"] == ["</search>", "</keyframe>"] and p["include_stop_str_in_output"] is True
    assert p["max_tokens"] <= 2048 and p["temperature"] == 1.0
    assert out.extra_fields["min_global_steps"] == 7 and out.num_turns == 6
    # the search observation reached the model as a user turn
    assert "<information>1. (Title: Zephyr Prize 2030)" in tiny.tok.decode(out.response_ids)


def test_published_templates_render_the_graph_turns(tiny, scene_dir):
    """The graph's messages take the plain branches of both published templates: the graph
    always sends a system message (so Qwen2.5-VL adds no default one), and the Qwen3-VL
    Instruct template renders assistant turns verbatim (no <think> handling)."""
    out, _ = run_one(tiny, scene_dir, [KEYFRAME, ANSWER])
    msgs = _LAST["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    text = tiny.proc.apply_chat_template(msgs, tokenize=False)
    assert text.count("<|im_start|>system\n") == 1 and "You are a helpful assistant." not in text
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 7
    assert "<|im_start|>assistant\n" + KEYFRAME + "<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n" + ANSWER + "<|im_end|>\n")
    # the trajectory's first tokens are the system turn, rendered as the template renders it
    system = tiny.tok.encode("<|im_start|>system\n" + msgs[0]["content"] + "<|im_end|>\n",
                             add_special_tokens=False)
    assert out.prompt_ids[: len(system)] == system


def _vision_blocks(tiny, ids):
    return sum(1 for t in ids if t == tiny.tok.convert_tokens_to_ids("<|vision_start|>"))


def _pad(tiny):
    return tiny.tok.convert_tokens_to_ids("<|image_pad|>")


def _pad_runs(tiny, ids):
    """Lengths of the <|image_pad|> runs, in order."""
    runs, n = [], 0
    for t in [*ids, -1]:
        if t == _pad(tiny):
            n += 1
        elif n:
            runs, n = [*runs, n], 0
    return runs


_LAST: dict = {}


@pytest.fixture(autouse=True)
def _capture_messages(monkeypatch):
    """Keep the canonical message list of the last trajectory for the exactness check."""
    import segresearch.rl.agent_loop as al

    original = al.SegResearchAgentLoop._output

    def capture(self, model, final, seconds):
        _LAST["messages"] = list(model.trajectory.messages)
        _LAST["records"] = list(model.trajectory.records)
        return original(self, model, final, seconds)

    monkeypatch.setattr(al.SegResearchAgentLoop, "_output", capture)


def test_verl_postprocessing_accepts_the_output(tiny, scene_dir):
    out, _ = run_one(tiny, scene_dir, [KEYFRAME, ANSWER])
    ids = torch.tensor([out.prompt_ids + out.response_ids])
    fake = SimpleNamespace(processor=tiny.proc, tokenizer=tiny.tok, mm_processor_kwargs={},
                           _get_mm_processor_kwargs=lambda audios=None: {})
    mm = AgentLoopWorker._compute_multi_modal_inputs(fake, out, ids)
    assert mm["image_grid_thw"].shape[0] == len(out.multi_modal_data["images"]) == 7
    expected = PUBLISHED_TOKENS[tiny.family]
    assert (mm["image_grid_thw"].prod(dim=1) // 4).tolist() == [expected[FRAME_PX]] * 6 + [expected[KEYFRAME_PX]]
    pos = AgentLoopWorker._compute_position_ids(fake, ids, torch.ones_like(ids), mm)
    assert pos.shape == (1, 4, ids.shape[1])
    # M-RoPE: the text positions after the images advance by less than the token count
    assert int(pos[0, 1:].max()) < ids.shape[1] - 1
    d = out.as_dict()
    assert d["responses"].shape == d["response_mask"].shape == d["rollout_log_probs"].shape


def test_response_budget_ends_with_max_tokens(tiny, scene_dir):
    long_search = "<thinking>" + "hmm " * 60 + '</thinking><search>{"name": "text_search", "query": "x"}</search>'
    out, server = run_one(tiny, scene_dir, [long_search] * 6, response_length=300)
    assert out.extra_fields["stop_reason"] == "max_tokens"
    assert len(out.response_ids) <= 300 and len(out.response_mask) == len(out.response_ids)
    assert all(c["params"]["max_tokens"] <= 300 for c in server.calls)
    # whatever was committed is consistent: one image per vision block
    assert _vision_blocks(tiny, out.prompt_ids + out.response_ids) == len(out.multi_modal_data["images"])


def test_mask_overlong_loss_zeroes_a_trajectory_cut_by_the_response_budget(tiny, scene_dir):
    long_search = "<thinking>" + "hmm " * 60 + '</thinking><search>{"name": "text_search", "query": "x"}</search>'
    plain, _ = run_one(tiny, scene_dir, [long_search] * 6, response_length=300)
    masked, _ = run_one(tiny, scene_dir, [long_search] * 6, response_length=300,
                        mask_overlong_loss=True)
    for out in (plain, masked):
        assert out.extra_fields["stop_reason"] == "max_tokens"
    assert sum(plain.response_mask) > 0 and plain.extra_fields["loss_masked"] is False
    # the same tokens, no loss, the stop reason kept
    assert masked.response_ids == plain.response_ids
    assert len(masked.response_mask) == len(masked.response_ids)
    assert sum(masked.response_mask) == 0 and masked.extra_fields["loss_masked"] is True


def test_mask_overlong_loss_keeps_finished_trajectories(tiny, scene_dir):
    out, _ = run_one(tiny, scene_dir, [KEYFRAME, ANSWER], mask_overlong_loss=True)
    assert out.extra_fields["stop_reason"] == "answer"
    assert sum(out.response_mask) > 0 and out.extra_fields["loss_masked"] is False


def test_nothing_found_is_the_models_choice_to_finish(tiny, scene_dir):
    """[0, 0, 0, 0] ends the rollout as an answer (the published loop's "model chose to
    finish"), trained on like any answer; only an unreadable answer is no_action."""
    nothing = '<thinking>not here</thinking>\n<answer>{"bbox_2d": [0, 0, 0, 0], "point_2d": [0, 0]}</answer>'
    out, _ = run_one(tiny, scene_dir, [KEYFRAME, nothing])
    ex = out.extra_fields
    assert ex["stop_reason"] == "answer" and ex["loss_masked"] is False and sum(out.response_mask) > 0
    assert ex["answer"] == {"keyframe": 6, "bbox_2d": [0, 0, 0, 0], "point_2d": [0, 0]}
    assert "all zeros" in ex["answer_note"]
    bad = '<thinking>hm</thinking>\n<answer>{"bbox_2d": [0, 0]}</answer>'
    out, _ = run_one(tiny, scene_dir, [KEYFRAME, bad])
    assert out.extra_fields["stop_reason"] == "no_action" and out.extra_fields["answer_note"] == ""


def test_observation_budget_truncates_text_not_images(tiny, scene_dir, kb_dir):
    out, _ = run_one(tiny, scene_dir, [SEARCH, KEYFRAME, ANSWER], kb=kb_dir, max_observation_tokens=40)
    assert out.extra_fields["stop_reason"] == "answer"
    # the search result's text is cut; the keyframe's placeholders alone exceed the budget,
    # so that image is dropped whole (never cut through its placeholder tokens)
    cut = [(r.truncated, r.images_dropped) for r in _LAST["records"] if r.kind == "observation"]
    assert cut[0] == (True, 0) and cut[1][1] == 1, cut
    assert out.extra_fields["observations_truncated"] == 2
    assert "[truncated]" in tiny.tok.decode(out.response_ids)
    assert len(out.multi_modal_data["images"]) == 6
    assert _vision_blocks(tiny, out.prompt_ids + out.response_ids) == 6
    assert _pad_runs(tiny, out.prompt_ids + out.response_ids) == [PUBLISHED_TOKENS[tiny.family][FRAME_PX]] * 6


def test_observation_budget_drops_an_image_that_alone_exceeds_it(tiny, scene_dir):
    budget = PUBLISHED_TOKENS[tiny.family][KEYFRAME_PX]  # the keyframe's placeholders alone fill it
    out, _ = run_one(tiny, scene_dir, [KEYFRAME, ANSWER], max_observation_tokens=budget)
    assert out.extra_fields["stop_reason"] == "answer"
    assert out.extra_fields["observations_truncated"] == 1
    assert len(out.multi_modal_data["images"]) == 6  # the frames only
    assert _vision_blocks(tiny, out.prompt_ids + out.response_ids) == 6
    assert "[image omitted" in tiny.tok.decode(out.response_ids)


def test_failing_tool_gives_a_masked_trajectory(tiny, scene_dir, tmp_path):
    import shutil

    frames = tmp_path / "frames"
    shutil.copytree(scene_dir / "frames", frames)

    def corrupt(turn):
        if turn == 0:  # the disk fails after the frames were read
            (frames / "00006.jpg").write_bytes(b"broken")

    async def go():
        server = FakeServer(tiny.tok, [KEYFRAME, ANSWER], on_call=corrupt)
        loop = make_loop(tiny, server)
        r = row(scene_dir, frame_size=tiny.frame_size)
        r["extra_info"]["frames"] = [str(frames / f"{i:05d}.jpg") for i in SHOWN]
        return await loop.run({"temperature": 1.0}, **r)

    out = asyncio.run(go())
    assert out.extra_fields["stop_reason"] == "error:media"
    assert out.extra_fields["error"]
    assert sum(out.response_mask) == 0 and len(out.response_ids) > 0


def test_bad_row_is_masked_not_raised(tiny, scene_dir):
    async def go():
        loop = make_loop(tiny, FakeServer(tiny.tok, [ANSWER]))
        return await loop.run({"temperature": 1.0}, raw_prompt=[], extra_info={})

    out = asyncio.run(go())
    assert out.extra_fields["stop_reason"].startswith("error")
    assert out.response_mask == [0] and out.multi_modal_data is None


def test_group_of_eight_rollouts_to_grpo_advantages(tiny, scene_dir, kb_dir):
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    gt = {"6": {"bbox_2d": [400, 480, 560, 720], "point_2d": [480, 600], "area": 1.0, "max_conn_area": 1.0}}
    variants = [[SEARCH, KEYFRAME, ANSWER], [KEYFRAME, ANSWER], ["<thinking>no idea</thinking>"],
                [KEYFRAME, ANSWER.replace("400", "10")]] * 2

    async def go():
        ids = iter(range(8))
        plan = {}

        def scripts(request_id):
            if request_id not in plan:
                plan[request_id] = variants[next(ids)]
            return plan[request_id]

        server = FakeServer(tiny.tok, scripts)
        loop = make_loop(tiny, server, search="local", kb=str(kb_dir))
        r = row(scene_dir, steps=["Search who won the Zephyr Prize 2030", "Find the blue square"],
                frame_size=tiny.frame_size)
        return await asyncio.gather(*(loop.run({"temperature": 1.0}, **r) for _ in range(8)))

    outs = asyncio.run(go())
    scores = []
    for o in outs:
        text = tiny.tok.decode(o.response_ids, skip_special_tokens=True)
        r = compute_score("Search_RVOS_one-hop", text, json.dumps(gt), {"steps": ["Search who won the Zephyr Prize 2030"]})
        scores.append(r["score"])
    assert len(set(scores)) > 1 and max(scores) > 3
    R = max(len(o.response_ids) for o in outs)
    rewards = torch.zeros(8, R)
    mask = torch.zeros(8, R)
    for i, o in enumerate(outs):
        mask[i, : len(o.response_mask)] = torch.tensor(o.response_mask, dtype=torch.float32)
        rewards[i, len(o.response_ids) - 1] = scores[i]
    adv, _ = compute_grpo_outcome_advantage(rewards, mask, np.array(["q"] * 8, dtype=object))
    assert torch.isfinite(adv).all()
    assert adv[int(np.argmax(scores))].max() > 0 > adv[int(np.argmin(scores))].min()


def test_agent_loop_is_registered_by_name():
    import hydra

    entry = agent_loop_registry()[AGENT_NAME]
    assert entry["_target_"] == "segresearch.rl.agent_loop.SegResearchAgentLoop"
    assert hydra.utils.get_class(entry["_target_"]) is SegResearchAgentLoop


def test_observations_join_the_stream_without_thread_hops(tiny, scene_dir, kb_dir, monkeypatch):
    """Observations and generated turns are merged with the token builder's own methods on
    the event loop (verl's ct_merge_* wrappers hop to a thread for each, which on a busy
    worker costs more than the merge), and images the media store holds need no thread to
    be looked up. The ids are the same either way (test_token_exact_multimodal_trajectory)."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopBase

    def hop(*a, **k):
        raise AssertionError("a verl executor hop was taken")

    monkeypatch.setattr(AgentLoopBase, "ct_merge_context_msg", hop)
    monkeypatch.setattr(AgentLoopBase, "ct_merge_assistant_token", hop)
    out, server = run_one(tiny, scene_dir, [SEARCH, KEYFRAME, ANSWER], kb=kb_dir)
    assert out.extra_fields["stop_reason"] == "answer", out.extra_fields
    assert len(server.calls) == 3 and len(out.multi_modal_data["images"]) == 7


def test_images_are_read_in_a_thread_only_when_not_in_memory(tiny):
    """Store references held in memory are converted in place; inline data (a decode) or a
    reference the store must remake goes to the executor. Both give the same chat message."""
    from langchain_core.messages import HumanMessage
    from PIL import Image

    from segresearch.agents.content import image_block, media_block, text_block
    from segresearch.rl import verl_model

    class Loop:
        def __init__(self):
            self.hops = 0
            self.loop = self

        async def run_in_executor(self, executor, fn):
            self.hops += 1
            return fn()

    img = Image.new("RGB", (40, 30), (10, 200, 30))
    resident = HumanMessage(content=[text_block("a"), media_block(img)])
    inline = HumanMessage(content=[text_block("a"), image_block(img, fmt="PNG")])
    loop = Loop()
    (msg_a, imgs_a), = asyncio.run(verl_model._converted(loop, [resident]))
    assert loop.hops == 0
    (msg_b, imgs_b), = asyncio.run(verl_model._converted(loop, [inline]))
    assert loop.hops == 1
    assert [p["type"] for p in msg_a["content"]] == [p["type"] for p in msg_b["content"]] == ["text", "image"]
    assert np.array_equal(np.asarray(imgs_a[0]), np.asarray(imgs_b[0]))


# ------------------------------------------------------------------ the published budget
# verl-tool's loop (which trained the published model): every generate call may produce at
# most min(max_action_length, max_response_length − len(prompt + response so far)) tokens,
# the response counting observation tokens and their image placeholders. Each server call
# receives exactly the stream so far as its prompt_ids, so the rule is checkable per call.

LONG_SEARCH = "<thinking>" + "hmm " * 60 + '</thinking><search>{"name": "text_search", "query": "x"}</search>'


def _published(tiny, scene_dir, scripts, response_length, **settings):
    settings.setdefault("max_action_tokens", 4096)
    return run_one(tiny, scene_dir, scripts, response_length=response_length,
                   response_budget="published", **settings)


def test_published_budget_counts_the_prompt_and_every_response_token(tiny, scene_dir, kb_dir):
    R = 4096
    out, server = _published(tiny, scene_dir, [SEARCH, KEYFRAME, ANSWER], R, kb=kb_dir)
    assert out.extra_fields["stop_reason"] == "answer", out.extra_fields
    P = len(out.prompt_ids)
    stream = out.prompt_ids + out.response_ids
    for call in server.calls:
        so_far = len(call["prompt_ids"])  # prompt + response so far, observations included
        assert call["prompt_ids"] == stream[:so_far]
        assert call["params"]["max_tokens"] == min(4096, R - so_far)
    # the first call may generate R − prompt tokens, not R: the prompt eats into the budget
    assert server.calls[0]["params"]["max_tokens"] == R - P
    # the later calls' budgets shrank by the observations too (search text, keyframe pads)
    obs = [r.tokens for r in _LAST["records"] if r.kind == "observation"]
    gen = [len(ids) for ids in next(iter(server.returned.values()))]
    assert server.calls[1]["params"]["max_tokens"] == R - P - gen[0] - obs[0]
    assert obs[1] > PUBLISHED_TOKENS[tiny.family][KEYFRAME_PX]


def test_full_budget_counts_the_response_only(tiny, scene_dir):
    R = 4096
    out, server = run_one(tiny, scene_dir, [KEYFRAME, ANSWER], response_length=R)
    P = len(out.prompt_ids)
    assert [c["params"]["max_tokens"] for c in server.calls] == [R - (len(c["prompt_ids"]) - P)
                                                                  for c in server.calls]


def test_published_budget_ends_with_max_tokens_within_prompt_plus_response(tiny, scene_dir):
    R = 2300  # the Qwen3-VL prompt is about 1.4k tokens, the Qwen2.5-VL one about 2k
    out, server = _published(tiny, scene_dir, [LONG_SEARCH] * 7, R)
    assert out.extra_fields["stop_reason"] == "max_tokens", out.extra_fields
    assert len(out.prompt_ids) + len(out.response_ids) <= R
    assert all(c["params"]["max_tokens"] == min(4096, R - len(c["prompt_ids"])) for c in server.calls)
    # under the full budget the same trajectory gets further before the budget ends it
    full, _ = run_one(tiny, scene_dir, [LONG_SEARCH] * 7, response_length=R)
    assert len(full.response_ids) > len(out.response_ids)


def test_max_action_tokens_caps_every_turn_and_a_capped_turn_ends_the_run(tiny, scene_dir):
    out, server = _published(tiny, scene_dir, [KEYFRAME, ANSWER], 4096, max_action_tokens=8)
    assert [c["params"]["max_tokens"] for c in server.calls] == [8]
    assert server.returned and len(next(iter(server.returned.values()))[0]) == 8
    # the cut turn has no action: the run ends as verl-tool ends it (finish reason length)
    assert out.extra_fields["stop_reason"] == "max_tokens"
    assert sum(out.response_mask) == 8


def test_budget_settings_are_checked(tiny):
    with pytest.raises(ValueError, match="response_budget"):
        make_loop(tiny, FakeServer(tiny.tok, []), response_budget="everything")
    with pytest.raises(ValueError, match="max_action_tokens"):
        make_loop(tiny, FakeServer(tiny.tok, []), max_action_tokens=0)


def test_context_settings_come_from_the_config(tiny, scene_dir):
    """Any Context field a config entry gives reaches every trajectory's Context; a bad
    value stops the loop's construction, and what each trajectory decides is not a setting."""
    loop = make_loop(tiny, FakeServer(tiny.tok, []), max_turns=3, text_topk=5)
    info = row(scene_dir, frame_size=tiny.frame_size)["extra_info"]
    ctx = loop._trajectory_context("replay:unused.json", info["frames"], {"temperature": 0.7}, info)
    assert (ctx.max_turns, ctx.text_topk, ctx.search, ctx.temperature) == (3, 5, "none", 0.7)
    assert (ctx.num_frames, ctx.run_segmentation, ctx.review) == (len(info["frames"]), False, False)
    with pytest.raises(ValueError, match="max_turns"):
        make_loop(tiny, FakeServer(tiny.tok, []), max_turns=0)
    with pytest.raises(ValueError, match="temperature: set by each trajectory"):
        make_loop(tiny, FakeServer(tiny.tok, []), temperature=0.5)


@pytest.mark.parametrize("search", ["none", "local"])
def test_prompt_counter_equals_the_rollout_prompt(tiny, scene_dir, kb_dir, search):
    """The preflight's count of a row's prompt (rl/data.py, images counted from their
    geometry, no pixel decoded) is the length of the prompt the rollout renders."""
    from segresearch.rl.data import PromptCounter

    kb = kb_dir if search == "local" else None
    out, _ = run_one(tiny, scene_dir, [KEYFRAME, ANSWER], kb=kb)
    counter = PromptCounter.from_pretrained(str(tiny.path), use_search=search != "none")
    assert counter.count("the blue square", SHOWN, tiny.frame_size, "qwen3") == len(out.prompt_ids)
    # one more frame is one more label and one more image's placeholders
    more = counter.count("the blue square", [*SHOWN, 12], tiny.frame_size, "qwen3")
    assert more - len(out.prompt_ids) > PUBLISHED_TOKENS[tiny.family][FRAME_PX]


TOOL_KEYFRAME = '<tool_call>\n{"name": "keyframe", "arguments": {"index": 6}}\n</tool_call>'
TOOL_ANSWER = ('<tool_call>\n{"name": "answer", "arguments": {"keyframe": 6, "bbox_2d": [400, 480, 560, 720], '
               '"point_2d": [480, 600]}}\n</tool_call>')


@pytest.mark.parametrize("coord_style", ["qwen3", "qwen25"])
def test_prompt_counter_equals_the_rollout_prompt_in_tools_mode(tiny, scene_dir, kb_dir, coord_style):
    """In ``tools`` mode the preflight counts the tools-mode prompt (our tools system prompt,
    its coordinate sentence about the keyframe, the tool definitions in the system turn, with
    the template the rollout picks: ours on Qwen2.5-VL), and its count is the length of the
    prompt the rollout renders, whether the counter or the row names the protocol."""
    from segresearch.rl.data import PromptCounter

    async def go():
        server = FakeServer(tiny.tok, [TOOL_KEYFRAME, TOOL_ANSWER])
        loop = make_loop(tiny, server, search="local", kb=str(kb_dir), protocol="tools")
        data = row(scene_dir, frame_size=tiny.frame_size)
        data["extra_info"]["coord_style"] = coord_style
        return await loop.run({"temperature": 1.0, "logprobs": True}, **data)

    out = asyncio.run(go())
    assert out.extra_fields["stop_reason"] == "answer", out.extra_fields
    assert "# Tools" in tiny.tok.decode(out.prompt_ids)
    tools = PromptCounter.from_pretrained(str(tiny.path), use_search=True, protocol="tools",
                                          keyframe_size=tiny.keyframe_size)
    assert tools.count("the blue square", SHOWN, tiny.frame_size, coord_style) == len(out.prompt_ids)
    tags = PromptCounter.from_pretrained(str(tiny.path), use_search=True, keyframe_size=tiny.keyframe_size)
    assert tags.count("the blue square", SHOWN, tiny.frame_size, coord_style, "tools") == len(out.prompt_ids)
    assert tags.count("the blue square", SHOWN, tiny.frame_size, coord_style) < len(out.prompt_ids)


# ------------------------------------------------------------------ the prompt of a GRPO group
# verl makes a new agent loop (and token builder) for every sample and the samples start
# together, yet a group's prompt is rendered once per worker.


def test_a_group_renders_its_prompt_once(tiny, scene_dir, monkeypatch):
    renders = []
    from verl.experimental.agent_loop.agent_loop import AgentLoopBase

    real = AgentLoopBase.ct_build_initial_tokens

    async def counting(self, *a, **kw):
        renders.append(id(self))
        await asyncio.sleep(0.05)  # a render takes a while: the siblings start meanwhile
        return await real(self, *a, **kw)

    monkeypatch.setattr(AgentLoopBase, "ct_build_initial_tokens", counting)
    shared_cache.clear("rl.prompt_ids")

    async def group(question: str, n: int = 8):
        server = FakeServer(tiny.tok, [KEYFRAME, ANSWER])
        # one agent loop per sample, as verl's worker builds them
        loops = [make_loop(tiny, server) for _ in range(n)]
        outs = await asyncio.gather(*(lp.run({"temperature": 1.0}, **row(scene_dir, question)) for lp in loops))
        return outs, server

    outs, server = asyncio.run(group("the blue square"))
    assert len(renders) == 1
    first = {}
    for c in server.calls:
        first.setdefault(c["request_id"], tuple(c["prompt_ids"]))
    assert len(first) == 8 and len(set(first.values())) == 1  # every sample began from the same ids
    assert all(o.num_turns >= 2 for o in outs)
    # another question is another prompt; the same one again is a cache hit
    asyncio.run(group("the red circle", n=4))
    asyncio.run(group("the blue square", n=4))
    assert len(renders) == 2


def test_settings_a_rollout_cannot_honour_are_refused_when_the_worker_starts():
    refuse_unrollable(Context(protocol="tools", ask_user=True, ask_user_reply="no further information"))
    with pytest.raises(ValueError, match="verify_rounds: rollouts make no masks"):
        refuse_unrollable(Context(verify_rounds=1))
    with pytest.raises(ValueError, match="ask_user: nobody answers"):
        refuse_unrollable(Context(protocol="tools", ask_user=True))
