"""The post-processing cache (rl/postprocess_cache.py) changes no output of verl's post-processing.

verl's ``AgentLoopWorker._agent_loop_postprocess`` runs here on trajectories rendered by the
tiny Qwen3-VL and Qwen2.5-VL processors (published pixel limits), once with the real image
processor and once with the caching wrapper installed on the same processor object; every
tensor it returns (ids, masks, M-RoPE positions, ``pixel_values``, ``image_grid_thw``,
``images_seqlens``) must be equal, byte for byte, cold and warm, for single trajectories,
GRPO groups sharing frames, images of many sizes, other processor options, a small memory
cap, and changed images.
"""

from __future__ import annotations

import asyncio
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("verl")

from omegaconf import OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput  # noqa: E402

from segresearch.rl import postprocess_cache as pc  # noqa: E402
from segresearch.testing.tiny_vlm import build_tiny_qwen_vl, install_video_processor_stub  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._rollout_post import postprocess_worker  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CFG = OmegaConf.create({
    "actor_rollout_ref": {"rollout": {"prompt_length": 2048, "response_length": 2048}},
    "data": {"apply_chat_template_kwargs": {}, "mm_processor_kwargs": {}},
})


@pytest.fixture(scope="module", params=["qwen3_vl", "qwen2_5_vl"])
def tiny(request, tmp_path_factory):
    from verl.utils import hf_processor, hf_tokenizer

    install_video_processor_stub()
    path = build_tiny_qwen_vl(tmp_path_factory.mktemp(f"ppc_{request.param}"), request.param,
                              pixels="published", template="published")
    tok, proc = hf_tokenizer(str(path)), hf_processor(str(path))
    return SimpleNamespace(tok=tok, proc=proc, worker=postprocess_worker(tok, proc, CFG), path=path)


def _image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _output(tiny, frames: list[Image.Image], observed: list[Image.Image], **mm) -> AgentLoopOutput:
    """A two-turn trajectory as an agent loop returns it: the frames in the prompt, the
    observed images in a tool reply inside the response, placeholders expanded (with the
    processor options ``mm``)."""
    def user(images, text):
        return {"role": "user", "content": [*({"type": "image"} for _ in images), {"type": "text", "text": text}]}

    prompt = [{"role": "system", "content": "You segment things."}, user(frames, "Find the emblem.")]
    full = [*prompt, {"role": "assistant", "content": "<keyframe> 3 </keyframe>"}, user(observed, "frame 3"),
            {"role": "assistant", "content": "<answer>{}</answer>"}]
    render = lambda msgs, gen: tiny.proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)  # noqa: E731
    ids = lambda text, imgs: tiny.proc(text=[text], images=imgs or None, **mm)["input_ids"][0]  # noqa: E731
    with _cache(tiny.proc, on=False):
        p = list(ids(render(prompt, True), frames))
        whole = list(ids(render(full, False), frames + observed))
    assert whole[:len(p)] == p
    response = whole[len(p):]
    return AgentLoopOutput(prompt_ids=p, response_ids=response, response_mask=[1] * len(response),
                           multi_modal_data={"images": frames + observed}, num_turns=3,
                           metrics=AgentLoopMetrics())


@contextmanager
def _cache(proc, on: bool = True, max_bytes: int = pc.DEFAULT_MAX_MB << 20):
    """A fresh cache on ``proc`` (or none), and afterwards ``proc`` as it was."""
    before = proc.image_processor
    pc.uninstall(proc)
    cache = pc.install(proc, max_bytes) if on else None
    try:
        yield cache
    finally:
        proc.image_processor = before


def _post(tiny, out: AgentLoopOutput):
    row = {"raw_prompt": []}
    return asyncio.run(tiny.worker._agent_loop_postprocess(out.model_copy(deep=True), False, **row))


def _same(a, b) -> None:
    for name in ("prompt_ids", "response_ids", "input_ids", "attention_mask", "response_mask", "position_ids"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), name
    assert set(a.multi_modal_inputs) == set(b.multi_modal_inputs) >= {"pixel_values", "image_grid_thw"}
    for k, x in a.multi_modal_inputs.items():
        y = b.multi_modal_inputs[k]
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), k
        assert x.contiguous().numpy().tobytes() == y.contiguous().numpy().tobytes(), k


