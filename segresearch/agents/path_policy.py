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
only when an entry of ``SEGRESEARCH_ALLOWED_URLS`` (comma-separated) covers them.

Two rules make the checks hold:

* A path is resolved once, by :func:`resolve_client_path`, and what it returns is both what
  was checked and what is opened or written (the graph's nodes, the media reader and the
  model loader all call it). ``~``, environment variables and NUL are refused rather than
  expanded, so no later step can read the value differently.
* A URL is compared parsed (scheme, host, port, whole path segments), never as a string
  prefix, and the operator's API key goes only to the operator's own endpoints
  (:func:`api_key_allowed`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import httpx

from segresearch.agents.context import DEFAULT_MODEL, Context, ContextError
from segresearch.agents.model_spec import ModelSpec
from segresearch.core.envvars import env_bool, env_str
from segresearch.core.media import (
    MEDIA_ROOTS_ENV,
    UPLOAD_ROOT_ENV,
    PathNotAllowed,
    allowed_roots,
    confine_path,
    path_syntax_problem,
    resolved_roots,
)
from segresearch.core.shared_cache import LoadOnce

KB_ROOTS_ENV = "SEGRESEARCH_KB_ROOTS"
MODEL_ROOTS_ENV = "SEGRESEARCH_MODEL_ROOTS"
OUTPUT_ROOT_ENV = "SEGRESEARCH_OUTPUT_ROOT"
ALLOWED_URLS_ENV = "SEGRESEARCH_ALLOWED_URLS"
# Model specs of LangChain providers (``anthropic:claude-...``) a client may name besides the
# operator's own: such a spec spends the operator's key, so none is allowed by default.
ALLOWED_MODELS_ENV = "SEGRESEARCH_ALLOWED_MODELS"
# Where the openai client sends requests when neither the spec nor OPENAI_BASE_URL says.
DEFAULT_OPENAI_BASE = "https://api.openai.com/v1"

PathKind = Literal["media", "prompt", "kb", "model", "checkpoint", "output"]


class PathRefused(ContextError):
    """A path or address outside what the operator allowed; the message never says whether
    the file exists or what it holds."""


def policy_active() -> bool:
    return allowed_roots() is not None


def _roots(env: str) -> list[Path]:
    specific = list(resolved_roots(env_str(env)))
    return specific or (allowed_roots() or [])


def output_root() -> Path | None:
    raw = env_str(OUTPUT_ROOT_ENV)
    return Path(raw).expanduser().resolve() if raw else None


def upload_root() -> Path | None:
    """Where the server keeps uploaded media (None: it takes no uploads). Reading there is
    allowed through ``allowed_roots``; writing there only through the upload route."""
    raw = env_str(UPLOAD_ROOT_ENV)
    return Path(raw).expanduser().resolve() if raw else None


# ------------------------------------------------------------------------ paths


@dataclasses.dataclass(frozen=True)
class _Place:
    """Where one kind of client path may point, and how a refusal names that place."""

    roots: Callable[[], list[Path]]
    where: str


_PLACES: dict[str, _Place] = {
    "media": _Place(lambda: allowed_roots() or [], f"the allowed roots ({MEDIA_ROOTS_ENV})"),
    "prompt": _Place(lambda: allowed_roots() or [], f"the allowed roots ({MEDIA_ROOTS_ENV})"),
    "kb": _Place(lambda: _roots(KB_ROOTS_ENV),
                 f"the allowed roots ({KB_ROOTS_ENV} or {MEDIA_ROOTS_ENV})"),
    "model": _Place(lambda: _roots(MODEL_ROOTS_ENV),
                    f"the allowed roots ({MODEL_ROOTS_ENV} or {MEDIA_ROOTS_ENV})"),
    "checkpoint": _Place(lambda: _roots(MODEL_ROOTS_ENV),
                         f"the allowed roots ({MODEL_ROOTS_ENV} or {MEDIA_ROOTS_ENV})"),
    "output": _Place(lambda: [r] if (r := output_root()) else [],
                     f"the output root ({OUTPUT_ROOT_ENV})"),
}


def resolve_client_path(value: str | os.PathLike[str], kind: PathKind, *, name: str | None = None) -> Path:
    """The exact absolute path a client-named ``value`` will be opened or written at, or
    ``PathRefused`` (one line, starting with ``name``) when the policy forbids it.

    This is the only place such a value is resolved: callers check with it and then use
    what it returned, so the checked path and the used path are the same by construction.
    ``kind`` picks the roots: ``media`` (run input) and ``prompt`` (system_prompt_file)
    the media roots, ``kb`` the knowledge-base roots, ``model`` (replay:/hf: files) and
    ``checkpoint`` (sam2_checkpoint) the model roots, ``output`` (output_dir,
    search_cache) the output root, under which a relative value is placed. When the policy is off (local use) the value comes back with ``~``
    expanded, as it always did, and only a NUL byte is refused (a ``ContextError``)."""
    name = name or kind
    if not isinstance(value, (str, os.PathLike)):
        raise ContextError(f"{name}: must be a path")
    if not policy_active():
        try:
            return confine_path(value, None)
        except PathNotAllowed as e:
            raise ContextError(f"{name}: {e.reason}") from None
    place = _PLACES[kind]
    roots = place.roots()
    if kind == "output" and not roots:
        raise PathRefused(f"{name}: this server writes no files for clients (no {OUTPUT_ROOT_ENV})")
    try:
        return confine_path(value, roots, base=roots[0] if kind == "output" else None)
    except PathNotAllowed as e:
        if e.outside:
            raise PathRefused(f"{name}: the path is outside {place.where}") from None
        raise PathRefused(f"{name}: {e.reason}") from None


def served_output(path: str | os.PathLike[str]) -> Path | None:
    """``path`` resolved, when a client may read it back over the API: only what runs wrote
    under the output root (a thread's state names its run folder, but a state can be
    written by clients too, so the folder is checked again before anything is served)."""
    root = output_root()
    if root is None or not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        return None
    try:
        return confine_path(path, [root], base=root)
    except PathNotAllowed:
        return None


def resolve_output(path: str) -> Path:
    """Where a run writes for an output folder the operator chose (the CLI's ``--out``,
    ``SEGRESEARCH_OUTPUT_DIR``): a relative folder goes under the output root when the
    policy is on; otherwise the path as given, ``~`` expanded. A folder a client named
    goes through ``resolve_client_path`` first (``resolved_context`` does it), which
    makes it absolute and leaves nothing here to expand."""
    root = output_root()
    p = Path(path).expanduser()
    if policy_active() and root is not None and not p.is_absolute():
        return root / p
    return p


def _operator_value(name: str) -> str:
    """What the server's own environment sets for a Context field ('' when unset)."""
    default = DEFAULT_MODEL if name == "model" else ""
    return env_str(f"SEGRESEARCH_{name.upper()}", default)


def _is_operator_model(spec: str) -> bool:
    return spec.strip() == _operator_value("model").strip()


def resolve_model_spec(spec: str | ModelSpec) -> str:
    """The spec a model is built from: the file of a ``replay:PATH`` / ``hf:PATH`` spec a
    client named becomes the resolved path (``resolve_client_path``, kind ``model``), so
    the loader opens what was checked. Other specs, the operator's own spec and every spec
    when the policy is off come back as written (a NUL byte is refused either way)."""
    parsed = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)
    if not parsed.names_file:
        return parsed.raw
    if not policy_active() or _is_operator_model(parsed.raw):
        if "\x00" in parsed.target:
            raise ContextError(f"model: the {parsed.backend} path contains a NUL byte")
        return parsed.raw
    if not parsed.target:
        raise PathRefused(f"model: the {parsed.backend} spec names no file")
    return parsed.with_target(str(resolve_client_path(parsed.target, "model", name="model")))


