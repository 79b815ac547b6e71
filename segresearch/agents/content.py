"""Images inside LangChain messages.

Images travel as OpenAI-style ``image_url`` blocks. The graph puts a ``media-ref:<sha256>``
URL in them (``media_block``): the pixels stay in the media store, the state stays small
and JSON, and every backend resolves the reference to the same RGB pixels
(``block_image``); the OpenAI-compatible backend inlines them as data URLs only when it
sends a request (``inline_media``). Blocks holding a data URL (``image_block``) are still
accepted everywhere, for callers that build messages themselves.
"""

from __future__ import annotations

import base64
import hashlib
import io
from typing import Any

from langchain_core.messages import BaseMessage
from PIL import Image

from segresearch.core.media_store import JPEG_QUALITY, MEDIA_SCHEME, get_store
from segresearch.core.shared_cache import LoadOnce


def encode_image(img: Image.Image, fmt: str = "JPEG") -> str:
    """Encode a PIL image as a data URL (JPEG by default: ~10x smaller than PNG in state)."""
    buf = io.BytesIO()
    if fmt.upper() == "JPEG":
        img.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
        mime = "image/jpeg"
    else:
        img.save(buf, format="PNG")
        mime = "image/png"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_block(img: Image.Image, fmt: str = "JPEG") -> dict[str, Any]:
    """A content block carrying ``img``; the same shape OpenAI's chat API accepts."""
    return {"type": "image_url", "image_url": {"url": encode_image(img, fmt)}}


def media_block(img: Image.Image, recipe: Any = None) -> dict[str, Any]:
    """A content block referring to ``img`` in the media store (``recipe`` remakes the image
    if the store has dropped it, e.g. a video frame)."""
    digest = get_store().put(img, recipe)
    return {"type": "image_url", "image_url": {"url": MEDIA_SCHEME + digest}}


def block_image(block: dict[str, Any]) -> Image.Image:
    """The RGB pixels of an image block, whether it refers to the store or holds a data URL."""
    url = block_url(block)
    if url.startswith(MEDIA_SCHEME):
        return get_store().get(url[len(MEDIA_SCHEME):])
    return decode_image(url)


def block_digest(block: dict[str, Any]) -> str | None:
    """The store digest of a referring block (None for inline data)."""
    url = block_url(block)
    return url[len(MEDIA_SCHEME):] if url.startswith(MEDIA_SCHEME) else None


def inline_media(messages: list[BaseMessage]) -> list[BaseMessage]:
    """``messages`` with every store reference replaced by a JPEG data URL (what an
    OpenAI-compatible server accepts); messages without references are passed as they are."""
    out: list[BaseMessage] = []
    for m in messages:
        if isinstance(m.content, str) or not any(
            is_image_block(b) and block_digest(b) for b in m.content
        ):
            out.append(m)
            continue
        blocks = []
        for b in m.content:
            digest = block_digest(b) if is_image_block(b) else None
            if digest:
                b = {"type": "image_url", "image_url": {"url": get_store().data_url(digest)}}
            blocks.append(b)
        out.append(m.model_copy(update={"content": blocks}))
    return out


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def is_image_block(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") in ("image_url", "image")


def block_url(block: dict[str, Any]) -> str:
    """The data URL (or http URL) of an image block, in either LangChain block style."""
    if block.get("type") == "image_url":
        iu = block["image_url"]
        return iu if isinstance(iu, str) else iu["url"]
    if "url" in block:
        return block["url"]
    if "base64" in block:
        return f"data:{block.get('mime_type', 'image/jpeg')};base64,{block['base64']}"
    if "data" in block:  # older langchain "source_type" blocks
        return f"data:{block.get('mime_type', 'image/jpeg')};base64,{block['data']}"
    raise ValueError(f"image block without data: {sorted(block)}")


_DECODED: LoadOnce[Image.Image] = LoadOnce(maxsize=256, name="content.decoded_images")


def decode_image(url: str) -> Image.Image:
    """Decode a data URL to an RGB PIL image; cached because frames repeat every turn."""
    if not url.startswith("data:"):
        raise ValueError("only data: URLs can be decoded locally (got a remote URL)")
    return _DECODED.get(hashlib.sha1(url.encode("ascii", "ignore")).hexdigest(),
                        lambda: _decode(url))


def _decode(url: str) -> Image.Image:
    _, _, payload = url.partition(",")
    img = Image.open(io.BytesIO(base64.b64decode(payload)))
    img.load()
    return img.convert("RGB")


def content_blocks(content: str | list[Any]) -> list[dict[str, Any]]:
    """Normalise message content to a list of blocks (plain strings become one text block)."""
    if isinstance(content, str):
        return [text_block(content)] if content else []
    out: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, str):
            out.append(text_block(part))
        else:
            out.append(part)
    return out


def content_text(content: str | list[Any], image_marker: str = "") -> str:
    """The text of a message; images become ``image_marker`` (empty by default)."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content_blocks(content):
        if is_image_block(block):
            parts.append(image_marker)
        elif block.get("type") == "text":
            parts.append(block.get("text", ""))
    return "".join(parts)


def count_images(content: str | list[Any]) -> int:
    if isinstance(content, str):
        return 0
    return sum(1 for b in content if is_image_block(b))
