"""The policy inside RL rollouts: a chat model over verl's rollout server, token in, token out.

The graph talks to it like to any other backend (messages in, an AIMessage out), but
underneath it keeps the trajectory's running token stream so that verl trains on exactly
the tokens the policy saw and produced:

- the first call renders the prompt (system, frames, query) with the processor;
- each later call appends only the new observation turn, rendered as the chat template
  renders it (verl's continuous-token helpers: the ``<|im_end|>`` a stop string left out,
  the newline, the user turn, the assistant header), images expanded to their placeholders;
- generated tokens are appended exactly as returned and only decoded, never re-encoded.

Model tokens are masked 1, everything else 0. Budgets: the response budget covers model
and observation tokens (an observation that does not fit is not committed and the next
call reports ``length``, so the graph stops with ``max_tokens``); one observation may use at
most ``max_observation_tokens`` (longer text is cut, never through an image's placeholder
tokens: images are dropped first, and the observation says so).

Two response budgets (``response_budget``), both over ``response_length`` (verl's
``rollout.response_length`` = ``data.max_response_length``):

- ``full``: the response (model + observation tokens) may fill all of it; each call may
  generate ``response_length − len(response so far)`` tokens.
- ``published``: verl-tool's loop, which trained the published model: each call may generate
  ``min(max_action_length, max_response_length − len(prompt + response so far))`` tokens,
  where the prompt is the initial prompt ids (system, frames and query, images expanded to
  their placeholders) and the response so far counts every token after it: generated tokens,
  the ``<|im_end|>`` and newline that close a turn, and observation tokens with their image
  placeholders. (verl-tool takes ``min(max_response_length, max_model_len)``; its
  ``max_model_len`` defaults to prompt + response length, so that is ``max_response_length``.)
  The prompt thus eats into the response: about 6.2–6.8k of 8192 tokens are left for it.

``max_action_tokens`` caps every call in either budget (published: 4096); a call that
reaches the cap without ending its turn reports ``length``, and the graph stops with
``max_tokens``, as verl-tool's loop ends such a trajectory.

Native tool calls (``Context.protocol == "tools"``): ``bind_tools`` gives the model the tool
definitions, which the first call renders into the system turn exactly as the chat template
does (its ``tools=``). The model writes its calls in the template's own format (Qwen's
``<tool_call>`` JSON blocks); the reply's text is parsed into ``AIMessage.tool_calls`` (a block
that does not parse goes to ``invalid_tool_calls``) while the stream keeps the generated ids
as they were. The graph answers with ``ToolMessage``s (images inside them: the Qwen templates
render image blocks in a tool response), which the template renders as the user turn of
``<tool_response>`` blocks. No stop strings by default: the turn ends where the model ends it.
The published Qwen2.5-VL processor template renders no tools; for it the rollout renders with
our template that extends it with the Qwen2.5 tool format (rl/tools_template.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from PIL import Image
from pydantic import ConfigDict, PrivateAttr

from segresearch.agents.content import (
    block_digest,
    block_image,
    block_url,
    content_blocks,
    is_image_block,
)
from segresearch.compat.verl import (
    assert_multimodal_supported,
    chat_template_kwargs,
    merge_assistant,
    merge_context,
    with_chat_template_kwargs,
)
from segresearch.core.media_store import get_store
from segresearch.core.protocol import STOP_STRINGS, cut_at_stop
from segresearch.core.shared_cache import LoadOnce
from segresearch.core.tool_text import parse_tool_call_text, render_tool_call
from segresearch.rl.tools_template import tools_template_kwargs

ResponseBudget = Literal["full", "published"]
TRUNCATION_NOTE = " …[truncated]"
IMAGE_DROPPED_NOTE = "[image omitted: the observation exceeded its token budget]"


class RolloutAborted(RuntimeError):
    """The rollout server aborted the request (e.g. weights were being updated)."""


def to_chat_message(message: BaseMessage) -> tuple[dict[str, Any], list[Image.Image]]:
    """A LangChain message as the processor's chat format, with its images in order (a
    ``ToolMessage`` becomes a ``tool`` turn with its call's id and, when set, the tool name)."""
    role = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}.get(message.type)
    if role is None:
        raise ValueError(f"unsupported message type in a rollout: {message.type}")
    extra: dict[str, Any] = {}
    if role == "tool":
        extra["tool_call_id"] = getattr(message, "tool_call_id", None)
        if getattr(message, "name", None):
            extra["name"] = message.name
    if isinstance(message.content, str):
        return {"role": role, "content": message.content, **extra}, []
    parts: list[dict[str, Any]] = []
    images: list[Image.Image] = []
    for block in content_blocks(message.content):
        if is_image_block(block):
            img = block_image(block)
            images.append(img)
            parts.append({"type": "image", "image": img})
        elif block.get("type") == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
    return {"role": role, "content": parts, **extra}, images


