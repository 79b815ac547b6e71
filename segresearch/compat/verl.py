"""verl contact beyond its public API (written against verl 0.9.1).

The rollout policy (``rl/verl_model.py``) keeps a trajectory's token stream with verl's
continuous-token builder. verl's own wrappers for it (``AgentLoopBase.ct_merge_context_msg``
and ``ct_merge_assistant_token``) hop to an executor thread on every call, which costs more
than the rendering they wrap on a busy worker, so the builder is driven here directly, the
way those wrappers drive it. The multimodal check and the agent-loop registry are private
names of ``verl.experimental.agent_loop.agent_loop``; a ``tools``-mode rollout that needs
another chat template (rl/tools_template.py) gives the builder its kwargs through the
builder's ``chat_template_kwargs`` attribute. Each assumption has a contract test in
``tests/test_compat.py`` that names the installed verl when it fails.

verl is imported inside the functions that need the module: it comes with the optional
``[rl]`` extra, and the policy module must import without it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

TESTED_VERSION = "0.9.1"


def assert_multimodal_supported(agent_loop: Any, has_images: bool) -> None:
    """Raise ValueError before any token is built when a prompt has images and the loop's
    builder or processor cannot render them: verl 0.9.1's
    ``AgentLoopBase._assert_mm_supported(has_multi_modal)``, which its own multimodal loops
    call at the same point."""
    agent_loop._assert_mm_supported(has_images)


def merge_context(agent_loop: Any, previous: list[dict[str, Any]], updated: list[dict[str, Any]],
                  stream: list[int], mask: list[int], logprobs: list[float] | None,
                  tools: list[dict[str, Any]] | None = None) -> tuple[Any, list[int], list[float] | None]:
    """(merge result, mask, logprobs) after appending the messages ``updated`` has beyond
    ``previous`` to the token ``stream``: the body of verl 0.9.1's
    ``AgentLoopBase.ct_merge_context_msg`` without its executor hop. The result has
    ``token_ids``, ``appended_token_count`` and ``inserted_token_ids``. ``tools``: the tool
    definitions the prompt was rendered with (the template renders tool turns with them)."""
    builder = agent_loop.continuous_token_builder
    # verl 0.9.1's builder takes the tools as a keyword (its ct_merge_context_msg passes them)
    result = builder.merge_context_tokens(previous, updated, stream, **({"tools": tools} if tools else {}))
    new_mask, new_logprobs = builder.align_response_metadata(result, mask, logprobs)
    return result, new_mask, new_logprobs


def merge_assistant(agent_loop: Any, stream: list[int], generated: list[int], mask: list[int],
                    logprobs: list[float] | None,
                    generated_logprobs: list[float] | None) -> tuple[Any, list[int], list[float] | None]:
    """(merge result, mask, logprobs) after appending generated tokens to ``stream`` exactly
    as returned: the body of verl 0.9.1's ``AgentLoopBase.ct_merge_assistant_token`` without
    its executor hop."""
    builder = agent_loop.continuous_token_builder
    result = builder.merge_assistant_tokens(stream, generated)
    new_mask, new_logprobs = builder.align_response_metadata(
        result, mask, logprobs, assistant_logprobs=generated_logprobs)
    return result, new_mask, new_logprobs


def chat_template_kwargs(builder: Any) -> dict[str, Any]:
    """The chat-template kwargs verl's continuous-token ``builder`` renders with
    (``data.apply_chat_template_kwargs``): verl 0.9.1 keeps them in its
    ``chat_template_kwargs`` attribute and passes them to every ``apply_chat_template`` call."""
    return dict(builder.chat_template_kwargs or {})


def with_chat_template_kwargs(builder: Any, kwargs: dict[str, Any]) -> Any:
    """A copy of ``builder`` that renders with ``kwargs`` instead (the prompt and every merge:
    verl 0.9.1's builders read ``chat_template_kwargs`` at each render, never at construction);
    the rest of its state (tokenizer, processor, boundary tokens) is shared."""
    clone = copy.copy(builder)
    clone.chat_template_kwargs = dict(kwargs)
    return clone


def agent_loop_registry() -> Mapping[str, Mapping[str, Any]]:
    """Agent loops verl knows by name (``{"_target_": "module.Class"}`` each): the ones its
    ``@register`` decorator added, built-ins and ``external_lib`` ones included. verl 0.9.1
    keeps them in the private ``_agent_loop_registry`` and offers no accessor."""
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry  # heavy: [rl]

    return _agent_loop_registry
