"""Chat models of the LangChain providers a spec names as ``provider:model``.

``anthropic:claude-...``, ``google_genai:gemini-...`` and the other providers of
``langchain.chat_models.init_chat_model`` are built by LangChain itself, so a user gets the
same client (tool binding, streaming, image blocks) as anywhere else in LangChain. What we
add is the two answers a user needs before anything is sent, each in one line: which extra
to install when the integration package is missing, and which environment variable to set
when the key is. Keys are read only from the environment, by the provider's own client,
which holds them as ``SecretStr`` (masked in reprs, never serialised into state or logs).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from langchain.chat_models import init_chat_model
from langchain_core.language_models import BaseChatModel

from segresearch.agents.model_spec import ModelSpec, Provider
from segresearch.core.envvars import env_str

__all__ = ["make_provider_model", "provider_problem"]

# Request settings that match the OpenAI backend's (deterministic replies, a bounded turn),
# given only to the providers whose classes are known to take them under these names.
_SETTINGS: dict[str, dict[str, Any]] = {
    "anthropic": {"temperature": 0.0, "max_tokens": 1024, "max_retries": 2},
    "google_genai": {"temperature": 0.0, "max_tokens": 1024, "max_retries": 2},
}
_TIMEOUT_FIELD = {"anthropic": "timeout", "google_genai": "timeout"}


def _installed(provider: Provider) -> bool:
    try:
        return importlib.util.find_spec(provider.module) is not None
    except (ImportError, ValueError):
        return False


def provider_problem(spec: ModelSpec) -> str | None:
    """One line saying why the provider spec ``spec`` cannot be built here (its integration
    package is missing, or no variable holds its key); None when it can. Nothing is sent."""
    provider = spec.provider
    if provider is None:
        return None
    if not spec.target:
        return f"name the model after '{spec.backend}:'"
    if not _installed(provider):
        return (f"the {spec.backend} provider needs {provider.package}; "
                f"install it with `{provider.install_hint}`")
    if provider.key_env and not any(env_str(v) for v in provider.key_env):
        return f"no API key for {spec.backend}: set {' or '.join(provider.key_env)}"
    return None


def make_provider_model(spec: ModelSpec, *, timeout: float = 120.0) -> BaseChatModel:
    """The LangChain chat model for a ``provider:model`` spec (``ValueError`` with the one
    line of :func:`provider_problem`, after the spec, when it cannot be built)."""
    problem = provider_problem(spec)
    if problem:
        raise ValueError(f"model {spec.text!r}: {problem}")
    kwargs = dict(_SETTINGS.get(spec.backend, {}))
    if spec.backend in _TIMEOUT_FIELD:
        kwargs[_TIMEOUT_FIELD[spec.backend]] = timeout
    try:
        return init_chat_model(spec.target, model_provider=spec.backend, **kwargs)
    except ImportError as e:  # a dependency of the integration package itself
        raise ValueError(f"model {spec.text!r}: {' '.join(str(e).split())}") from None
