"""Running batches of trajectories through either loop, and what they tell."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import cProfile
import io
import pstats
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import segresearch.rl.agent_loop as al
from bench._rollout_post import postprocess
from bench._rollout_setup import TURNS, FakeServer, Harness
from segresearch.core.events import KEYFRAME, SEARCH
from segresearch.core.protocol import AnswerAction, parse_action

LOOPS = ("ours", "verl")


@dataclass
class Batch:
    which: str
    n: int
    wall: float
    cpu: float
    calls: int
    trajectories: list[dict[str, Any]]
    ideal: float = 0.0  # the longest trajectory's total model time: the wall time with free CPU
    post_cpu: float = 0.0  # verl's post-processing, when run after the batch (post="after")
    first_call: float = 0.0  # seconds from the start to the first model call

    @property
    def cpu_per_turn(self) -> float:
        return self.cpu / max(self.calls, 1)


def _our_actions(out: Any) -> list[tuple[str, Any]]:
    acts = []
    for e in out.extra_fields.get("interactions", []):
        a = e.get("action")
        if "turn" not in e or not isinstance(a, dict):
            continue
        if a.get("type") == SEARCH:
            acts.append((a["name"], a["query"]))
        elif a.get("type") == KEYFRAME:
            acts.append(("keyframe", a["frame"]))
        else:
            acts.append((a.get("type"), None))
    return acts


def _model_segments(out: Any) -> list[list[int]]:
    segs: list[list[int]] = []
    prev = 0
    for tok, m in zip(out.response_ids, out.response_mask, strict=False):
        if m and not prev:
            segs.append([])
        if m:
            segs[-1].append(tok)
        prev = m
    return segs


def describe(which: str, out: Any, tok: Any, post: Any = None) -> dict[str, Any]:
    """Per trajectory: model calls, images, whether it answered, its actions, token counts
    (and with verl's post-processed ``post``, the images its pixel inputs hold)."""
    images = len((out.multi_modal_data or {}).get("images") or [])
    segs = _model_segments(out)
    if which == "ours":
        actions = _our_actions(out)
        answered = out.extra_fields.get("stop_reason") == "answer"
    else:
        actions = [tuple(a) for a in out.extra_fields.get("actions", [])]
        last = parse_action(tok.decode(segs[-1], skip_special_tokens=True)) if segs else None
        answered = isinstance(last, AnswerAction)
        if answered:
            actions.append(("answer", None))
    grid = None if post is None else post.multi_modal_inputs.get("image_grid_thw")
    return {"model_calls": len(segs), "images": images, "answered": answered, "actions": actions,
            "error": (out.extra_fields or {}).get("error") or "",
            "prompt_tokens": len(out.prompt_ids), "response_tokens": len(out.response_ids),
            "post_images": None if grid is None else int(grid.shape[0])}


async def run_batch(h: Harness, which: str, rows: list[dict[str, Any]], latency: float,
                    response_length: int = 8192, jitter: float = 0.0, *, post: str | None = None,
                    cache: bool | None = None) -> Batch:
    """All ``rows`` concurrently in this event loop, a fresh agent loop each (as verl's
    worker makes them); CPU is this process's (all threads) over the batch.

    ``post``: verl's post-processing of each trajectory (bench/_rollout_post.py): "inline"
    right after its loop, in its coroutine, as verl's worker runs it (counted in ``cpu``);
    "after": the same calls on the same outputs once the batch is done, one by one, so that
    their CPU is told apart (``post_cpu``). ``cache``: the post-processing cache on or off
    (default: each loop's default, ours on, verl's off)."""
    server = FakeServer(h.tok, latency, jitter=jitter)
    kw = {} if cache is None else {"cache": cache}
    make = h.ours if which == "ours" else h.verl

    async def one(row: dict[str, Any]) -> tuple[Any, Any]:
        out = await make(server, response_length, **kw).run({"temperature": 1.0}, **row)
        return out, (await postprocess(h.post, out, row) if post == "inline" else None)

    t0, c0 = time.perf_counter(), time.process_time()
    done = await asyncio.gather(*(one(r) for r in rows))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    post_cpu = 0.0
    if post == "after":
        kept = []  # verl's worker keeps every result until its batch is done
        for (o, _), r in zip(done, rows, strict=True):
            c1 = time.process_time()
            kept.append(await postprocess(h.post, o, r))
            post_cpu += time.process_time() - c1
        trajs = [describe(which, o, h.tok, p) for (o, _), p in zip(done, kept, strict=True)]
        del kept
    else:
        trajs = [describe(which, o, h.tok, p) for o, p in done]
    for t, seen in zip(trajs, sorted(server.images.values()), strict=False):
        t["server_images"] = seen  # images sent with the last call (order-free check below)
    return Batch(which, len(rows), wall, cpu, sum(server.calls.values()), trajs,
                 ideal=max(server.slept.values(), default=0.0), post_cpu=post_cpu,
                 first_call=(server.first_call or t0) - t0)


def rows_for(h: Harness, which: str, prompts: int, samples: int, presized: bool = False,
             first: int = 0) -> list[dict[str, Any]]:
    """``samples`` rows of each of ``prompts`` prompts (from prompt ``first`` on); ours read
    pre-sized frames with ``presized``."""
    kw = {"presized": True} if presized and which == "ours" else {}
    return [getattr(h.prompts[p], which)(**kw) for p in range(first, first + prompts) for _ in range(samples)]


# ------------------------------------------------------------------ long trajectory


async def observation_seconds(h: Harness, turns: int) -> list[float]:
    """Seconds to render each observation into our token stream, in one trajectory of
    ``turns`` text searches and an answer."""
    script = [TURNS[0].replace("winner", f"winner {i}") for i in range(turns)] + [TURNS[-1]]
    server = FakeServer(h.tok, 0.0, script)
    loop = h.ours(server, 32768)
    loop.settings["max_turns"] = turns + 1
    captured: dict[str, Any] = {}
    original = al.SegResearchAgentLoop._output

    def keep(self: Any, model: Any, final: Any, seconds: float) -> Any:
        captured["records"] = model.trajectory.records
        return original(self, model, final, seconds)

    al.SegResearchAgentLoop._output = keep  # type: ignore[method-assign]
    try:
        await loop.run({"temperature": 1.0}, **h.prompts[0].ours())
    finally:
        al.SegResearchAgentLoop._output = original  # type: ignore[method-assign]
    return [r.seconds for r in captured["records"] if r.kind == "observation"]


def quarters(ms: list[float]) -> list[tuple[str, float]]:
    q = max(1, len(ms) // 4)
    return [(f"{i + 1}-{min(i + q, len(ms))}", statistics.median(ms[i:i + q])) for i in range(0, len(ms), q)]


# ------------------------------------------------------------------ profile


class _Inline(cf.ThreadPoolExecutor):
    """Runs executor work in the calling thread, so cProfile (one thread) sees all of it
    (a ThreadPoolExecutor only because asyncio accepts no other default executor)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
            fut.set_exception(e)
        return fut


BUCKETS = [  # (label, substring of the code's file path); first match wins
    ("HF image processor", "transformers/image_"),
    ("HF processor / tokenizer", "transformers/"),
    ("tokenizers (Rust calls)", "tokenizers"),
    ("chat template (jinja2)", "jinja2"),
    ("PIL (decode, resize, convert)", "PIL/"),
    ("media store", "segresearch/core/media_store"),
    ("our media / frames", "segresearch/core/media"),
    ("our graph nodes", "segresearch/graphs"),
    ("our model (VerlChatModel)", "segresearch/rl/verl_model"),
    ("our post-processing cache", "segresearch/rl/postprocess_cache"),
    ("our other code", "segresearch/"),
    ("LangGraph", "langgraph/"),
    ("LangChain core", "langchain_core/"),
    ("pydantic", "pydantic"),
    ("verl post-processing", "verl/experimental/agent_loop/agent_loop.py"),
    ("verl", "verl/"),
    ("numpy", "numpy/"),
    ("torch", "torch/"),
    ("asyncio / threading", "asyncio/"),
]


def profile_batch(h: Harness, which: str, rows: list[dict[str, Any]], top: int = 25) -> tuple[str, list[tuple[str, float]]]:
    """cProfile of one batch at zero latency with executor work inlined and verl's
    post-processing inline: the top cumulative entries, and self time per bucket (ms per
    trajectory)."""

    async def go() -> None:
        asyncio.get_running_loop().set_default_executor(_Inline())
        await run_batch(h, which, rows, 0.0, post="inline")

    prof = cProfile.Profile()
    prof.enable()
    asyncio.run(go())
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("cumulative").print_stats(top)
    totals: dict[str, float] = {}
    for (file, _line, name), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        path = file.replace("\\", "/")
        label = next((lab for lab, sub in BUCKETS if sub in path), "builtins / other")
        if label == "builtins / other" and file == "~":
            label = _builtin_bucket(name)
        totals[label] = totals.get(label, 0.0) + tt
    n = max(len(rows), 1)
    return buf.getvalue(), sorted(((k, v * 1e3 / n) for k, v in totals.items()), key=lambda kv: -kv[1])


def _builtin_bucket(name: str) -> str:
    if "PIL" in name or "ImagingCore" in name or "decode" in name:
        return "PIL (decode, resize, convert)"
    if "numpy" in name:
        return "numpy"
    if "torch" in name:
        return "torch"
    return "builtins / other"
