"""What serving the graph costs, on both engines, against ``graph.ainvoke`` in-process.

One run of this script measures, side by side:

1. **One client, instant model** (a replay model with no latency; keyframe turn, answer): the
   p50 time per run. What the server adds above in-process is the whole serving overhead:
   HTTP, queueing, checkpoints, serialisation. Goal on the database engine: at most 50 ms.
2. **32 concurrent runs, seven 0.5 s model turns each** (six keyframes, then the answer):
   the wall time of all 32 (the median of three bursts after a first, untimed one). Goal on
   the database engine: at most 1.2× in-process.
3. **A crash**: a 5-turn run on an OpenAI-compatible model server that counts the turns it
   serves (0.4 s each); every server process is killed with SIGKILL while turn 3 is in
   flight, and a new server starts on the same state (folder, database). Reported: the
   finished turns sent again (goal 0), whether the turn in flight was, and how long the
   new server took to finish the run.

The in-memory engine is ``serve graph``; the database engine is ``serve graph --database
… --redis …`` on a throwaway PostgreSQL and Redis (Debian's packages) started here. Every
server run has its own thread, made before the clock starts, and goes through the SDK's
``runs.wait``. Clients and servers share this machine's cores.

    python bench/server.py [--quick] [--jobs 64] [--engines memory,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tables import markdown  # noqa: E402

from segresearch.testing.counting_model import CountingModelServer, keyframe_script  # noqa: E402
from segresearch.testing.databases import (  # noqa: E402
    ServiceUnavailable,
    new_deployment,
    postgres_server,
    redis_server,
)
from segresearch.testing.scenes import render_scene, write_frames  # noqa: E402
from segresearch.testing.servers import ServerDidNotStart, start_graph_server  # noqa: E402

SHOWN = [0, 4, 9, 13, 18, 23]  # the frames num_frames=6 shows of a 24-frame clip
BOX = '{"bbox_2d": [100, 120, 400, 500], "point_2d": [250, 300]}'
INSTANT = ["<thinking>the last frame shows it best</thinking><keyframe> 23 </keyframe>",
           f"<thinking>there</thinking><answer>{BOX}</answer>"]
SEVEN = [f"<thinking>frame {f}</thinking><keyframe> {f} </keyframe>" for f in SHOWN] + \
    [f"<thinking>there</thinking><answer>{BOX}</answer>"]


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))]


def _ok(out: dict[str, Any]) -> dict[str, Any]:
    """A failed run is not a fast one: every measured run must end with an answer."""
    if out.get("stop_reason") != "answer":
        raise RuntimeError(f"run ended with {out.get('stop_reason')}: {out.get('error')}")
    return out


async def _one_client(n: int, one_run: Callable[[int], Awaitable[dict[str, Any]]]) -> float:
    """p50 seconds per run over ``n`` runs one after another (two untimed first)."""
    for i in range(2):
        _ok(await one_run(-1 - i))
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        _ok(await one_run(i))
        lat.append(time.perf_counter() - t0)
    return statistics.median(lat)


async def _concurrent(n: int, one_run: Callable[[int], Awaitable[dict[str, Any]]],
                      rounds: int = 3) -> float:
    """Median wall seconds of ``n`` runs started together, over ``rounds`` bursts after one
    untimed burst: a server that has been up a while has its database connections open and
    its statements prepared, as in-process has its caches filled."""
    walls = []
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        for out in await asyncio.gather(*(one_run(r * n + i) for i in range(n))):
            _ok(out)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls[1:])


async def in_process(cassettes: dict[str, Path], media: str, runs: int, concurrent: int,
                     rounds: int) -> dict[str, float]:
    from segresearch.agents.client_settings import validate_context
    from segresearch.graphs.seg_research import graph

    def runner(cassette: Path) -> Callable[[int], Awaitable[dict[str, Any]]]:
        ctx = validate_context({"model": f"replay:{cassette}", "search": "none",
                                "segmenter": "none", "num_frames": len(SHOWN)})

        async def one(i: int) -> dict[str, Any]:
            return await graph.ainvoke({"query": f"the blue square #{i}", "media": media}, context=ctx)
        return one

    return {"one": await _one_client(runs, runner(cassettes["instant"])),
            "many": await _concurrent(concurrent, runner(cassettes["seven"]), rounds)}


async def through_server(url: str, cassettes: dict[str, Path], media: str, runs: int,
                         concurrent: int, rounds: int) -> dict[str, float]:
    from langgraph_sdk import get_client

    client = get_client(url=url, timeout=httpx.Timeout(600, connect=10))

    def runner(cassette: Path, threads: list[str]) -> Callable[[int], Awaitable[dict[str, Any]]]:
        ctx = {"model": f"replay:{cassette}", "search": "none", "segmenter": "none",
               "num_frames": len(SHOWN)}

        async def one(i: int) -> dict[str, Any]:
            return await client.runs.wait(threads[i], "seg_research", context=ctx, raise_error=False,
                                          input={"query": f"the blue square #{i}", "media": media})
        return one

    async def threads(n: int) -> list[str]:
        return [t["thread_id"] for t in await asyncio.gather(*(client.threads.create() for _ in range(n)))]

    one_threads = await threads(runs + 2)
    one = runner(cassettes["instant"], one_threads)
    return {"one": await _one_client(runs, lambda i: one(i % len(one_threads))),
            "many": await _concurrent(concurrent, runner(cassettes["seven"],
                                                         await threads(concurrent * (rounds + 1))), rounds)}


def crash(work: Path, env: dict[str, str], media: str, args: list[str]) -> dict[str, Any]:
    """Kill -9 mid-run, restart on the same state, count what was served again."""
    from langgraph_sdk import get_client

    model = CountingModelServer(keyframe_script(SHOWN[:4]), delay=0.4)
    env = {**env, "SEGRESEARCH_MODEL": model.spec(), "OPENAI_API_KEY": "sk-bench"}
    try:
        proc, url = start_graph_server(work / "state", env, work / "crash.log", jobs=8,
                                       timeout=120, args=args)

        async def begin() -> tuple[str, str]:
            c = get_client(url=url)
            thread = (await c.threads.create())["thread_id"]
            run = await c.runs.create(thread, "seg_research", context={"num_frames": len(SHOWN)},
                                      input={"query": "the blue square [tag:crash]", "media": media})
            return thread, run["run_id"]

        thread, run_id = asyncio.run(begin())
        if not model.wait_for_turn("crash", 3, timeout=60):
            raise RuntimeError("the run never reached turn 3")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = model.turns_served("crash")
        t0 = time.perf_counter()
        proc, url = start_graph_server(work / "state", env, work / "crash.log", jobs=8,
                                       timeout=120, args=args)

        async def finish() -> str:
            c = get_client(url=url)
            deadline = time.time() + 120
            while time.time() < deadline:
                try:
                    status = (await c.runs.get(thread, run_id))["status"]
                except httpx.HTTPStatusError:
                    return "lost"
                if status in ("success", "error", "interrupted"):
                    return status
                await asyncio.sleep(0.1)
            return "never finished"

        status = asyncio.run(finish())
        seconds = time.perf_counter() - t0
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        after = model.turns_served("crash")
        redone = sum(after.get(k, 0) - 1 for k in before)  # turns finished before the kill
        return {"status": status, "redone": redone,
                "in_flight_again": model.turns_started("crash").get(3, 0) > 1,
                "seconds": seconds, "before": before, "after": after}
    finally:
        model.close()


def _server(work: Path, env: dict[str, str], jobs: int, args: list[str]) -> tuple[subprocess.Popen, str]:
    try:
        return start_graph_server(work / "state", env, work / "server.log", jobs=jobs, timeout=120,
                                  args=args)
    except ServerDidNotStart as e:
        raise SystemExit(str(e)) from None


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs (about two minutes)")
    ap.add_argument("--jobs", type=int, default=64, help="server: concurrent runs per process")
    ap.add_argument("--engines", default="memory,postgres")
    args = ap.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    runs, concurrent, rounds = (10, 32, 1) if args.quick else (30, 32, 3)

    with tempfile.TemporaryDirectory(prefix="segresearch-bench-server-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        frames, _ = render_scene(n_frames=24, size=(320, 240))
        write_frames(frames, work / "media" / "frames")
        cassettes = {"instant": work / "media" / "instant.json", "seven": work / "media" / "seven.json"}
        cassettes["instant"].write_text(json.dumps({"turns": INSTANT, "latency": 0.0}))
        cassettes["seven"].write_text(json.dumps({"turns": SEVEN, "latency": 0.5}))
        media = str(work / "media" / "frames")
        env = {"SEGRESEARCH_MEDIA_ROOTS": str(work / "media"), "SEGRESEARCH_SEGMENTER": "none",
               "SEGRESEARCH_SEARCH": "none"}
        os.environ.update(env)  # the in-process side runs under the same path policy
        os.environ.pop("SEGRESEARCH_API_TOKEN", None)
        server_env = {**os.environ, **env}
        engine_args: dict[str, list[str]] = {"memory": []}
        services: dict[str, Any] = {}
        if "postgres" in engines:
            try:
                services["pg"] = stack.enter_context(postgres_server(work / "pg"))
                services["redis"] = stack.enter_context(redis_server(work / "redis"))
            except ServiceUnavailable as e:
                print(f"(no database engine: {e})")
                engines.remove("postgres")

        def args_for(engine: str) -> list[str]:
            if engine == "memory":
                return []
            db, redis = new_deployment(services)
            return ["--database", db, "--redis", redis]

        results: dict[str, dict[str, float]] = {"in-process": asyncio.run(
            in_process(cassettes, media, runs, concurrent, rounds))}
        crashes: dict[str, dict[str, Any]] = {}
        for engine in engines:
            engine_args[engine] = args_for(engine)
            eng_work = work / engine
            eng_work.mkdir()
            proc, url = _server(eng_work, server_env, args.jobs, engine_args[engine])
            try:
                results[engine] = asyncio.run(through_server(url, cassettes, media, runs, concurrent, rounds))
            finally:
                _stop(proc)
            crash_work = work / f"{engine}-crash"
            crash_work.mkdir()
            crashes[engine] = crash(crash_work, server_env, media, args_for(engine))

    base = results["in-process"]
    names = {"memory": "in-memory server", "postgres": "PostgreSQL engine"}
    cols = ["in-process", *[names[e] for e in engines]]
    print(f"serve graph ({args.jobs} runs per process) vs graph.ainvoke in-process; 6 frames of "
          f"320×240; search and segmentation off; {runs} sequential runs, {concurrent} concurrent")
    print()
    rows = [
        ["1 client, instant model: p50 per run", *[f"{results[k]['one'] * 1000:.0f} ms"
                                                  for k in ["in-process", *engines]]],
        ["... above in-process", "—", *[f"+{(results[e]['one'] - base['one']) * 1000:.0f} ms"
                                        for e in engines]],
        [f"{concurrent} concurrent runs, 7 turns × 0.5 s: wall", *[
            f"{results[k]['many']:.2f} s" for k in ["in-process", *engines]]],
        ["... ratio to in-process", "1.00", *[f"{results[e]['many'] / base['many']:.2f}"
                                             for e in engines]],
        ["kill -9 at turn 4 of 5, restart: the run", "—", *[crashes[e]["status"] for e in engines]],
        ["... finished model turns sent again", "—", *[str(crashes[e]["redone"]) for e in engines]],
        ["... the turn in flight sent again", "—", *["yes" if crashes[e]["in_flight_again"] else "no"
                                                    for e in engines]],
        ["... restart to run finished", "—", *[f"{crashes[e]['seconds']:.1f} s"
                                              if crashes[e]["status"] == "success" else "—"
                                              for e in engines]],
    ]
    print(markdown(["", *cols], rows))
    for e in engines:
        print(f"\n{names[e]}: turns served before the kill {crashes[e]['before']}, "
              f"in all {crashes[e]['after']}")


if __name__ == "__main__":
    main()
