"""Image placeholder counts from geometry: the processor's token ids without its pixel pipeline.

verl's continuous-token builder calls the HF processor on every prompt and observation only to
learn the token ids, i.e. how many ``<|image_pad|>`` tokens each image expands to. The processor
answers by resizing, normalising and patchifying every image, and the pixels are then thrown
away (verl recomputes them from the images after the rollout). That was 65-80 % of a rollout's
CPU. For Qwen-VL the count depends only on an image's height and width and the image
processor's settings (the smart-resize rule), and the image processor exposes exactly that rule
as ``get_number_of_image_patches`` (the hook vLLM uses for the same purpose).

:class:`GeometryProcessor` wraps the real processor for the token builder: calls it can answer
exactly (PIL images, Qwen-style image tokens, settings the geometry rule reads) are answered from
geometry; anything else (videos, audio, other kwargs, a processor without the rule) goes to the
real processor unchanged. The token-exactness tests compare both on many image sizes.

Text-only renders are also kept by content: verl's builder renders the same synthetic prefix (a
system and a user message) before every observation, only to cut it off again, and every
sample in a worker renders the same one.
"""

from __future__ import annotations

import json
from typing import Any

from PIL import Image

from segresearch.core.shared_cache import LoadOnce

# Processor kwargs the geometry rule reads; any other kwarg goes to the real processor.
_GEOMETRY_KWARGS = frozenset({"min_pixels", "max_pixels", "patch_size", "merge_size"})
_IGNORED_KWARGS = frozenset({"return_tensors"})
# Text-only chat-template renders and token ids, by processor and content (held, not by id, so
# an entry can never answer for another processor).
_TEXT_RENDERS: LoadOnce[Any] = LoadOnce(maxsize=1024, name="rl.text_renders")


