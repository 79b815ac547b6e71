"""The model a command names, checked before any folder is made or query runs."""

from __future__ import annotations

from pathlib import Path

from segresearch.agents.backends.langchain_chat import provider_problem
from segresearch.agents.backends.openai_compat import make_openai_model
from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.model_spec import ModelSpec
from segresearch.graphs.preflight import probe_endpoint


def check_model(spec: str, timeout: float) -> str | None:
    """A one-line reason why ``spec`` cannot work, found before the run starts."""
    parsed = ModelSpec.parse(spec)
    if parsed.backend == "openai":
        try:
            name, url = parsed.openai_endpoint()
            if not url:  # the hosted API: its key must be there (nothing is sent yet)
                make_openai_model(name, None)
        except ValueError as e:
            return f"--model {spec}: {e}"
        return probe_endpoint(url, timeout) if url else None
    if parsed.problem:
        return parsed.problem
    if parsed.provider is not None:  # its package and its key (nothing is sent yet)
        problem = provider_problem(parsed)
        return f"--model {spec}: {problem}" if problem else None
    if parsed.backend == "hf":
        if not Path(parsed.target).expanduser().exists():
            return f"model checkpoint not found: {parsed.target}"
        return None
    try:
        ReplayChatModel.from_file(parsed.target)
    except ValueError as e:
        return str(e)
    return None
