"""Turning a model spec from the Context into a LangChain chat model.

Specs are strings so that they can be set as JSON over the server API; loading is cached
per spec so concurrent runs share one client or one set of weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel

from segresearch.agents.path_policy import resolve_model_spec
from segresearch.shared_cache import LoadOnce

# One client or set of weights per spec; concurrent first callers wait for the same load.
_MODELS: LoadOnce[BaseChatModel] = LoadOnce()

SPEC_HELP = (
    "model spec must be 'openai:NAME@URL' (an OpenAI-compatible server such as "
    "`vllm serve`), 'hf:/path/to/checkpoint' or 'replay:cassette.json'"
)


def _build(spec: str, timeout: float) -> BaseChatModel:
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"{SPEC_HELP}; got {spec!r}")
    kind = kind.strip().lower()
    if kind in ("hf", "replay"):  # the file is opened where the serving policy checked it
        rest = resolve_model_spec(spec).partition(":")[2]
    if kind == "openai":
        from segresearch.agents.backends.openai_compat import make_openai_model, parse_openai_spec

        name, url = parse_openai_spec(rest)
        return make_openai_model(name, url, timeout=timeout)
    if kind == "hf":
        from segresearch.agents.backends.hf_local import HFChatModel

        return HFChatModel.from_spec(rest)
    if kind == "replay":
        from segresearch.agents.backends.replay import ReplayChatModel

        return ReplayChatModel.from_file(rest)
    raise ValueError(f"unknown model backend {kind!r}: {SPEC_HELP}")


def _key(model: str, timeout: float) -> tuple[Any, ...]:
    key: tuple[Any, ...] = (model.strip(), float(timeout))
    if model.strip().lower().startswith("replay:"):  # an edited cassette is a new model
        try:  # the file _build would open; a refused or malformed path has no version
            path = resolve_model_spec(model.strip()).partition(":")[2]
            key += (Path(path).expanduser().stat().st_mtime_ns,)
        except (OSError, ValueError):
            pass
    return key


def resolve_model(model: str | BaseChatModel, *, timeout: float = 120.0) -> BaseChatModel:
    """A chat model for ``model`` (returned as is when it already is one)."""
    if isinstance(model, BaseChatModel):
        return model
    if not isinstance(model, str):
        raise TypeError(f"{SPEC_HELP}; got {type(model).__name__}")
    return _MODELS.get(_key(model, timeout), lambda: _build(model.strip(), timeout))


def model_loaded(model: str | BaseChatModel, *, timeout: float = 120.0) -> bool:
    """Whether ``resolve_model`` would return at once (no client to build, no weights to load)."""
    return not isinstance(model, str) or _MODELS.has(_key(model, timeout))


def clear_model_cache() -> None:
    _MODELS.clear()