# ------------------------------------------------------------------------- URLs


_DEFAULT_PORTS = {"http": 80, "https": 443}
# Percent-escapes that would let a path segment smuggle in a separator or a dot segment.
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|2e)", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A URL reduced to what decides where a request goes: scheme, host, port, path."""

    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]

    def covers(self, other: Endpoint) -> bool:
        """Whether a request to ``other`` stays inside this endpoint (same origin, and this
        path as a prefix of whole segments: ``/v1`` covers ``/v1/chat`` but not ``/v1evil``)."""
        return ((self.scheme, self.host, self.port) == (other.scheme, other.host, other.port)
                and other.segments[:len(self.segments)] == self.segments)


def _host(text: str) -> str:
    return text.lower().rstrip(".")


def parse_endpoint(url: str) -> Endpoint | None:
    """``url`` parsed the way the HTTP client will parse it (httpx), or None when it is
    not a plain http(s) URL: another scheme, userinfo (``http://a@b``), a backslash,
    control characters or spaces, a query or fragment, an encoded separator, or anything
    two parsers read differently. Hosts are compared case-insensitively, IDNA-encoded,
    without a trailing dot; a missing port is the scheme's default."""
    if not isinstance(url, str):
        return None
    text = url.strip()
    if not text or "\\" in text or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
        return None
    try:
        parsed = httpx.URL(text)
        split = urlsplit(text)
        split_host, split_port = split.hostname, split.port
    except (httpx.InvalidURL, ValueError, TypeError):
        return None
    scheme = parsed.scheme.lower()
    if scheme not in _DEFAULT_PORTS or parsed.userinfo or split.username is not None:
        return None
    if parsed.query or parsed.fragment or "?" in text or "#" in text:
        return None
    raw_host = _host(parsed.raw_host.decode("ascii", "replace"))
    if not raw_host or split_host is None or _host(split_host) not in (raw_host, _host(parsed.host)):
        return None
    port = parsed.port or _DEFAULT_PORTS[scheme]
    if (split_port or _DEFAULT_PORTS[scheme]) != port:
        return None
    raw_path = parsed.raw_path.decode("ascii", "replace")
    if _ENCODED_SEPARATOR.search(raw_path):
        return None
    segments = tuple(unquote(s) for s in raw_path.split("/") if s)
    if any(s in (".", "..") for s in segments):
        return None
    return Endpoint(scheme, raw_host, port, segments)


