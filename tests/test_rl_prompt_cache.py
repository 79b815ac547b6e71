"""The prompt of a GRPO group is rendered once per worker, although verl makes a new agent
loop (and token builder) for every sample and the samples start together."""

from __future__ import annotations

import asyncio

from test_rl_agent_loop import ANSWER, KEYFRAME, FakeServer, make_loop, row, tiny  # noqa: F401

from segresearch.core import shared_cache


def test_a_group_renders_its_prompt_once(tiny, scene_dir, monkeypatch):  # noqa: F811
    renders = []
    from verl.experimental.agent_loop.agent_loop import AgentLoopBase

    real = AgentLoopBase.ct_build_initial_tokens

    async def counting(self, *a, **kw):
        renders.append(id(self))
        await asyncio.sleep(0.05)  # a render takes a while: the siblings start meanwhile
        return await real(self, *a, **kw)

    monkeypatch.setattr(AgentLoopBase, "ct_build_initial_tokens", counting)
    shared_cache.clear("rl.prompt_ids")

    async def group(question: str, n: int = 8):
        server = FakeServer(tiny.tok, [KEYFRAME, ANSWER])
        # one agent loop per sample, as verl's worker builds them
        loops = [make_loop(tiny, server) for _ in range(n)]
        outs = await asyncio.gather(*(lp.run({"temperature": 1.0}, **row(scene_dir, question)) for lp in loops))
        return outs, server

    outs, server = asyncio.run(group("the blue square"))
    assert len(renders) == 1
    first = {}
    for c in server.calls:
        first.setdefault(c["request_id"], tuple(c["prompt_ids"]))
    assert len(first) == 8 and len(set(first.values())) == 1  # every sample began from the same ids
    assert all(o.num_turns >= 2 for o in outs)
    # another question is another prompt; the same one again is a cache hit
    asyncio.run(group("the red circle", n=4))
    asyncio.run(group("the blue square", n=4))
    assert len(renders) == 2
