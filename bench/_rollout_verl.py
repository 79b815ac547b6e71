"""verl's own ``ToolAgentLoop`` speaking our tag protocol, for the side-by-side rollout bench.

A minimal tool parser for ``<search>{json}</search>`` / ``<keyframe> id </keyframe>``
registered in verl's tool-parser registry, and ``BaseTool`` subclasses doing what our graph's
tools do: the same search backend and observation texts, image hits resized to the search
image size, the keyframe read from its source frame and resized to the keyframe size.

verl's dataset hands the agent loop ``raw_prompt`` messages whose images
``process_multi_modal_info`` fetches with ``qwen_vl_utils``; that package imports
torchvision, which cannot load beside the CPU torch here, so :class:`BenchDataset` does the
image part of its ``fetch_image`` (RGB, ``smart_resize`` to the merged patch grid, resize)
when ``qwen_vl_utils`` is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import re
from typing import Any
from uuid import uuid4

from PIL import Image
from verl.experimental.agent_loop.tool_parser import FunctionCall, ToolParser
from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse
from verl.utils.dataset.rl_dataset import RLHFDataset

from segresearch.core.media import resize_square
from segresearch.core.prompts import KEYFRAME_CAPTION
from segresearch.core.protocol import (
    render_bad_keyframe,
    render_image_results,
    render_search_error,
    render_text_results,
)
from segresearch.tools.search import get_backend

PARSER_NAME = "segresearch_tags"
_TAG_RE = re.compile(r"<(search|keyframe)>(.*?)</\1>", re.DOTALL)


def parse_tags(text: str) -> list[FunctionCall]:
    """The tool call in one model turn (at most one, the first tag), or none (an answer)."""
    m = _TAG_RE.search(text)
    if m is None:
        return []
    tag, body = m.group(1), m.group(2).strip()
    if tag == "keyframe":
        try:
            frame = int(body)
        except ValueError:
            return []
        return [FunctionCall(name="keyframe", arguments=json.dumps({"frame": frame}))]
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return []
    if not isinstance(obj, dict):
        return []
    return [FunctionCall(name=str(obj.get("name", "text_search")),
                         arguments=json.dumps({"query": str(obj.get("query", ""))}))]


@ToolParser.register(PARSER_NAME)
class SegTagParser(ToolParser):
    """Decodes off the event loop (as verl's Hermes parser does) and reads our tags."""

    async def extract_tool_calls(self, responses_ids: list[int], tools: Any = None) -> tuple[str, list[FunctionCall]]:
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(
            None, lambda: self.tokenizer.decode(responses_ids, skip_special_tokens=True))
        return text, parse_tags(text)


def _record(kwargs: dict[str, Any], name: str, arg: Any) -> None:
    """Note the executed call in the trajectory's extra fields (the bench compares it with ours)."""
    agent_data = kwargs.get("agent_data")
    if agent_data is not None:
        agent_data.extra_fields.setdefault("actions", []).append((name, arg))


def _schema(name: str, description: str, arg: str, kind: str) -> OpenAIFunctionToolSchema:
    return OpenAIFunctionToolSchema.model_validate({
        "type": "function",
        "function": {"name": name, "description": description,
                     "parameters": {"type": "object", "properties": {arg: {"type": kind}},
                                    "required": [arg]}},
    })


class _SearchTool(BaseTool):
    def __init__(self, config: dict[str, Any], tool_schema: OpenAIFunctionToolSchema) -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # BaseTool prints its schema
            super().__init__(config, tool_schema)
        self.backend = get_backend(config["search"], config["kb"])
        self.topk = int(config.get("topk", 3))
        self.image_size = int(config.get("image_size", 256))


class TextSearchTool(_SearchTool):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config, _schema("text_search", "Search text passages.", "query", "string"))

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs: Any) -> tuple[ToolResponse, float, dict]:
        query = str(parameters.get("query", ""))
        _record(kwargs, "text_search", query)
        try:
            hits = await asyncio.get_running_loop().run_in_executor(
                None, self.backend.search_text, query, self.topk)
        except Exception as e:  # noqa: BLE001 - a failed search is an observation, as in ours
            return ToolResponse(text=render_search_error(str(e))), 0.0, {}
        return ToolResponse(text=render_text_results([(h.title, h.text) for h in hits])), 0.0, {}


