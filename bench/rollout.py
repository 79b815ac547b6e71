"""Rollout cost of our agent loop against verl's own ``ToolAgentLoop``, side by side, end to end.

Both loops run identical 4-turn trajectories (text search, image search, keyframe, answer;
7 frames at 448 px + one 256 px image hit + the 864 px keyframe = 9 images) on a tiny
Qwen3-VL with the published image-processor sizes, against the same instant fake server
(scripted tokens, fixed latency, no CPU work). verl's loop speaks our tags through a tool
parser and ``BaseTool``s doing what our tools do (bench/_rollout_verl.py). Every trajectory
of either loop then goes through verl's own post-processing
(``AgentLoopWorker._agent_loop_postprocess``: pixel inputs and M-RoPE positions, on the
worker's event loop; bench/_rollout_post.py), which a rollout worker pays whichever loop
made the trajectory.

1. CPU per trajectory, agent side + post-processing, with new prompts (empty caches):
   distinct prompts, and GRPO groups (each prompt ``--samples`` times); each loop with the
   post-processing cache off and on (segresearch/rl/postprocess_cache.py; ours installs it
   by default, verl as shipped has none), ours also with pre-sized frames (verl's prompts
   always hold them). The target: ours ≤ 0.5× verl's ``ToolAgentLoop`` + the same
   post-processing.
2. A new GRPO group (``--samples`` trajectories of one new prompt), ours, decoding and
   resizing the source frames against reading the frames ``segresearch data okvos
   --presize-frames`` stored at the shown size: CPU per group and the time to its first
   model call.
3. Efficiency (ideal wall = the longest trajectory's model time, over measured wall) of
   ``--per-worker`` trajectories per agent-loop worker over ``--workers`` worker processes
   (Ray actors, as verl runs AgentLoopWorkers), post-processing included, all started
   together, model turns spread by ``--jitter``; ours with new prompts (source or pre-sized
   frames), repeated prompts, and new prompts without the post-processing cache; verl's
   loop with new prompts.
4. Observation rendering by turn in one long trajectory (must stay flat).
5. With ``--profile``: cProfile of each loop with post-processing, self time per trajectory
   by component.

    python bench/rollout.py [--per-worker 16 32] [--samples 8] [--latency 0.05 1] [--workers N]
                            [--jitter 0.5] [--cpu-prompts 8] [--repeats 3] [--long-turns 16] [--profile] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
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

TARGET = 0.5  # ours end to end ≤ TARGET × ToolAgentLoop end to end, new prompts
# (loop, post-processing cache, pre-sized frames) in table 1; verl without the cache is verl
# as shipped (its prompts always hold pre-sized frames, as its dataset stores them).
CPU_CASES = (("ours", True, False), ("ours", True, True), ("ours", False, False), ("verl", False, True),
             ("verl", True, True))
AS_SHIPPED = ("verl", False, True)


def check(batch: Batch) -> None:
    """Every trajectory answered after the scripted calls, with all its images (also in
    verl's post-processed pixel inputs, where post-processing ran)."""
    for t in batch.trajectories:
        assert t["answered"], (batch.which, t)
        assert t["model_calls"] == len(TURNS), (batch.which, t)
        assert t["images"] == IMAGES_PER_TRAJECTORY == t["server_images"], (batch.which, t)
        assert t["actions"] == EXPECTED_ACTIONS, (batch.which, t["actions"])
        assert t.get("post_images") in (None, IMAGES_PER_TRAJECTORY), (batch.which, t)


def _label(which: str, cache: bool, presized: bool) -> str:
    if which == "verl":
        return f"`ToolAgentLoop`, post cache {'on' if cache else 'off'}"
    return f"ours, post cache {'on' if cache else 'off'}, {'pre-sized' if presized else 'source'} frames"


def cpu_section(h, prompts: int, samples: int, latency: float,
                repeats: int = 1) -> tuple[str, dict[str, dict[str, float]], dict[str, Batch]]:
    """Table 1 (medians of ``repeats`` runs of every case, the cases interleaved: fresh
    memory costs vary from run to run); returns it, the end-to-end ratios of each of our
    cases over verl as shipped per batch, and each case's last batch."""
    cases = [(f"{prompts * samples} different prompts", prompts * samples, 1),
             (f"GRPO: {prompts} prompts × {samples}", prompts, samples)]
    h.add_prompts(max(p for _, p, _ in cases))
    rows, ratios, batches = [], {}, {}
    for label, p, s in cases:
        runs: dict[tuple, list[tuple[float, float]]] = {c: [] for c in CPU_CASES}
        for _ in range(repeats):
            for case in CPU_CASES:
                which, cache, presized = case
                clear_caches(h.proc)
                b = asyncio.run(run_batch(h, which, rows_for(h, which, p, s, presized=presized), latency,
                                          post="after", cache=cache))
                check(b)
                batches[f"{label}/{_label(*case)}"] = b
                runs[case].append((b.cpu / b.n * 1e3, b.post_cpu / b.n * 1e3))
        total = {}
        for case in CPU_CASES:
            agent = statistics.median(a for a, _ in runs[case])
            post = statistics.median(q for _, q in runs[case])
            total[case] = agent + post
            rows.append([label, _label(*case), f"{agent:.1f}", f"{post:.1f}", f"{agent + post:.1f}"])
        base = total[AS_SHIPPED]
        for r, case in zip(rows[-len(CPU_CASES):], CPU_CASES, strict=True):
            r.append(f"{total[case] / base:.2f}×")
        ratios[label] = {_label(*c): total[c] / base for c in CPU_CASES if c[0] == "ours"}
    table = markdown(["batch (new prompts)", "loop", "agent CPU ms/traj", "post-processing CPU ms/traj",
                      "total CPU ms/traj", "total / ToolAgentLoop as shipped"], rows)
    return table, ratios, batches


def presized_section(h, groups: int, samples: int, latency: float) -> str:
    """Table 2: new GRPO groups of ours, source frames against pre-sized frames."""
    h.add_prompts(groups)
    res: dict[bool, list[Batch]] = {False: [], True: []}
    for g in range(groups):
        for presized in (False, True):  # alternated, so that drift hits both alike
            clear_caches(h.proc)
            b = asyncio.run(run_batch(h, "ours", rows_for(h, "ours", 1, samples, presized=presized, first=g),
                                      latency))
            check(b)
            res[presized].append(b)
    rows = []
    for presized, label in ((False, "source frames (JPEG 960×540, decoded and resized to 448 px)"),
                            (True, "pre-sized frames (448 px BMP from `data okvos --presize-frames`)")):
        bs = res[presized]
        rows.append([label, f"{statistics.median(b.cpu for b in bs) * 1e3:.0f}",
                     f"{statistics.median(b.first_call for b in bs) * 1e3:.0f}"])
    return markdown([f"a new GRPO group ({samples} samples, median of {groups})", "agent CPU ms/group",
                     "first model call after ms"], rows)


def spread_section(h, args: argparse.Namespace) -> str:
    from bench._rollout_workers import run_spread, start_pool

    loads = [max(1, pw * args.workers // args.samples) for pw in args.per_worker]  # prompts per load
    most = max(loads)
    h.add_prompts(most)
    t0 = time.perf_counter()
    pool = start_pool(args.workers, (str(h.model_dir), h.template, str(h.kb), h.prompts[:most]),
                      use_ray=not args.no_ray)
    # (column, loop, new prompts, post-processing cache, pre-sized frames)
    runs = [("ours, new", "ours", True, True, False), ("ours, new, pre-sized frames", "ours", True, True, True),
            ("ours, new, post cache off", "ours", True, False, False), ("ours, repeated", "ours", False, True, False),
            ("`ToolAgentLoop`, new", "verl", True, False, True)]
    try:
        for which in LOOPS:
            assert all(pool.call("warm", [which] * args.workers)), f"{which}: warm-up did not answer"
        started = time.perf_counter() - t0
        summary, detail = [], []
        for prompts in loads:
            n = prompts * args.samples
            for latency in args.latency:
                got: dict[str, list[dict]] = {col: [] for col, *_ in runs}
                for _ in range(args.repeats):  # the columns interleaved, so that drift hits all alike
                    for col, which, cold, cache, presized in runs:
                        r = run_spread(pool, which, latency, prompts, args.samples, cold=cold,
                                       jitter=args.jitter, cache=cache, presized=presized)
                        assert r["answered"] == n, r
                        got[col].append({**r, "eff": r["ideal"] / r["wall"]})
                row = [f"{n / args.workers:g}", f"{latency * 1e3:g} ms"]
                for col, rs in got.items():
                    effs = sorted(x["eff"] for x in rs)
                    mid = statistics.median(effs)
                    row.append(f"{mid:.1%}" if len(effs) == 1 else f"{mid:.1%} ({effs[0]:.0%}–{effs[-1]:.0%})")
                    wall, ideal, cpu = (statistics.median(x[k] for x in rs) for k in ("wall", "ideal", "cpu"))
                    detail.append([f"{n / args.workers:g}", f"{latency * 1e3:g} ms", col, f"{wall:.2f}",
                                   f"{ideal:.2f}", f"{mid:.1%}", f"{cpu / n * 1e3:.0f}"])
                summary.append(row)
    finally:
        pool.close()
    cores = os.cpu_count() or 1
    turns = ("every model turn the same length (lockstep)" if not args.jitter else
             f"model turns ±{args.jitter:.0%} around the latency; ideal = the longest trajectory's model time")
    return "\n".join([
        f"GRPO groups of {args.samples} over {args.workers} agent-loop workers ({pool.kind}, started and warmed in "
        f"{started:.0f} s) on this machine's {cores} cores, each trajectory post-processed by verl's code as it "
        f"ends, {turns}:",
        f"efficiency, median of {args.repeats} runs (lowest–highest):",
        markdown(["trajectories per worker", "model turn", *(c for c, *_ in runs)], summary),
        "",
        "medians of the same runs:",
        markdown(["trajectories per worker", "model turn", "run", "wall s", "ideal s", "efficiency",
                  "CPU ms/traj (incl. post-processing)"], detail),
    ])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-worker", dest="per_worker", type=int, nargs="+", default=[16, 32],
                    help="trajectories per agent-loop worker in the efficiency table (whole GRPO groups)")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--latency", type=float, nargs="+", default=[0.05, 1.0],
                    help="model-turn latencies in seconds for the multi-worker run")
    ap.add_argument("--cpu-latency", type=float, default=0.05, help="model-turn latency for tables 1 and 2")
    ap.add_argument("--jitter", type=float, default=0.5,
                    help="spread each model turn uniformly over latency × (1 ± JITTER) in table 3 "
                         "(0: lockstep, the worst case)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="agent-loop worker processes, one per core by default (0: skip table 3)")
    ap.add_argument("--cpu-prompts", type=int, default=None,
                    help="prompts for tables 1 and 2 (default: 8, quick: 2)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of every case in tables 1 and 3 (medians)")
    ap.add_argument("--no-ray", action="store_true", help="spawned processes instead of Ray actors")
    ap.add_argument("--long-turns", type=int, default=16)
    ap.add_argument("--profile", action="store_true", help="cProfile both loops per trajectory")
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.samples, args.long_turns = min(args.samples, 2), min(args.long_turns, 4)
        args.per_worker = [min(2, *args.per_worker)]
        args.latency = [min(args.latency)] if args.latency else [0.01]
        args.cpu_latency = min(args.cpu_latency, 0.01)
        args.repeats = 1
    cpu_prompts = args.cpu_prompts or (2 if args.quick else 8)

    h = make_harness(cpu_prompts)
    try:
        for which in LOOPS:  # warm up: search index, template and tokenizer caches
            check(asyncio.run(run_batch(h, which, rows_for(h, which, 1, 1), 0.0, post="after")))
        print(f"tiny {h.proc.__class__.__name__} (chat template: {h.template}); {IMAGES_PER_TRAJECTORY} images and "
              f"{len(TURNS)} model calls per trajectory, both loops; fake server {args.cpu_latency * 1e3:g} ms/turn; "
              f"verl's post-processing at prompt_length {h.post.rollout_config.prompt_length}, "
              f"response_length {h.post.rollout_config.response_length}\n")
        print("1. CPU per trajectory, agent side + verl's post-processing (process CPU; server sleeps excluded; "
              f"median of {args.repeats} runs, cases interleaved; post-processing results kept until the batch is "
              "done, as verl's worker keeps them):")
        table, ratios, _ = cpu_section(h, cpu_prompts, args.samples, args.cpu_latency, args.repeats)
        print(table)
        for label, r in ratios.items():
            print(f"{label}: ours / ToolAgentLoop as shipped, end to end (target ≤ {TARGET}×): " + "; ".join(
                f"{k[len('ours, '):]} {v:.2f}× ({'met' if v <= TARGET else 'NOT met'})" for k, v in r.items()))
        print()
        sys.stdout.flush()

        print("2. Frames at data time against frames at rollout time:")
        print(presized_section(h, cpu_prompts, args.samples, args.cpu_latency) + "\n")
        sys.stdout.flush()

        if args.workers > 0:
            print("3. Efficiency over agent-loop workers:")
            print(spread_section(h, args) + "\n")
            sys.stdout.flush()

        asyncio.run(observation_seconds(h, args.long_turns))  # warm-up
        ms = [s * 1e3 for s in asyncio.run(observation_seconds(h, args.long_turns))]
        print(f"4. Observation rendering by turn ({len(ms)} observations in one trajectory, ours):")
        qs = quarters(ms)
        print(markdown(["turns", "ms/observation"], [[k, f"{v:.2f}"] for k, v in qs]))
        print(f"last/first quarter: {qs[-1][1] / qs[0][1]:.2f} (flat ≈ 1)")

        if args.profile:
            p, s = (2, 2) if args.quick else (8, 8)
            for which in LOOPS:
                clear_caches(h.proc)
                top, buckets = profile_batch(h, which, rows_for(h, which, p, s))
                print(f"\n5. cProfile, {which}, {p}×{s} trajectories from empty caches, executor work and verl's "
                      "post-processing inlined (self time, ms per trajectory):")
                print(markdown(["component", "ms/trajectory"], [[k, f"{v:.1f}"] for k, v in buckets if v >= 0.05]))
                if os.environ.get("BENCH_PROFILE_TOP"):
                    print(top)
    finally:
        h.close()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
