"""The run settings a client of the server sends, checked before the run starts.

A client sends the Context as JSON. Types, bounds and choices are the Context's own (a
Python caller meets the same checks, worded the same); what only a client can get wrong is
checked here besides: an object where JSON can only name one, and files or addresses the
serving policy (``path_policy``) does not allow. It sits above both modules so that the
Context knows nothing of the policy and the policy nothing of JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from segresearch.agents.context import Context, ContextError
from segresearch.agents.path_policy import check_context_paths

# Fields a Python caller may set to an object (a chat model, a SearchBackend); a client
# names one by a string.
_OBJECT_FIELDS = ("model", "search")


def validate_context(data: Mapping[str, Any] | None) -> Context:
    """A Context from JSON a client sent: unknown keys, wrong types and values out of bounds
    are refused (a ContextError listing every problem), and paths must pass the serving
    path policy (``PathRefused``). The graph applies the same policy again when it runs."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ContextError(f"context must be a JSON object, not {type(data).__name__}")
    problems = [f"{k}: must be a string" for k in _OBJECT_FIELDS if k in data and not isinstance(data[k], str)]
    settable = {str(k): v for k, v in data.items() if k not in _OBJECT_FIELDS or isinstance(v, str)}
    try:  # every problem in one answer, not one per request
        ctx = Context(**settable)
    except ContextError as e:
        raise ContextError(problems + e.problems) from None
    if problems:
        raise ContextError(problems)
    check_context_paths(ctx, given=set(data))
    return ctx


__all__ = ["validate_context"]