class GeometryProcessor:
    """The real processor, except that image calls return only ``input_ids`` and compute each
    image's placeholder count from its size.

    Only ``input_ids`` come back from a geometry answer (no pixel values or grids), which is
    all verl's token builder reads unless it is asked for ``mm_inputs_out`` (the agent loop
    never asks). Everything else (``apply_chat_template``, ``tokenizer``, attributes) is the
    wrapped processor's.
    """

    def __init__(self, processor: Any) -> None:
        self._processor = processor
        ip = getattr(processor, "image_processor", None)
        tok = getattr(processor, "tokenizer", None)
        token = getattr(processor, "image_token", None)
        token_id = getattr(processor, "image_token_id", None)
        if token_id is None and tok is not None and token is not None:
            token_id = tok.convert_tokens_to_ids(token)
        self._image_processor = ip
        self._tokenizer = tok
        self._image_token_id = token_id
        # The geometry rule must exist and must describe what the processor does: an image
        # processor that does not resize keeps sizes the rule would change.
        self.supported = bool(
            ip is not None
            and tok is not None
            and token_id is not None
            and callable(getattr(ip, "get_number_of_image_patches", None))
            and getattr(ip, "do_resize", True)
            and getattr(ip, "merge_size", None)
        )
        self.geometry_calls = 0  # calls answered from geometry (tests and benchmarks read it)
        self.processor_calls = 0  # calls passed to the real processor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)

    def apply_chat_template(self, conversation: Any, *args: Any, **kwargs: Any) -> Any:
        """The processor's, remembered for text-only conversations rendered to text."""
        key = None
        if not args and kwargs.get("tokenize") is False and not kwargs.get("return_dict") and _text_only(conversation):
            key = _key("template", self._processor, conversation, kwargs)
        if key is None:
            return self._processor.apply_chat_template(conversation, *args, **kwargs)
        return _TEXT_RENDERS.get(key, lambda: self._processor.apply_chat_template(conversation, **kwargs))

    def __call__(
        self,
        text: Any = None,
        images: Any = None,
        videos: Any = None,
        audio: Any = None,
        **kwargs: Any,
    ) -> Any:
        if not self._answerable(text, images, videos, audio, kwargs):
            return self._delegate(text, images, videos, audio, kwargs)
        geometry = {k: v for k, v in kwargs.items() if k in _GEOMETRY_KWARGS}
        texts = [text] if isinstance(text, str) else list(text)
        counts = [self.image_tokens(img.height, img.width, **geometry) for img in images or []]
        ids = self._token_ids(texts, cached=not images)
        pads = sum(row.count(self._image_token_id) for row in ids)
        if pads != len(counts):
            # The processor raises its own, clearer error for a mismatch.
            return self._delegate(text, images, videos, audio, kwargs)
        self.geometry_calls += 1
        it = iter(counts)
        pad = self._image_token_id
        out = []
        for row in ids:
            expanded: list[int] = []
            for t in row:
                if t == pad:
                    expanded.extend([pad] * next(it))
                else:
                    expanded.append(t)
            out.append(expanded)
        return {"input_ids": out}

    def _token_ids(self, texts: list[str], cached: bool) -> list[list[int]]:
        """The tokenizer's ids for ``texts``; text-only calls (verl's synthetic prefix above
        all) are kept by content."""
        key = _key("ids", self._tokenizer, texts, {}) if cached else None
        if key is None:
            return self._tokenizer(texts)["input_ids"]
        rows = _TEXT_RENDERS.get(key, lambda: tuple(tuple(r) for r in self._tokenizer(texts)["input_ids"]))
        return [list(r) for r in rows]

    def _delegate(self, text: Any, images: Any, videos: Any, audio: Any, kwargs: dict[str, Any]) -> Any:
        self.processor_calls += 1
        call: dict[str, Any] = {"text": text, "images": images, "videos": videos, **kwargs}
        if audio is not None:
            call["audio"] = audio
        return self._processor(**call)

    def _answerable(self, text: Any, images: Any, videos: Any, audio: Any, kwargs: dict[str, Any]) -> bool:
        if not self.supported or videos or audio is not None or text is None:
            return False
        if not (isinstance(text, str) or (isinstance(text, list) and all(isinstance(t, str) for t in text))):
            return False
        if any(k not in _GEOMETRY_KWARGS and k not in _IGNORED_KWARGS for k in kwargs):
            return False
        return all(isinstance(img, Image.Image) for img in images or [])

    def image_tokens(self, height: int, width: int, **geometry: Any) -> int:
        """Placeholder tokens for an image of ``height`` × ``width`` pixels."""
        ip, key = self._image_processor, (int(height), int(width), tuple(sorted(geometry.items())))
        return _PATCH_COUNTS.get((ip, *key), lambda: _count(ip, *key))


def _text_only(conversation: Any) -> bool:
    if not isinstance(conversation, list):
        return False
    for msg in conversation:
        if not isinstance(msg, dict):
            return False
        content = msg.get("content")
        if isinstance(content, list):
            if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
                return False
        elif content is not None and not isinstance(content, str):
            return False
    return True


def _key(kind: str, owner: Any, value: Any, kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    """A cache key, or None when the inputs cannot be keyed exactly (then nothing is kept)."""
    try:
        hash(owner)
        return (kind, owner, json.dumps(value, sort_keys=True), json.dumps(kwargs, sort_keys=True))
    except TypeError:
        return None


# Patch counts per image processor, image size and geometry: every image of every turn asks.
_PATCH_COUNTS: LoadOnce[int] = LoadOnce(maxsize=4096, name="rl.patch_counts")


def _count(ip: Any, height: int, width: int, geometry: tuple[tuple[str, Any], ...]) -> int:
    kw = dict(geometry)
    merge = int(kw.get("merge_size") or ip.merge_size)
    return int(ip.get_number_of_image_patches(height, width, kw)) // (merge * merge)


def install(agent_loop: Any) -> GeometryProcessor | None:
    """Give ``agent_loop``'s token builder the geometry processor (None where it does not apply:
    a text-only builder, or a processor without the geometry rule)."""
    builder = getattr(agent_loop, "continuous_token_builder", None)
    proc = getattr(builder, "processor", None)
    if proc is None:
        return None
    if isinstance(proc, GeometryProcessor):
        return proc
    wrapped = GeometryProcessor(proc)
    if not wrapped.supported:
        return None
    builder.processor = wrapped
    return wrapped
