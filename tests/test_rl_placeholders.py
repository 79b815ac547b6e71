"""Placeholder counts from geometry equal the HF processor's token ids, image by image.

The rollout answers verl's token builder from each image's size instead of running the image
processor (rl/placeholders.py). These tests hold that answer to the processor's own output on
many sizes and aspect ratios, for Qwen3-VL and Qwen2.5-VL with the released pixel limits, and
check that calls the geometry rule cannot answer exactly still reach the processor.
"""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("verl")

from PIL import Image  # noqa: E402

from segresearch.rl.placeholders import GeometryProcessor, install  # noqa: E402
from segresearch.testing.tiny_vlm import build_tiny_qwen_vl, install_video_processor_stub  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module", params=["qwen3_vl", "qwen2_5_vl"])
def proc(request, tmp_path_factory):
    from verl.utils import hf_processor

    install_video_processor_stub()
    path = build_tiny_qwen_vl(tmp_path_factory.mktemp(f"ph_{request.param}"), request.param, pixels="published")
    return hf_processor(str(path))


def _sizes(n: int = 30, seed: int = 0) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    sizes = [(448, 448), (864, 864), (480, 854), (720, 1280), (1080, 1920), (1, 1), (13, 17),
             (27, 29), (31, 33), (256, 4096), (4096, 256), (3000, 4000), (57, 3000)]
    while len(sizes) < n:
        h = int(np.exp(rng.uniform(np.log(8), np.log(1600))))
        w = int(min(max(8, h * np.exp(rng.uniform(-2.5, 2.5))), 2400))
        sizes.append((h, w))
    return sizes


def _image(h: int, w: int) -> Image.Image:
    return Image.new("RGB", (w, h), (h % 251, w % 241, 7))


def _text(proc, n_images: int) -> str:
    messages = [{"role": "system", "content": "You segment things."},
                {"role": "user", "content": [*({"type": "image"} for _ in range(n_images)),
                                             {"type": "text", "text": "Frame ids 0..n. Find it."}]}]
    return proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_counts_equal_processor_on_many_sizes(proc):
    geo = GeometryProcessor(proc)
    assert geo.supported
    for h, w in _sizes():
        img = _image(h, w)
        text = _text(proc, 1)
        try:
            want = proc(text=[text], images=[img], return_tensors="pt")["input_ids"][0].tolist()
        except ValueError as e:  # the processor refuses extreme aspect ratios: so must we
            with pytest.raises(ValueError):
                geo(text=[text], images=[img], return_tensors="pt")
            assert "ratio" in str(e)
            continue
        got = geo(text=[text], images=[img], return_tensors="pt")["input_ids"][0]
        assert got == want, (h, w)
    assert geo.geometry_calls > 20 and geo.processor_calls == 0


def test_several_images_in_order_and_processor_kwargs(proc):
    geo = GeometryProcessor(proc)
    imgs = [_image(h, w) for h, w in [(448, 448), (864, 600), (100, 300), (64, 64)]]
    text = _text(proc, len(imgs))
    want = proc(text=[text], images=imgs, return_tensors="pt")["input_ids"][0].tolist()
    assert geo(text=[text], images=imgs)["input_ids"][0] == want
    # Pixel limits given per call (verl's mm_processor_kwargs) are the geometry's too.
    kw = {"min_pixels": 28 * 28, "max_pixels": 256 * 28 * 28}
    want = proc(text=[text], images=imgs, return_tensors="pt", **kw)["input_ids"][0].tolist()
    got = geo(text=[text], images=imgs, **kw)["input_ids"][0]
    assert got == want
    pad = proc.image_token_id
    assert got.count(pad) < geo(text=[text], images=imgs)["input_ids"][0].count(pad)


