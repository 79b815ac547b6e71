"""Which files and addresses a run may name, when the graph is served.

A client of the LangGraph server sends the run's input and Context as JSON; every field
that names a file (media, replay cassette, system prompt, knowledge base, checkpoints, model
folders) or an address the server would call (model and retrieval URLs) is checked here
before anything is opened, so that a request cannot read ``/etc/passwd`` through the
system prompt or learn whether a file exists from an error message.

The policy is on when the operator lists roots in ``SEGRESEARCH_MEDIA_ROOTS`` (the serving
command always does). Values equal to what the operator set in the server's own
environment (``SEGRESEARCH_<FIELD>``) are trusted as they are. Narrower roots may be given
per kind: ``SEGRESEARCH_KB_ROOTS``, ``SEGRESEARCH_MODEL_ROOTS`` (cassettes, checkpoints,
model folders); outputs go only under ``SEGRESEARCH_OUTPUT_ROOT`` (a relative
``output_dir`` is placed inside it); model and retrieval URLs other than the operator's
only when their prefix is listed in ``SEGRESEARCH_ALLOWED_URLS`` (comma-separated).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segresearch.agents.context import ContextError
from segresearch.tools.media import MEDIA_ROOTS_ENV, UPLOAD_ROOT_ENV, allowed_roots, resolved_roots

if TYPE_CHECKING:
    from segresearch.agents.context import Context

KB_ROOTS_ENV = "SEGRESEARCH_KB_ROOTS"
MODEL_ROOTS_ENV = "SEGRESEARCH_MODEL_ROOTS"
OUTPUT_ROOT_ENV = "SEGRESEARCH_OUTPUT_ROOT"
ALLOWED_URLS_ENV = "SEGRESEARCH_ALLOWED_URLS"


class PathRefused(ContextError):
    """A path or address outside what the operator allowed; the message never says whether
    the file exists or what it holds."""


def policy_active() -> bool:
    return allowed_roots() is not None


def _roots(env: str) -> list[Path]:
    specific = list(resolved_roots(os.environ.get(env, "")))
    return specific or (allowed_roots() or [])


def _inside(path: str, roots: Iterable[Path]) -> bool:
    # resolve() follows every symlink that exists, so a link inside a root that points out
    # of it is judged by its target; ``..`` is folded the same way.
    real = Path(path).expanduser().resolve()
    return any(real == r or real.is_relative_to(r) for r in roots)


def output_root() -> Path | None:
    raw = os.environ.get(OUTPUT_ROOT_ENV, "").strip()
    return Path(raw).expanduser().resolve() if raw else None


def upload_root() -> Path | None:
    """Where the server keeps uploaded media (None: it takes no uploads). Reading there is
    allowed through ``allowed_roots``; writing there only through the upload route."""
    raw = os.environ.get(UPLOAD_ROOT_ENV, "").strip()
    return Path(raw).expanduser().resolve() if raw else None


def served_output(path: str | os.PathLike[str]) -> Path | None:
    """``path`` resolved, when a client may read it back over the API: only what runs wrote
    under the output root (a thread's state names its run folder, but a state can be
    written by clients too, so the folder is checked again before anything is served)."""
    root = output_root()
    if root is None or not str(path).strip():
        return None
    return Path(path).expanduser().resolve() if _inside(str(path), [root]) else None


def _operator_value(name: str) -> str:
    """What the server's own environment sets for a Context field ('' when unset)."""
    from segresearch.agents.context import DEFAULT_MODEL

    default = DEFAULT_MODEL if name == "model" else ""
    return os.environ.get(f"SEGRESEARCH_{name.upper()}", default) or default


def _url_allowed(url: str) -> bool:
    prefixes = [p.strip() for p in os.environ.get(ALLOWED_URLS_ENV, "").split(",") if p.strip()]
    return any(url.rstrip("/").startswith(p.rstrip("/")) for p in prefixes)


def _model_problem(spec: str) -> str | None:
    kind, _, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind in ("replay", "hf"):
        if rest and _inside(rest, _roots(MODEL_ROOTS_ENV)):
            return None
        return f"model: the {kind} path is outside the allowed roots ({MODEL_ROOTS_ENV} or {MEDIA_ROOTS_ENV})"
    if kind == "openai":
        _, at, url = rest.rpartition("@")
        if at and url and _url_allowed(url):
            return None
        return f"model: only the server's own model endpoint may be used (or one listed in {ALLOWED_URLS_ENV})"
    return None  # an unknown backend fails on its own, with the usual message


