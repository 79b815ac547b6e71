"""The shared setup of the rollout bench: model, frames, knowledge base, scripted trajectory,
fake server, and one factory per agent loop (ours and verl's ``ToolAgentLoop``).

Both loops get the same trajectory: 7 frames at 448 px, a text search, an image search
(one 256 px hit), the keyframe at 864 px, an answer: 4 model calls and 9 images, on a tiny
Qwen3-VL whose image processor has the published pixel limits (patch 16: 196, 64 and 729
image tokens). verl's dataset would store the frames already resized, so its prompt holds
them as lazily decoded 448 px PNGs; ours reads and resizes the source frames itself, or,
with ``presized``, reads the 448 px files ``segresearch data okvos --presize-frames`` writes
(the same pixels as verl's PNGs). Every trajectory can end in verl's own
post-processing (``Harness.post``, bench/_rollout_post.py).
"""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from PIL import Image, ImageDraw
from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
from verl.experimental.agent_loop.tool_agent_loop import ToolAgentLoop
from verl.utils import hf_processor, hf_tokenizer
from verl.workers.rollout.replica import TokenOutput

import segresearch.rl.agent_loop as al
from bench._rollout_post import postprocess_worker
from bench._rollout_verl import PARSER_NAME, BenchDataset, make_tools
from segresearch.core import shared_cache
from segresearch.core.media import FRAME_RESIZE, frame_ids_for
from segresearch.core.prompts import frame_label, system_prompt
from segresearch.rl import postprocess_cache
from segresearch.rl.data import presize_frames
from segresearch.testing.scenes import render_scene, write_frames
from segresearch.testing.tiny_vlm import build_tiny_qwen_vl, install_video_processor_stub

ROOT = Path(__file__).resolve().parents[1]
FAMILY = "qwen3_vl"
N_FRAMES, FRAME_SIZE, KEYFRAME_SIZE, SEARCH_IMAGE_SIZE = 7, 448, 864, 256
SOURCE_SIZE = (960, 540)
SEARCH = "local"
QUESTION = "the emblem of the 2031 Tessellate Cup winner"
TURNS = [
    '<thinking>who won?</thinking><search>{"name": "text_search", "query": "2031 Tessellate Cup winner"}</search>',
    '<thinking>and its emblem?</thinking><search>{"name": "image_search", "query": "Cobalt Squares emblem"}</search>',
    "<thinking>frame 3 shows it best</thinking><keyframe> 3 </keyframe>",
    '<thinking>found</thinking><answer>{"bbox_2d": [100, 120, 400, 480], "point_2d": [250, 300]}</answer>',
]
IMAGES_PER_TRAJECTORY = N_FRAMES + 1 + 1  # frames, the image hit, the keyframe
# Our actions as (tool, argument); the ToolAgentLoop's tool calls must match.
EXPECTED_ACTIONS = [("text_search", "2031 Tessellate Cup winner"), ("image_search", "Cobalt Squares emblem"),
                    ("keyframe", 3), ("answer", None)]

_EMBLEMS = {"Cobalt Squares emblem": ("square", (30, 60, 200)), "Amber Stars emblem": ("star", (240, 180, 20)),
            "Crimson Circles emblem": ("disc", (200, 30, 40)), "Verdant Triangles emblem": ("triangle", (40, 160, 60))}


def _emblem(shape: str, colour: tuple[int, int, int]) -> Image.Image:
    img = Image.new("RGB", (320, 320), (245, 245, 240))
    d = ImageDraw.Draw(img)
    if shape == "square":
        d.rectangle((60, 60, 260, 260), fill=colour)
    elif shape == "disc":
        d.ellipse((60, 60, 260, 260), fill=colour)
    elif shape == "triangle":
        d.polygon([(160, 50), (270, 260), (50, 260)], fill=colour)
    else:
        d.regular_polygon((160, 165, 110), 5, fill=colour)
    return img


def _write_if_changed(path: Path, data: bytes) -> None:
    if not path.is_file() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def bench_kb() -> Path:
    """The demo KB's text corpus plus an image corpus of the clubs' emblems, in a fixed
    folder whose files only change with their content (so its index is built once)."""
    kb = Path(tempfile.gettempdir()) / "segresearch-bench-rollout-kb"
    _write_if_changed(kb / "text_corpus.jsonl", (ROOT / "segresearch/assets/demo_kb/text_corpus.jsonl").read_bytes())
    rows = []
    for i, (name, (shape, colour)) in enumerate(_EMBLEMS.items()):
        rel = f"images/{shape}.png"
        buf = io.BytesIO()
        _emblem(shape, colour).save(buf, format="PNG")
        _write_if_changed(kb / rel, buf.getvalue())
        rows.append(json.dumps({"id": i, "name": name, "image_path": rel}))
    _write_if_changed(kb / "image_corpus.jsonl", ("\n".join(rows) + "\n").encode())
    return kb


