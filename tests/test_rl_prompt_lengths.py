"""Rows whose prompt cannot fit are flagged before training starts.

The rows `segresearch data okvos` writes are text-only (the graph renders the frames), so
verl's ``data.filter_overlong_prompts`` counts the question alone. `segresearch train` counts
each row's real prompt (system prompt, frames, question) with the model's tokenizer and the
frames' geometry and refuses to start when one exceeds ``data.max_prompt_length``: such a row
would otherwise be a masked zero-reward sample every time it is drawn. The count equals the
rollout's own prompt (tests/test_rl_agent_loop.py::test_prompt_counter_equals_the_rollout_prompt).
"""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("verl")

from segresearch.rl import train  # noqa: E402
from segresearch.rl.data import PromptCounter, convert_okvos, prompt_lengths  # noqa: E402
from segresearch.testing.okvos import make_synthetic_okvos  # noqa: E402
from segresearch.testing.tiny_vlm import build_tiny_qwen_vl  # noqa: E402


@pytest.fixture(autouse=True)
def _own_hydra_state(own_hydra_state):
    """Every test here runs with its own Hydra state (conftest.py)."""


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """Tiny Qwen3-VL with the published template and pixel limits (196 tokens a frame)."""
    return build_tiny_qwen_vl(tmp_path_factory.mktemp("tiny_prompt"), "qwen3_vl")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("okvos_prompt")
    make_synthetic_okvos(root, "train", n_videos=1)
    return convert_okvos(root, "train", progress=False)


@pytest.fixture(scope="module")
def lengths(model, data):
    counter = PromptCounter.from_pretrained(str(model), use_search=True)
    return prompt_lengths(data, counter, 100_000)


def _cfg(model: Path, data: Path, limit: int, *extra: str):
    return train.compose_config("grpo", [f"actor_rollout_ref.model.path={model}",
                                         f"data.train_files={data}", f"data.val_files={data}",
                                         f"data.max_prompt_length={limit}", *extra])


def test_every_row_is_counted_with_its_frames(lengths):
    assert lengths.rows == 16 and not lengths.over
    # six 448-px frames are 6 × 196 image tokens; the system prompt and questions come on top
    assert 6 * 196 < lengths.longest < 6 * 196 + 1000


def test_rows_over_the_limit_are_named(model, data, lengths):
    counter = PromptCounter.from_pretrained(str(model), use_search=True)
    tight = prompt_lengths(data, counter, lengths.longest - 1)
    assert [o.tokens for o in tight.over] == [lengths.longest] * len(tight.over)
    assert 1 <= len(tight.over) < tight.rows
    assert all(o.id for o in tight.over)


def test_counting_a_row_is_cheap(model, data):
    counter = PromptCounter.from_pretrained(str(model), use_search=True)
    t0 = time.perf_counter()
    prompt_lengths(data, counter, 2048)
    assert (time.perf_counter() - t0) / 16 < 0.05  # seconds a row: no pixel is decoded


def test_preflight_passes_rows_that_fit(model, data, lengths):
    report = train.Report()
    train.check_prompt_lengths(_cfg(model, data, lengths.longest), report)
    assert not report.errors and not report.warnings
    assert any(f"longest {lengths.longest} tokens" in c for c in report.checked)


def test_preflight_refuses_rows_that_do_not_fit(model, data, lengths):
    report = train.Report()
    train.check_prompt_lengths(_cfg(model, data, lengths.longest - 1), report)
    (error,) = set(report.errors)  # train and val name the same file: reported once
    assert f"data.max_prompt_length={lengths.longest - 1}" in error
    assert f"Raise data.max_prompt_length to {lengths.longest}" in error


def test_the_no_search_prompt_is_shorter(model, data, lengths):
    """The system prompt follows the agent loop's search setting, as the rollout's does."""
    counter = PromptCounter.from_pretrained(str(model), use_search=False)
    assert prompt_lengths(data, counter, 100_000).longest < lengths.longest


def test_the_tools_agent_loop_counts_the_tools_prompt(model, data, lengths):
    """With the tools-mode agent loop as the default (seg_research_agent.yaml's
    ``seg_research_agent_tools``) the preflight counts the tools-mode prompt: longer than the
    tags prompt by the tool definitions, and the count a tools counter gives."""
    tools = prompt_lengths(data, PromptCounter.from_pretrained(str(model), use_search=True, protocol="tools",
                                                               keyframe_size=864), 100_000)
    assert tools.longest > lengths.longest + 200  # four tool schemas in the system turn
    loop = "actor_rollout_ref.rollout.agent.default_agent_loop=seg_research_agent_tools"
    report = train.Report()
    train.check_prompt_lengths(_cfg(model, data, tools.longest, loop), report)
    assert not report.errors and any(f"longest {tools.longest} tokens" in c for c in report.checked)
    report = train.Report()
    train.check_prompt_lengths(_cfg(model, data, tools.longest - 1, loop), report)
    assert report.errors and f"Raise data.max_prompt_length to {tools.longest}" in report.errors[0]


def test_launch_is_refused_before_verl_runs(model, data, lengths, monkeypatch):
    from verl.trainer import main_ppo

    launched = []
    monkeypatch.setattr(main_ppo.main, "__wrapped__", launched.append)
    # the machine check (no vLLM or CUDA here) is tested in test_rl_train; this is about lengths
    monkeypatch.setattr(train, "check_trainer_environment", lambda cfg: [])
    base = [f"actor_rollout_ref.model.path={model}", f"data.train_files={data}", f"data.val_files={data}"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = train.main([*base, f"data.max_prompt_length={lengths.longest - 1}"])
    assert code == train.EXIT_CHECK_FAILED and not launched
    assert "prompt tokens" in err.getvalue()
    assert train.main([*base, f"data.max_prompt_length={lengths.longest}"]) == train.EXIT_OK
    assert len(launched) == 1


def test_without_the_model_the_check_is_a_warning(tmp_path, data):
    report = train.Report()
    train.check_prompt_lengths(_cfg(tmp_path / "no_model", data, 2048), report)
    assert not report.errors
    assert len(report.warnings) == 1 and "prompt lengths not checked" in report.warnings[0]


def test_files_in_another_layout_are_not_counted(model, tmp_path):
    import pandas as pd

    other = tmp_path / "other.parquet"
    pd.DataFrame({"prompt": ["hi"], "extra_info": [{"index": 0}]}).to_parquet(other)
    report = train.Report()
    train.check_prompt_lengths(_cfg(model, other, 2048), report)
    assert not report.errors and "not written by `segresearch data okvos`" in report.warnings[0]
