"""Tool calls written as text: the ``<tool_call>`` JSON blocks of the Qwen chat templates.

A model served without a tool parser (our RL rollouts, where verl returns token ids) writes
its tool calls as text, in the form its chat template renders them and the template's system
turn asks for::

    <tool_call>
    {"name": "keyframe", "arguments": {"index": 6}}
    </tool_call>

:func:`parse_tool_call_text` reads such a reply into what a LangChain ``AIMessage`` carries
(its text, ``tool_calls`` and ``invalid_tool_calls``, shaped as LangChain's ``tool_call`` and
``invalid_tool_call`` dicts), the way vLLM's Hermes parser reads it for an OpenAI client:
a block whose JSON does not parse, or that names no tool, becomes an invalid call with the
reason, never an exception. :func:`render_tool_call` is the template's rendering of one call
(Qwen3-VL, Qwen2.5), so a caller can tell whether a reply is exactly that rendering.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
# A closed block, or an open one the reply ended inside (a cut generation).
_BLOCK_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_NAME_RE = re.compile(r'^\{\s*"name"\s*:\s*"([^"\\]+)"')
_RESPONSE_RE = re.compile(r"<tool_response>.*?(?:</tool_response>|\Z)", re.DOTALL)


@dataclass(frozen=True)
class TextToolCall:
    """One ``<tool_call>`` block: its name and arguments, or why it is not a call."""

    name: str | None
    args: dict[str, Any] | None  # None when invalid
    raw_args: str  # the arguments' JSON as written (the whole block when it does not parse)
    error: str | None = None
    span: tuple[int, int] = (0, 0)  # where the block is in the text


@dataclass(frozen=True)
class ParsedReply:
    """A reply split into its text and its tool calls (LangChain's dict shapes)."""

    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    invalid_tool_calls: list[dict[str, Any]] = field(default_factory=list)
    blocks: list[TextToolCall] = field(default_factory=list)


def find_tool_calls(text: str, *, skip_responses: bool = False) -> list[TextToolCall]:
    """Every ``<tool_call>`` block of ``text``, in order. ``skip_responses`` leaves out blocks
    inside ``<tool_response>`` spans (observations quoted back into a transcript)."""
    if skip_responses:
        text = _RESPONSE_RE.sub(lambda m: " " * len(m.group(0)), text)
    return [_read_block(m.group(1), m.span()) for m in _BLOCK_RE.finditer(text)]


def _read_block(body: str, span: tuple[int, int]) -> TextToolCall:
    raw = body.strip()
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as e:
        # The name, when it is readable, tells the graph which tool was meant (a keyframe call
        # with broken arguments is answered as a keyframe call without a frame).
        m = _NAME_RE.search(raw)
        return TextToolCall(m.group(1) if m else None, None, raw, f"the tool call is not valid JSON: {e}", span)
    if not isinstance(obj, dict):
        return TextToolCall(None, None, raw, "the tool call is not a JSON object", span)
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return TextToolCall(None, None, raw, 'the tool call has no "name"', span)
    args = obj.get("arguments", obj.get("parameters", {}))
    raw_args = json.dumps(args, ensure_ascii=False)
    if isinstance(args, str):  # some models write the arguments as a JSON string
        raw_args = args
        try:
            args = json.loads(args)
        except (json.JSONDecodeError, RecursionError) as e:
            return TextToolCall(name, None, raw_args, f"the arguments are not valid JSON: {e}", span)
    if not isinstance(args, dict):
        return TextToolCall(name, None, raw_args, "the arguments are not a JSON object", span)
    return TextToolCall(name, args, raw_args, None, span)


def parse_tool_call_text(text: str, id_prefix: str = "call") -> ParsedReply:
    """``text`` as an assistant message: the text outside the blocks (stripped), the valid
    calls as ``tool_calls`` and the others as ``invalid_tool_calls``; ids are
    ``{id_prefix}_{i}`` in block order, so a replayed rollout names its calls the same."""
    blocks = find_tool_calls(text)
    calls: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    for i, b in enumerate(blocks):
        call_id = f"{id_prefix}_{i}"
        if b.error is None:
            calls.append({"name": b.name, "args": b.args, "id": call_id, "type": "tool_call"})
        else:
            invalid.append({"name": b.name, "args": b.raw_args, "id": call_id, "error": b.error,
                            "type": "invalid_tool_call"})
    content = _BLOCK_RE.sub("", text).strip() if blocks else text
    return ParsedReply(content=content, tool_calls=calls, invalid_tool_calls=invalid, blocks=blocks)


def render_tool_call(name: str, raw_args: str) -> str:
    """One call as the Qwen chat templates render an assistant's ``tool_calls`` entry whose
    arguments are the JSON text ``raw_args``."""
    return f'{TOOL_CALL_OPEN}\n{{"name": "{name}", "arguments": {raw_args}}}\n{TOOL_CALL_CLOSE}'


__all__ = ["ParsedReply", "TextToolCall", "find_tool_calls", "parse_tool_call_text", "render_tool_call"]
