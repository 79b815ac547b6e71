"""The rules for a reply to the graph's ask_user pause, in one place.

The ``ask_user`` node (``segresearch.graphs.nodes``) and the server's request guard
(``segresearch.servers.review_check``) both read a reply with ``read_answer``: the node
because the reply goes to the model, the server so that an API client hears at once, with
an HTTP error, what the node would only say in its next pause.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The longest reply passed on to the model (a pasted document is not an answer to a question).
MAX_REPLY_CHARS = 4000

HOW = "resume with the answer as text, or {\"reply\": \"text\"}"

ACCEPTED_FORMS = [
    "the answer as a non-empty string (at most 4000 characters)",
    "{\"reply\": \"the answer\"} with that one key",
]


@dataclass(frozen=True)
class AskReply:
    """A reply read against the pause it answers: the text for the model, or why not."""

    reply: str | None
    problems: list[str] = field(default_factory=list)


def read_answer(value: Any) -> AskReply:
    """The text a reply to a question means, or every reason it is refused."""
    if isinstance(value, Mapping):
        extra = sorted(str(k) for k in value if k != "reply")
        if extra:
            return AskReply(None, [f"unknown key(s) {', '.join(map(repr, extra))} in an ask_user "
                                   f"reply; {HOW}"])
        if "reply" not in value:
            return AskReply(None, [f"an ask_user reply object needs a \"reply\" key; {HOW}"])
        value = value["reply"]
    if not isinstance(value, str):
        return AskReply(None, [f"an ask_user reply is text, not {type(value).__name__}; {HOW}"])
    text = value.strip()
    if not text:
        return AskReply(None, [f"the reply is empty; answer the question (e.g. \"I don't know\"); {HOW}"])
    if len(text) > MAX_REPLY_CHARS:
        return AskReply(None, [f"the reply has {len(text)} characters, more than {MAX_REPLY_CHARS}"])
    bad = next((i for i, ch in enumerate(text) if "\ud800" <= ch <= "\udfff"), None)
    if bad is not None:
        return AskReply(None, [f"the reply is not valid Unicode text (a lone surrogate at "
                               f"character {bad + 1}); send it as UTF-8"])
    return AskReply(text)


__all__ = ["ACCEPTED_FORMS", "HOW", "MAX_REPLY_CHARS", "AskReply", "read_answer"]