SIZES = [(448, 448), (864, 864), (256, 256), (300, 500), (57, 700), (120, 33), (31, 29)]


def test_single_trajectory_equal_cold_and_warm(tiny):
    imgs = [_image(h, w, i) for i, (h, w) in enumerate(SIZES)]
    out = _output(tiny, imgs[:5], imgs[5:])
    with _cache(tiny.proc, on=False):
        want = _post(tiny, out)
    with _cache(tiny.proc) as cache:
        _same(_post(tiny, out), want)  # cold: every image computed alone and concatenated
        assert (cache.stats.misses, cache.stats.hits, cache.stats.delegated) == (len(imgs), 0, 0)
        _same(_post(tiny, out), want)  # warm: every image from the cache
        assert (cache.stats.misses, cache.stats.hits) == (len(imgs), len(imgs))
    assert want.multi_modal_inputs["image_grid_thw"].shape[0] == len(imgs)


def test_grpo_group_and_turns_share_images_and_stay_equal(tiny):
    frames = [_image(448, 448, 10 + i) for i in range(4)]
    keyframes = [_image(600, 600, 20), _image(600, 600, 21)]
    # four samples of one prompt: the same frames; two chose the same keyframe, one looked twice
    group = [_output(tiny, frames, [keyframes[0]]), _output(tiny, frames, [keyframes[0]]),
             _output(tiny, frames, [keyframes[1], frames[2]]), _output(tiny, frames, [keyframes[1], keyframes[1]])]
    with _cache(tiny.proc, on=False):
        want = [_post(tiny, o) for o in group]
    with _cache(tiny.proc) as cache:
        for o, w in zip(group, want, strict=True):
            _same(_post(tiny, o), w)
        images = sum(len(o.multi_modal_data["images"]) for o in group)
        assert cache.stats.misses == len(frames) + len(keyframes)  # each image processed once
        assert cache.stats.hits == images - cache.stats.misses


def test_processor_options_are_part_of_the_key(tiny):
    imgs = [_image(448, 448, 30), _image(300, 500, 31)]
    small = {"max_pixels": 128 * 128, "min_pixels": 32 * 32}
    out = _output(tiny, imgs, [], **small)
    with _cache(tiny.proc) as cache:
        default = _post(tiny, _output(tiny, imgs, []))
        tiny.worker.mm_processor_kwargs = small
        try:
            got = _post(tiny, out)
            with _cache(tiny.proc, on=False):
                want = _post(tiny, out)
        finally:
            tiny.worker.mm_processor_kwargs = {}
        _same(got, want)
    assert cache.stats.misses == 2 * len(imgs)
    assert got.multi_modal_inputs["pixel_values"].shape[0] < default.multi_modal_inputs["pixel_values"].shape[0]