def build_model(out: Path) -> tuple[Path, str]:
    """The tiny Qwen3-VL at the published pixel limits; with a published chat template when
    ``build_tiny_qwen_vl`` offers one (its ``template`` keyword). Returns (folder, template)."""
    params = inspect.signature(build_tiny_qwen_vl).parameters
    if "template" in params:
        for template in ("published", "qwen3_vl"):
            try:
                return build_tiny_qwen_vl(out, FAMILY, pixels="published", template=template), template
            except (ValueError, KeyError, TypeError):
                continue
    return build_tiny_qwen_vl(out, FAMILY, pixels="published"), "tiny (ours)"


# The per-run caches a cold measurement starts without (by their registered names); the
# loaded models, search index, embedder and tokenizer stay, as in a training worker.
PER_RUN_CACHES = ("rl.prompt_ids", "graph.frame_blocks", "media.handles", "media.store",
                  "search.kb_images", "search.resized_hits", "kb.query_vectors")


def clear_caches(processor: Any = None) -> None:
    """Empty our per-run process caches (:data:`PER_RUN_CACHES`) and ``processor``'s
    post-processing cache."""
    for name in PER_RUN_CACHES:
        shared_cache.clear(name)
    cache = postprocess_cache.installed(processor) if processor is not None else None
    if cache is not None:
        cache.clear()


class FakeServer:
    """verl's server manager with scripted turns: sleeps ``latency`` and answers the next
    turn of the request's script (every turn ends with ``<|im_end|>``). No CPU work: the
    token ids are made once. It keeps per request the calls, images and seconds slept.

    ``jitter`` j makes each call sleep ``latency × (1 + j·u)``, u uniform in [-1, 1] (real
    turns differ in length, so trajectories drift apart); 0 is lockstep."""

    def __init__(self, tok: Any, latency: float, turns: list[str] = TURNS, jitter: float = 0.0):
        end = tok.convert_tokens_to_ids("<|im_end|>")
        self.ids = [[*tok.encode(t, add_special_tokens=False), end] for t in turns]
        self.latency = latency
        self.jitter = jitter
        self.calls: dict[str, int] = {}
        self.images: dict[str, int] = {}
        self.slept: dict[str, float] = {}
        self.first_call: float | None = None  # perf_counter of the batch's first model call

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any],
                       image_data: list | None = None, **kwargs: Any) -> TokenOutput:
        if self.first_call is None:
            self.first_call = time.perf_counter()
        i = self.calls.get(request_id, 0)
        self.calls[request_id] = i + 1
        self.images[request_id] = len(image_data or ())
        seconds = self.latency
        if self.jitter:
            seconds *= 1.0 + self.jitter * random.Random(f"{request_id}:{i}").uniform(-1.0, 1.0)
        self.slept[request_id] = self.slept.get(request_id, 0.0) + seconds
        await asyncio.sleep(seconds)
        ids = self.ids[min(i, len(self.ids) - 1)][: sampling_params.get("max_tokens") or None]
        return TokenOutput(token_ids=ids, log_probs=[-0.1] * len(ids), stop_reason="completed")


# verl pads every prompt to rollout.prompt_length in post-processing. The recipe's is 2048
# (data.max_prompt_length); the tiny tokenizer spells text in more tokens than Qwen's, so the
# bench's prompts (about 2250 tokens ours, 2800 verl's with its tool schemas) need 4096.
PROMPT_LENGTH = 4096


def trainer_config(response_length: int) -> Any:
    return OmegaConf.create({
        "actor_rollout_ref": {"rollout": {
            "prompt_length": PROMPT_LENGTH, "response_length": response_length, "full_determinism": False,
            "multi_turn": {"max_tool_response_length": 4096, "max_user_turns": 16, "max_assistant_turns": 16,
                           "max_parallel_calls": 1, "tool_response_truncate_side": "right",
                           "format": PARSER_NAME}}},
        "data": {"apply_chat_template_kwargs": {}, "mm_processor_kwargs": {}},
    })


