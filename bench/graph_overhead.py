"""Per-turn cost of the LangGraph machinery against a plain Python loop doing the same work.

Both sides run the same instant replay model, the same parser, the same search tool over an
instant backend and the same observation rendering; the difference is LangGraph's own
overhead (channels, reducers, routing, step bookkeeping). The per-turn cost is the slope
between a 2-turn and an N-turn trajectory, so loading the media is not counted.

The graph is measured in both protocols in the same run: ``tags`` (the model writes
``<search>`` tags) and ``tools`` (the same instant model answers with native tool calls,
bound with ``bind_tools``, read with ``parse_tool_calls`` and answered with ``ToolMessage``s).
The goal is the tools protocol within 10 % of the tags protocol per turn.

    python bench/graph_overhead.py [--turns 24] [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from langchain_core.messages import HumanMessage

from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.context import Context
from segresearch.core.protocol import STOP_STRINGS, SearchAction, parse_action
from segresearch.graphs.nodes import _observation, load_media
from segresearch.graphs.seg_research import graph
from segresearch.testing.scenes import render_scene, write_frames
from segresearch.tools.search import SearchBackend, TextHit, make_search_tools


class InstantBackend(SearchBackend):
    name = "instant"

    def search_text(self, query: str, k: int) -> list[TextHit]:
        return [TextHit(f"Doc {i}", f"Passage {i} about {query}. " * 8, 1.0) for i in range(k)]


def turns(n: int) -> list[str]:
    s = [
        f'<thinking>step {i}</thinking><search>{{"name": "text_search", "query": "query {i}"}}</search>'
        for i in range(n - 1)
    ]
    return [*s, "<thinking>done</thinking>"]  # ends with no action: no segmentation cost


def tool_turns(n: int) -> list[dict]:
    """The same trajectory as recorded tool-call messages (what a chat model returns in the
    tools protocol): n-1 text_search calls, then a reply that calls nothing."""
    s = [{"content": f"step {i}", "tool_calls": [{"name": "text_search", "args": {"query": f"query {i}"},
                                                  "id": f"call_{i}"}]} for i in range(n - 1)]
    return [*s, {"content": "done"}]


def plain_loop(ctx: Context, query: str, media: str, model: ReplayChatModel, tools) -> int:
    """The same loop without LangGraph: same media node, parser, tool and messages."""
    class _Rt:
        context = ctx

        @staticmethod
        def stream_writer(_event: object) -> None:  # nobody streams in the plain loop
            return None

    state = load_media({"query": query, "media": media}, _Rt())
    messages = list(state["messages"])
    executed = 0
    n = 0
    while True:
        msg = model.invoke(messages, stop=STOP_STRINGS, max_tokens=ctx.max_new_tokens,
                           temperature=ctx.temperature)
        n += 1
        messages.append(msg)
        action = parse_action(msg.content)
        if not isinstance(action, SearchAction) or executed >= ctx.max_turns:
            return n
        res = tools[action.name].invoke({"name": action.name, "args": {"query": action.query},
                                         "id": f"c{n}", "type": "tool_call"})
        obs = _observation(res.content, res.artifact.get("images", []))
        assert isinstance(obs, HumanMessage)
        messages.append(obs)
        executed += 1


def trivial_graph():
    """Two no-op nodes in a loop: LangGraph's own cost per superstep, whatever the nodes do."""
    from langgraph.graph import END, START, StateGraph
    from typing_extensions import TypedDict

    class S(TypedDict):
        n: int
        limit: int

    def a(s: S) -> dict:
        return {"n": s["n"] + 1}

    def b(s: S) -> dict:
        return {}

    g = StateGraph(S)
    g.add_node("a", a)
    g.add_node("b", b)
    g.add_edge(START, "a")
    g.add_conditional_edges("a", lambda s: "b" if s["n"] < s["limit"] else END, ["b", END])
    g.add_edge("b", "a")
    return g.compile()


