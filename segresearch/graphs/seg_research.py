"""The Seg-ReSearch state machine.

    START → load_media → reason ─┬─ search   → reason
                                 ├─ keyframe → reason
                                 ├─ feedback → reason   (opt-in retry on a turn without action)
                                 ├─ ask_user → reason   (Context.ask_user, tools protocol: a
                                 │                       question back to the user; pauses)
                                 ├─ review → segment    (Context.review: a person accepts,
                                 │                       edits or rejects the answer)
                                 ├─ segment  → finish → END   (answer; no_action, max_turns and
                                 │     ↕                       max_tokens get empty masks)
                                 │   verify → finish      (Context.verify_rounds: the model sees
                                 │                         its masks and accepts them, or corrects
                                 │                         them and segment runs again)
                                 └─ finish → END        (errors)

One compiled graph serves Python callers, the LangGraph server (``langgraph.json`` points at
``graph``) and verl rollouts; only the Context differs.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import ensure_config, set_config_context
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime, get_runtime
from langgraph.types import Command
from typing_extensions import TypedDict

from segresearch.agents.context import Context
from segresearch.compat.langgraph import compiled_as
from segresearch.graphs import nodes
from segresearch.graphs.state import InputState, OutputState, State

ACTION_NODES = ("search", "keyframe", "feedback", "ask_user")


class RouteView(TypedDict, total=False):
    """What routing reads."""

    pending: dict[str, Any] | None
    stop_reason: str
    error: str | None
    masks_dir: str | None
    segmenter: str | None
    answer_note: str | None
    tokens_used: int
    verify_round: int
    verify_done: bool


def route_after_load(state: RouteView, ctx: Context | None = None) -> str:
    return "finish" if state.get("stop_reason") else "reason"


def route_after_reason(state: RouteView, ctx: Context | None = None) -> str:
    """The parsed action picks the next node; anything that ended the run goes to finish."""
    pending = state.get("pending") or {}
    kind = pending.get("type")
    if kind == "answer":
        return "review" if ctx is not None and ctx.review else "segment"
    stop = state.get("stop_reason")
    if kind in ACTION_NODES and not stop:
        return kind
    # A run that ends without an answer still gets (empty) masks when it writes outputs.
    return "segment" if stop in nodes.ENDS_WITHOUT_ANSWER else "finish"


def route_after_tool(state: RouteView, ctx: Context | None = None) -> str:
    return "finish" if state.get("stop_reason") else "reason"


def route_after_segment(state: RouteView, ctx: Context | None = None) -> str:
    """Verify (``Context.verify_rounds``) while rounds are left, the model has not accepted
    its masks and there are masks to show: an answered run whose segmenter wrote them, with
    no error and tokens left; otherwise finish."""
    if ctx is None or ctx.verify_rounds <= state.get("verify_round", 0) or state.get("verify_done"):
        return "finish"
    if state.get("stop_reason") != "answer" or state.get("error") or state.get("answer_note"):
        return "finish"
    if not state.get("masks_dir") or (state.get("segmenter") or "none") == "none":
        return "finish"
    if ctx.max_response_tokens is not None and state.get("tokens_used", 0) >= ctx.max_response_tokens:
        return "finish"
    return "verify"


def route_after_verify(state: RouteView, ctx: Context | None = None) -> str:
    """A correction makes the masks again; an acceptance (or an unreadable reply) finishes."""
    return "finish" if state.get("verify_done", True) else "segment"


def _routed(node: Callable[..., dict], route: Callable[..., str], name: str) -> Callable:
    """``node`` returning a Command whose goto is ``route`` applied to the state after the
    update (and the run's Context): routing stays in this module, and LangGraph does not
    re-read the whole state for a branch after every step (a third of the graph's own cost
    per turn)."""

    def run(state: State, runtime: Runtime[Context]) -> Command:
        update = node(state, runtime)
        return Command(update=update, goto=route({**state, **update}, runtime.context))

    run.__name__ = name
    return run


def _routed_async(node: Callable[..., Any], route: Callable[..., str], name: str) -> Callable:
    async def run(state: State, runtime: Runtime[Context]) -> Command:
        update = await node(state, runtime)
        return Command(update=update, goto=route({**state, **update}, runtime.context))

    run.__name__ = name
    return run


class SyncAsyncNode(Runnable):
    """A node with a synchronous and an asynchronous body: ``invoke`` callers run the first,
    ``ainvoke`` callers await the second and never park a thread on the model.

    Built on langchain-core's public Runnable rather than LangGraph's internal node class;
    like that class it opens no tracing run of its own (RunnableLambda's callbacks would
    cost more than the rest of a turn) but runs the body under the run's config, so model
    calls inside still stream and trace as children of the graph run."""

    def __init__(self, name: str, sync: Callable[[Any, Runtime[Context]], Any],
                 async_: Callable[[Any, Runtime[Context]], Any]) -> None:
        self.name = name
        self._sync = sync
        self._async = async_

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        with set_config_context(ensure_config(config)) as ctx:
            return ctx.run(lambda: self._sync(input, get_runtime(Context)))

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        with set_config_context(ensure_config(config)) as ctx:
            # A task created inside the context runs in it (on every Python version).
            task = ctx.run(lambda: asyncio.ensure_future(self._async(input, get_runtime(Context))))
            return await task


def build_graph(checkpointer: BaseCheckpointSaver | None = None) -> SegResearchGraph:
    """Compile the graph; pass a checkpointer (e.g. SQLite) to persist and resume runs."""
    g = StateGraph(State, context_schema=Context, input_schema=InputState, output_schema=OutputState)
    g.add_node("load_media", _routed(nodes.load_media, route_after_load, "load_media"),
               destinations=("reason", "finish"))
    # reason and verify have a sync and an async body: async callers never park a thread on them.
    g.add_node(
        "reason",
        SyncAsyncNode("reason", _routed(nodes.reason, route_after_reason, "reason"),
                      _routed_async(nodes.areason, route_after_reason, "reason")),
        destinations=("search", "keyframe", "feedback", "ask_user", "review", "segment", "finish"),
    )
    for name in ACTION_NODES:
        g.add_node(name, _routed(getattr(nodes, name), route_after_tool, name),
                   destinations=("reason", "finish"))
    g.add_node("review", nodes.review)
    g.add_edge("review", "segment")
    g.add_node("segment", _routed(nodes.segment, route_after_segment, "segment"),
               destinations=("verify", "finish"))
    g.add_node("verify", SyncAsyncNode("verify", _routed(nodes.verify, route_after_verify, "verify"),
                                       _routed_async(nodes.averify, route_after_verify, "verify")),
               destinations=("segment", "finish"))
    g.add_node("finish", nodes.finish)
    g.add_edge(START, "load_media")
    g.add_edge("finish", END)
    # Rebuilt as the subclass, so the copies the server makes per run keep the class.
    return compiled_as(g.compile(checkpointer=checkpointer, name="seg_research"), SegResearchGraph)


_SCHEMAS: dict[Any, dict[str, Any] | None] = {}


class SegResearchGraph(CompiledStateGraph[State, Context, InputState, OutputState]):
    """The compiled graph, with its context schema made once.

    The LangGraph server asks for the context schema on every run (to filter the run's
    context); LangGraph builds it anew each time, regenerating pydantic schemas for every
    Context field, which was most of the server's CPU per run."""

    def get_context_jsonschema(self) -> dict[str, Any] | None:
        key = self.context_schema
        if key not in _SCHEMAS:
            _SCHEMAS[key] = super().get_context_jsonschema()
        schema = _SCHEMAS[key]
        return copy.deepcopy(schema) if schema is not None else None


graph = build_graph()

__all__: list[Any] = ["build_graph", "graph"]
