"""Bearer-token authentication for the LangGraph API server (``langgraph.json`` ``"auth"``).

One shared secret is enough for the deployments this project has: a lab server that a few
scripts and notebooks talk to. The token comes from the server's own environment
(``SEGRESEARCH_API_TOKEN``), never from a file a client could name, and is read on every
request so that tests and operators can reason about one source of truth. Unset or empty
means authentication is off: a server on 127.0.0.1 for one user should start with no
ceremony, and ``segresearch serve graph`` refuses to bind anything but loopback in that case.

The token is never logged or echoed; langgraph-api already keeps the ``Authorization``
header out of its access log and out of run ``configurable``.
"""

from __future__ import annotations

import hmac

from langgraph_sdk import Auth

from segresearch.core.envvars import env_str
from segresearch.servers.web import public_paths

TOKEN_ENV = "SEGRESEARCH_API_TOKEN"
ANONYMOUS = "anonymous"

auth = Auth()


def expected_token() -> str:
    """Read on every call rather than at import: langgraph-api loads this file by path, so
    a value cached at import could differ from what ``/segresearch/info`` reports."""
    return env_str(TOKEN_ENV)


def auth_enabled() -> bool:
    return bool(expected_token())


def token_matches(authorization: bytes | str | None, expected: str) -> bool:
    """Whether an ``Authorization`` header carries ``expected`` as a bearer token.

    Works on the raw header bytes: a client may send any bytes, and decoding them first
    would turn a malformed header into a server error instead of a 401. The comparison is
    constant-time so the response time does not reveal how much of a guess was right.
    """
    if not authorization or not expected:
        return False
    raw = authorization.encode("utf-8") if isinstance(authorization, str) else authorization
    scheme, _, given = raw.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(given.strip(), expected.encode("utf-8"))


def is_public(method: str, path: str) -> bool:
    """The web page's own files (HTML, script, stylesheet: no data) load without a token,
    so that the page can come up and ask for one. Exact paths and GET/HEAD only: nothing
    under them, and nothing else, is public."""
    return method.upper() in ("GET", "HEAD") and path in public_paths()


@auth.authenticate
async def authenticate(headers: dict[bytes, bytes], method: str, path: str) -> Auth.types.MinimalUserDict:
    """Every protected route (and our custom routes) comes through here.

    The 401 detail names the scheme but not the reason (absent vs. wrong), so probing the
    server teaches nothing beyond "a bearer token is required".
    """
    expected = expected_token()
    if not expected or is_public(method, path):
        return {"identity": ANONYMOUS, "is_authenticated": True}
    if not token_matches(headers.get(b"authorization"), expected):
        raise Auth.exceptions.HTTPException(
            status_code=401, detail="a valid 'Authorization: Bearer <token>' header is required"
        )
    return {"identity": "token", "is_authenticated": True}