def test_memory_cap_is_respected_and_outputs_stay_equal(tiny):
    imgs = [_image(448, 448, 40 + i) for i in range(6)]
    out = _output(tiny, imgs, [])
    with _cache(tiny.proc, on=False):
        want = _post(tiny, out)
    one = int(want.multi_modal_inputs["pixel_values"][:want.multi_modal_inputs["images_seqlens"][0]].numel()) * 4
    cap = int(2.5 * one)
    with _cache(tiny.proc, max_bytes=cap) as cache:
        for _ in range(2):
            _same(_post(tiny, out), want)
            assert 0 < cache.stats.bytes <= cap and cache.stats.entries == 2
        # the second pass finds the two images the first kept and computes the other four
        # (in one call), each evicting one entry
        assert cache.stats.hits == 2 and cache.stats.misses == 2 * len(imgs) - 2
        assert cache.stats.evicted == 2 * (len(imgs) - 2)
    with _cache(tiny.proc, max_bytes=one // 2) as cache:  # no entry fits: nothing is kept
        _same(_post(tiny, out), want)
        assert cache.stats.bytes == cache.stats.entries == 0


def test_a_changed_image_is_not_served_from_the_cache(tiny):
    img = _image(448, 448, 50)
    with _cache(tiny.proc) as cache:
        first = _post(tiny, _output(tiny, [img], []))
        changed = img.copy()
        changed.putpixel((200, 100), (0, 0, 0) if img.getpixel((200, 100)) != (0, 0, 0) else (255, 255, 255))
        second = _post(tiny, _output(tiny, [changed], []))
        img.putpixel((5, 5), (1, 2, 3))  # the same object changed in place
        third = _post(tiny, _output(tiny, [img], []))
        assert cache.stats.hits == 0 and cache.stats.misses == 3
    with _cache(tiny.proc, on=False):
        _same(second, _post(tiny, _output(tiny, [changed], [])))
        _same(third, _post(tiny, _output(tiny, [img], [])))
    assert not torch.equal(first.multi_modal_inputs["pixel_values"], second.multi_modal_inputs["pixel_values"])


def test_calls_it_cannot_answer_exactly_go_to_the_image_processor(tiny):
    img = _image(200, 300, 60)
    arr = np.asarray(img)
    with _cache(tiny.proc) as cache:
        real = cache.wrapped
        for images, kw in [([arr], {}), ([[img, img]], {}), ([img], {"input_data_format": "channels_last"}),
                           ([img], {"do_pad": False}), ([], {})]:
            before = cache.stats.delegated
            try:
                want = real(images, return_tensors="pt", **kw)
            except Exception as e:  # noqa: BLE001 - the wrapper must fail the same way
                with pytest.raises(type(e)):
                    cache(images, return_tensors="pt", **kw)
            else:
                got = cache(images, return_tensors="pt", **kw)
                assert all(torch.equal(got[k], want[k]) for k in want)
            assert cache.stats.delegated == before + 1, kw
        assert cache.stats.misses == cache.stats.hits == 0
        # attributes are the real image processor's, read and written through the wrapper
        assert cache.merge_size == real.merge_size
        cache.merge_size = real.merge_size


def test_only_the_per_image_family_is_wrapped(tiny):
    other = SimpleNamespace(image_processor=object())
    assert pc.install(other) is None and not isinstance(other.image_processor, pc.CachingImageProcessor)
    with _cache(tiny.proc) as cache:
        assert pc.install(tiny.proc) is cache  # once per processor
        assert pc.installed(tiny.proc) is cache
    assert pc.installed(tiny.proc) is None


def test_the_agent_loop_installs_it_on_the_processor_verl_post_processes_with(tiny):
    """verl instantiates each loop with hydra, passing its own processor object: the loop's
    option decides what the worker's post-processing then runs."""
    import hydra
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap
    from verl.utils.dataset.rl_dataset import RLHFDataset

    entry = OmegaConf.load(Path(__file__).resolve().parents[1] / "segresearch/rl/config/seg_research_agent.yaml")[0]
    assert entry.postprocess_cache is True and entry.postprocess_cache_mb >= 1

    def make(**over):
        cfg = OmegaConf.merge(entry, over)
        return hydra.utils.instantiate(
            cfg, trainer_config=DictConfigWrap(CFG), server_manager=None, tokenizer=tiny.tok,
            processor=tiny.proc, hf_model_type=tiny.worker.processor.config.model_type, dataset_cls=RLHFDataset,
            data_config=DictConfigWrap(CFG.data), tools=None)

    try:
        loop = make()
        assert loop.processor is tiny.proc is tiny.worker.processor
        assert pc.installed(tiny.proc) is loop.postprocess_cache is not None
        assert loop.postprocess_cache.max_bytes == entry.postprocess_cache_mb << 20
        assert make().postprocess_cache is loop.postprocess_cache  # later loops find it
        assert make(postprocess_cache=False).postprocess_cache is None
        assert pc.installed(tiny.proc) is None
        with pytest.raises(Exception, match="postprocess_cache_mb must be at least 1"):
            make(postprocess_cache_mb=0)
    finally:
        pc.uninstall(tiny.proc)
