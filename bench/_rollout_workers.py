"""Many trajectories over several agent-loop worker processes, as verl deploys them: one
Ray actor per worker (falling back to spawned processes where Ray does not start), each
with its own event loop, tokenizer, processor, tools and agent-loop instances."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class _Worker:
    def __init__(self, model_dir: str, template: str, kb: str, prompts: list[Any]) -> None:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from bench._rollout_setup import Harness

        self.h = Harness(Path(model_dir), template, Path(kb), Path(model_dir).parent, list(prompts))

    def warm(self, which: str) -> bool:
        from bench._rollout_run import rows_for, run_batch

        b = asyncio.run(run_batch(self.h, which, rows_for(self.h, which, 1, 1), 0.0, post="inline"))
        return all(t["answered"] for t in b.trajectories)

    def run(self, which: str, start_at: float, latency: float, prompt_ids: list[int], samples: int,
            cold: bool = True, jitter: float = 0.0, cache: bool | None = None,
            presized: bool = False) -> dict[str, Any]:
        """One batch, each trajectory post-processed by verl's code as it ends; ``cold``
        empties the caches first, as a training step's new prompts find them; ``cache``: the
        post-processing cache (None: each loop's default); ``presized``: ours reads pre-sized
        frames."""
        from bench._rollout_run import run_batch
        from bench._rollout_setup import clear_caches

        if cold:
            clear_caches(self.h.proc)
        kw = {"presized": True} if presized and which == "ours" else {}
        rows = [getattr(self.h.prompts[p], which)(**kw) for p in prompt_ids for _ in range(samples)]
        time.sleep(max(0.0, start_at - time.time()))
        t0 = time.time()
        b = asyncio.run(run_batch(self.h, which, rows, latency, jitter=jitter, post="inline", cache=cache))
        return {"start": t0, "end": time.time(), "cpu": b.cpu, "calls": b.calls, "ideal": b.ideal,
                "answered": sum(t["answered"] for t in b.trajectories), "n": b.n}


@dataclass
class Pool:
    kind: str  # "ray actors" | "spawned processes"
    handles: list[Any]
    close: Any

    def call(self, method: str, *per_worker_args: list[Any]) -> list[Any]:
        if self.kind == "ray actors":
            import ray

            return ray.get([getattr(a, method).remote(*args) for a, args in zip(self.handles, zip(*per_worker_args, strict=True), strict=True)])
        for (conn, _), args in zip(self.handles, zip(*per_worker_args, strict=True), strict=True):
            conn.send((method, args))
        out = [conn.recv() for conn, _ in self.handles]
        for o in out:
            if isinstance(o, BaseException):
                raise o
        return out


def _serve(conn: Any, init: tuple[Any, ...]) -> None:
    worker = _Worker(*init)
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        method, args = msg
        try:
            conn.send(getattr(worker, method)(*args))
        except Exception as e:  # noqa: BLE001 - reported to the driver
            conn.send(e)


def start_pool(n: int, init: tuple[Any, ...], use_ray: bool = True) -> Pool:
    """``n`` workers built from ``init`` (model dir, template, kb, prompts)."""
    if use_ray:
        try:
            import ray

            env = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
            ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": env}, ignore_reinit_error=True)
            actor = ray.remote(num_cpus=1)(_Worker)
            handles = [actor.remote(*init) for _ in range(n)]
            return Pool("ray actors", handles, ray.shutdown)
        except Exception as e:  # noqa: BLE001 - fall back to plain processes
            print(f"(Ray did not start: {e}; using spawned processes)", file=sys.stderr)
    ctx = mp.get_context("spawn")
    handles = []
    for _ in range(n):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(child, init), daemon=True)
        proc.start()
        handles.append((parent, proc))
    for conn, _ in handles:
        if conn.recv() != "ready":
            raise RuntimeError("a worker failed to start")

    def close() -> None:
        for conn, proc in handles:
            conn.send(None)
            proc.join(10)

    return Pool("spawned processes", handles, close)


def run_spread(pool: Pool, which: str, latency: float, prompts: int, samples: int,
               cold: bool = True, jitter: float = 0.0, cache: bool | None = None,
               presized: bool = False) -> dict[str, Any]:
    """``prompts`` × ``samples`` trajectories, whole GRPO groups per worker, started together;
    ``cold``: from empty caches (a training step's prompts are new to the worker); ``jitter``:
    see FakeServer; ``cache``, ``presized``: see ``_Worker.run``."""
    n = len(pool.handles)
    share = [[p for p in range(prompts) if p % n == w] for w in range(n)]
    start_at = time.time() + 1.0
    res = pool.call("run", [which] * n, [start_at] * n, [latency] * n, share, [samples] * n, [cold] * n,
                    [jitter] * n, [cache] * n, [presized] * n)
    wall = max(r["end"] for r in res) - min(r["start"] for r in res)
    calls = sum(r["calls"] for r in res)
    return {"wall": wall, "cpu": sum(r["cpu"] for r in res), "calls": calls,
            "ideal": max(r["ideal"] for r in res),
            "answered": sum(r["answered"] for r in res), "n": sum(r["n"] for r in res)}