def test_calls_geometry_cannot_answer_go_to_the_processor(proc):
    geo = GeometryProcessor(proc)
    text = _text(proc, 1)
    arr = np.zeros((64, 80, 3), dtype=np.uint8)
    out = geo(text=[text], images=[arr], return_tensors="pt")  # not a PIL image
    assert "pixel_values" in out and geo.processor_calls == 1
    out = geo(text=[text], images=[_image(64, 80)], do_resize=True, return_tensors="pt")  # unknown kwarg
    assert "image_grid_thw" in out and geo.processor_calls == 2
    with pytest.raises(Exception):  # noqa: B017 - two placeholders, one image: whatever the processor raises
        geo(text=[_text(proc, 2)], images=[_image(64, 80)])
    assert geo.geometry_calls == 0


def test_verl_builder_renders_identically_with_geometry(proc):
    """The whole path verl takes (builder → chat template → processor call), both ways."""
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    tok = proc.tokenizer
    family = "qwen3_vl" if type(proc).__name__.startswith("Qwen3") else "qwen2_5_vl"

    def builder():
        return create_continuous_token_builder(tok, hf_model_type=family, chat_template_kwargs={},
                                               mm_processor_kwargs={}, processor=proc)

    class Loop:  # what install() needs of an agent loop
        continuous_token_builder = builder()

    real = builder()
    geo = install(Loop)
    assert isinstance(Loop.continuous_token_builder.processor, GeometryProcessor) and geo is not None
    frames = [_image(448, 448 + 16 * i) for i in range(3)]
    chat = [{"role": "system", "content": "sys"},
            {"role": "user", "content": [*({"type": "image", "image": f} for f in frames),
                                         {"type": "text", "text": "where is it?"}]}]
    want = real.build_initial_tokens(chat, images=frames)
    got = Loop.continuous_token_builder.build_initial_tokens(chat, images=frames)
    assert got == want
    turn = {"role": "assistant", "content": "<keyframe> 1 </keyframe>"}
    obs = {"role": "user", "content": [{"type": "image", "image": _image(864, 700)},
                                       {"type": "text", "text": "the keyframe"}]}
    a = real.merge_context_tokens([*chat, turn], [*chat, turn, obs], want + [1, 2])
    b = Loop.continuous_token_builder.merge_context_tokens([*chat, turn], [*chat, turn, obs], got + [1, 2])
    assert a.token_ids == b.token_ids
    assert geo.geometry_calls >= 2 and geo.processor_calls == 0


def test_rollout_with_geometry_equals_rollout_with_processor(proc, scene_dir, kb_dir):
    """A whole trajectory through SegResearchAgentLoop (frames, a search with its results, a
    keyframe at the published size): identical ids either way, and no processor call at all
    while rolling out with geometry."""
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.workers.rollout.replica import TokenOutput

    from segresearch.rl.agent_loop import SegResearchAgentLoop

    tok = proc.tokenizer
    family = "qwen3_vl" if type(proc).__name__.startswith("Qwen3") else "qwen2_5_vl"
    turns = ['<thinking>who</thinking><search>{"name": "text_search", "query": "Zephyr Prize 2030 winner"}</search>',
             "<thinking>closer</thinking><keyframe> 6 </keyframe>",
             '<thinking>there</thinking><answer>{"bbox_2d": [10, 20, 300, 400], "point_2d": [100, 200]}</answer>']

    class Server:
        def __init__(self):
            self.turn: dict[str, int] = {}

        async def generate(self, request_id, *, prompt_ids, sampling_params, image_data=None, **kw):
            i = self.turn.get(request_id, 0)
            self.turn[request_id] = i + 1
            ids = tok.encode(turns[i], add_special_tokens=False)
            if i == len(turns) - 1:
                ids.append(tok.convert_tokens_to_ids("<|im_end|>"))
            return TokenOutput(token_ids=ids, log_probs=[-0.1] * len(ids), stop_reason="completed")

    cfg = OmegaConf.create({
        "actor_rollout_ref": {"rollout": {"prompt_length": 8192, "response_length": 8192,
                                          "multi_turn": {"max_tool_response_length": 4096}}},
        "data": {"apply_chat_template_kwargs": {}, "mm_processor_kwargs": {}},
    })
    frames = [str(scene_dir / "frames" / f"{i:05d}.jpg") for i in (0, 3, 6, 9)]
    kwargs = {"raw_prompt": [], "extra_info": {"question": "the emblem of the Zephyr Prize 2030 winner",
                                               "frames": frames, "frame_size": 448}}

    def run(mode: str):
        async def go():
            loop = SegResearchAgentLoop(
                trainer_config=DictConfigWrap(cfg), server_manager=Server(), tokenizer=tok, processor=proc,
                dataset_cls=RLHFDataset, data_config=DictConfigWrap(cfg.data), hf_model_type=family,
                search="local", kb=str(kb_dir), keyframe_size=864, placeholder_counts=mode,
            )
            out = await loop.run({"temperature": 1.0}, **kwargs)
            return out, loop.geometry

        return asyncio.run(go())

    via_proc, none = run("processor")
    via_geo, geo = run("geometry")
    assert none is None and isinstance(geo, GeometryProcessor)
    assert via_geo.extra_fields["stop_reason"] == "answer", via_geo.extra_fields
    assert via_geo.prompt_ids == via_proc.prompt_ids and via_geo.response_ids == via_proc.response_ids
    assert via_geo.response_mask == via_proc.response_mask
    sizes = [im.size for im in via_geo.multi_modal_data["images"]]
    assert sizes == [im.size for im in via_proc.multi_modal_data["images"]] and (864, 864) in sizes
    pads = (via_geo.prompt_ids + via_geo.response_ids).count(proc.image_token_id)
    assert pads == sum(geo.image_tokens(h, w) for w, h in sizes) > 4 * 100
    assert geo.processor_calls == 0 and geo.geometry_calls >= 2


