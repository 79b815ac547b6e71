"""A model spec is parsed once (``segresearch.agents.model_spec.ModelSpec``), and every reader
(the loader, the CLI's early check, the serving policy, the web page's status, the
evaluation's resolver, the server launcher) reads the same spec the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.model_spec import SPEC_HELP, ModelSpec
from segresearch.agents.models import clear_model_cache, resolve_model
from segresearch.agents.path_policy import _model_problem, resolve_model_spec
from segresearch.cli.model_check import check_model
from segresearch.eval.spec import resolved_model
from segresearch.servers.langgraph_server import _absolute_operator_paths
from segresearch.servers.web import _model_status


def test_parts():
    spec = ModelSpec.parse("  HF : ~/ckpt  ")
    assert (spec.backend, spec.target, spec.text, spec.names_file) == ("hf", "~/ckpt", "HF : ~/ckpt", True)
    assert spec.problem is None and spec.with_target("/abs/ckpt") == "hf:/abs/ckpt"
    openai = ModelSpec.parse("openai:Qwen/Qwen3-VL@rev@http://127.0.0.1:8000/v1")
    assert openai.openai_endpoint() == ("Qwen/Qwen3-VL@rev", "http://127.0.0.1:8000/v1")
    assert not openai.names_file
    assert ModelSpec.parse("openai:gpt-4o").openai_endpoint() == ("gpt-4o", None)


@pytest.mark.parametrize(("spec", "says"), [
    ("gpt-4o", f"{SPEC_HELP}; got 'gpt-4o'"),
    ("hf:", f"{SPEC_HELP}; got 'hf:'"),
    ("replay:   ", f"{SPEC_HELP}; got 'replay:'"),
    ("vllm:model", f"unknown model backend 'vllm': {SPEC_HELP}"),
])
def test_a_spec_no_backend_can_take_is_one_message_everywhere(spec, says):
    assert ModelSpec.parse(spec).problem == says
    with pytest.raises(ValueError) as e:
        resolve_model(spec)
    assert str(e.value) == says
    assert check_model(spec, 1.0) == says


def test_the_openai_endpoint_errors_keep_their_words():
    """(the CLI quotes them after ``--model SPEC:``, see tests/test_user_mistakes.py)"""
    with pytest.raises(ValueError, match="names no host"):
        ModelSpec.parse("openai:fake@http:///v1").openai_endpoint()
    with pytest.raises(ValueError, match="write fake@http://localhost:8000/v1"):
        ModelSpec.parse(" OpenAI : fake@localhost:8000/v1").openai_endpoint()


def _cassette(tmp_path: Path) -> Path:
    path = tmp_path / "c.json"
    path.write_text('["<answer>{\\"bbox_2d\\": [1, 2, 3, 4], \\"point_2d\\": [2, 3]}</answer>"]')
    return path


@pytest.mark.parametrize("form", ["replay:{}", " REPLAY : {} ", "Replay:{}  "])
def test_every_reader_takes_a_file_spec_the_same_way(tmp_path, monkeypatch, form):
    """Spacing and case around the backend once meant a working spec to the loader and a
    broken one to the CLI's check (or the other way round); now all read the same parts."""
    monkeypatch.delenv("SEGRESEARCH_MEDIA_ROOTS", raising=False)  # the policy is off
    path = _cassette(tmp_path)
    spec = form.format(path)
    clear_model_cache()
    try:
        assert isinstance(resolve_model(spec), ReplayChatModel)
    finally:
        clear_model_cache()
    assert check_model(spec, 1.0) is None
    assert _model_problem(spec) is None
    assert resolve_model_spec(spec) == spec  # nothing to resolve without the policy
    assert _model_status(spec)["ok"] is True
    assert resolved_model(spec) == f"replay:{path.resolve()}"
    env = {"SEGRESEARCH_MODEL": form.format("c.json")}
    monkeypatch.chdir(tmp_path)
    _absolute_operator_paths(env)
    assert env["SEGRESEARCH_MODEL"] == f"replay:{path.resolve()}"


def test_a_missing_file_is_named_by_each_reader(tmp_path, monkeypatch):
    monkeypatch.delenv("SEGRESEARCH_MEDIA_ROOTS", raising=False)
    missing = tmp_path / "nope"
    assert check_model(f"hf: {missing}", 1.0) == f"model checkpoint not found: {missing}"
    assert _model_status(f" hf:{missing}")["reason"] == "missing"
    assert "replay cassette not found" in check_model(f"replay:{missing}.json", 1.0)
