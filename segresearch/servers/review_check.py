"""The server's early answer to a reply for the graph's review pause.

A run created with ``{"command": {"resume": VALUE}}`` hands VALUE to the paused ``review``
node. When the node cannot use it, it can only pause again with a ``problem`` in its next
interrupt, and langgraph-api reports that run as a success: a client that does not read the
thread's state afterwards never learns that its reply was ignored. The request guard
(``graph_app.RunPayloadGuard``) therefore reads the thread's pending interrupt first and
refuses such a request before any run exists:

- 422 ``{"detail": [problems], "accepted": [forms], "thread_status": "interrupted", ...}``
  for a reply the node would refuse (the thread stays paused, waiting for a good one);
- 409 for a resume to a thread with nothing pending (never ran, finished, or busy).

The rules are the node's own (``segresearch.agents.review``; for the ask_user pause,
``segresearch.agents.ask_user``), so the two cannot disagree.
The node still checks: a reply can race another one, and a Python caller bypasses the server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from segresearch.agents import ask_user
from segresearch.agents.review import ACCEPTED_FORMS, DECISION_KEYS, EDIT_KEYS, read_pause_reply
from segresearch.compat.langgraph_api import THREAD_RUN_CREATION
from segresearch.core.events import ASK_USER, REVIEW

_INTERRUPT_ID = re.compile(r"[0-9a-f]{32}")

Verdict = tuple[int, dict[str, Any]]


def check_resume(resume_value: Any, interrupt_payload: Any) -> list[str]:
    """Why the review node would refuse ``resume_value`` as a reply to the pause whose payload
    is ``interrupt_payload`` (empty when it would take it); an ask_user pause's reply is read
    by the ask_user node's rules. A payload of another kind, or lacking what the rules need,
    is not judged here: the node has the last word."""
    if isinstance(interrupt_payload, Mapping) and interrupt_payload.get("type") == ASK_USER:
        return ask_user.read_answer(resume_value).problems
    if not isinstance(interrupt_payload, Mapping) or interrupt_payload.get("type") != REVIEW:
        return []
    # the node resolves its reply with the same function (read_pause_reply), on its own payload
    got = read_pause_reply(interrupt_payload, resume_value)
    return got.problems if got is not None else []


def resume_of(body: Any) -> tuple[bool, Any]:
    """(whether the run body resumes an interrupt, the value). ``resume: null`` counts as no
    resume: LangGraph ignores it, and a client may send it beside an ``update``."""
    command = body.get("command") if isinstance(body, Mapping) else None
    if not isinstance(command, Mapping) or command.get("resume") is None:
        return False, None
    return True, command["resume"]


def thread_of(path: str) -> str | None:
    """The thread id of a thread-run creation path (``/threads/{id}/runs[/stream|/wait]``)."""
    m = THREAD_RUN_CREATION.fullmatch(path)
    return m.group(1) if m else None


def pending_interrupts(state: Any) -> list[dict[str, Any]]:
    """The thread state's pending interrupts ({id, value}), whichever of the two places
    langgraph-api reports them in (top-level ``interrupts``, or each task's), once each."""
    if not isinstance(state, Mapping):
        return []
    found: list[Any] = list(state.get("interrupts") or [])
    for task in state.get("tasks") or []:
        if isinstance(task, Mapping):
            found += list(task.get("interrupts") or [])
    seen: set[Any] = set()
    out: list[dict[str, Any]] = []
    for item in found:
        if not isinstance(item, Mapping):
            continue
        key = item.get("id") or id(item)
        if key not in seen:
            seen.add(key)
            out.append({"id": item.get("id"), "value": item.get("value")})
    return out


def resume_problems(resume_value: Any, interrupts: list[dict[str, Any]]) -> list[str]:
    """Problems of a resume against every pending interrupt it answers: a mapping from
    interrupt id to reply (as LangGraph allows) answers the ones it names, a plain reply
    all of them."""
    ids = {i["id"] for i in interrupts if i.get("id")}
    if _is_id_mapping(resume_value, ids):
        problems: list[str] = []
        stale = [k for k in resume_value if k not in ids]
        if stale:
            problems.append(f"no pending interrupt has the id(s) {', '.join(map(repr, stale))}; "
                            f"pending: {', '.join(sorted(ids)) or 'none'}")
        for item in interrupts:
            if item.get("id") in resume_value:
                problems += check_resume(resume_value[item["id"]], item.get("value"))
        return problems
    problems = []
    for item in interrupts:
        problems += [p for p in check_resume(resume_value, item.get("value")) if p not in problems]
    return problems


def _is_id_mapping(value: Any, ids: set[str]) -> bool:
    """Whether a resume value is keyed by interrupt id rather than being an edit. Keys that
    look like interrupt ids but name none pending are taken as ids too (a stale id), so the
    client hears that, rather than "unknown key" about what it meant as an id."""
    if not isinstance(value, Mapping) or not value or any(k in EDIT_KEYS or k in DECISION_KEYS for k in value):
        return False
    return all(isinstance(k, str) and (k in ids or _INTERRUPT_ID.fullmatch(k)) for k in value)


def refused(problems: list[str]) -> Verdict:
    return 422, {
        "detail": problems,
        "accepted": ACCEPTED_FORMS,
        "thread_status": "interrupted",
        "message": "the reply was refused and nothing was run: the thread is still interrupted, "
                   "waiting for a reply in one of the accepted forms",
    }


def nothing_pending(thread_id: str, status: str | None) -> Verdict:
    why = {"busy": "a run is in progress; resume once it pauses for a review or a question",
           "idle": "it is not paused (it has not run yet, or its run has finished)",
           "error": "its last run failed"}.get(status or "", "it has no pending interrupt")
    return 409, {"detail": f"thread {thread_id} is not waiting for a reply (to a review or a "
                           f"question), so there is "
                           f"nothing to resume: {why}",
                 "thread_status": status}


async def resume_verdict(path: str, body: Any, client: Any) -> Verdict | None:
    """(status, JSON body) when a thread-run request's resume must be refused, else None.

    ``client`` is an async langgraph_sdk client (the in-process one inside the server). Any
    failure to read the thread (unknown thread, server error) lets the request through: the
    server then answers it in its own words, and the node still checks the reply."""
    resuming, value = resume_of(body)
    thread_id = thread_of(path) if resuming else None
    if thread_id is None:
        return None
    try:
        state = await client.threads.get_state(thread_id, **_checkpoint_of(body))
    except Exception:  # noqa: BLE001 - not ours to answer; see the docstring
        return None
    interrupts = pending_interrupts(state)
    if not interrupts:
        return nothing_pending(thread_id, await _status(client, thread_id))
    problems = resume_problems(value, interrupts)
    if problems and all(_kind(i) == ASK_USER for i in interrupts):
        return refused_answer(problems)
    return refused(problems) if problems else None


def _kind(interrupt: Mapping[str, Any]) -> Any:
    value = interrupt.get("value")
    return value.get("type") if isinstance(value, Mapping) else None


def refused_answer(problems: list[str]) -> Verdict:
    """A reply to the model's question (the ask_user pause) that the node would refuse."""
    return 422, {
        "detail": problems,
        "accepted": ask_user.ACCEPTED_FORMS,
        "thread_status": "interrupted",
        "message": "the reply was refused and nothing was run: the thread is still interrupted, "
                   "waiting for an answer to the model's question in one of the accepted forms",
    }


def _checkpoint_of(body: Mapping[str, Any]) -> dict[str, Any]:
    """A run that resumes from a given checkpoint answers that checkpoint's interrupt."""
    checkpoint = body.get("checkpoint")
    if isinstance(checkpoint, Mapping) and checkpoint.get("checkpoint_id"):
        return {"checkpoint": dict(checkpoint)}
    if isinstance(body.get("checkpoint_id"), str):
        return {"checkpoint": {"checkpoint_id": body["checkpoint_id"]}}
    return {}


async def _status(client: Any, thread_id: str) -> str | None:
    try:
        thread = await client.threads.get(thread_id)
    except Exception:  # noqa: BLE001 - the status only words the message
        return None
    return thread.get("status") if isinstance(thread, Mapping) else None