def _text_of(msg: dict[str, Any]) -> str:
    c = msg["content"]
    return c if isinstance(c, str) else "".join(p.get("text", "") for p in c if p.get("type") == "text")


@dataclass
class TurnRecord:
    """What one model call did to the token stream (kept for extra_fields and tests)."""

    kind: str  # "generate" | "observation"
    tokens: int
    seconds: float = 0.0  # generate: waiting for the server; observation: rendering it
    finish_reason: str = ""
    truncated: bool = False
    images_dropped: int = 0
    committed: bool = True


@dataclass
class Trajectory:
    """The token-level trajectory built so far."""

    prompt_ids: list[int] = field(default_factory=list)
    stream: list[int] = field(default_factory=list)  # prompt + response
    mask: list[int] = field(default_factory=list)  # per response token
    logprobs: list[float] | None = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)  # append-only, as rendered
    records: list[TurnRecord] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # verl's per-request extra fields
    exhausted: bool = False  # the response budget is used up
    tools: list[dict[str, Any]] | None = None  # the definitions rendered in the system turn

    @property
    def response_ids(self) -> list[int]:
        return self.stream[len(self.prompt_ids) :]


class VerlChatModel(BaseChatModel):
    """One trajectory's policy over ``agent_loop.server_manager`` (a verl ``AgentLoopBase``
    supplies the server, tokenizer, processor and continuous-token helpers).

    A new instance serves one trajectory: it holds that trajectory's token stream.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    agent_loop: Any
    sampling_params: dict[str, Any]
    request_id: str
    response_length: int
    max_observation_tokens: int = 4096
    response_budget: ResponseBudget = "full"  # module docstring
    max_action_tokens: int | None = None  # per generate call; None: no cap of its own

    # Where a tool's images go (agents/providers.py): the Qwen-VL templates render image
    # blocks inside a tool response.
    tool_image_placement: ClassVar[str] = "inside"
    resolves_media_refs: ClassVar[bool] = True  # renders media-store images itself

    _traj: Trajectory = PrivateAttr(default_factory=Trajectory)
    _seen: int = PrivateAttr(default=0)  # LangChain messages already in the stream

    @property
    def _llm_type(self) -> str:
        return "segresearch-verl"

    @property
    def trajectory(self) -> Trajectory:
        return self._traj

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """This model with ``tools`` (OpenAI function dicts, pydantic models, functions or
        LangChain tools) rendered in its system turn. The rollout writes what the policy
        writes, so only ``tool_choice`` "auto" (or none) can be honoured: a chat template has
        no way to force a call."""
        if tool_choice not in (None, "auto"):
            raise ValueError(f"a rollout cannot force tool_choice={tool_choice!r}: the policy decides")
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        raise NotImplementedError("the verl backend is async: invoke the graph with ainvoke")

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        traj = self._traj
        tools = kwargs.get("tools") or None
        if not traj.prompt_ids:
            await self._start(messages, tools)
        else:
            # The tools are in the system turn, so a rollout keeps its first call's. A later
            # call may bind the same tools described anew (the graph states the answer's grid,
            # which for pixel conventions is the keyframe's once one was picked); the policy
            # still sees the first ones, and only other tools are an error.
            if _tool_names(tools) != _tool_names(traj.tools):
                raise ValueError("the tools of a rollout are fixed by its first call (they are in its system turn)")
            await self._append_observations(messages)
        self._seen = len(messages)
        if traj.exhausted or self.budget_left(len(traj.mask)) <= 0:
            traj.exhausted = True
            return self._result("", "length", 0)
        # Native tool calls end with the turn (a caller's own stop strings still apply); tags
        # stop after a search or keyframe tag.
        turn_stop = (list(stop) if stop is not None else []) if tools else (stop or STOP_STRINGS)
        return await self._generate_turn(turn_stop, kwargs.get("max_tokens"))

    # ----------------------------------------------------------------- prompt

    async def _start(self, messages: list[BaseMessage], tools: list[dict[str, Any]] | None = None) -> None:
        loop = self.agent_loop
        converted = await _converted(loop, messages)
        chat = [msg for msg, _ in converted]
        images = [img for _, imgs in converted for img in imgs]
        assert_multimodal_supported(loop, bool(images))
        if tools:
            _use_a_template_with_tools(loop)
        # The n samples of a GRPO group share their prompt: render it once per worker.
        key: tuple[Any, ...] = (_settings_key(loop), _prompt_digest(messages))
        if tools:  # tags-mode keys stay as they were
            key = (*key, hashlib.sha1(json.dumps(tools, sort_keys=True).encode()).hexdigest())
        prompt_ids = await _PROMPT_IDS.aget(
            key, lambda: loop.ct_build_initial_tokens(chat, tools=tools, images=images or None))
        t = self._traj
        t.prompt_ids, t.stream, t.images, t.messages = list(prompt_ids), list(prompt_ids), images, chat
        t.tools = tools

    # ----------------------------------------------------------- observations

    async def _append_observations(self, messages: list[BaseMessage]) -> None:
        """Render the user turns the graph added since the last call (never the assistant
        turn: its tokens are already in the stream exactly as generated)."""
        t = self._traj
        new = [m for m in messages[self._seen :] if m.type != "ai"]  # our own turn is in already
        if t.tools:
            # One user turn holds every tool response (and any user message) of this step:
            # the template renders consecutive tool messages into one turn, so they merge as one.
            if new and not t.exhausted:
                self._merge_observations(await _converted(self.agent_loop, new))
            return
        for m in new:
            if t.exhausted:
                return
            [(msg, images)] = await _converted(self.agent_loop, [m])
            self._merge_observation(msg, images)

    def _closed_turn(self) -> tuple[list[int], list[int], list[float] | None]:
        """The stream, mask and logprobs with the assistant turn closed: generation that
        stopped at a stop string has no ``<|im_end|>`` yet, which the template would write."""
        t = self._traj
        im_end = self.agent_loop.tokenizer.convert_tokens_to_ids("<|im_end|>")
        stream, mask, lps = t.stream, t.mask, t.logprobs
        if stream[-1] != im_end:
            stream, mask = [*stream, im_end], [*mask, 0]
            lps = None if lps is None else [*lps, 0.0]
        return stream, mask, lps

    def _merge_observations(self, batch: list[tuple[dict[str, Any], list[Image.Image]]]) -> None:
        """Tools mode: the step's messages merged at once, each shrunk like one observation
        (the one with the longest text first) until together they fit."""
        t = self._traj
        loop = self.agent_loop
        stream, mask, lps = self._closed_turn()
        record = TurnRecord(kind="observation", tokens=0)
        t0 = time.perf_counter()
        batch = list(batch)
        for _attempt in range(4 + 2 * len(batch)):
            msgs = [m for m, _ in batch]
            result, new_mask, new_lps = merge_context(loop, t.messages, [*t.messages, *msgs],
                                                      stream, mask, lps, tools=t.tools)
            n = result.appended_token_count + len(result.inserted_token_ids)
            if n <= self.max_observation_tokens:
                break
            i = max(range(len(batch)), key=lambda k: len(_text_of(batch[k][0])) + 10**6 * len(batch[k][1]))
            msg, images = self._shrink(batch[i][0], batch[i][1], n, record)
            batch[i] = (_keep_tool_fields(batch[i][0], msg), images)
        else:
            raise ValueError("observation could not be fitted into max_observation_tokens")
        self._commit_observation(record, t0, result.token_ids, new_mask, new_lps, batch)

    def _commit_observation(self, record: TurnRecord, t0: float, token_ids: Any, new_mask: list[int],
                            new_lps: list[float] | None,
                            merged: list[tuple[dict[str, Any], list[Image.Image]]]) -> None:
        """Keep a merged observation (its tokens, messages and images), unless no room to
        generate would be left after it: then the trajectory stops here, with tokens and
        images consistent."""
        t = self._traj
        record.tokens = len(new_mask) - len(t.mask)
        record.seconds = time.perf_counter() - t0
        if self.budget_left(len(new_mask)) <= 0:
            record.committed = False
            t.records.append(record)
            t.exhausted = True
            return
        t.stream, t.mask, t.logprobs = list(token_ids), list(new_mask), new_lps
        for m, images in merged:
            t.messages.append(m)
            t.images.extend(images)
        t.records.append(record)

    def _merge_observation(self, msg: dict[str, Any], images: list[Image.Image]) -> None:
        t = self._traj
        loop = self.agent_loop
        stream, mask, lps = self._closed_turn()
        record = TurnRecord(kind="observation", tokens=0)
        t0 = time.perf_counter()
        for _attempt in range(4):
            # verl's ct_merge_context_msg without its executor hop: rendering is Python under
            # the GIL, so a thread only adds a switch per observation on a busy worker.
            result, new_mask, new_lps = merge_context(loop, t.messages, [*t.messages, msg],
                                                      stream, mask, lps)
            n = result.appended_token_count + len(result.inserted_token_ids)
            if n <= self.max_observation_tokens:
                break
            msg, images = self._shrink(msg, images, n, record)
        else:
            raise ValueError("observation could not be fitted into max_observation_tokens")
        self._commit_observation(record, t0, result.token_ids, new_mask, new_lps, [(msg, images)])

    def _shrink(
        self, msg: dict[str, Any], images: list[Image.Image], n_tokens: int, record: TurnRecord
    ) -> tuple[dict[str, Any], list[Image.Image]]:
        """A smaller observation: cut its text by the overflow; if the fixed part (template,
        image placeholders) alone is over budget, drop the images first."""
        tok = self.agent_loop.tokenizer
        text = _text_of(msg)
        text_tokens = len(tok.encode(text, add_special_tokens=False))
        fixed = n_tokens - text_tokens
        note = ""
        if images and fixed > self.max_observation_tokens // 2:
            record.images_dropped += len(images)
            images, note = [], IMAGE_DROPPED_NOTE
            fixed = 16  # role markers and the generation header; re-measured next round
        budget = max(0, self.max_observation_tokens - fixed - len(tok.encode(TRUNCATION_NOTE + note)) - 8)
        ids = tok.encode(text, add_special_tokens=False)
        if len(ids) > budget:
            text = tok.decode(ids[:budget]) + TRUNCATION_NOTE
            record.truncated = True
        text = text + (("\n" + note) if note else "")
        if images:
            # Keep every image at its place: only the trailing text is cut.
            parts = [p for p in msg["content"] if p.get("type") == "image"]
            content: Any = [*parts, {"type": "text", "text": text}]
        else:
            content = text
        return {"role": msg["role"], "content": content}, images

    # --------------------------------------------------------------- budgets

    def budget_left(self, response_tokens: int) -> int:
        """Tokens the trajectory may still add once its response holds ``response_tokens``
        (module docstring: ``full`` counts the response only, ``published`` the prompt too)."""
        used = response_tokens
        if self.response_budget == "published":
            used += len(self._traj.prompt_ids)
        return self.response_length - used

    def turn_limit(self, requested: int | None) -> int:
        """``max_tokens`` for the next generate call: what is left of the budget, within the
        per-action cap and the caller's own limit (at least 1; the caller checked that some
        budget is left)."""
        caps = [self.budget_left(len(self._traj.mask)), self.max_action_tokens, requested]
        return max(1, min(int(c) for c in caps if c is not None))

    # --------------------------------------------------------------- generate

    async def _generate_turn(self, stop: list[str], max_tokens: int | None) -> ChatResult:
        t = self._traj
        loop = self.agent_loop
        limit = self.turn_limit(max_tokens)
        params = {**self.sampling_params, "stop": list(stop), "include_stop_str_in_output": True,
                  "max_tokens": limit}
        t0 = time.perf_counter()
        out = await loop.server_manager.generate(
            request_id=self.request_id, prompt_ids=list(t.stream), sampling_params=params,
            image_data=list(t.images) or None,
        )
        seconds = time.perf_counter() - t0
        if getattr(out, "stop_reason", None) == "aborted":
            raise RolloutAborted("the rollout server aborted the request")
        ids = list(out.token_ids)[:limit]
        extra = dict(getattr(out, "extra_fields", None) or {})
        if not t.extra:
            t.extra.update(extra)
        elif "max_global_steps" in extra:
            t.extra["max_global_steps"] = extra["max_global_steps"]
        lps = None
        if out.log_probs is not None and t.logprobs is not None:
            lps = list(out.log_probs)[: len(ids)]
        else:
            t.logprobs = None
        # ct_merge_assistant_token, without the hop
        result, t.mask, t.logprobs = merge_assistant(loop, t.stream, ids, t.mask, t.logprobs, lps)
        t.stream = list(result.token_ids)
        text = loop.tokenizer.decode(ids, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, stop)
        eos = set(_eos_ids(loop.tokenizer))
        ended = stopped or (ids and ids[-1] in eos)
        finish = "stop" if ended or len(ids) < limit else "length"
        calls: dict[str, Any] = {}
        if t.tools:
            turn = sum(1 for r in t.records if r.kind == "generate")
            parsed = parse_tool_call_text(text, id_prefix=f"call_{self.request_id[:8]}_{turn}")
            # The raw list keeps the written order of valid and invalid calls (LangChain keeps
            # them apart; core/tool_protocol.tool_calls_in_order reads the order from it).
            written = [{"id": c["id"], "type": "function", "function": {"name": c.get("name") or "",
                                                                        "arguments": b.raw_args}}
                       for c, b in zip(_in_block_order(parsed), parsed.blocks, strict=True)]
            calls = {"tool_calls": parsed.tool_calls, "invalid_tool_calls": parsed.invalid_tool_calls,
                     "additional_kwargs": {"tool_calls": written} if written else {}}
            t.messages.append(_assistant_turn(text, parsed.content, parsed.tool_calls, parsed.invalid_tool_calls))
            if finish == "stop" and (parsed.tool_calls or parsed.invalid_tool_calls):
                finish = "tool_calls"  # as OpenAI-compatible servers report a turn that called tools
            text = parsed.content
        else:
            t.messages.append({"role": "assistant", "content": text})
        t.records.append(TurnRecord(kind="generate", tokens=len(ids), seconds=seconds, finish_reason=finish))
        if self.budget_left(len(t.mask)) <= 0:
            t.exhausted = True
        return self._result(text, finish, len(ids), **calls)

    def _result(self, text: str, finish: str, n: int, **calls: Any) -> ChatResult:
        msg = AIMessage(
            content=text,
            response_metadata={"finish_reason": finish, "model_name": "verl-rollout"},
            usage_metadata={"input_tokens": len(self._traj.stream), "output_tokens": n, "total_tokens": len(self._traj.stream) + n},
            **calls,
        )
        return ChatResult(generations=[ChatGeneration(message=msg)])


def _assistant_turn(text: str, content: str, tool_calls: list[dict[str, Any]],
                    invalid: list[dict[str, Any]]) -> dict[str, Any]:
    """The generated turn for the trajectory's message list, which always renders to the
    stream: with structured ``tool_calls`` when the reply is exactly the template's rendering
    of them (text, then each call on its own line), else the reply verbatim as its content
    (a malformed or oddly spaced call is kept as written, never re-rendered)."""
    if tool_calls and not invalid:
        rendered = content
        for i, c in enumerate(tool_calls):
            sep = "\n" if (i or content) else ""
            rendered += sep + render_tool_call(c["name"], json.dumps(c["args"], ensure_ascii=False))
        if rendered == text:
            fn = [{"type": "function", "function": {"name": c["name"], "arguments": c["args"]}} for c in tool_calls]
            return {"role": "assistant", "content": content, "tool_calls": fn}
    return {"role": "assistant", "content": text}


def _in_block_order(parsed: Any) -> list[dict[str, Any]]:
    """The valid and invalid calls of a parsed reply in the order they were written (their
    ids end with the block's position)."""
    calls = [*parsed.tool_calls, *parsed.invalid_tool_calls]
    return sorted(calls, key=lambda c: int(str(c["id"]).rsplit("_", 1)[1]))


def _tool_names(tools: list[dict[str, Any]] | None) -> list[str]:
    return [str((t.get("function") or t).get("name")) for t in tools or []]


def _keep_tool_fields(original: dict[str, Any], shrunk: dict[str, Any]) -> dict[str, Any]:
    """A shrunk observation keeps its tool message's id and name."""
    return {**shrunk, **{k: original[k] for k in ("tool_call_id", "name") if k in original}}


def _use_a_template_with_tools(agent_loop: Any) -> None:
    """Tools mode needs a chat template that renders ``tools=`` (the model must see its tools as
    its template writes them). When the loop's does not but ours extends it (the published
    Qwen2.5-VL processor template: rl/tools_template.py), the loop's token builder renders
    with ours from here on: prompt, observations and verl's own merges alike. Anything else is
    refused before any token is built instead of training on a prompt without the tools."""
    builder = agent_loop.continuous_token_builder
    kwargs = chat_template_kwargs(builder)
    renderer = agent_loop.processor if agent_loop.processor is not None else agent_loop.tokenizer
    chosen = tools_template_kwargs(renderer, kwargs)
    if chosen != kwargs:
        # Ours renders every conversation without tools as the loop's template does, so a
        # tags-mode trajectory on the same loop would get the same tokens.
        agent_loop.continuous_token_builder = with_chat_template_kwargs(builder, chosen)


async def _converted(
    agent_loop: Any, messages: list[BaseMessage]
) -> list[tuple[dict[str, Any], list[Image.Image]]]:
    """The messages in the processor's format. Images the media store holds in memory are
    looked up in place; one it must read back or remake (a decode) is fetched in a thread,
    so that decoding stays off the event loop hundreds of trajectories share, while the
    usual case pays no thread switch."""
    if all(_resident(m) for m in messages):
        return [to_chat_message(m) for m in messages]
    return await agent_loop.loop.run_in_executor(None, lambda: [to_chat_message(m) for m in messages])


def _resident(message: BaseMessage) -> bool:
    if isinstance(message.content, str):
        return True
    store = get_store()
    for block in content_blocks(message.content):
        if is_image_block(block):
            digest = block_digest(block)
            if digest is None or not store.resident(digest):
                return False  # inline data to decode, or a store miss
    return True


# The prompt ids of a (settings, messages) key, rendered once per worker: the n samples of a
# GRPO group start together, before the first render ends, and await that one render.
_PROMPT_IDS: LoadOnce[list[int]] = LoadOnce(maxsize=256, name="rl.prompt_ids")


def _settings_key(loop: Any) -> tuple[Any, ...]:
    """What besides the messages decides a prompt's ids: the tokenizer, the chat template
    and the image processor's geometry. verl makes a new agent loop (and token builder) for
    every sample, so keying on object identity never let the samples of a group share."""
    tok, proc = loop.tokenizer, loop.processor
    ip = getattr(proc, "image_processor", None)
    geometry = tuple(repr(getattr(ip, a, None)) for a in ("patch_size", "merge_size", "temporal_patch_size",
                                                          "min_pixels", "max_pixels", "size"))
    template = getattr(proc, "chat_template", None) or getattr(tok, "chat_template", None) or ""
    builder = loop.continuous_token_builder
    # the kwargs the builder renders with (a chat template given there replaces the processor's)
    given = json.dumps(getattr(builder, "chat_template_kwargs", None) or {}, sort_keys=True, default=repr)
    return (type(builder).__name__, getattr(tok, "name_or_path", ""), len(tok),
            hashlib.sha1(str(template).encode()).hexdigest(), geometry, hashlib.sha1(given.encode()).hexdigest())


def _prompt_digest(messages: list[BaseMessage]) -> str:
    """A key for a prompt: roles, texts and image data, in order."""
    h = hashlib.sha1()
    for m in messages:
        h.update(m.type.encode())
        for block in content_blocks(m.content):
            h.update(b"\x00")
            h.update((block_url(block) if is_image_block(block) else block.get("text", "")).encode())
    return h.hexdigest()


def _eos_ids(tokenizer: Any) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    unk = getattr(tokenizer, "unk_token_id", None)
    return [i for i in ids if i is not None and i != unk]
