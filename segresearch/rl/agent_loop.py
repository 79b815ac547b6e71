"""verl agent loop that rolls out through the Seg-ReSearch graph.

The loop does not re-implement the protocol: it invokes the same compiled graph that
serves Python callers and the LangGraph server, with a ``VerlChatModel`` as the policy and
segmentation switched off, and hands verl the token-level trajectory the model built.
Registered as ``seg_research_agent`` (decorator, and ``config/seg_research_agent.yaml`` for
``actor_rollout_ref.rollout.agent.agent_loop_config_path``).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import fields
from typing import Any, get_args

from langchain_core.runnables import RunnableConfig
from verl.experimental.agent_loop.agent_loop import (
    AgentLoopBase,
    AgentLoopMetrics,
    AgentLoopOutput,
    register,
)

from segresearch.agents.context import Context
from segresearch.compat.transformers import install_video_processor_stub
from segresearch.core.events import ERROR, FEEDBACK, MODEL, TOOL
from segresearch.graphs.nodes import PRESIZED_FRAMES
from segresearch.graphs.seg_research import graph as GRAPH
from segresearch.graphs.state import InputState
from segresearch.rl.placeholders import install as install_geometry
from segresearch.rl.postprocess_cache import DEFAULT_MAX_MB
from segresearch.rl.postprocess_cache import install as install_postprocess_cache
from segresearch.rl.postprocess_cache import uninstall as uninstall_postprocess_cache
from segresearch.rl.verl_model import ResponseBudget, VerlChatModel

logger = logging.getLogger(__name__)

try:  # image-only Qwen-VL processors load without torchvision (no-op where it exists)
    install_video_processor_stub()
except Exception:  # noqa: BLE001 - never block the worker over an optional shim
    logger.debug("video processor shim not installed", exc_info=True)

AGENT_NAME = "seg_research_agent"
EXTRA_KEYS = ("stop_reason", "error", "turns", "num_search", "answer", "answer_note", "interactions",
              "observations_truncated", "min_global_steps", "max_global_steps", "loss_masked")
# The graph's stop reason for a trajectory cut by the response budget (rollout.response_length).
OVERLONG_STOP_REASON = "max_tokens"
# The Context fields each trajectory decides (``_trajectory_context``): the policy and its
# budget and sampling (verl's model, rollout.response_length, the sampling temperature), the
# row's frames, and nothing after the answer (no masks, no files, no person to review). Every
# other Context field is a setting an agent-loop config entry may give (search, kb, max_turns,
# frame sizes, ...); what an entry leaves out keeps the Context's default (SEGRESEARCH_*).
TRAJECTORY_FIELDS = frozenset({"model", "num_frames", "max_new_tokens", "max_response_tokens",
                               "temperature", "segmenter", "run_segmentation", "output_dir",
                               "review"})
SETTING_FIELDS = tuple(f.name for f in fields(Context) if f.name not in TRAJECTORY_FIELDS)
# Settings a row carries from its conversion (``segresearch data okvos``), which win over
# the config's: the ground truth is in the row's coordinates, its frames at its size.
ROW_FIELDS = ("coord_style", "frame_size")


def refuse_unrollable(ctx: Context) -> None:
    """Settings a rollout cannot honour, refused when the worker starts rather than ignored:
    a verify round shows the model its masks, and rollouts make none (segmentation comes
    after the reward, outside the loop); a question to the user pauses the run for a person
    who is not there, unless every question gets a fixed reply."""
    if ctx.verify_rounds:
        raise ValueError("verify_rounds: rollouts make no masks for the model to check "
                         "(segmentation is off in the agent loop); set it to 0")
    if ctx.ask_user and ctx.ask_user_reply is None:
        raise ValueError("ask_user: nobody answers a rollout's questions; set ask_user_reply to "
                         "the text every question gets (e.g. 'no further information')")


def _query_from(kwargs: dict[str, Any]) -> str:
    info = kwargs.get("extra_info") or {}
    if info.get("question"):
        return str(info["question"])
    for msg in reversed(list(kwargs.get("raw_prompt") or [])):
        if msg.get("role") == "user":
            c = msg.get("content")
            return c if isinstance(c, str) else "".join(p.get("text", "") for p in c if isinstance(p, dict))
    raise ValueError("the dataset row has neither extra_info.question nor a user prompt")


def _presized_config(info: dict[str, Any], frames: list[str], frame_size: int) -> RunnableConfig | None:
    """The graph's run config naming the row's pre-sized frames (``segresearch data okvos
    --presize-frames``), or None: the graph then decodes and resizes the source frames."""
    shown = info.get("shown_frames")
    if shown is None or len(shown) == 0:
        return None
    conf = {"frames": [str(p) for p in shown], "size": int(info.get("frame_size") or frame_size),
            "method": info.get("frame_resize")}
    return {"configurable": {PRESIZED_FRAMES: conf}}


def _interactions(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-turn actions and observations, without image bytes."""
    out = []
    for e in events:
        if e.get("type") == MODEL:
            out.append({"turn": e.get("turn"), "action": e.get("action"), "tokens": e.get("tokens")})
        elif e.get("type") in (TOOL, FEEDBACK, ERROR):
            out.append({k: v for k, v in e.items() if k in ("type", "name", "query", "frame", "observation", "images", "error", "kind", "message")})
    return out


