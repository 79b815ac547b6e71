"""Contract tests for ``segresearch.compat``: one per assumption about a library's internals.

Each reads the installed library (its source, its route table, its behaviour on a tiny
input) and fails with the library's name and installed version, so an upgrade that breaks an
assumption says which one and against which release, before a run fails downstream.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import PackageNotFoundError, version
from types import SimpleNamespace
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from typing_extensions import TypedDict

from segresearch.compat import langgraph as lg_compat
from segresearch.compat import langgraph_api as api_compat


def installed(distribution: str) -> str:
    try:
        return f"{distribution} {version(distribution)}"
    except PackageNotFoundError:
        return f"{distribution} (not installed)"


def broken(distribution: str, assumption: str) -> str:
    """The message of a failed contract: what no longer holds, against which release."""
    return (f"{installed(distribution)}: {assumption} no longer holds; update "
            f"segresearch/compat for this release or install the tested one")


def _method_ast(module: str, cls: str, method: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{module} not found"
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    klass = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    return next(n for n in klass.body
                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == method)


def _called_attributes(fn: ast.AST) -> list[str]:
    """Methods called in ``fn``, in source order."""
    calls = [n for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    return [n.func.attr for n in sorted(calls, key=lambda n: (n.func.end_lineno, n.func.end_col_offset))]


# ------------------------------------------------------------------------------ LangGraph


class _S(TypedDict, total=False):
    n: int
    saved: bool


def _tiny_graph() -> StateGraph:
    def step(state: _S) -> dict[str, Any]:
        return {"n": state.get("n", 0) + 1, "saved": lg_compat.run_has_checkpointer()}

    g = StateGraph(_S)
    g.add_node("step", step)
    g.add_edge(START, "step")
    g.add_edge("step", END)
    return g


def test_langgraph_checkpointer_is_seen_from_inside_a_node():
    config = {"configurable": {"thread_id": "t"}}
    g = _tiny_graph()
    plain = g.compile()
    served = plain.copy(update={"checkpointer": InMemorySaver()})  # how langgraph-api lends one
    seen = (plain.invoke({"n": 0})["saved"],
            g.compile(checkpointer=InMemorySaver()).invoke({"n": 0}, config)["saved"],
            served.invoke({"n": 0}, config)["saved"])
    assert seen == (False, True, True), broken(
        "langgraph", f"the run's checkpointer is in its configurable under "
                     f"{lg_compat.CONFIG_KEY_CHECKPOINTER!r} (seen: {seen})")


class _Marked(CompiledStateGraph):
    def get_name(self, suffix: str | None = None, *, name: str | None = None) -> str:
        return "marked:" + super().get_name(suffix, name=name)


def test_langgraph_compiled_graph_rebuilds_as_a_subclass():
    saver = InMemorySaver()
    compiled = _tiny_graph().compile(checkpointer=saver, name="tiny")
    rebuilt = lg_compat.compiled_as(compiled, _Marked)
    what = "a compiled graph rebuilt from its attributes (as Pregel.copy does) is the same graph"
    assert set(vars(rebuilt)) == set(vars(compiled)) - {"__orig_class__"}, broken("langgraph", what)
    # The constructor may make its own containers; what they hold is what compile made.
    differ = [k for k, v in vars(rebuilt).items() if v is not vars(compiled)[k] and v != vars(compiled)[k]]
    assert not differ and set(rebuilt.channels) == set(compiled.channels), broken(
        "langgraph", f"{what} (differs in {differ})")
    assert rebuilt.checkpointer is compiled.checkpointer and rebuilt.name == "tiny", broken("langgraph", what)
    kept = [type(g) for g in (rebuilt.copy(), rebuilt.with_config({"tags": ["x"]}),
                              rebuilt.copy(update={"checkpointer": InMemorySaver()}))]
    assert kept == [_Marked] * 3, broken("langgraph", "copies keep the compiled graph's class")
    config = {"configurable": {"thread_id": "t"}}
    assert rebuilt.invoke({"n": 1}, config) == {"n": 2, "saved": True}, broken("langgraph", what)
    assert rebuilt.get_name() == "marked:tiny"
    with pytest.raises(TypeError):
        lg_compat.compiled_as(compiled, dict)  # type: ignore[type-var]


def test_the_served_graph_keeps_its_class_and_schema_through_copies():
    from segresearch.graphs.seg_research import SegResearchGraph, build_graph

    g = build_graph()
    copy = g.copy(update={"checkpointer": InMemorySaver()})
    assert type(g) is SegResearchGraph and type(copy) is SegResearchGraph
    cached = copy.get_context_jsonschema()
    assert cached == CompiledStateGraph.get_context_jsonschema(g)
    cached["mutated"] = True  # callers get their own copy
    assert "mutated" not in g.get_context_jsonschema()


# -------------------------------------------------------------------------- langgraph-api

_ROUTES_SCRIPT = textwrap.dedent("""
    import json, logging
    from segresearch.compat.langgraph_api import LOG_FORMATTER, writing_routes
    module, _, name = LOG_FORMATTER.rpartition(".")
    formatter = getattr(__import__(module, fromlist=[name]), name)
    print(json.dumps({"routes": writing_routes(),
                      "formatter": issubclass(formatter, logging.Formatter)}))
