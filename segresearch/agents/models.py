"""Turning a model spec from the Context into a LangChain chat model.

Specs are strings so that they can be set as JSON over the server API; loading is cached
per spec so concurrent runs share one client or one set of weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel

from segresearch.agents.backends.hf_local import HFChatModel
from segresearch.agents.backends.langchain_chat import make_provider_model
from segresearch.agents.backends.openai_compat import make_openai_model
from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.model_spec import SPEC_HELP, ModelSpec
from segresearch.agents.path_policy import resolve_model_spec
from segresearch.core.shared_cache import LoadOnce

# One client or set of weights per spec; concurrent first callers wait for the same load.
_MODELS: LoadOnce[BaseChatModel] = LoadOnce(name="models.chat")


def _served_file(spec: ModelSpec) -> str:
    """The file of an ``hf:`` / ``replay:`` spec where the serving policy checked it."""
    return ModelSpec.parse(resolve_model_spec(spec)).target


def _build(spec: ModelSpec, timeout: float) -> BaseChatModel:
    if spec.problem:
        raise ValueError(spec.problem)
    if spec.backend == "openai":
        name, url = spec.openai_endpoint()
        return make_openai_model(name, url, timeout=timeout)
    if spec.provider is not None:  # anthropic:, google_genai:, ... built by LangChain
        return make_provider_model(spec, timeout=timeout)
    if spec.backend == "hf":  # torch and transformers load with the first checkpoint
        return HFChatModel.from_spec(_served_file(spec))
    return ReplayChatModel.from_file(_served_file(spec))


def _key(spec: ModelSpec, timeout: float) -> tuple[Any, ...]:
    key: tuple[Any, ...] = (spec.text, float(timeout))
    if spec.backend == "replay":  # an edited cassette is a new model
        try:  # the file _build would open; a refused or malformed path has no version
            key += (Path(_served_file(spec)).expanduser().stat().st_mtime_ns,)
        except (OSError, ValueError):
            pass
    return key


def resolve_model(model: str | BaseChatModel, *, timeout: float = 120.0) -> BaseChatModel:
    """A chat model for ``model`` (returned as is when it already is one)."""
    if isinstance(model, BaseChatModel):
        return model
    if not isinstance(model, str):
        raise TypeError(f"{SPEC_HELP}; got {type(model).__name__}")
    spec = ModelSpec.parse(model)
    return _MODELS.get(_key(spec, timeout), lambda: _build(spec, timeout))


def model_loaded(model: str | BaseChatModel, *, timeout: float = 120.0) -> bool:
    """Whether ``resolve_model`` would return at once (no client to build, no weights to load)."""
    return not isinstance(model, str) or _MODELS.has(_key(ModelSpec.parse(model), timeout))


def clear_model_cache() -> None:
    _MODELS.clear()
