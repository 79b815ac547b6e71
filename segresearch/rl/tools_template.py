"""The chat template a ``tools``-mode rollout renders with.

verl renders a vision-language rollout with the processor's chat template, and in ``tools``
mode the model must see its tools as its own template renders them (rl/verl_model.py). The
Qwen3-VL template does: the tools in the system turn, ``<tool_call>`` JSON for the assistant's
calls, ``<tool_response>`` blocks for role ``tool``. The published Qwen2.5-VL checkpoints ship
two templates, neither of which can render such a rollout: the processor's (the one verl uses)
ignores ``tools=`` and tool calls and writes a ``tool`` message as a turn of its own, and the
tokenizer's (the Qwen2.5 text template, which Qwen2.5-VL was tuned with for tool calls) renders
all of that but cannot render image content.

``templates/qwen2_5_vl_tools.jinja`` (written for this project) is the two joined: the
tokenizer template's tools section, tool calls and tool responses, the processor template's
text, image and video content (images inside a tool response too). Rendering is proved
byte-identical to the processor template for conversations without tools and to the tokenizer
template for tool conversations without images (tests/test_tools_chat_template.py).

Which template a rollout uses is decided by probing, not by the model's name:
:func:`tools_template_kwargs` keeps the chat-template kwargs verl was given when their
template renders tools (Qwen3-VL; or a template the user set in
``data.apply_chat_template_kwargs.chat_template`` or ``actor_rollout_ref.model.custom_chat_template``),
adds ours when theirs does not but renders every conversation without tools exactly as ours
does (the published Qwen2.5-VL one), and refuses otherwise: a rollout must never train on a
prompt whose tools the model was not shown, nor on turns its own template would render
differently.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import resources
from typing import Any

from segresearch.core.shared_cache import LoadOnce

TOOLS_TEMPLATE = "qwen2_5_vl_tools.jinja"
_PROBE_TOOL = "segresearch_probe_tool"
_PROBE_TOOLS = [{"type": "function", "function": {"name": _PROBE_TOOL, "description": "",
                                                  "parameters": {"type": "object", "properties": {}}}}]
# Conversations without tools that a rollout renders (system prompt, frames, question, turns,
# observations): a template ours may stand in for renders each of them as ours does.
_AGREEMENT_PROBES: tuple[list[dict[str, Any]], ...] = (
    [{"role": "system", "content": "s"},
     {"role": "user", "content": [{"type": "text", "text": "frame 0 "}, {"type": "image"},
                                  {"type": "text", "text": "\n\nq"}]},
     {"role": "assistant", "content": "a"},
     {"role": "user", "content": [{"type": "text", "text": "o "}, {"type": "image"}]}],
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}],
    [{"role": "system", "content": [{"type": "text", "text": "s"}]}, {"role": "user", "content": "q"}],
)


@cache
def tools_chat_template() -> str:
    """Our Qwen2.5-VL chat template with tools (``templates/qwen2_5_vl_tools.jinja``), verbatim."""
    path = resources.files("segresearch.rl").joinpath("templates", TOOLS_TEMPLATE)
    with path.open("r", encoding="utf-8", newline="") as fh:
        return fh.read()


def _render(renderer: Any, messages: list[dict[str, Any]], kwargs: dict[str, Any], **extra: Any) -> str:
    return str(renderer.apply_chat_template(messages, tokenize=False, **{**kwargs, **extra}))


def renders_tools(renderer: Any, chat_template_kwargs: dict[str, Any] | None = None) -> bool:
    """Whether ``renderer`` (a processor or tokenizer) with ``chat_template_kwargs`` shows the
    model a tool given as ``tools=``."""
    kwargs = dict(chat_template_kwargs or {})
    return _PROBES.get(_key("tools", renderer, kwargs), lambda: _PROBE_TOOL in _render(
        renderer, [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}], kwargs,
        tools=_PROBE_TOOLS))


def agrees_without_tools(renderer: Any, chat_template_kwargs: dict[str, Any] | None, template: str) -> bool:
    """Whether ``renderer``'s own template and ``template`` render every probe conversation
    without tools to the same text (with and without the generation prompt)."""
    kwargs = dict(chat_template_kwargs or {})

    def agree() -> bool:
        ours = {**kwargs, "chat_template": template}
        return all(_render(renderer, conv, kwargs, add_generation_prompt=g) ==
                   _render(renderer, conv, ours, add_generation_prompt=g)
                   for conv in _AGREEMENT_PROBES for g in (True, False))

    return _PROBES.get(_key("agrees", renderer, kwargs, template), agree)


def tools_template_kwargs(renderer: Any, chat_template_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The chat-template kwargs a ``tools``-mode rollout renders with (module docstring):
    ``chat_template_kwargs`` when their template renders tools, else the same with our
    template as ``chat_template``. Raises ``ValueError`` when neither fits."""
    kwargs = dict(chat_template_kwargs or {})
    if renders_tools(renderer, kwargs):
        return kwargs
    ours = tools_chat_template()
    if agrees_without_tools(renderer, kwargs, ours):
        return {**kwargs, "chat_template": ours}
    raise ValueError("protocol 'tools' needs a chat template that renders tools: the model's does not, and it "
                     "is not the Qwen2.5-VL template ours extends; give the rollout a template with tool "
                     "support (data.apply_chat_template_kwargs.chat_template) or use protocol 'tags'")


def _key(kind: str, renderer: Any, kwargs: dict[str, Any], *more: str) -> tuple[str, ...]:
    """A probe's answer depends on the renderer's class and template and on the kwargs."""
    own = getattr(renderer, "chat_template", None)
    parts = [json.dumps(own, sort_keys=True, default=repr), json.dumps(kwargs, sort_keys=True, default=repr), *more]
    return (kind, type(renderer).__name__, *(hashlib.sha1(p.encode()).hexdigest() for p in parts))


# Probe answers by renderer class, template and kwargs: every sample of a worker asks.
_PROBES: LoadOnce[bool] = LoadOnce(maxsize=64, name="rl.template_probes")

__all__ = ["TOOLS_TEMPLATE", "agrees_without_tools", "renders_tools", "tools_chat_template",
           "tools_template_kwargs"]
