"""URLs fit for a message or a log line: a password, and where asked a query string (some
APIs carry keys there), never leave the process."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str, *, drop_query: bool = False) -> str:
    """``url`` with its password shown as ``***`` (the user name stays: it tells the operator
    which account was used) and, with ``drop_query``, without query and fragment."""
    try:
        parts = urlsplit(str(url))
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}" + (f":{port}" if port is not None else "")
        parts = parts._replace(netloc=netloc)
    if drop_query:
        parts = parts._replace(query="", fragment="")
    return urlunsplit(parts)