class ImageSearchTool(_SearchTool):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config, _schema("image_search", "Find a picture of a name.", "query", "string"))
        self.topk = int(config.get("image_topk", 1))

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs: Any) -> tuple[ToolResponse, float, dict]:
        query = str(parameters.get("query", ""))
        _record(kwargs, "image_search", query)

        def work() -> tuple[list[str], list[Image.Image]]:
            hits = self.backend.search_images(query, self.topk)
            size = (self.image_size, self.image_size)
            return [h.name for h in hits], [h.image.resize(size, Image.BICUBIC) for h in hits]

        try:
            names, images = await asyncio.get_running_loop().run_in_executor(None, work)
        except Exception as e:  # noqa: BLE001
            return ToolResponse(text=render_search_error(str(e))), 0.0, {}
        # ToolAgentLoop puts the images before the text; the placeholders have no use there.
        text = render_image_results(names).replace(" <image>", "")
        return ToolResponse(text=text, image=images or None), 0.0, {}


class KeyframeTool(BaseTool):
    """Per trajectory (``tools_kwargs.keyframe.create_kwargs.frames``: id → source path)."""

    def __init__(self, config: dict[str, Any]) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            super().__init__(config, _schema("keyframe", "Show a frame at high resolution.", "frame", "integer"))
        self.size = int(config.get("keyframe_size", 864))
        self._frames: dict[str, dict[int, str]] = {}

    async def create(self, instance_id: str | None = None, **kwargs: Any) -> tuple[str, ToolResponse]:
        iid = instance_id or uuid4().hex
        frames = (kwargs.get("create_kwargs") or {}).get("frames") or {}
        self._frames[iid] = {int(k): str(v) for k, v in frames.items()}
        return iid, ToolResponse()

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs: Any) -> tuple[ToolResponse, float, dict]:
        frames = self._frames.get(instance_id, {})
        try:
            fid = int(parameters.get("frame"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            fid = -1
        _record(kwargs, "keyframe", fid)
        if fid not in frames:
            return ToolResponse(text=render_bad_keyframe(sorted(frames))), 0.0, {}

        def load() -> Image.Image:
            with Image.open(frames[fid]) as im:
                return resize_square(im.convert("RGB"), self.size)

        img = await asyncio.get_running_loop().run_in_executor(None, load)
        return ToolResponse(text=KEYFRAME_CAPTION.format(fid=fid), image=[img]), 0.0, {}

    async def release(self, instance_id: str, **kwargs: Any) -> None:
        self._frames.pop(instance_id, None)


def make_tools(search: str, kb: str, *, keyframe_size: int = 864, image_size: int = 256) -> list[BaseTool]:
    """The three tools, made once per worker as verl's AgentLoopWorker does."""
    cfg = {"search": search, "kb": kb, "keyframe_size": keyframe_size, "image_size": image_size}
    return [TextSearchTool(cfg), ImageSearchTool(cfg), KeyframeTool(cfg)]


def _has_qwen_vl_utils() -> bool:
    try:
        import qwen_vl_utils  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or torchvision failing inside it
        return False
    return True


HAS_QWEN_VL_UTILS = _has_qwen_vl_utils()


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) rounded to multiples of ``factor``, scaled (aspect kept) into
    [min_pixels, max_pixels]: the Qwen-VL resize rule."""
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = max(factor, math.floor(height / beta / factor) * factor), max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def fetch_images(messages: list[dict[str, Any]], image_patch_size: int) -> list[Image.Image]:
    """The images of ``messages`` as ``qwen_vl_utils.fetch_image`` returns them with its
    default token limits: RGB, resized to the nearest multiple of the merged patch size."""
    factor = image_patch_size * 2
    out = []
    for msg in messages:
        content = msg.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "image":
                continue
            img = part["image"]
            img = Image.open(img) if isinstance(img, str) else img
            img = img.convert("RGB")
            h, w = smart_resize(img.height, img.width, factor=factor,
                                min_pixels=4 * factor * factor, max_pixels=16384 * factor * factor)
            out.append(img.resize((w, h)))
    return out


class BenchDataset(RLHFDataset):
    """verl's dataset class; only the multimodal extraction changes, and only without
    ``qwen_vl_utils`` (see the module docstring)."""

    @classmethod
    def _process_multi_modal_info(cls, messages: list[dict], image_patch_size: Any, config: Any) -> Any:
        if HAS_QWEN_VL_UTILS:
            return super()._process_multi_modal_info(messages, image_patch_size, config)
        images = fetch_images(messages, int(image_patch_size))
        return (images or None), None, None
