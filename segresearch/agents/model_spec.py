"""A model spec string (``openai:NAME@URL``, ``hf:PATH``, ``replay:PATH``) read once.

The spec is a string so that it can travel as JSON over the server API and through
environment variables, but the loader, the CLI's early check, the serving policy, the
preflight, the web page's status probe and the evaluation's resolver all need its parts.
They take them from :class:`ModelSpec` rather than splitting the string each their own way,
so a spec one of them accepts is read the same way by all (a space after the colon or an
upper-case backend once meant different things to different readers).

The split of ``NAME@URL`` lives here too (:func:`parse_openai_spec`): it is pure string work,
and the readers above must not have to import the OpenAI client to do it.

Besides our own backends a spec may name a LangChain provider the way
``langchain.chat_models.init_chat_model`` does (``anthropic:claude-...``,
``google_genai:gemini-...``, ``groq:...``). ``openai:`` stays ours (the OpenAI client with the
stop-string repair, on the default endpoint or an OpenAI-compatible server after ``@``).
:data:`PROVIDERS` says, for each LangChain provider, which package brings it, which extra of
ours installs that package and which environment variables hold its key, so the CLI's early
check and the loader give the same one-line answers without importing the package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

BACKENDS = ("openai", "hf", "replay")
# Backends whose target is a file (a checkpoint folder, a cassette): the serving policy
# checks it and the loader opens what was checked.
FILE_BACKENDS = ("hf", "replay")


@dataclass(frozen=True)
class Provider:
    """A LangChain chat-model provider as ``init_chat_model`` names it. ``package``: the
    pip distribution that brings its integration class (``module``); ``extra``: our optional
    extra that installs it ('' when we ship none: the package is named instead);
    ``key_env``: the environment variables its client reads the API key from (any one set
    is enough; empty when the provider needs none, e.g. a local Ollama)."""

    package: str
    module: str
    extra: str = ""
    key_env: tuple[str, ...] = ()

    @property
    def install_hint(self) -> str:
        """The one command that installs the integration."""
        return (f"pip install 'segresearch[{self.extra}]'" if self.extra
                else f"pip install {self.package}")


# LangChain's provider names (langchain 1.x, ``init_chat_model``) that a spec may use besides
# our own backends. ``openai`` is not among them: ``openai:`` keeps meaning our client.
PROVIDERS: dict[str, Provider] = {
    "anthropic": Provider("langchain-anthropic", "langchain_anthropic", "anthropic",
                          ("ANTHROPIC_API_KEY",)),
    "google_genai": Provider("langchain-google-genai", "langchain_google_genai", "google",
                             ("GOOGLE_API_KEY", "GEMINI_API_KEY")),
    "google_vertexai": Provider("langchain-google-vertexai", "langchain_google_vertexai"),
    "google_anthropic_vertex": Provider("langchain-google-vertexai", "langchain_google_vertexai"),
    "azure_openai": Provider("langchain-openai", "langchain_openai", "",
                             ("AZURE_OPENAI_API_KEY",)),
    "bedrock": Provider("langchain-aws", "langchain_aws"),
    "bedrock_converse": Provider("langchain-aws", "langchain_aws"),
    "cohere": Provider("langchain-cohere", "langchain_cohere", "", ("COHERE_API_KEY",)),
    "deepseek": Provider("langchain-deepseek", "langchain_deepseek", "", ("DEEPSEEK_API_KEY",)),
    "fireworks": Provider("langchain-fireworks", "langchain_fireworks", "",
                          ("FIREWORKS_API_KEY",)),
    "groq": Provider("langchain-groq", "langchain_groq", "", ("GROQ_API_KEY",)),
    "mistralai": Provider("langchain-mistralai", "langchain_mistralai", "", ("MISTRAL_API_KEY",)),
    "ollama": Provider("langchain-ollama", "langchain_ollama"),
    "together": Provider("langchain-together", "langchain_together", "", ("TOGETHER_API_KEY",)),
    "xai": Provider("langchain-xai", "langchain_xai", "", ("XAI_API_KEY",)),
}

SPEC_HELP = (
    "model spec must be 'openai:NAME@URL' (an OpenAI-compatible server such as "
    "`vllm serve`), 'openai:NAME' (the OpenAI API), a LangChain 'provider:model' such as "
    "'anthropic:claude-sonnet-4-5' or 'google_genai:gemini-2.5-pro', "
    "'hf:/path/to/checkpoint' or 'replay:cassette.json'"
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
        if self.backend not in BACKENDS and self.backend not in PROVIDERS:
            return f"unknown model backend {self.backend!r}: {SPEC_HELP}"
        return None

    @property
    def provider(self) -> Provider | None:
        """The LangChain provider this spec names (None: one of our own backends)."""
        return PROVIDERS.get(self.backend)

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
