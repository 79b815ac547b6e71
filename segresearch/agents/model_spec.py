"""A model spec string (``openai:NAME@URL``, ``hf:PATH``, ``replay:PATH``) read once.

The spec is a string so that it can travel as JSON over the server API and through
environment variables, but the loader, the CLI's early check, the serving policy, the
preflight, the web page's status probe and the evaluation's resolver all need its parts.
They take them from :class:`ModelSpec` rather than splitting the string each their own way,
so a spec one of them accepts is read the same way by all (a space after the colon or an
upper-case backend once meant different things to different readers).

The split of ``NAME@URL`` lives here too (:func:`parse_openai_spec`): it is pure string work,
and the readers above must not have to import the OpenAI client to do it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

BACKENDS = ("openai", "hf", "replay")
# Backends whose target is a file (a checkpoint folder, a cassette): the serving policy
# checks it and the loader opens what was checked.
FILE_BACKENDS = ("hf", "replay")

SPEC_HELP = (
    "model spec must be 'openai:NAME@URL' (an OpenAI-compatible server such as "
    "`vllm serve`), 'hf:/path/to/checkpoint' or 'replay:cassette.json'"
)


@dataclass(frozen=True)
class ModelSpec:
    """The parts of a model spec. ``raw``: the string as given (error messages quote it);
    ``backend``: what precedes the first ``:``, stripped and lower-cased ('' when there is no
    ``:``); ``target``: what follows it, stripped (a model name and endpoint, or a path)."""

    raw: str
    backend: str
    target: str

    @classmethod
    def parse(cls, spec: str) -> ModelSpec:
        """Never raises for a string: whether the spec can work is :attr:`problem`'s (or the
        backend's) to say, in the words each caller has always used."""
        kind, sep, rest = spec.strip().partition(":")
        return cls(spec, kind.strip().lower() if sep else "", rest.strip())

    @property
    def text(self) -> str:
        """The spec without surrounding whitespace (what caches and comparisons key on)."""
        return self.raw.strip()

    @property
    def names_file(self) -> bool:
        """Whether the target is a file the serving policy must check before it is opened."""
        return self.backend in FILE_BACKENDS

    @property
    def problem(self) -> str | None:
        """Why no backend can be chosen for this spec (None: one can; whether it then works
        is the backend's to say)."""
        if not self.backend or not self.target:
            return f"{SPEC_HELP}; got {self.text!r}"
        if self.backend not in BACKENDS:
            return f"unknown model backend {self.backend!r}: {SPEC_HELP}"
        return None

    def openai_endpoint(self) -> tuple[str, str | None]:
        """``(model name, base URL or None)`` of an ``openai:`` spec (``ValueError`` when the
        endpoint part is malformed; see :func:`parse_openai_spec`)."""
        return parse_openai_spec(self.target)

    def with_target(self, target: str) -> str:
        """The spec string for the same backend naming ``target`` (a resolved path)."""
        return f"{self.backend}:{target}"


def parse_openai_spec(spec: str) -> tuple[str, str | None]:
    """Split ``model@http://host:port/v1`` into model name and base URL.

    The split is at the last ``@`` and only when what follows is an http(s) URL, because
    model names may themselves contain ``@`` (e.g. revision pins) while a bare name must
    keep meaning "use the default endpoint".
    """
    spec = spec.strip()
    head, sep, tail = spec.rpartition("@")
    tail = tail.strip()
    if sep and tail.lower().startswith(("http://", "https://")):
        head = head.strip()
        if not head:
            raise ValueError(f"model name missing before '@' in {spec!r}")
        parts = urlsplit(tail)
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number or out of range
        except ValueError:
            raise ValueError(f"the endpoint {tail!r} after '@' has a malformed port; write "
                             "NAME@http://HOST:PORT/v1") from None
        if not parts.hostname:
            raise ValueError(f"the endpoint {tail!r} after '@' names no host; write "
                             "NAME@http://HOST:PORT/v1") from None
        return head, tail
    if not spec:
        raise ValueError("empty model spec")
    if sep and _looks_like_address(tail):
        raise ValueError(f"{tail!r} after '@' is not an http:// or https:// URL; write "
                         f"{head.strip() or 'NAME'}@http://{tail.split('://')[-1]}"
                         + ("" if "/" in tail.split("://")[-1] else "/v1")
                         + " for a server of your own")
    return spec, None


def _looks_like_address(text: str) -> bool:
    """Whether what follows the last ``@`` was meant as an endpoint (a scheme, a port, a
    path, a dotted host or ``localhost``) rather than part of a model name (``@rev``)."""
    t = text.lower()
    return ("://" in t or "/" in t or t.startswith("localhost")
            or re.fullmatch(r"[\w.-]+:\d*", t) is not None
            or re.fullmatch(r"[\w-]+(\.[\w-]+)+", t) is not None)