def test_text_only_renders_are_kept_across_builders(proc, monkeypatch):
    """verl renders a synthetic text-only prefix before every observation; every builder of
    a worker (one per sample) shares one render of it, keyed by content: a different
    conversation is rendered anew, and the answers are the processor's."""
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    from segresearch.core import shared_cache

    shared_cache.clear("rl.text_renders")
    tok = proc.tokenizer
    family = "qwen3_vl" if type(proc).__name__.startswith("Qwen3") else "qwen2_5_vl"
    real_template = type(proc).apply_chat_template
    text_only_renders = []

    def counting(self, conversation, *a, **k):
        if all(isinstance(m.get("content"), str) or all(p.get("type") == "text" for p in m["content"])
               for m in conversation):
            text_only_renders.append(conversation)
        return real_template(self, conversation, *a, **k)

    monkeypatch.setattr(type(proc), "apply_chat_template", counting)
    chat = [{"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "image", "image": _image(448, 448)},
                                         {"type": "text", "text": "where is it?"}]},
            {"role": "assistant", "content": "<keyframe> 1 </keyframe>"}]
    obs = {"role": "user", "content": [{"type": "image", "image": _image(864, 864)},
                                       {"type": "text", "text": "the keyframe"}]}
    results = []
    for _sample in range(4):
        class Loop:
            continuous_token_builder = create_continuous_token_builder(
                tok, hf_model_type=family, chat_template_kwargs={}, mm_processor_kwargs={}, processor=proc)

        install(Loop)
        results.append(Loop.continuous_token_builder.merge_context_tokens(chat, [*chat, obs], [1, 2, 3]).token_ids)
    assert all(r == results[0] for r in results)
    assert len(text_only_renders) == 1  # the prefix, once for four samples
    geo = GeometryProcessor(proc)
    a = [{"role": "user", "content": "one"}]
    b = [{"role": "user", "content": "two"}]
    kw = {"tokenize": False, "add_generation_prompt": True}
    assert geo.apply_chat_template(a, **kw) == real_template(proc, a, **kw)
    assert geo.apply_chat_template(b, **kw) == real_template(proc, b, **kw) != geo.apply_chat_template(a, **kw)
    assert geo(text=["hello there"])["input_ids"] == [tok("hello there")["input_ids"]]
    # A placeholder with no image is the processor's to answer, as before the text cache.
    before = geo.processor_calls
    got = geo(text=[_text(proc, 1)])["input_ids"]
    assert geo.processor_calls == before + 1
    assert [list(map(int, r)) for r in got] == proc(text=[_text(proc, 1)])["input_ids"]