_ENDPOINTS: LoadOnce[tuple[Endpoint, ...]] = LoadOnce(maxsize=8, name="policy.allowed_urls")


def _allowed_endpoints(raw: str) -> tuple[Endpoint, ...]:
    """The entries of ``SEGRESEARCH_ALLOWED_URLS`` (parsed once per value); an entry that
    does not parse allows nothing (it is the operator's setting, so it is dropped rather
    than guessed at)."""
    return _ENDPOINTS.get(raw, lambda: tuple(e for e in map(parse_endpoint, raw.split(","))
                                             if e is not None))


def url_allowed(url: str) -> bool:
    """Whether a client may make the server call ``url``: an entry of
    ``SEGRESEARCH_ALLOWED_URLS`` must cover it, compared parsed (``Endpoint.covers``)."""
    target = parse_endpoint(url)
    return target is not None and any(
        e.covers(target) for e in _allowed_endpoints(env_str(ALLOWED_URLS_ENV)))


def _operator_model_url() -> str | None:
    """Where the operator's own model spec sends requests (None: it is no openai spec)."""
    spec = ModelSpec.parse(_operator_value("model"))
    if spec.backend != "openai":
        return None
    try:
        _, url = spec.openai_endpoint()
    except ValueError:
        return None
    return url or env_str("OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE


def api_key_allowed(base_url: str | None) -> bool:
    """Whether the operator's API key (from the server's environment) may be sent to
    ``base_url`` (None: where the openai client then goes): always when the policy is off;
    when served, only to the operator's own model endpoint or one that
    ``SEGRESEARCH_ALLOWED_URLS`` covers. Any other endpoint a client named gets no key,
    so a look-alike host cannot collect it."""
    if not policy_active():
        return True
    url = base_url or env_str("OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE
    target = parse_endpoint(url)
    if target is None:
        return False
    own = _operator_model_url()
    own_endpoint = parse_endpoint(own) if own else None
    return (own_endpoint is not None and own_endpoint.covers(target)) or url_allowed(url)


# ---------------------------------------------------------------------- Context


# Context fields that name a file, and where each may point.
_PATH_FIELDS: dict[str, PathKind] = {
    "system_prompt_file": "prompt",
    "kb": "kb",
    "sam2_checkpoint": "checkpoint",
    "output_dir": "output",
    "search_cache": "output",
}


def _client_value(name: str, value: Any, given: set[str] | None) -> bool:
    """Whether ``value`` came from the client (not the operator's environment)."""
    if given is not None and name not in given:
        return False
    return isinstance(value, str) and value.strip() != "" and value != _operator_value(name)


def _model_problem(raw: str) -> str | None:
    spec = ModelSpec.parse(raw)
    if spec.names_file:
        try:
            resolve_model_spec(spec)
        except ContextError as e:
            return "; ".join(e.problems)
        return None
    if spec.backend == "openai":
        try:
            _, url = spec.openai_endpoint()
        except ValueError:
            url = None
        if url and url_allowed(url):
            return None
        return f"model: only the server's own model endpoint may be used (or one listed in {ALLOWED_URLS_ENV})"
    if spec.provider is not None:
        if model_allowed(spec):
            return None
        return f"model: only the server's own model may be used (or one listed in {ALLOWED_MODELS_ENV})"
    return None  # an unknown backend fails on its own, with the usual message


def _spec_key(spec: ModelSpec) -> tuple[str, str]:
    return spec.backend, spec.target


def model_allowed(spec: ModelSpec) -> bool:
    """Whether a client may name the provider spec ``spec`` (``anthropic:claude-...``): an
    entry of ``SEGRESEARCH_ALLOWED_MODELS`` (comma-separated specs, compared as parsed, so
    ``Anthropic: claude-x`` is ``anthropic:claude-x``) must name it exactly."""
    allowed = {_spec_key(ModelSpec.parse(e)) for e in env_str(ALLOWED_MODELS_ENV).split(",") if e.strip()}
    return _spec_key(spec) in allowed


def _nul_problems(ctx: Context, given: set[str] | None) -> list[str]:
    return [f"{f.name}: contains a NUL byte" for f in dataclasses.fields(ctx)
            if (given is None or f.name in given) and isinstance(v := getattr(ctx, f.name), str)
            and "\x00" in v]


def _setting_problems(ctx: Context, given: set[str] | None) -> list[str]:
    """Problems with what is not a file path: model spec, URLs, sam2 config, private URLs."""
    problems: list[str] = []
    if _client_value("model", ctx.model, given) and (p := _model_problem(str(ctx.model))):
        problems.append(p)
    cfg = ctx.sam2_config
    if _client_value("sam2_config", cfg, given) and (
            path_syntax_problem(cfg) or Path(cfg).is_absolute() or ".." in Path(cfg).parts):
        problems.append("sam2_config: give the name of a config shipped in the sam2 package")
    if _client_value("retriever_url", ctx.retriever_url, given) and not url_allowed(ctx.retriever_url):
        problems.append(f"retriever_url: only the server's own retriever may be used (or one listed in {ALLOWED_URLS_ENV})")
    if ctx.allow_private_urls and (given is None or "allow_private_urls" in given) \
            and not env_bool("SEGRESEARCH_ALLOW_PRIVATE_URLS", False):
        problems.append("allow_private_urls: only the operator may allow fetching private addresses")
    return problems


def resolved_field(ctx: Context, name: str) -> str:
    """The value of the path field ``name`` as the run uses it: a file the client named is
    replaced by the path ``resolve_client_path`` checked (``PathRefused`` when it may not
    be used); the operator's own value, an empty one, a ``search_cache`` of 'off', and
    every value when the policy is off come back as they are (a NUL byte is refused)."""
    value = getattr(ctx, name)
    if not isinstance(value, str):
        return value
    if not policy_active():
        if "\x00" in value:
            raise ContextError(f"{name}: the path contains a NUL byte")
        return value
    if not _client_value(name, value, None) or (name == "search_cache" and value.strip().lower() == "off"):
        return value
    return str(resolve_client_path(value, _PATH_FIELDS[name], name=name))


def _resolved_paths(ctx: Context, given: set[str] | None) -> tuple[dict[str, str], list[str]]:
    """(the client's path fields as they will be used, the problems found)."""
    out: dict[str, str] = {}
    problems: list[str] = []
    for name in _PATH_FIELDS:
        if not _client_value(name, getattr(ctx, name), given):
            continue
        try:
            out[name] = resolved_field(ctx, name)
        except ContextError as e:
            problems += e.problems
    return out, problems


def _served_check(ctx: Context, given: set[str] | None) -> dict[str, str]:
    nul = _nul_problems(ctx, given)
    if not policy_active():
        if nul:
            raise ContextError(nul)
        return {}
    paths, problems = _resolved_paths(ctx, given)
    problems += _setting_problems(ctx, given)
    named = {p.partition(":")[0] for p in problems}
    problems += [p for p in nul if p.partition(":")[0] not in named]
    if problems:
        raise PathRefused(problems)
    return paths


def check_context_paths(ctx: Context, given: Iterable[str] | None = None) -> None:
    """Refuse (PathRefused) any path or address in ``ctx`` the policy does not allow.

    ``given`` names the fields the client set; others came from the operator's environment
    and are trusted. Without it every field is checked against the operator's values.
    With the policy off only a NUL byte is refused (a ``ContextError``)."""
    _served_check(ctx, set(given) if given is not None else None)


def resolved_context(ctx: Context) -> Context:
    """``ctx`` with every file a client named replaced by the path it is used at (see
    ``resolve_client_path``); ``ctx`` itself when nothing changes (policy off, or only
    the operator's values). Raises like ``check_context_paths``, of which it is the
    using half: a node that opens or writes a Context path takes it from here."""
    paths = _served_check(ctx, None)
    changed = {k: v for k, v in paths.items() if getattr(ctx, k) != v}
    return dataclasses.replace(ctx, **changed) if changed else ctx


# ------------------------------------------------------------------------ input


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
    each inside the media roots (checked here, before anything is opened, by the same
    resolver ``open_media`` uses)."""
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
    for p in paths:
        if p.strip():
            resolve_client_path(p, "media", name="media")