@register(AGENT_NAME)
class SegResearchAgentLoop(AgentLoopBase):
    """One trajectory per ``run()``: dataset row → graph → ``AgentLoopOutput``."""

    def __init__(
        self,
        *args: Any,
        max_observation_tokens: int | None = None,
        mask_overlong_loss: bool = False,
        placeholder_counts: str = "geometry",
        response_budget: str = "full",
        max_action_tokens: int | None = None,
        postprocess_cache: bool = True,
        postprocess_cache_mb: int = DEFAULT_MAX_MB,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("name", None)
        kwargs.pop("tools", None)
        decided = sorted(k for k in kwargs if k in TRAJECTORY_FIELDS)
        if decided:
            raise ValueError(f"{', '.join(decided)}: set by each trajectory (the rollout's model, "
                             "sampling and response length, the row's frames), not by the config")
        # Context settings from the config entry; the rest of kwargs are verl's.
        self.settings = {k: kwargs.pop(k) for k in SETTING_FIELDS if k in kwargs}
        checked = Context(**self.settings)  # a bad value stops the worker here, not each trajectory later
        refuse_unrollable(checked)
        super().__init__(*args, **kwargs)
        multi_turn = self.rollout_config.get("multi_turn", {}) or {}
        self.max_observation_tokens = int(
            max_observation_tokens or multi_turn.get("max_tool_response_length") or 4096
        )
        self.response_length = int(self.rollout_config.response_length)
        # How much each model call may generate (rl/verl_model.py): "published" is verl-tool's
        # rule, min(max_action_tokens, response_length − len(prompt + response so far));
        # "full" lets the response alone fill response_length. The presets set the former.
        if response_budget not in get_args(ResponseBudget):
            raise ValueError(f"response_budget must be one of {get_args(ResponseBudget)}, got {response_budget!r}")
        if max_action_tokens is not None and int(max_action_tokens) < 1:
            raise ValueError(f"max_action_tokens must be at least 1 (or null), got {max_action_tokens!r}")
        self.response_budget: ResponseBudget = response_budget  # type: ignore[assignment]  # checked above
        self.max_action_tokens = None if max_action_tokens is None else int(max_action_tokens)
        # DAPO's overlong filtering (the published DAPO script's agent.mask_overlong_loss): a
        # trajectory the response budget cut off has an unknown outcome, so it gets an all-zero
        # response mask and contributes no loss. It still gets its reward, counts in its GRPO
        # group and keeps its stop reason in extra_fields.
        self.mask_overlong_loss = bool(mask_overlong_loss)
        # "geometry": image placeholder counts from each image's size (no pixel pipeline in the
        # rollout; see rl/placeholders.py); "processor": verl's way, the HF processor on every render.
        if placeholder_counts not in ("geometry", "processor"):
            raise ValueError(f"placeholder_counts must be 'geometry' or 'processor', got {placeholder_counts!r}")
        self.geometry = install_geometry(self) if placeholder_counts == "geometry" else None
        # verl's worker post-processes every trajectory with the processor it hands us: its
        # image processor gets a per-image cache, so the frames a GRPO group shares are
        # normalised and patchified once per worker (rl/postprocess_cache.py; exact, bounded).
        # The first loop of a worker installs it and later ones find it (its size stays the
        # first's); false gives the processor its real image processor back.
        if int(postprocess_cache_mb) < 1:
            raise ValueError(f"postprocess_cache_mb must be at least 1, got {postprocess_cache_mb!r}")
        self.postprocess_cache = None
        if postprocess_cache:
            self.postprocess_cache = install_postprocess_cache(self.processor, int(postprocess_cache_mb) << 20)
        else:
            uninstall_postprocess_cache(self.processor)

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        info = kwargs.get("extra_info") or {}
        model = VerlChatModel(
            agent_loop=self, sampling_params=dict(sampling_params),
            request_id=uuid.uuid4().hex, response_length=self.response_length,
            max_observation_tokens=self.max_observation_tokens,
            response_budget=self.response_budget, max_action_tokens=self.max_action_tokens,
        )
        t0 = time.perf_counter()
        try:
            frames = list(info["frames"])
            ctx = self._trajectory_context(model, frames, sampling_params, info)
            inputs: InputState = {"query": _query_from(kwargs), "media": frames}
            final = await GRAPH.ainvoke(inputs, context=ctx, config=_presized_config(info, frames, ctx.frame_size))
        except Exception as e:  # noqa: BLE001 - a broken row is a masked sample, not a crash
            logger.warning("seg_research_agent: trajectory failed: %s", e)
            final = {"stop_reason": f"error:{type(e).__name__}", "error": str(e)}
        return self._output(model, final, time.perf_counter() - t0)

    def _trajectory_context(self, model: VerlChatModel, frames: list[str],
                            sampling_params: dict[str, Any], info: dict[str, Any]) -> Context:
        decided: dict[str, Any] = {
            "model": model, "num_frames": len(frames), "max_new_tokens": self.response_length,
            "max_response_tokens": None,  # VerlChatModel counts rollout.response_length
            "temperature": float(sampling_params.get("temperature", 1.0)),
            "segmenter": "none", "run_segmentation": False, "output_dir": "", "review": False,
        }
        row = {k: info[k] for k in ROW_FIELDS if k in info}
        if "frame_size" in row:
            row["frame_size"] = int(row["frame_size"])
        return Context(**{**self.settings, **row, **decided})

    def _output(self, model: VerlChatModel, final: dict[str, Any], seconds: float) -> AgentLoopOutput:
        t = model.trajectory
        stop_reason = str(final.get("stop_reason") or "no_action")
        failed = stop_reason.startswith("error")
        R = self.response_length
        prompt_ids = list(t.prompt_ids)
        response_ids = list(t.response_ids)[:R]
        mask = list(t.mask)[:R]
        logprobs = None if t.logprobs is None else list(t.logprobs)[:R]
        if not prompt_ids:  # failed before the prompt was rendered: nothing was generated
            prompt_ids = [getattr(self.tokenizer, "pad_token_id", None) or 0]
        if not response_ids:  # verl needs at least one response position; it is masked
            response_ids, mask = [getattr(self.tokenizer, "pad_token_id", None) or 0], [0]
            logprobs = None if logprobs is None else [0.0]
        overlong_masked = self.mask_overlong_loss and stop_reason == OVERLONG_STOP_REASON
        if failed or overlong_masked:
            mask = [0] * len(mask)
        if logprobs is not None and len(logprobs) != len(response_ids):
            logprobs = None
        gen_s = sum(r.seconds for r in t.records if r.kind == "generate")
        events = list(final.get("events") or [])
        extra = {
            "stop_reason": stop_reason,
            "error": str(final.get("error") or ""),
            "turns": int(final.get("turns") or 0),
            "num_search": len(final.get("searches") or []),
            "answer": final.get("answer") or {},
            # "" or why the answer outlines nothing (a zero or degenerate box). Such a rollout
            # ends "answer" as the published loop's "model chose to finish" and is trained on.
            "answer_note": str(final.get("answer_note") or ""),
            "interactions": _interactions(events),
            "observations_truncated": sum(1 for r in t.records if r.truncated or r.images_dropped),
            "min_global_steps": int(t.extra.get("min_global_steps", 0) or 0),
            "max_global_steps": int(t.extra.get("max_global_steps", 0) or 0),
            # True when no token of this trajectory is trained on (failure or overlong masking).
            "loss_masked": failed or overlong_masked,
        }
        return AgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=response_ids,
            response_mask=mask,
            response_logprobs=logprobs,
            multi_modal_data={"images": list(t.images)} if t.images else None,
            num_turns=1 + sum(1 for r in t.records if r.committed),
            metrics=AgentLoopMetrics(generate_sequences=gen_s, tool_calls=max(0.0, seconds - gen_s)),
            extra_fields=extra,
        )