def check_context_paths(ctx: Context, given: Iterable[str] | None = None) -> None:
    """Refuse (PathRefused) any path or address in ``ctx`` the policy does not allow.

    ``given`` names the fields the client set; others came from the operator's environment
    and are trusted. Without it every field is checked against the operator's values."""
    if not policy_active():
        return
    fields_given = set(given) if given is not None else None
    problems: list[str] = []

    def client_set(name: str, value: Any) -> bool:
        if fields_given is not None and name not in fields_given:
            return False
        return isinstance(value, str) and value.strip() != "" and value != _operator_value(name)

    if client_set("model", ctx.model) and (p := _model_problem(str(ctx.model))):
        problems.append(p)
    for name, env in (("system_prompt_file", MEDIA_ROOTS_ENV), ("kb", KB_ROOTS_ENV),
                      ("sam2_checkpoint", MODEL_ROOTS_ENV)):
        value = getattr(ctx, name)
        if client_set(name, value) and not _inside(value, _roots(env)):
            where = env if env == MEDIA_ROOTS_ENV else f"{env} or {MEDIA_ROOTS_ENV}"
            problems.append(f"{name}: the path is outside the allowed roots ({where})")
    cfg = ctx.sam2_config
    if client_set("sam2_config", cfg) and (Path(cfg).is_absolute() or ".." in Path(cfg).parts
                                           or cfg.startswith("~")):
        problems.append("sam2_config: give the name of a config shipped in the sam2 package")
    if client_set("retriever_url", ctx.retriever_url) and not _url_allowed(ctx.retriever_url):
        problems.append(f"retriever_url: only the server's own retriever may be used (or one listed in {ALLOWED_URLS_ENV})")
    if ctx.allow_private_urls and (fields_given is None or "allow_private_urls" in fields_given) \
            and os.environ.get("SEGRESEARCH_ALLOW_PRIVATE_URLS", "").lower() not in ("1", "true", "yes", "on"):
        problems.append("allow_private_urls: only the operator may allow fetching private addresses")
    for name in ("output_dir", "search_cache"):
        value = getattr(ctx, name)
        if client_set(name, value) and value.lower() != "off":
            root = output_root()
            if root is None:
                problems.append(f"{name}: this server writes no files for clients (no {OUTPUT_ROOT_ENV})")
            elif not _inside(str(root / value), [root]):
                problems.append(f"{name}: the path is outside the output root ({OUTPUT_ROOT_ENV})")
    if problems:
        raise PathRefused(problems)


def resolve_output(path: str) -> Path:
    """Where a run writes: a relative folder goes under the output root when the policy is
    on (clients name folders relative to it); otherwise the path as given."""
    root = output_root()
    p = Path(path).expanduser()
    if policy_active() and root is not None and not p.is_absolute():
        return root / p
    return p


def media_paths(media: Any) -> list[str]:
    """The paths ``media`` names (a path or a non-empty list of paths; None names none)."""
    if media is None:
        return []
    if isinstance(media, str):
        return [media]
    if isinstance(media, list) and media and all(isinstance(m, str) for m in media):
        return media
    raise ContextError("media: must be a path or a non-empty list of paths")


def check_input(data: Mapping[str, Any] | Any) -> None:
    """The run input a client sent: a query string and media as a path or list of paths,
    each inside the media roots (checked here, before anything is opened)."""
    if not isinstance(data, Mapping):
        raise ContextError(f"input must be a JSON object, not {type(data).__name__}")
    problems: list[str] = []
    query = data.get("query")
    if query is not None and not isinstance(query, str):
        problems.append("query: must be a string")
    paths: list[str] = []
    try:
        paths = media_paths(data.get("media"))
    except ContextError as e:
        problems += e.problems
    if problems:
        raise ContextError(problems)
    roots = allowed_roots()
    if roots is not None and any(p.strip() and not _inside(p, roots) for p in paths):
        raise PathRefused(f"media: the path is outside the allowed roots ({MEDIA_ROOTS_ENV})")