@dataclass
class Prompt:
    """One dataset row, as each loop's dataset would give it."""

    frame_paths: list[str]
    frame_ids: list[int]
    frames_448: list[bytes]  # PNG, as a verl dataset would store them
    presized: list[str] = field(default_factory=list)  # the same pixels as files (data --presize-frames)

    def ours(self, presized: bool = False) -> dict[str, Any]:
        info: dict[str, Any] = {"question": QUESTION, "frames": list(self.frame_paths)}
        if presized:
            info.update(shown_frames=list(self.presized), frame_size=FRAME_SIZE, frame_resize=FRAME_RESIZE.method)
        return {"raw_prompt": [], "extra_info": info}

    def verl(self) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        for i, (fid, png) in enumerate(zip(self.frame_ids, self.frames_448, strict=True)):
            content.append({"type": "text", "text": ("\n" if i else "") + frame_label(fid)})
            content.append({"type": "image", "image": Image.open(io.BytesIO(png))})  # lazy, as the dataset's
        content.append({"type": "text", "text": "\n\n" + QUESTION})
        frames = dict(zip(self.frame_ids, self.frame_paths, strict=True))
        return {"raw_prompt": [{"role": "system", "content": system_prompt(True, "qwen3")},
                               {"role": "user", "content": content}],
                "tools_kwargs": {"keyframe": {"create_kwargs": {"frames": frames}}},
                "extra_info": {"question": QUESTION}}


def _png(path: Path) -> bytes:
    buf = io.BytesIO()
    with Image.open(path) as im:
        im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@dataclass
class Harness:
    """Tokenizer, processor, knowledge base and prompts; makes a fresh agent loop per
    trajectory, as verl's AgentLoopWorker does."""

    model_dir: Path
    template: str
    kb: Path
    work: Path
    prompts: list[Prompt] = field(default_factory=list)

    def __post_init__(self) -> None:
        install_video_processor_stub()
        self.tok = hf_tokenizer(str(self.model_dir))
        self.proc = hf_processor(str(self.model_dir))
        self.tools = make_tools(SEARCH, str(self.kb), keyframe_size=KEYFRAME_SIZE, image_size=SEARCH_IMAGE_SIZE)
        self._configs: dict[int, Any] = {}
        # verl's post-processing, with the processor the loops get (as in a rollout worker)
        self.post = postprocess_worker(self.tok, self.proc, self._cfg(8192))

    def _cfg(self, response_length: int) -> Any:
        if response_length not in self._configs:
            self._configs[response_length] = trainer_config(response_length)
        return self._configs[response_length]

    def _common(self, server: Any, response_length: int) -> dict[str, Any]:
        cfg = self._cfg(response_length)
        return {"trainer_config": DictConfigWrap(cfg), "server_manager": server, "tokenizer": self.tok,
                "processor": self.proc, "data_config": DictConfigWrap(cfg.data), "hf_model_type": FAMILY}

    def ours(self, server: Any, response_length: int = 8192, cache: bool = True) -> al.SegResearchAgentLoop:
        """Our loop; ``cache``: its ``postprocess_cache`` option (installs or removes the
        post-processing cache on the shared processor)."""
        return al.SegResearchAgentLoop(
            **self._common(server, response_length), dataset_cls=BenchDataset, search=SEARCH, kb=str(self.kb),
            frame_size=FRAME_SIZE, keyframe_size=KEYFRAME_SIZE, search_image_size=SEARCH_IMAGE_SIZE,
            max_observation_tokens=4096, postprocess_cache=cache)

    def verl(self, server: Any, response_length: int = 8192, cache: bool = False) -> ToolAgentLoop:
        """verl's loop; ``cache``: our post-processing cache on the shared processor (verl as
        shipped has none)."""
        if cache:
            postprocess_cache.install(self.proc)
        else:
            postprocess_cache.uninstall(self.proc)
        return ToolAgentLoop(**self._common(server, response_length), dataset_cls=BenchDataset,
                             tools=ToolListWrap(self.tools))

    def add_prompts(self, n: int) -> None:
        """Prompts with their own frames (a rendered scene per prompt)."""
        for i in range(len(self.prompts), n):
            frames, _ = render_scene(n_frames=N_FRAMES, size=SOURCE_SIZE, seed=i)
            paths = write_frames(frames, self.work / f"frames{i}")
            presized = presize_frames(paths, FRAME_SIZE, self.work / "presized")
            ids = frame_ids_for(paths)
            self.prompts.append(Prompt([str(p) for p in paths], ids, [_png(p) for p in presized],
                                       [str(p) for p in presized]))

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def make_harness(n_prompts: int, work: Path | None = None) -> Harness:
    work = Path(work or tempfile.mkdtemp(prefix="segresearch-bench-rollout-"))
    model_dir, template = build_model(work / "model")
    h = Harness(model_dir, template, bench_kb(), work)
    h.add_prompts(n_prompts)
    return h