def interleaved(fns: dict[str, object], repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` time of each function, run round-robin so that a noisy
    neighbour slows all of them alike rather than one."""
    for fn in fns.values():
        fn()  # warm caches
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    frames, _ = render_scene(n_frames=6, size=(64, 48))
    write_frames(frames, tmp / "frames")
    media = str(tmp / "frames")
    backend = InstantBackend()
    tools = make_search_tools(backend)
    fns = {}
    floor = trivial_graph()
    for n in (2, args.turns):
        model = ReplayChatModel(turns=turns(n))
        ctx = Context(model=model, search=backend, max_turns=n, segmenter="none",
                      num_frames=2, frame_size=32, max_response_tokens=None)
        out = graph.invoke({"query": "q", "media": media}, context=ctx)
        assert out["turns"] == n == plain_loop(ctx, "q", media, model, tools), out["stop_reason"]
        fns[("graph", n)] = lambda ctx=ctx: graph.invoke({"query": "q", "media": media}, context=ctx)
        tctx = Context(model=ReplayChatModel(turns=tool_turns(n)), search=backend, max_turns=n,
                       segmenter="none", num_frames=2, frame_size=32, max_response_tokens=None,
                       protocol="tools")
        tout = graph.invoke({"query": "q", "media": media}, context=tctx)
        assert tout["turns"] == n and tout["stop_reason"] == out["stop_reason"], tout["stop_reason"]
        assert sum(m.type == "tool" for m in tout["messages"]) == n - 1  # each call answered
        fns[("tools", n)] = lambda tctx=tctx: graph.invoke({"query": "q", "media": media}, context=tctx)
        fns[("plain", n)] = lambda ctx=ctx, model=model: plain_loop(ctx, "q", media, model, tools)
        fns[("floor", n)] = lambda n=n: floor.invoke({"n": 0, "limit": n}, {"recursion_limit": 1000})
    best = interleaved(fns, args.repeats)
    dn = args.turns - 2

    def per_turn(kind: str) -> float:
        return (best[(kind, args.turns)] - best[(kind, 2)]) / dn

    g_turn, p_turn, f_turn = per_turn("graph"), per_turn("plain"), per_turn("floor")
    t_turn = per_turn("tools")
    rows = []
    rows.append(("graph, tags", 1 / g_turn, g_turn * 1e3, g_turn / p_turn))
    rows.append(("graph, tools", 1 / t_turn, t_turn * 1e3, t_turn / p_turn))
    rows.append(("plain Python loop", 1 / p_turn, p_turn * 1e3, 1.0))
    rows.append(("LangGraph floor*", 1 / f_turn, f_turn * 1e3, f_turn / p_turn))
    print(f"per-turn cost over {args.turns}-turn trajectories (best of {args.repeats}, interleaved), "
          "instant model and tools")
    print(f"{'runner':<20}{'turns/s':>10}{'ms/turn':>10}{'ratio':>8}")
    for name, tps, ms, ratio in rows:
        print(f"{name:<20}{tps:>10.0f}{ms:>10.3f}{ratio:>8.2f}")
    print("* two no-op nodes per turn: LangGraph's fixed cost for the two supersteps of a turn")
    extra = g_turn - p_turn
    print(f"graph overhead per turn: {extra * 1e3:.3f} ms = {extra / 0.050:.1%} of a 50 ms model "
          f"turn, {extra / 0.500:.2%} of a 500 ms one")
    vs = t_turn / g_turn
    print(f"tools protocol vs tags protocol per turn: {vs:.3f} ({vs - 1:+.1%}; goal within 10 %: "
          f"{'met' if vs <= 1.10 else 'NOT met'})")
    print(json.dumps({"graph_ms_per_turn": round(g_turn * 1e3, 4),
                      "tools_ms_per_turn": round(t_turn * 1e3, 4),
                      "plain_ms_per_turn": round(p_turn * 1e3, 4),
                      "ratio": round(g_turn / p_turn, 3),
                      "tools_vs_tags": round(vs, 3),
                      "floor_ms_per_turn": round(f_turn * 1e3, 4)}))


if __name__ == "__main__":
    main()
