"""The Seg-ReSearch state machine.

    START → load_media → reason ─┬─ search   → reason
                                 ├─ keyframe → reason
                                 ├─ feedback → reason   (opt-in retry on a turn without action)
                                 ├─ segment  → finish → END   (answer; no_action, max_turns and
                                 │                             max_tokens get empty masks)
                                 └─ finish → END        (errors)

One compiled graph serves Python callers, the LangGraph server (``langgraph.json`` points at
``graph``) and verl rollouts; only the Context differs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.runnables import RunnableLambda
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime, get_runtime
from langgraph.types import Command
from typing_extensions import TypedDict

from segresearch.agents.context import Context
from segresearch.graphs import nodes
from segresearch.graphs.state import InputState, OutputState, State

ACTION_NODES = ("search", "keyframe", "feedback")


class RouteView(TypedDict, total=False):
    """What routing reads."""

    pending: dict[str, Any] | None
    stop_reason: str


def route_after_load(state: RouteView) -> str:
    return "finish" if state.get("stop_reason") else "reason"


def route_after_reason(state: RouteView) -> str:
    """The parsed action picks the next node; anything that ended the run goes to finish."""
    pending = state.get("pending") or {}
    kind = pending.get("type")
    if kind == "answer":
        return "segment"
    stop = state.get("stop_reason")
    if kind in ACTION_NODES and not stop:
        return kind
    # A run that ends without an answer still gets (empty) masks when it writes outputs.
    return "segment" if stop in nodes.ENDS_WITHOUT_ANSWER else "finish"


def route_after_tool(state: RouteView) -> str:
    return "finish" if state.get("stop_reason") else "reason"


def _routed(node: Callable[..., dict], route: Callable[[Any], str], name: str) -> Callable:
    """``node`` returning a Command whose goto is ``route`` applied to the state after the
    update: routing stays in this module, and LangGraph does not re-read the whole state
    for a branch after every step (a third of the graph's own cost per turn)."""

    def run(state: State, runtime: Runtime[Context]) -> Command:
        update = node(state, runtime)
        return Command(update=update, goto=route({**state, **update}))

    run.__name__ = name
    return run


def _routed_async(node: Callable[..., Any], route: Callable[[Any], str], name: str) -> Callable:
    async def run(state: State, runtime: Runtime[Context]) -> Command:
        update = await node(state, runtime)
        return Command(update=update, goto=route({**state, **update}))

    run.__name__ = name
    return run


def build_graph(checkpointer: BaseCheckpointSaver | None = None) -> CompiledStateGraph:
    """Compile the graph; pass a checkpointer (e.g. SQLite) to persist and resume runs."""
    g = StateGraph(State, context_schema=Context, input_schema=InputState, output_schema=OutputState)
    g.add_node("load_media", _routed(nodes.load_media, route_after_load, "load_media"),
               destinations=("reason", "finish"))
    # reason has a sync and an async body so that async callers never park a thread on it;
    # a RunnableLambda carries both (the runtime comes from the run's config).
    sync_reason = _routed(nodes.reason, route_after_reason, "reason")
    async_reason = _routed_async(nodes.areason, route_after_reason, "reason")

    def reason(state: State) -> Command:
        return sync_reason(state, get_runtime(Context))

    async def areason(state: State) -> Command:
        return await async_reason(state, get_runtime(Context))

    g.add_node("reason", RunnableLambda(reason, areason, name="reason"),
               destinations=("search", "keyframe", "feedback", "segment", "finish"))
    for name in ACTION_NODES:
        g.add_node(name, _routed(getattr(nodes, name), route_after_tool, name),
                   destinations=("reason", "finish"))
    g.add_node("segment", nodes.segment)
    g.add_node("finish", nodes.finish)
    g.add_edge(START, "load_media")
    g.add_edge("segment", "finish")
    g.add_edge("finish", END)
    return g.compile(checkpointer=checkpointer, name="seg_research")


graph = build_graph()

__all__: list[Any] = ["build_graph", "graph"]