""")


@pytest.fixture(scope="module")
def langgraph_api_routes() -> dict[str, Any]:
    """The installed langgraph-api's writing routes, read in a process of its own: importing
    its route table reads the server configuration from the environment (in-memory runtime)."""
    pytest.importorskip("langgraph_api")
    env = {**os.environ, "LANGGRAPH_RUNTIME_EDITION": "inmem", "DATABASE_URI": ":memory:",
           "REDIS_URI": "fake", "MIGRATIONS_PATH": "__inmem"}
    out = subprocess.run([sys.executable, "-c", _ROUTES_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, broken("langgraph-api", f"its route table is importable: {out.stderr[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sample(template: str) -> str:
    """A concrete path for a route template: every ``{param}`` becomes an id."""
    parts = ["abc" if p.startswith("{") and p.endswith("}") else p for p in template.split("/")]
    return "/".join(parts)


def test_langgraph_api_writing_routes_are_all_checked_or_named(langgraph_api_routes):
    from segresearch.servers.gateway import route_allowed

    served = [tuple(r) for r in langgraph_api_routes["routes"]]
    unclassified = [f"{m} {t}" for m, t in served
                    if route_allowed(m, _sample(t))
                    and api_compat.payload_kind(m, _sample(t)) is None
                    and (m, t) not in api_compat.WITHOUT_RUN_PAYLOAD]
    assert not unclassified, broken(
        "langgraph-api", f"the request checks know every writing route the gateway lets through "
                         f"(new: {unclassified})")
    stale = sorted(set(api_compat.WITHOUT_RUN_PAYLOAD) - set(served))
    assert not stale, broken("langgraph-api", f"these routes exist: {stale}")


def test_langgraph_api_checked_routes_exist(langgraph_api_routes):
    samples = [(m, _sample(t)) for m, t in langgraph_api_routes["routes"]]
    missing = [f"{m} {p.pattern}" for m, p, _kind in api_compat.PAYLOAD_ROUTES
               if not any(sm == m and p.fullmatch(sp) for sm, sp in samples)]
    assert not missing, broken("langgraph-api", f"these checked routes exist: {missing}")
    run_creations = [p for m, p in samples if m == "POST" and api_compat.RUN_CREATION.fullmatch(p)]
    assert sorted(run_creations) == sorted(
        ["/runs", "/runs/stream", "/runs/wait", "/threads/abc/runs", "/threads/abc/runs/stream",
         "/threads/abc/runs/wait"]), broken("langgraph-api", "the run-creation routes")
    assert [api_compat.THREAD_RUN_CREATION.fullmatch(p).group(1) for p in run_creations
            if p.startswith("/threads/")] == ["abc"] * 3
    assert langgraph_api_routes["formatter"], broken(
        "langgraph-api", f"{api_compat.LOG_FORMATTER} is a logging.Formatter")
    assert importlib.util.find_spec("langgraph_api.server") is not None, broken(
        "langgraph-api", "langgraph_api.server holds the application")


def test_payload_kinds_of_requests():
    kind = api_compat.payload_kind
    assert kind("POST", "/threads/t1/runs/stream") == "run" and kind("POST", "/runs/batch") == "batch"
    assert kind("PATCH", "/assistants/a1") == "assistant" and kind("POST", "/threads/t/state") == "state"
    assert kind("POST", "/runs/crons/search") is None and kind("GET", "/threads/t/state") is None
    assert kind("POST", "/threads") == "thread" and kind("POST", "/threads/search") is None


# --------------------------------------------------------------------------------- SAM 2

needs_sam2 = pytest.mark.skipif(importlib.util.find_spec("sam2") is None, reason="sam2 is not installed")


@needs_sam2
def test_sam2_inference_state_layout_is_init_states():
    pytest.importorskip("torch")
    from segresearch.compat.sam2 import STATE_KEYS, new_inference_state

    fn = _method_ast("sam2.sam2_video_predictor", "SAM2VideoPredictor", "init_state")
    theirs = {t.slice.value for n in ast.walk(fn) if isinstance(n, ast.Assign) for t in n.targets
              if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name)
              and t.value.id == "inference_state" and isinstance(t.slice, ast.Constant)}
    assert theirs == set(STATE_KEYS), broken(
        "sam2", f"init_state sets exactly STATE_KEYS (differs by {sorted(theirs ^ set(STATE_KEYS))})")
    import torch

    ours = new_inference_state(SimpleNamespace(device=torch.device("cpu")), [], 0, 4, 6, True)
    assert sorted(ours) == sorted(STATE_KEYS)
    assert ours["storage_device"] == torch.device("cpu") and ours["offload_video_to_cpu"] is True


@needs_sam2
def test_sam2_image_feature_method():
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    method = getattr(SAM2VideoPredictor, "_get_image_feature", None)
    assert method is not None, broken("sam2", "SAM2VideoPredictor._get_image_feature exists")
    params = list(inspect.signature(method).parameters)
    assert params == ["self", "inference_state", "frame_idx", "batch_size"], broken(
        "sam2", f"_get_image_feature(inference_state, frame_idx, batch_size) (got {params})")
    fn = _method_ast("sam2.sam2_video_predictor", "SAM2VideoPredictor", "_get_image_feature")
    keys = {n.slice.value for n in ast.walk(fn)
            if isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant)}
    assert "cached_features" in keys, broken("sam2", "_get_image_feature caches into cached_features")


@needs_sam2
def test_sam2_memory_reads_stay_within_the_window():
    """What :func:`drop_outputs_outside_window` relies on: SAM 2 reads earlier frames'
    outputs only in ``_prepare_memory_conditioned_features``, through the settings
    ``memory_window`` reads; the released tiny config reaches 15 frames back."""
    from sam2.modeling.sam2_base import SAM2Base

    from segresearch.compat.sam2 import drop_outputs_outside_window, memory_window

    fn = _method_ast("sam2.modeling.sam2_base", "SAM2Base", "_prepare_memory_conditioned_features")
    attrs = {n.attr for n in ast.walk(fn) if isinstance(n, ast.Attribute)}
    for name in ("num_maskmem", "memory_temporal_stride_for_eval", "max_obj_ptrs_in_encoder",
                 "use_obj_ptrs_in_encoder"):
        assert name in attrs, broken("sam2", f"memory conditioning reads self.{name}")
    defaults = inspect.signature(SAM2Base.__init__).parameters
    released = SimpleNamespace(**{k: defaults[k].default for k in (
        "num_maskmem", "memory_temporal_stride_for_eval", "max_obj_ptrs_in_encoder")},
        use_obj_ptrs_in_encoder=True)
    assert memory_window(released) == 15
    # the rule itself, on a state of plain markers: keyframe 20, forward pass at frame 60
    outputs = {"cond_frame_outputs": {20: "k"},
               "non_cond_frame_outputs": {t: t for t in range(21, 61)}}
    state = {"output_dict_per_obj": {0: outputs},
             "temp_output_dict_per_obj": {0: {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}}}
    assert drop_outputs_outside_window(released, state, 60, reverse=False) == 40 - 15 - 16
    assert sorted(outputs["non_cond_frame_outputs"]) == [*range(21, 36), *range(45, 61)]
    outputs["non_cond_frame_outputs"].update({t: t for t in range(0, 20)})  # backward at 0
    drop_outputs_outside_window(released, state, 0, reverse=True)
    assert sorted(outputs["non_cond_frame_outputs"]) == [*range(0, 20), *range(21, 36)]
    assert outputs["cond_frame_outputs"] == {20: "k"}


@needs_sam2
def test_sam2_progress_bar_is_the_modules_tqdm(monkeypatch):
    import functools

    import sam2.sam2_video_predictor as svp

    from segresearch.compat.sam2 import silence_progress_bars

    fn = _method_ast("sam2.sam2_video_predictor", "SAM2VideoPredictor", "propagate_in_video")
    calls = [n.func.id for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert "tqdm" in calls and hasattr(svp, "tqdm"), broken(
        "sam2", "propagate_in_video draws its bar through the module's tqdm name")
    monkeypatch.setattr(svp, "tqdm", svp.tqdm)  # restored after the test
    silence_progress_bars()
    silence_progress_bars()  # idempotent: never a partial of a partial
    assert isinstance(svp.tqdm, functools.partial) and svp.tqdm.keywords == {"disable": True}
    assert not isinstance(svp.tqdm.func, functools.partial)


# ---------------------------------------------------------------------------------- verl

_AGENT_LOOP = "verl.experimental.agent_loop.agent_loop"


def _verl() -> Any:
    pytest.importorskip("verl")
    return pytest.importorskip(_AGENT_LOOP)


def test_verl_multimodal_check():
    from segresearch.compat.verl import assert_multimodal_supported

    base = _verl().AgentLoopBase
    assert hasattr(base, "_assert_mm_supported"), broken("verl", "AgentLoopBase._assert_mm_supported exists")

    class Loop:
        _assert_mm_supported = base._assert_mm_supported

        def __init__(self, multimodal: bool, processor: object | None) -> None:
            self.continuous_token_builder = SimpleNamespace(supports_multimodal=lambda: multimodal)
            self.processor = processor

    assert_multimodal_supported(Loop(False, None), False)  # text only: nothing to check
    assert_multimodal_supported(Loop(True, object()), True)
    for loop in (Loop(False, object()), Loop(True, None)):
        with pytest.raises(ValueError):
            assert_multimodal_supported(loop, True)


def test_verl_merges_are_the_wrappers_bodies():
    """Our merges restate ``ct_merge_context_msg`` and ``ct_merge_assistant_token`` without the
    executor hop: the wrappers must still call exactly these builder methods."""
    _verl()
    wanted = {"ct_merge_context_msg": ["merge_context_tokens", "align_response_metadata"],
              "ct_merge_assistant_token": ["merge_assistant_tokens", "align_response_metadata"]}
    for wrapper, methods in wanted.items():
        called = [a for a in _called_attributes(_method_ast(_AGENT_LOOP, "AgentLoopBase", wrapper))
                  if a in ("merge_context_tokens", "merge_assistant_tokens", "align_response_metadata")]
        assert called == methods, broken("verl", f"AgentLoopBase.{wrapper} calls {methods} (got {called})")
    from verl.utils.tokenizer.continuous_token import ContinuousTokenBuilder

    params = inspect.signature(ContinuousTokenBuilder.align_response_metadata).parameters
    assert "assistant_logprobs" in params, broken("verl", "align_response_metadata takes assistant_logprobs")


def test_verl_merges_drive_the_builder_as_the_wrappers_do():
    from segresearch.compat.verl import merge_assistant, merge_context

    calls: list[tuple[Any, ...]] = []

    class Builder:
        def merge_context_tokens(self, previous, updated, stream):
            calls.append(("context", len(previous), len(updated), tuple(stream)))
            return SimpleNamespace(token_ids=[*stream, 9])

        def merge_assistant_tokens(self, stream, generated):
            calls.append(("assistant", tuple(stream), tuple(generated)))
            return SimpleNamespace(token_ids=[*stream, *generated])

        def align_response_metadata(self, result, mask, logprobs, *, assistant_logprobs=None):
            calls.append(("align", tuple(result.token_ids), assistant_logprobs))
            return [*mask, 1], logprobs

    loop = SimpleNamespace(continuous_token_builder=Builder())
    result, mask, lps = merge_context(loop, [{"a": 1}], [{"a": 1}, {"b": 2}], [1, 2], [0], None)
    assert (result.token_ids, mask, lps) == ([1, 2, 9], [0, 1], None)
    result, mask, lps = merge_assistant(loop, [1, 2], [5], [0], [0.0], [-0.5])
    assert (result.token_ids, mask, lps) == ([1, 2, 5], [0, 1], [0.0])
    assert calls == [("context", 1, 2, (1, 2)), ("align", (1, 2, 9), None),
                     ("assistant", (1, 2), (5,)), ("align", (1, 2, 5), [-0.5])]


def test_verl_builder_takes_the_tools_of_a_tools_mode_rollout():
    """Tools mode (rl/verl_model.py) renders tool turns with the tool definitions: verl's
    builder must accept them as ``tools=`` on the merge and the initial render."""
    _verl()
    import inspect

    from verl.utils.tokenizer.continuous_token import ContinuousTokenBuilder

    for method in (ContinuousTokenBuilder.merge_context_tokens, ContinuousTokenBuilder.build_initial_tokens):
        params = inspect.signature(method).parameters
        assert "tools" in params and params["tools"].kind is inspect.Parameter.KEYWORD_ONLY, broken(
            "verl", f"{method.__qualname__} takes tools= as a keyword")


def test_verl_builder_renders_with_its_chat_template_kwargs():
    """A tools-mode rollout on Qwen2.5-VL renders with our chat template (rl/tools_template.py)
    by giving a copy of the loop's builder other ``chat_template_kwargs``
    (compat.verl.with_chat_template_kwargs): verl's builders must keep the kwargs in that
    attribute and read it at every render (prompt and merges, the processor path included),
    never only at construction."""
    _verl()
    from verl.utils.tokenizer.continuous_token import (
        QwenContinuousTokenBuilder,
        VLContinuousTokenMixin,
    )

    from segresearch.compat.verl import chat_template_kwargs, with_chat_template_kwargs
    from segresearch.testing.tiny_vlm import build_tiny_tokenizer

    tok = build_tiny_tokenizer(family="qwen2_5_vl")
    builder = QwenContinuousTokenBuilder(tok, chat_template_kwargs={"add_vision_id": False})
    assert chat_template_kwargs(builder) == {"add_vision_id": False}, broken(
        "verl", "a builder keeps its chat_template_kwargs")
    marked = tok.chat_template.replace("You are a helpful assistant.", "MARKED").replace(
        "<tool_response>", "<tool_result>")
    clone = with_chat_template_kwargs(builder, {"chat_template": marked})
    chat = [{"role": "user", "content": "q"}]
    prompt = clone.build_initial_tokens(chat)
    assert "MARKED" in tok.decode(prompt), broken("verl", "the initial render uses chat_template_kwargs")
    assert "MARKED" not in tok.decode(builder.build_initial_tokens(chat))  # the original is untouched
    call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
        "name": "keyframe", "arguments": {"index": 1}}}]}
    tool = {"role": "tool", "content": "seen", "tool_call_id": "c0"}
    stream = [*prompt, *tok.encode("x", add_special_tokens=False), tok.convert_tokens_to_ids("<|im_end|>")]
    merged = clone.merge_context_tokens([*chat, call], [*chat, call, tool], stream)
    assert "<tool_result>\nseen" in tok.decode(merged.token_ids[len(stream):]), broken(
        "verl", "merges render with chat_template_kwargs")
    reads = [n for n in ast.walk(_method_ast("verl.utils.tokenizer.continuous_token", "VLContinuousTokenMixin",
                                             "render_tokens_with_mm"))
             if isinstance(n, ast.Attribute) and n.attr == "chat_template_kwargs"]
    assert reads and hasattr(VLContinuousTokenMixin, "render_tokens_with_mm"), broken(
        "verl", "the processor render (VLContinuousTokenMixin.render_tokens_with_mm) reads chat_template_kwargs")


def test_verl_registry_holds_registered_loops():
    module = _verl()
    from segresearch.compat.verl import agent_loop_registry

    name = "segresearch_compat_probe"

    @module.register(name)
    class Probe(module.AgentLoopBase):
        pass

    try:
        entry = agent_loop_registry().get(name)
        assert entry == {"_target_": f"{Probe.__module__}.{Probe.__qualname__}"}, broken(
            "verl", f"@register records loops in _agent_loop_registry (got {entry})")
    finally:
        agent_loop_registry().pop(name, None)  # type: ignore[attr-defined]


@needs_sam2
def test_sam2_missing_extension_warning_is_recognised():
    import warnings

    from segresearch.compat.sam2 import quiet_missing_extension

    texts = []
    for module in ("sam2.utils.misc", "sam2.utils.transforms"):
        spec = importlib.util.find_spec(module)
        with open(spec.origin, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        texts += ["".join(v.value for v in ast.walk(n) if isinstance(v, ast.Constant) and isinstance(v.value, str))
                  for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                  and n.func.attr == "warn"]
    texts = [t for t in texts if "Skipping" in t]
    assert len(texts) == 2, broken("sam2", "the missing-extension warnings are warnings.warn calls")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_missing_extension():
            for text in texts:
                warnings.warn("cannot import name '_C'\n\n" + text, UserWarning, stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something else"], broken(
        "sam2", "its missing-extension warnings mention post-processing")
