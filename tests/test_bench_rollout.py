"""The side-by-side rollout bench: verl's ToolAgentLoop, driven by the bench's tag parser and
tools, must do the same trajectory as our loop (same actions, model calls and images), verl's
post-processing of either loop's trajectories must give the same tensors with and without the
post-processing cache, pre-sized frames must give the same trajectory without decoding the
sources, and the CPU table must print a ratio."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("verl")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._rollout_post import postprocess  # noqa: E402
from bench._rollout_run import rows_for, run_batch  # noqa: E402
from bench._rollout_setup import (  # noqa: E402
    EXPECTED_ACTIONS,
    IMAGES_PER_TRAJECTORY,
    TURNS,
    FakeServer,
    clear_caches,
    make_harness,
)
from bench._rollout_verl import parse_tags  # noqa: E402
from bench.rollout import check, cpu_section  # noqa: E402
from segresearch.core.media import Media  # noqa: E402
from segresearch.core.protocol import AnswerAction, KeyframeAction, SearchAction, parse_action  # noqa: E402
from segresearch.rl import postprocess_cache  # noqa: E402


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
    clear_caches(harness.proc)
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


@pytest.mark.slow  # runs the benchmark (about 7 s)
def test_cpu_table_prints_a_ratio(harness):
    table, ratios, batches = cpu_section(harness, 1, 2, 0.0)
    assert len(batches) == 2 * 5  # two batches; each loop with the post-processing cache off and on
    for b in batches.values():
        check(b)
        assert b.calls == b.n * len(TURNS) and b.post_cpu > 0
        assert all(t["post_images"] == IMAGES_PER_TRAJECTORY for t in b.trajectories)
    assert len(ratios) == 2 and all(len(r) == 3 and all(v > 0 for v in r.values()) for r in ratios.values())
    assert re.search(r"\|\s+\d+\.\d\d×\s+\|", table), table
    assert "GRPO" in table and "different prompts" in table and "post cache on" in table


def _same(a, b) -> None:
    for name in ("input_ids", "attention_mask", "response_mask", "position_ids"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert set(a.multi_modal_inputs) == set(b.multi_modal_inputs)
    for k, x in a.multi_modal_inputs.items():
        y = b.multi_modal_inputs[k]
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), k


@pytest.mark.parametrize("which", ["ours", "verl"])
def test_post_processing_of_rollouts_is_the_same_with_the_cache(harness, which):
    """Real trajectories of a GRPO pair (shared frames) through verl's post-processing."""
    clear_caches(harness.proc)
    rows = rows_for(harness, which, 1, 2)
    outs = []

    async def go():
        for row in rows:
            outs.append(await harness.ours(FakeServer(harness.tok, 0.0), cache=False).run({}, **row)
                        if which == "ours" else await harness.verl(FakeServer(harness.tok, 0.0)).run({}, **row))

    asyncio.run(go())
    post = lambda o, r: asyncio.run(postprocess(harness.post, o.model_copy(deep=True), r))  # noqa: E731
    try:
        postprocess_cache.uninstall(harness.proc)
        want = [post(o, r) for o, r in zip(outs, rows, strict=True)]
        cache = postprocess_cache.install(harness.proc)
        for o, r, w in zip(outs, rows, want, strict=True):
            _same(post(o, r), w)
        assert cache.stats.hits >= IMAGES_PER_TRAJECTORY - 2  # the second sample reuses the frames
    finally:
        postprocess_cache.uninstall(harness.proc)


async def _run_ours(harness, row):
    return await harness.ours(FakeServer(harness.tok, 0.0)).run({}, **row)  # the loop made in the event loop


def test_presized_frames_give_the_same_trajectory_without_decoding_the_sources(harness, monkeypatch):
    decoded: list[str] = []
    frame = Media.frame

    def counting(self, fid):
        decoded.append(str(self.paths[self.index_of(fid)]) if self.paths else self.source)
        return frame(self, fid)

    monkeypatch.setattr(Media, "frame", counting)
    prompt = harness.prompts[0]
    got = {}
    for name, row in (("source", prompt.ours()), ("presized", prompt.ours(presized=True)),
                      ("other filter", {**prompt.ours(presized=True),
                                        "extra_info": {**prompt.ours(presized=True)["extra_info"],
                                                       "frame_resize": "square-lanczos"}})):
        clear_caches(harness.proc)
        decoded.clear()
        out = asyncio.run(_run_ours(harness, row))
        got[name] = (out, list(decoded))
    src, pre, other = got["source"], got["presized"], got["other filter"]
    for out, _ in (pre, other):
        assert out.prompt_ids == src[0].prompt_ids and out.response_ids == src[0].response_ids
        images = out.multi_modal_data["images"]
        assert [i.tobytes() for i in images] == [i.tobytes() for i in src[0].multi_modal_data["images"]]
    keyframe = prompt.frame_paths[3]
    assert sorted(src[1]) == sorted([*prompt.frame_paths, keyframe])
    assert sorted(pre[1]) == sorted([*prompt.presized, keyframe])  # only the keyframe from its source
    assert sorted(other[1]) == sorted(src[1])  # made with another filter: not used


def test_jitter_spreads_model_turns_and_sets_the_ideal(harness):
    """Lockstep turns sum to turns × latency; jittered ones differ per trajectory, stay in
    latency × (1 ± j), and the ideal is the longest trajectory's model time."""
    lock = asyncio.run(run_batch(harness, "ours", rows_for(harness, "ours", 1, 3), 0.01))
    assert lock.ideal == pytest.approx(len(TURNS) * 0.01)
    jit = asyncio.run(run_batch(harness, "ours", rows_for(harness, "ours", 1, 3), 0.01, jitter=0.5))
    check(jit)
    assert len(TURNS) * 0.005 <= jit.ideal <= len(TURNS) * 0.015 and jit.ideal != pytest.approx(lock.ideal)
