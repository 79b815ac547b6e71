"""What differs between chat-model providers once the graph speaks through native tool calls.

The graph's tools return text and images. Every provider takes the text as a tool result,
but not every provider takes images there, so :func:`image_placement` says which form a
model needs and the graph builds the messages (``segresearch.core.tool_protocol``):

* OpenAI's chat completions (and the OpenAI-compatible servers, vLLM and SGLang, that copy
  its schema) accept images only in user messages: a ``role: "tool"`` message's content is
  text. A tool's images follow its ``ToolMessage`` as a user message (``"after"``).
* Anthropic's Messages API takes image blocks inside a ``tool_result`` block (``"inside"``);
  so do Claude on Bedrock and Vertex.
* Google's Gemini API documents images inside a function response only for Gemini 3, as
  ``functionResponse.parts``; ``langchain-google-genai`` does not write that form (it puts a
  ToolMessage's images beside the function response, as sibling parts of the same turn),
  so Gemini gets the form every Gemini model accepts: the function response, then a user
  turn with the images (``"after"``).

:func:`provider_family` names the API family a model or spec talks to; per-family defaults
(the coordinate convention, the placement above) key on it.
"""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage

from segresearch.agents.content import inline_media
from segresearch.agents.model_spec import ModelSpec
from segresearch.core.tool_protocol import ImagePlacement

ProviderFamily = Literal["openai", "anthropic", "google", "qwen", "other"]

# LangChain integration classes (by name, so no optional package is imported to ask) and
# the family whose API each speaks. Checked along the class's MRO, so a subclass (our
# OpenAICompatChatModel, a user's ChatAnthropic subclass) belongs to its base's family.
_CLASS_FAMILY: dict[str, ProviderFamily] = {
    "ChatOpenAI": "openai",
    "AzureChatOpenAI": "openai",
    "BaseChatOpenAI": "openai",
    "ChatAnthropic": "anthropic",
    "ChatAnthropicVertex": "anthropic",
    "ChatAnthropicBedrock": "anthropic",
    "ChatGoogleGenerativeAI": "google",
    "ChatVertexAI": "google",
}
# Spec providers (``provider:model``) and their family.
_PROVIDER_FAMILY: dict[str, ProviderFamily] = {
    "anthropic": "anthropic",
    "google_anthropic_vertex": "anthropic",
    "google_genai": "google",
    "google_vertexai": "google",
    "azure_openai": "openai",
}
# Classes whose provider takes image blocks inside a tool result, whatever their family:
# Bedrock's Converse API takes images in a toolResult's content too.
_INSIDE_CLASSES = frozenset({"ChatBedrockConverse"})
_OPENAI_PREFIXES = ("gpt-", "chatgpt", "o1", "o3", "o4")
_PLACEMENT: dict[ProviderFamily, ImagePlacement] = {
    "openai": "after",
    "qwen": "after",  # served by vLLM / SGLang behind OpenAI's chat-completions schema
    "anthropic": "inside",
    "google": "after",
    "other": "after",
}


def _model_name(model: Any) -> str:
    for attr in ("model_name", "model", "model_id", "model_path"):
        name = getattr(model, attr, None)
        if isinstance(name, str) and name:
            return name
    return ""


def _is_qwen(name: str) -> bool:
    return "qwen" in name.lower()


def _is_openai_name(name: str) -> bool:
    """An OpenAI model's name (what a proxy in front of OpenAI's API serves too)."""
    return name.lower().startswith(_OPENAI_PREFIXES)


def _spec_family(spec: ModelSpec) -> ProviderFamily:
    if spec.backend == "openai":
        try:
            name, url = spec.openai_endpoint()
        except ValueError:
            return "other"
        if _is_qwen(name):
            return "qwen"
        # without a URL: OpenAI's API (or the proxy OPENAI_BASE_URL names); a server of
        # one's own speaks OpenAI's schema, but only an OpenAI model name makes it OpenAI
        return "openai" if url is None or _is_openai_name(name) else "other"
    if spec.backend == "hf":
        return "qwen" if _is_qwen(spec.target) else "other"
    return _PROVIDER_FAMILY.get(spec.backend, "other")


def _class_names(model: Any) -> list[str]:
    return [c.__name__ for c in type(model).__mro__]


def provider_family(model: str | BaseChatModel | Any) -> ProviderFamily:
    """The API family of a model spec string or chat model object: ``"openai"`` (OpenAI's
    API), ``"anthropic"``, ``"google"`` (Gemini), ``"qwen"`` (a Qwen model on an
    OpenAI-compatible server or a local checkpoint) or ``"other"``."""
    if isinstance(model, str):
        return _spec_family(ModelSpec.parse(model))
    if _is_qwen(_model_name(model)):
        return "qwen"
    for name in _class_names(model):
        if name in _CLASS_FAMILY:
            family = _CLASS_FAMILY[name]
            base_url = getattr(model, "openai_api_base", None)
            if (family == "openai" and base_url and "api.openai.com" not in str(base_url)
                    and not _is_openai_name(_model_name(model))):
                return "other"  # OpenAI's schema on a server of one's own, another model
            return family
    return "other"


def image_placement(model: str | BaseChatModel | Any) -> ImagePlacement:
    """Where a tool's images go for ``model`` (a chat model or a spec): ``"inside"`` the
    tool result, or ``"after"`` it as a user message (the form every vision chat API
    accepts). A model class may declare its own with a ``tool_image_placement`` attribute."""
    declared = getattr(model, "tool_image_placement", None)
    if declared in ("after", "inside"):
        return declared
    if not isinstance(model, str) and any(n in _INSIDE_CLASSES for n in _class_names(model)):
        return "inside"
    return _PLACEMENT[provider_family(model)]


def messages_for(model: BaseChatModel | Any, messages: list[BaseMessage]) -> list[BaseMessage]:
    """``messages`` as ``model`` must receive them: the graph's images are ``media-ref:``
    URLs into the media store, which only our backends resolve; any other chat model (a
    LangChain provider's class, a user's own) gets them as data URLs, which every LangChain
    integration converts to its provider's image form (Anthropic's base64 source, Gemini's
    inline data, OpenAI's image_url)."""
    # Our backends declare ``resolves_media_refs`` (the OpenAI-compatible one inlines per
    # request, the local, replay and verl ones read the pixels from the store).
    return messages if getattr(model, "resolves_media_refs", False) else inline_media(messages)


__all__ = ["ImagePlacement", "ProviderFamily", "image_placement", "messages_for", "provider_family"]
