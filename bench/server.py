"""What serving the graph costs: the LangGraph API server against ``graph.ainvoke`` in-process.

Both sides run the same graph on the same synthetic clip with a replay model (a keyframe
turn, then an answer; search and segmentation off), at 1, 8 and 64 concurrent clients. Each
client sends its next run when the last one returns. The server is started with
``segresearch serve graph`` (a subprocess on a free loopback port, ``--jobs`` runs at once);
every server run has its own thread, created before the clock starts, and goes through
``runs.wait``. Two models: an instant one (pure overhead: HTTP, queueing, checkpoints,
serialisation) and one whose turns take 0.5 s (a model's pace, where the question is whether
the server keeps runs concurrent). After the runs it reads back how many bytes one run leaves
in the server: its final state values and its checkpoint history (as JSON).

    python bench/server.py [--quick] [--jobs 64] [--frames 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from segresearch.testing.scenes import render_scene, write_frames
from segresearch.testing.servers import ServerDidNotStart, start_graph_server

TURNS = ["<thinking>the last frame shows it best</thinking><keyframe> 23 </keyframe>",
         '<thinking>there</thinking><answer>{"bbox_2d": [100, 120, 400, 500], "point_2d": [250, 300]}</answer>']
CLIENTS = (1, 8, 64)


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))]


async def _drive(clients: int, per_client: int,
                 one_run: Callable[[int], Awaitable[dict[str, Any]]]) -> tuple[float, list[float]]:
    """(wall seconds, per-run latencies) for ``clients`` × ``per_client`` runs; run i is
    ``one_run(i)``, and every run must end with an answer (a failed run is not a fast one)."""
    latencies: list[float] = []

    async def client(c: int) -> None:
        for j in range(per_client):
            t0 = time.perf_counter()
            out = await one_run(c * per_client + j)
            latencies.append(time.perf_counter() - t0)
            if out.get("stop_reason") != "answer":
                raise RuntimeError(f"run ended with {out.get('stop_reason')}: {out.get('error')}")

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    return time.perf_counter() - t0, latencies


def _row(wall: float, lat: list[float]) -> tuple[float, float, float]:
    return len(lat) / wall, 1000 * statistics.median(lat), 1000 * _pct(lat, 95)


def _plan(quick: bool) -> dict[int, int]:
    """Runs per client at each concurrency: enough runs for a stable p95 without the
    slow model taking minutes."""
    return {1: 3, 8: 2, 64: 1} if quick else {1: 10, 8: 5, 64: 2}


async def in_process(cassette: Path, media: str, frames: int, plan: dict[int, int]) -> dict[int, tuple]:
    from segresearch.agents.context import validate_context
    from segresearch.graphs.seg_research import graph

    ctx = validate_context({"model": f"replay:{cassette}", "search": "none", "segmenter": "none",
                            "num_frames": frames})

    async def one(i: int) -> dict[str, Any]:
        return await graph.ainvoke({"query": f"the blue square #{i}", "media": media}, context=ctx)

    await one(-1)  # imports, first media load, model construction: not what is measured
    out = {}
    for clients, per in plan.items():
        out[clients] = _row(*await _drive(clients, per, one))
    return out


async def through_server(url: str, cassette: Path, media: str, frames: int,
                         plan: dict[int, int]) -> tuple[dict[int, tuple], float, float]:
    """Rows per concurrency, then mean state bytes and history bytes per run."""
    from langgraph_sdk import get_client

    client = get_client(url=url, timeout=httpx.Timeout(600, connect=10))
    ctx = {"model": f"replay:{cassette}", "search": "none", "segmenter": "none", "num_frames": frames}
    used: list[str] = []

    async def run_on(thread_id: str, i: int) -> dict[str, Any]:
        return await client.runs.wait(thread_id, "seg_research", context=ctx,
                                      input={"query": f"the blue square #{i}", "media": media},
                                      raise_error=False)

    warm = await client.threads.create()
    await run_on(warm["thread_id"], -1)
    out = {}
    for clients, per in plan.items():
        threads = await asyncio.gather(*(client.threads.create() for _ in range(clients * per)))
        ids = [t["thread_id"] for t in threads]
        used += ids

        async def one(i: int, ids: list[str] = ids) -> dict[str, Any]:
            return await run_on(ids[i], i)

        out[clients] = _row(*await _drive(clients, per, one))
    sample = used[:: max(1, len(used) // 8)][:8]
    state_bytes = [len(json.dumps((await client.threads.get_state(t))["values"])) for t in sample]
    history_bytes = [len(json.dumps(await client.threads.get_history(t, limit=1000))) for t in sample]
    return out, statistics.mean(state_bytes), statistics.mean(history_bytes)


def start_server(work: Path, jobs: int, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    try:
        return start_graph_server(work / "state", env, work / "server.log", jobs=jobs, timeout=120)
    except ServerDidNotStart as e:
        raise SystemExit(str(e)) from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs per client (about a minute)")
    ap.add_argument("--jobs", type=int, default=64, help="server: concurrent runs per worker")
    ap.add_argument("--frames", type=int, default=6, help="frames shown to the model")
    args = ap.parse_args()
    plan = _plan(args.quick)

    with tempfile.TemporaryDirectory(prefix="segresearch-bench-server-") as tmp:
        work = Path(tmp)
        frames, _ = render_scene(n_frames=24, size=(320, 240))
        write_frames(frames, work / "media" / "frames")
        cassettes = {}
        for label, latency in (("replay, instant", 0.0), ("replay, 0.5 s/turn", 0.5)):
            path = work / "media" / f"cassette-{latency}.json"
            path.write_text(json.dumps({"turns": TURNS, "latency": latency}))
            cassettes[label] = path
        media = str(work / "media" / "frames")
        env = {"SEGRESEARCH_MEDIA_ROOTS": str(work / "media"), "SEGRESEARCH_SEGMENTER": "none",
               "SEGRESEARCH_SEARCH": "none"}
        os.environ.update(env)  # the in-process side runs under the same path policy
        os.environ.pop("SEGRESEARCH_API_TOKEN", None)
        proc, url = start_server(work, args.jobs, {**os.environ, **env})
        results = []
        try:
            for label, cassette in cassettes.items():
                local = asyncio.run(in_process(cassette, media, args.frames, plan))
                served, state_b, hist_b = asyncio.run(
                    through_server(url, cassette, media, args.frames, plan))
                results.append((label, local, served, state_b, hist_b))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    print(f"LangGraph API server (segresearch serve graph --jobs {args.jobs}) vs graph.ainvoke "
          f"in-process; {args.frames} frames of 320×240, 2 model turns per run; runs per client "
          + ", ".join(f"{c} clients: {n}" for c, n in plan.items()))
    print()
    print("| model | clients | server runs/s | in-process runs/s | ratio | server p50 ms | "
          "in-process p50 ms | ratio | server p95 ms | in-process p95 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, local, served, _, _ in results:
        for clients in plan:
            s_rps, s50, s95 = served[clients]
            l_rps, l50, l95 = local[clients]
            print(f"| {label} | {clients} | {s_rps:.1f} | {l_rps:.1f} | {s_rps / l_rps:.2f} | "
                  f"{s50:.0f} | {l50:.0f} | {s50 / l50:.1f} | {s95:.0f} | {l95:.0f} |")
    print()
    print("| model | state bytes per run | checkpoint-history bytes per run |")
    print("|---|---:|---:|")
    for label, _, _, state_b, hist_b in results:
        print(f"| {label} | {state_b:,.0f} | {hist_b:,.0f} |")


if __name__ == "__main__":
    main()
