"""A chat model that plays back recorded assistant turns.

Used by tests, the demo and the server's offline smoke runs: the rest of the graph (media,
search, keyframes, segmentation) runs for real while the policy is a recording. The turn
to play is the number of assistant messages already in the conversation, so one instance
serves any number of concurrent runs without shared state.

A cassette is a UTF-8 JSON file (``--model replay:FILE``) in one of three forms:

1. a list of turns, each the whole text of one assistant turn, in order::

       ["<thinking>Who won?</thinking><search>{\"name\": \"text_search\", \"query\": \"2031 cup\"}</search>",
        "<thinking>Frame 13 shows it.</thinking><keyframe> 13 </keyframe>",
        "<thinking>There.</thinking><answer>{\"bbox_2d\": [365, 566, 502, 772], \"point_2d\": [433, 669]}</answer>"]

2. an object ``{"turns": [...]}`` with the same list, and optionally ``"label"`` (where the
   turns came from, a note kept with the model), ``"latency"`` (seconds each turn takes, 0 to
   600, to stand in for a real model's pace) and any other keys, kept as metadata (the
   demo's cassette records its ``"query"``);

3. an object ``{"queries": {question: [turns]}}`` that records a whole evaluation: the turns
   are picked by the question the run was asked (the last text of the first user message,
   compared after stripping surrounding whitespace), so one spec replays a benchmark in any
   order and across processes. ``"turns"`` beside it answers every question not listed;
   ``"label"`` and ``"latency"`` work as in form 2.

A turn may also be a recorded assistant message with native tool calls (the tool-calling
protocol, ``Context.protocol="tools"``), an object instead of a string::

    {"content": "The winner first.",
     "tool_calls": [{"name": "text_search", "args": {"query": "2031 cup"}, "id": "call_1"}]}

``content`` (text, optional) and ``tool_calls`` (a list, optional) as LangChain's
``AIMessage`` holds them. ``id`` is optional: a missing one is made from the turn and the
call's position (``call_<turn>_<k>``), so a replay is the same every time. ``args`` is an
object, or the arguments' JSON as a provider sends it as text: text that is not a JSON object
becomes one of the message's ``invalid_tool_calls`` (what LangChain makes of a model's bad
JSON), so a cassette can record malformed calls too. Such a model is used through
``bind_tools``, which returns the same player bound to the tools (``bound_tools`` keeps the
last tools it was bound with, for tests).

Turn i answers a conversation that already holds i assistant messages. A turn is cut after
the first stop string the graph asks for (``</search>``, ``</keyframe>``), as a served model
stops there, and is counted in approximate tokens (words and punctuation) for the token
budgets. A run that asks for more turns than were recorded, or a question a ``queries``
cassette does not hold (with no ``"turns"`` to fall back on), fails its model step with a
message saying so. The README's "Replay cassettes" section shows the same with examples.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any, ClassVar

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from segresearch.core import cancel
from segresearch.core.protocol import cut_at_stop
from segresearch.core.tool_protocol import loads_arguments

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")

# The accepted forms, in the words every loading error ends with.
CASSETTE_FORMS = (
    'a cassette is a JSON list of assistant turns (["<thinking>...</thinking><answer>...</answer>"]), '
    'an object {"turns": [...]} (optional "label", "latency"), or '
    '{"queries": {"<question>": [...]}}; a turn is a string or a recorded message '
    '{"content": "...", "tool_calls": [{"name": ..., "args": {...}}]} (see README, "Replay cassettes")'
)


def approx_tokens(text: str) -> int:
    """A tokenizer-free token count (words and punctuation) for budgets of recorded turns."""
    return len(_TOKEN_RE.findall(text))


class ReplayExhausted(RuntimeError):
    """The conversation asked for more turns than the cassette holds."""


class ReplayChatModel(BaseChatModel):
    """Plays ``turns`` in order; turn i answers a conversation with i assistant messages."""

    # reads the graph's media-store references itself (segresearch.agents.providers.messages_for)
    resolves_media_refs: ClassVar[bool] = True

    turns: list[str | dict[str, Any]] = Field(default_factory=list)
    queries: dict[str, list[str | dict[str, Any]]] = Field(default_factory=dict)
    label: str = "recorded policy"
    source: str = ""
    latency: float = 0.0  # seconds each turn takes, to stand in for a real model's pace
    meta: dict[str, Any] = Field(default_factory=dict)
    bound_tools: list[dict[str, Any]] = Field(default_factory=list)  # the last bind_tools, for tests

    def bind_tools(self, tools: Any, *, tool_choice: str | None = None,
                   **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        """This player with ``tools`` bound, as a provider's model is: the recording decides
        what is called, so the tools are only recorded (``bound_tools``) and passed along."""
        defs = [convert_to_openai_tool(t) for t in tools]
        self.bound_tools = defs
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=defs, **kwargs)

    @classmethod
    def from_file(cls, path: str | Path) -> ReplayChatModel:
        """The cassette at ``path`` (the forms are in the module docstring). Every problem
        is a ``ValueError`` naming the file and the accepted forms, since the person who
        sees it is usually writing a cassette by hand."""
        p = Path(path).expanduser()
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"replay cassette not found: {p}") from None
        except IsADirectoryError:
            raise ValueError(f"replay cassette {p} is a folder; give the JSON file "
                             f"({CASSETTE_FORMS})") from None
        except UnicodeDecodeError:
            raise ValueError(f"replay cassette {p} is not UTF-8 text; {CASSETTE_FORMS}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"replay cassette {p} is not valid JSON ({e}); {CASSETTE_FORMS}") from None
        queries: dict[str, list[str]] = {}
        latency = 0.0
        if isinstance(data, list):
            turns, label, meta = data, "recorded policy", {}
        elif isinstance(data, dict) and (
            isinstance(data.get("turns"), list) or isinstance(data.get("queries"), dict)
        ):
            turns = data.get("turns") or []
            queries = data.get("queries") or {}
            label = str(data.get("label", "recorded policy"))
            meta = {k: v for k, v in data.items() if k not in ("turns", "queries", "label", "latency")}
            latency = data.get("latency", 0.0)
            if not isinstance(latency, (int, float)) or isinstance(latency, bool) or not 0 <= latency <= 600:
                raise ValueError(f"replay cassette {p}: latency must be seconds between 0 and 600")
        else:
            raise ValueError(f"replay cassette {p} has the wrong shape: {CASSETTE_FORMS}")
        if not all(isinstance(t, str) or _recorded_message_problem(t) is None for t in turns):
            bad = next(t for t in turns if not isinstance(t, str))
            why = _recorded_message_problem(bad) if isinstance(bad, dict) else None
            raise ValueError(f"replay cassette {p}: every turn must be a string (the whole text "
                             f"of one assistant turn) or a recorded message"
                             f"{' (' + why + ')' if why else ''}; {CASSETTE_FORMS}")
        for q, ts in queries.items():
            if not isinstance(ts, list) or not all(
                isinstance(t, str) or _recorded_message_problem(t) is None for t in ts
            ):
                raise ValueError(f"replay cassette {p}: the turns of question {q[:80]!r} must be "
                                 f"a list of strings or recorded messages; {CASSETTE_FORMS}")
        if not turns and not any(queries.values()):
            raise ValueError(f"replay cassette {p} holds no turns, so it cannot answer any "
                             f"question; {CASSETTE_FORMS}")
        # the run's question is compared stripped: so is a hand-written key
        queries = {q.strip(): ts for q, ts in queries.items()}
        return cls(turns=turns, queries=queries, label=label, source=str(p), meta=meta,
                   latency=float(latency))

    def _turns_for(self, messages: list[BaseMessage]) -> list[str | dict[str, Any]]:
        if not self.queries:
            return self.turns
        first = next((m for m in messages if m.type == "human"), None)
        question = ""
        if first is not None:
            content = first.content
            if isinstance(content, str):
                question = content
            else:
                texts = [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]
                question = texts[-1] if texts else ""
        found = self.queries.get(question.strip())
        if found is not None:
            return found
        if self.turns:
            return self.turns
        raise ReplayExhausted(f"replay cassette has no turns for the question {question.strip()[:80]!r}")

    @property
    def _llm_type(self) -> str:
        return "segresearch-replay"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.latency:  # a stand-in for a real model's wait, which Ctrl-C cuts short
            cancel.sleep(self.latency)
        return self._play(messages, stop, **kwargs)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.latency:
            await asyncio.sleep(self.latency)
        return self._play(messages, stop, **kwargs)

    def _play(self, messages: list[BaseMessage], stop: list[str] | None, **kwargs: Any) -> ChatResult:
        i = sum(1 for m in messages if m.type == "ai")
        turns = self._turns_for(messages)
        if i >= len(turns):
            raise ReplayExhausted(
                f"replay cassette has {len(turns)} turns; turn {i + 1} was requested"
            )
        turn = turns[i]
        calls: list[dict[str, Any]] = []
        invalid: list[dict[str, Any]] = []
        raw: list[dict[str, Any]] = []
        if isinstance(turn, dict):
            text = str(turn.get("content") or "")
            calls, invalid, raw = _recorded_calls(turn, i)
        else:
            text, stopped = cut_at_stop(turn, stop)
        limit = kwargs.get("max_tokens")
        finish = "tool_calls" if calls or invalid else "stop"
        n = approx_tokens(text) + sum(approx_tokens(json.dumps(c.get("args"))) for c in calls + invalid)
        if limit is not None and n > int(limit):
            # Truncate like a real model that ran out of tokens (a cut call is no call).
            pieces = list(_TOKEN_RE.finditer(text))
            keep = min(int(limit), len(pieces))
            text = text[: pieces[keep - 1].end()] if keep > 0 else ""
            n, finish, calls, invalid, raw = int(limit), "length", [], [], []
        msg = AIMessage(
            content=text,
            tool_calls=calls,
            invalid_tool_calls=invalid,
            additional_kwargs={"tool_calls": raw} if raw else {},
            response_metadata={"finish_reason": finish, "model_name": f"replay:{self.source}"},
            usage_metadata={"input_tokens": 0, "output_tokens": n, "total_tokens": n},
        )
        return ChatResult(generations=[ChatGeneration(message=msg)])


def _recorded_message_problem(turn: Any) -> str | None:
    """Why ``turn`` is not a recorded assistant message (None when it is one)."""
    if not isinstance(turn, dict):
        return "not an object"
    extra = set(turn) - {"content", "tool_calls"}
    if extra:
        return f"unknown keys {sorted(extra)}"
    if not isinstance(turn.get("content", ""), str):
        return '"content" must be text'
    calls = turn.get("tool_calls", [])
    if not isinstance(calls, list):
        return '"tool_calls" must be a list'
    for c in calls:
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            return 'each tool call needs a "name"'
        if not isinstance(c.get("args", {}), (dict, str)):
            return 'a tool call\'s "args" must be an object or its JSON text'
        if c.get("id") is not None and not isinstance(c["id"], str):
            return 'a tool call\'s "id" must be text'
    return None


def _recorded_calls(turn: dict[str, Any], index: int) -> tuple[list[dict], list[dict], list[dict]]:
    """LangChain's ``tool_calls`` and ``invalid_tool_calls`` of a recorded message, and the
    provider's raw list as ChatOpenAI keeps it in ``additional_kwargs`` (the order the calls
    were recorded in, which the two lists lose); ids are made from the turn and position
    where the recording has none."""
    calls: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    for k, c in enumerate(turn.get("tool_calls") or []):
        call_id = c.get("id") or f"call_{index}_{k}"
        args = c.get("args", {})
        parsed = loads_arguments(args) if isinstance(args, str) else args
        if parsed is None:
            invalid.append({"name": c["name"], "args": args, "id": call_id,
                            "error": "the arguments are not a JSON object", "type": "invalid_tool_call"})
        else:
            calls.append({"name": c["name"], "args": parsed, "id": call_id, "type": "tool_call"})
        raw.append({"id": call_id, "type": "function",
                    "function": {"name": c["name"], "arguments": args if isinstance(args, str) else json.dumps(args)}})
    return calls, invalid, raw
