"""The side-by-side rollout bench: verl's ToolAgentLoop, driven by the bench's tag parser and
tools, must do the same trajectory as our loop (same actions, model calls and images), and
the CPU table must print a ratio."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("verl")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._rollout_run import rows_for, run_batch  # noqa: E402
from bench._rollout_setup import (  # noqa: E402
    EXPECTED_ACTIONS,
    IMAGES_PER_TRAJECTORY,
    TURNS,
    clear_caches,
    make_harness,
)
from bench._rollout_verl import parse_tags  # noqa: E402
from bench.rollout import check, cpu_section  # noqa: E402
from segresearch.agents.protocol import AnswerAction, KeyframeAction, SearchAction, parse_action  # noqa: E402


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    h = make_harness(2, tmp_path_factory.mktemp("rollout"))
    yield h
    h.close()


def test_tag_parser_reads_our_protocol_as_ours_does():
    for turn in TURNS:
        ours = parse_action(turn)
        calls = parse_tags(turn)
        if isinstance(ours, AnswerAction):
            assert calls == []
            continue
        assert len(calls) == 1
        args = __import__("json").loads(calls[0].arguments)
        if isinstance(ours, SearchAction):
            assert (calls[0].name, args) == (ours.name, {"query": ours.query})
        else:
            assert isinstance(ours, KeyframeAction)
            assert (calls[0].name, args) == ("keyframe", {"frame": ours.frame})


def test_both_loops_do_the_same_trajectory(harness):
    clear_caches()
    got = {which: asyncio.run(run_batch(harness, which, rows_for(harness, which, 1, 1), 0.0)).trajectories[0]
           for which in ("ours", "verl")}
    ours, verl = got["ours"], got["verl"]
    assert ours["answered"] and verl["answered"]
    assert ours["actions"] == verl["actions"] == EXPECTED_ACTIONS
    assert ours["model_calls"] == verl["model_calls"] == len(TURNS)
    assert ours["images"] == verl["images"] == IMAGES_PER_TRAJECTORY
    assert ours["server_images"] == verl["server_images"] == IMAGES_PER_TRAJECTORY
    # The same images expand to the same placeholders: ours renders no tool schemas, so
    # verl's prompt is at least as long; their responses differ only by role markers.
    assert verl["prompt_tokens"] >= ours["prompt_tokens"]


def test_cpu_table_prints_a_ratio(harness):
    table, grpo, batches = cpu_section(harness, 1, 2, 0.0)
    for b in batches.values():
        check(b)
        assert b.calls == b.n * len(TURNS)
    assert set(grpo) == {"ours", "verl"} and all(v > 0 for v in grpo.values())
    assert re.search(r"\|\s+\d+\.\d\d×\s+\|", table), table
    assert "GRPO" in table and "empty caches" in table


def test_jitter_spreads_model_turns_and_sets_the_ideal(harness):
    """Lockstep turns sum to turns × latency; jittered ones differ per trajectory, stay in
    latency × (1 ± j), and the ideal is the longest trajectory's model time."""
    lock = asyncio.run(run_batch(harness, "ours", rows_for(harness, "ours", 1, 3), 0.01))
    assert lock.ideal == pytest.approx(len(TURNS) * 0.01)
    jit = asyncio.run(run_batch(harness, "ours", rows_for(harness, "ours", 1, 3), 0.01, jitter=0.5))
    check(jit)
    assert len(TURNS) * 0.005 <= jit.ideal <= len(TURNS) * 0.015 and jit.ideal != pytest.approx(lock.ideal)
