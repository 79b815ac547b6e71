"""Which coordinate convention a run's model answers in (``Context.coord_style``).

``coord_style`` is ``"auto"`` by default: each model family answers boxes in the convention it
was trained on (Qwen3-VL 0–1000, Qwen2.5-VL pixels of the image it saw, Gemini y-first
0–1000), and asking a model for another one costs accuracy. The family is read from the model
spec (or a chat model object's model name) here, once, and every reader of the setting (the
graph's prompt, answer, review and segmentation, the evaluation's saved settings, the CLI)
goes through :func:`resolved_coord_style`, so they cannot disagree about what "auto" meant.

The tag protocol is the published one: its prompt and checkpoints use Qwen3-VL's grid, or
Qwen2.5-VL's pixels for a Qwen2.5-VL (the published recipe), so there "auto" never picks a
convention the trained models were not taught. In the tool-calling protocol a model outside
the known families is asked for fractions 0–1 of the frame, the form a general model
writes most reliably when told (``segresearch.core.coords.describe_convention``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel

from segresearch.agents.backends.hf_local import HFChatModel
from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.context import Context
from segresearch.agents.model_spec import ModelSpec
from segresearch.agents.path_policy import resolve_model_spec
from segresearch.core.coords import AUTO
from segresearch.core.shared_cache import LoadOnce

Family = Literal["qwen3", "qwen25", "gemini", "replay", "other"]

# Model names as providers and hubs spell them ("Qwen/Qwen2.5-VL-7B-Instruct",
# "qwen2_5_vl" in a checkpoint's config.json, "models/gemini-2.5-pro").
_QWEN25 = re.compile(r"qwen2[._-]?5[._-]?vl")
_QWEN3 = re.compile(r"qwen3[._-]?vl")
_GEMINI = re.compile(r"gemini")
# Attributes LangChain chat models keep their model name in (ChatOpenAI: model_name,
# ChatAnthropic / ChatGoogleGenerativeAI: model; others: model_id).
_NAME_ATTRS = ("model_name", "model", "model_id")


def family_of_name(name: str) -> Family:
    """The family a model name (a hub id, a served name, a checkpoint folder) belongs to."""
    low = name.lower()
    if _QWEN25.search(low):
        return "qwen25"
    if _QWEN3.search(low):
        return "qwen3"
    if _GEMINI.search(low):
        return "gemini"
    return "other"


# A checkpoint's family by its config file's path and version: read once per edit.
_CHECKPOINT_FAMILIES: LoadOnce[Family] = LoadOnce(maxsize=64, name="models.checkpoint_families")


def _checkpoint_family(path: str) -> Family:
    """A local checkpoint's family from its ``config.json`` ``model_type`` (a fine-tuned
    folder's name rarely says which base model it came from)."""
    config_file = Path(path).expanduser() / "config.json"
    try:
        stamp = config_file.stat().st_mtime_ns
    except OSError:
        return "other"
    return _CHECKPOINT_FAMILIES.get((str(config_file), stamp), lambda: _read_family(config_file))


def _read_family(config_file: Path) -> Family:
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "other"
    kind = config.get("model_type") if isinstance(config, dict) else None
    return family_of_name(kind.replace("_", "-")) if isinstance(kind, str) else "other"


def _spec_family(spec: ModelSpec) -> Family:
    if spec.backend == "replay":
        return "replay"
    if spec.backend == "openai":
        try:
            name = spec.openai_endpoint()[0]
        except ValueError:
            name = spec.target
        return family_of_name(name)
    if spec.backend == "hf":
        found = family_of_name(spec.target)
        if found != "other":
            return found
        try:  # only a file the serving policy lets a run open is read
            return _checkpoint_family(ModelSpec.parse(resolve_model_spec(spec)).target)
        except ValueError:
            return "other"
    # LangChain's provider:model form ("google_genai:gemini-2.5-pro", "anthropic:claude-…")
    # and a bare name: the model name is what follows the provider
    return family_of_name(spec.target or spec.text)


def model_family(model: str | BaseChatModel | Any) -> Family:
    """The family of a model spec string or chat model object ("other" when unknown)."""
    if isinstance(model, str):
        return _spec_family(ModelSpec.parse(model))
    if isinstance(model, ReplayChatModel):
        return "replay"
    if isinstance(model, HFChatModel):
        found = family_of_name(model.model_path)
        return found if found != "other" else _checkpoint_family(model.model_path)
    for attr in _NAME_ATTRS:
        name = getattr(model, attr, None)
        if isinstance(name, str) and name:
            return family_of_name(name)
    return "other"


def coord_style_for(model: str | BaseChatModel | Any, protocol: str, setting: str = AUTO) -> str:
    """The convention a run of ``model`` in ``protocol`` ("tags" or "tools") answers in:
    ``setting`` when it names one, else the family's own.

    A replay cassette plays back a recording, not a family: it is read on the project's
    default grid (Qwen3-VL's 0-1000, what the demo and test cassettes hold); a cassette
    recorded from another family says so with an explicit ``coord_style``."""
    if setting != AUTO:
        return setting
    family = model_family(model)
    if family == "qwen25":
        return "qwen25"
    if protocol != "tools" or family in ("qwen3", "replay"):
        return "qwen3"
    return "gemini" if family == "gemini" else "normalized"


def resolved_coord_style(ctx: Context) -> str:
    """The convention ``ctx``'s model answers in: one of ``core.coords.CONVENTIONS``."""
    return coord_style_for(ctx.model, ctx.protocol, ctx.coord_style)


__all__ = ["Family", "coord_style_for", "family_of_name", "model_family", "resolved_coord_style"]
