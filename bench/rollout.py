"""Rollout cost of our agent loop against verl's own ``ToolAgentLoop``, side by side.

Both loops run identical 4-turn trajectories (text search, image search, keyframe, answer;
7 frames at 448 px + one 256 px image hit + the 864 px keyframe = 9 images) on a tiny
Qwen3-VL with the published image-processor sizes, against the same instant fake server
(scripted tokens, fixed latency, no CPU work). verl's loop speaks our tags through a tool
parser and ``BaseTool``s doing what our tools do (bench/_rollout_verl.py).

1. Agent-side CPU per model turn (process CPU over the batch; the server only sleeps),
   with empty caches (distinct prompts) and for GRPO groups (each prompt ``--samples``
   times), ours against verl's; the target is ours ≤ 0.5× verl's.
2. Efficiency (ideal wall = turns × latency over measured wall) of ``--prompts`` ×
   ``--samples`` trajectories spread over ``--workers`` agent-loop worker processes (Ray
   actors, as verl runs AgentLoopWorkers), per latency, all started together and every model
   turn the same length (the worst case: all CPU work of a turn queues at once). Each batch
   runs twice: with new prompts (empty caches, as a training step finds them) and repeated
   (what the first run left in the caches). With a labelled projection to 8 cores from the
   measured CPU per turn.
3. Observation rendering by turn in one long trajectory (must stay flat).
4. With ``--profile``: cProfile of our loop, self time per trajectory by component.

    python bench/rollout.py [--prompts 64] [--samples 8] [--latency 0.05 1] [--workers 8]
                            [--jitter 0.5] [--long-turns 16] [--profile] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._rollout_run import (
    LOOPS,
    Batch,
    observation_seconds,
    profile_batch,
    quarters,
    rows_for,
    run_batch,
)
from bench._rollout_setup import (
    EXPECTED_ACTIONS,
    IMAGES_PER_TRAJECTORY,
    TURNS,
    clear_caches,
    make_harness,
)
from bench._tables import markdown

PROJECTED_CORES = 8


def check(batch: Batch) -> None:
    """Every trajectory answered after the scripted calls, with all its images."""
    for t in batch.trajectories:
        assert t["answered"], (batch.which, t)
        assert t["model_calls"] == len(TURNS), (batch.which, t)
        assert t["images"] == IMAGES_PER_TRAJECTORY == t["server_images"], (batch.which, t)
        assert t["actions"] == EXPECTED_ACTIONS, (batch.which, t["actions"])


def cpu_section(h, prompts: int, samples: int, latency: float) -> tuple[str, dict[str, float], dict[str, Batch]]:
    """Table 1; returns it, the GRPO CPU per turn by loop, and the batches."""
    cases = [("empty caches", prompts * samples if samples > 1 else prompts, 1),
             (f"GRPO (each prompt ×{samples})", prompts, samples)]
    h.add_prompts(max(p for _, p, _ in cases))
    rows, grpo, batches = [], {}, {}
    for label, p, s in cases:
        res = {}
        for which in LOOPS:
            clear_caches()
            b = asyncio.run(run_batch(h, which, rows_for(h, which, p, s), latency))
            check(b)
            res[which] = batches[f"{label}/{which}"] = b
        ours, verl = res["ours"].cpu_per_turn, res["verl"].cpu_per_turn
        if s > 1:
            grpo = {"ours": ours, "verl": verl}
        t = res["ours"].trajectories[0], res["verl"].trajectories[0]
        rows.append([f"{label}: {p}×{s}", f"{ours * 1e3:.1f}", f"{verl * 1e3:.1f}", f"{ours / verl:.2f}×",
                     f"{t[0]['images']} / {t[1]['images']}",
                     f"{t[0]['prompt_tokens']}+{t[0]['response_tokens']} / {t[1]['prompt_tokens']}+{t[1]['response_tokens']}"])
    table = markdown(["batch (prompts×samples)", "ours CPU ms/turn", "verl CPU ms/turn", "ours/verl",
                      "images/traj", "tokens prompt+response"], rows)
    return table, grpo, batches


def spread_section(h, args: argparse.Namespace, grpo_cpu: dict[str, float]) -> str:
    from bench._rollout_workers import run_spread, start_pool

    n = args.prompts * args.samples
    t0 = time.perf_counter()
    pool = start_pool(args.workers, (str(h.model_dir), h.template, str(h.kb), h.prompts[: args.prompts]),
                      use_ray=not args.no_ray)
    loops = ["ours", "verl"] if args.spread_verl else ["ours"]
    try:
        for which in loops:
            assert all(pool.call("warm", [which] * args.workers)), f"{which}: warm-up did not answer"
        started = time.perf_counter() - t0
        rows = []
        for latency in args.latency:
            for which in loops:
                # New prompts (a training step: frames, searches and prompts not seen before),
                # then the same batch again with what it left in the caches.
                for cold in (True, False):
                    r = run_spread(pool, which, latency, args.prompts, args.samples, cold=cold,
                                   jitter=args.jitter)
                    assert r["answered"] == n, r
                    ideal = r["ideal"]  # = turns × latency without jitter
                    rows.append([f"{which}, {latency * 1e3:g} ms", "new" if cold else "repeated",
                                 f"{r['wall']:.2f}", f"{ideal:.2f}", f"{ideal / r['wall']:.1%}",
                                 f"{r['cpu'] / r['calls'] * 1e3:.1f}"])
    finally:
        pool.close()
    cores = os.cpu_count() or 1
    turns = ("every model turn the same length (lockstep)" if not args.jitter else
             f"model turns ±{args.jitter:.0%} around the latency; ideal = the longest trajectory's model time")
    out = [f"{n} trajectories ({args.prompts} prompts × {args.samples}) over {args.workers} agent-loop "
           f"workers ({pool.kind}, started and warmed in {started:.0f} s) on this machine's {cores} cores, "
           f"{turns}:",
           markdown(["loop, model turn", "prompts", "wall s", "ideal s", "efficiency", "CPU ms/turn"], rows)]
    # Projection, not a measurement: with W workers on C cores each core serves n / min(W, C)
    # trajectories; if all of them finish a model call together, a turn takes L + (n/C)·c, so
    # the efficiency is L / (L + (n/C)·c) at worst.
    proj = []
    for which, c in grpo_cpu.items():
        for latency in args.latency:
            per_core = n / min(args.workers, PROJECTED_CORES)
            proj.append([f"{which}, {latency * 1e3:g} ms", f"{c * 1e3:.1f}",
                         f"{latency / (latency + per_core * c):.1%}"])
    out += [f"\nPROJECTION (not measured) to {PROJECTED_CORES} cores, {args.workers} workers, from the GRPO CPU "
            "per turn of table 1, worst case (every trajectory's CPU work queued at once per turn):",
            markdown(["loop, model turn", "CPU ms/turn", f"projected efficiency, {PROJECTED_CORES} cores"], proj)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--latency", type=float, nargs="+", default=[0.05, 1.0],
                    help="model-turn latencies in seconds for the multi-worker run")
    ap.add_argument("--cpu-latency", type=float, default=0.05, help="model-turn latency for table 1")
    ap.add_argument("--jitter", type=float, default=0.0,
                    help="spread each model turn uniformly over latency × (1 ± JITTER) in table 2 "
                         "(0: lockstep, the worst case)")
    ap.add_argument("--workers", type=int, default=8, help="agent-loop worker processes (0: skip)")
    ap.add_argument("--cpu-prompts", type=int, default=None, help="prompts for table 1 (default: 8, quick: 2)")
    ap.add_argument("--spread-verl", action="store_true", help="also spread verl's loop over the workers")
    ap.add_argument("--no-ray", action="store_true", help="spawned processes instead of Ray actors")
    ap.add_argument("--long-turns", type=int, default=16)
    ap.add_argument("--profile", action="store_true", help="cProfile our loop per trajectory")
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.prompts, args.samples, args.long_turns = min(args.prompts, 2), min(args.samples, 2), min(args.long_turns, 4)
        args.latency = [min(args.latency)] if args.latency else [0.01]
        args.cpu_latency = min(args.cpu_latency, 0.01)
    cpu_prompts = args.cpu_prompts or (2 if args.quick else 8)

    h = make_harness(max(args.prompts, cpu_prompts))
    try:
        for which in LOOPS:  # warm up: search index, template and tokenizer caches
            check(asyncio.run(run_batch(h, which, rows_for(h, which, 1, 1), 0.0)))
        print(f"tiny {h.proc.__class__.__name__} (chat template: {h.template}); {IMAGES_PER_TRAJECTORY} images and "
              f"{len(TURNS)} model calls per trajectory, both loops; fake server {args.cpu_latency * 1e3:g} ms/turn\n")
        print("1. Agent-side CPU per model turn (process CPU over the batch, server sleeps excluded):")
        table, grpo, _ = cpu_section(h, cpu_prompts, args.samples, args.cpu_latency)
        print(table)
        ratio = grpo["ours"] / grpo["verl"]
        print(f"GRPO ours/verl = {ratio:.2f}× (target ≤ 0.5×: {'met' if ratio <= 0.5 else 'NOT met'})\n")
        sys.stdout.flush()

        if args.workers > 0:
            print("2. Efficiency over agent-loop workers:")
            print(spread_section(h, args, grpo) + "\n")
            sys.stdout.flush()

        asyncio.run(observation_seconds(h, args.long_turns))  # warm-up
        ms = [s * 1e3 for s in asyncio.run(observation_seconds(h, args.long_turns))]
        print(f"3. Observation rendering by turn ({len(ms)} observations in one trajectory, ours):")
        qs = quarters(ms)
        print(markdown(["turns", "ms/observation"], [[k, f"{v:.2f}"] for k, v in qs]))
        print(f"last/first quarter: {qs[-1][1] / qs[0][1]:.2f} (flat ≈ 1)")

        if args.profile:
            p, s = (2, 2) if args.quick else (8, 8)
            for which in LOOPS:
                clear_caches()
                top, buckets = profile_batch(h, which, rows_for(h, which, p, s))
                print(f"\n4. cProfile, {which}, {p}×{s} trajectories from empty caches, executor work inlined "
                      "(self time, ms per trajectory):")
                print(markdown(["component", "ms/trajectory"], [[k, f"{v:.1f}"] for k, v in buckets if v >= 0.05]))
                if os.environ.get("BENCH_PROFILE_TOP"):
                    print(top)
    finally:
        h.close()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
