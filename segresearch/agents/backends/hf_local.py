"""Chat backend that runs a Qwen-VL checkpoint in-process with transformers.

For users who have a checkpoint but no vLLM server (a laptop, a CPU box, a quick check of a
freshly trained policy). It must behave like the OpenAI-compatible backend as far as the
graph can tell: the same image data URLs in, the stop string kept at the end of the text,
the same finish reasons and token usage out.

Weights are loaded once per (path, device, dtype) and shared by every instance and graph
run in the process; generation on one copy is serialised, since concurrent ``generate``
calls on one module would only fight over the same device.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from segresearch.agents.content import block_image, content_blocks, is_image_block
from segresearch.compat.transformers import install_video_processor_stub
from segresearch.core.protocol import cut_at_stop
from segresearch.core.shared_cache import LoadOnce

__all__ = [
    "HFChatModel",
    "LoadedModel",
    "clear_hf_cache",
        "load_hf_model",
    "to_hf_messages",
]


@dataclass
class LoadedModel:
    """One checkpoint in memory, with the lock that serialises generation on it."""

    model: Any
    processor: Any
    tokenizer: Any
    device: str
    dtype: Any
    eos_ids: frozenset[int]
    lock: threading.Lock = field(default_factory=threading.Lock)


_LOADED: LoadOnce[LoadedModel] = LoadOnce(name="models.hf_local")


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch  # heavy: optional [hf] extra

    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_dtype(dtype: str, device: str) -> Any:
    """The torch dtype to load with ("auto" keeps the checkpoint's on GPUs).

    On CPU "auto" means float32: half-precision matmuls there are slow or unsupported, and
    CPU runs are small models or checks where memory is not the constraint.
    """
    import torch  # heavy: optional [hf] extra

    if dtype == "auto":
        return "auto" if device.startswith("cuda") else torch.float32
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown torch dtype {dtype!r} (try 'auto', 'bfloat16', 'float32')")
    return resolved


def _load(path: str, device: str, dtype: Any) -> LoadedModel:
    try:
        from transformers import (  # heavy: optional [hf] extra
            AutoModelForImageTextToText,
            AutoProcessor,
        )

        # Without torchvision the Qwen processors cannot even be built; images still work.
        install_video_processor_stub()
        processor = AutoProcessor.from_pretrained(path)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
        model = model.to(device).eval()
    except Exception as e:  # any failure here means "this path is unusable"
        raise RuntimeError(
            f"could not load a transformers image-text-to-text checkpoint from {path!r} "
            f"on {device}: {type(e).__name__}: {e}"
        ) from e
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        raise RuntimeError(f"the processor loaded from {path!r} has no tokenizer")
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    eos_ids = frozenset(
        int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]) if i is not None
    )
    return LoadedModel(model, processor, tokenizer, device, model.dtype, eos_ids)


def load_hf_model(path: str, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """The shared in-memory copy of the checkpoint at ``path`` (loaded on first use)."""
    dev = _resolve_device(device)
    where = os.path.expanduser(path)
    # Local folders are keyed by absolute path; anything else is a hub id and stays as is.
    where = os.path.abspath(where) if os.path.exists(where) else where
    key = (where, dev, str(dtype))
    return _LOADED.get(key, lambda: _load(where, dev, _resolve_dtype(str(dtype), dev)))


def clear_hf_cache() -> None:
    """Forget every loaded checkpoint (tests, or to free memory before loading another)."""
    _LOADED.clear()


# --------------------------------------------------------------------------- messages


def _role(message: BaseMessage) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, ToolMessage):
        return "tool"
    if isinstance(message, ChatMessage):
        return message.role
    raise ValueError(f"unsupported message type for the HF backend: {type(message).__name__}")


def to_hf_messages(messages: Sequence[BaseMessage]) -> tuple[list[dict[str, Any]], list[Any]]:
    """Convert LangChain messages to the HF chat format plus the images in prompt order.

    Image parts carry no payload in the conversation: the chat template only emits a
    placeholder per image, and the processor receives the decoded images separately, in
    the same order, which is how it pairs placeholders with pixels.
    """
    conversation: list[dict[str, Any]] = []
    images: list[Any] = []
    for message in messages:
        parts: list[dict[str, Any]] = []
        for block in content_blocks(message.content):
            if is_image_block(block):
                images.append(block_image(block))
                parts.append({"type": "image"})
            elif block.get("type") == "text":
                parts.append({"type": "text", "text": block.get("text", "")})
            else:
                raise ValueError(
                    f"the HF backend cannot send a {block.get('type')!r} content block"
                )
        if all(p["type"] == "text" for p in parts):
            # Plain strings for text-only turns: some chat templates only accept strings
            # for system and assistant messages.
            conversation.append(
                {"role": _role(message), "content": "".join(p["text"] for p in parts)}
            )
        else:
            conversation.append({"role": _role(message), "content": parts})
    return conversation, images


def _stop_list(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    return [s for s in stop if s]


# --------------------------------------------------------------------------- model


class HFChatModel(BaseChatModel):
    """A LangChain chat model over a local transformers image-text-to-text checkpoint."""

    # reads the graph's media-store references itself (segresearch.agents.providers.messages_for)
    resolves_media_refs: ClassVar[bool] = True

    model_path: str
    device: str = "auto"
    dtype: str = "auto"
    max_new_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    generate_kwargs: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_spec(cls, path: str, **kw: Any) -> HFChatModel:
        """The model for the spec ``hf:PATH`` (``PATH`` is what follows the colon)."""
        path = os.path.expanduser(path.strip())
        if not path:
            raise ValueError("hf model spec needs a checkpoint path: 'hf:/path/to/checkpoint'")
        return cls(model_path=path, **kw)

    @property
    def _llm_type(self) -> str:
        return "segresearch-hf"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "device": self.device,
            "dtype": self.dtype,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }

    def load(self) -> LoadedModel:
        """Load (or fetch the shared copy of) the checkpoint now rather than on first call."""
        return load_hf_model(self.model_path, self.device, self.dtype)

    def _generation_config(
        self, loaded: LoadedModel, max_new: int, temperature: float, top_p: float
    ) -> Any:
        config = copy.deepcopy(loaded.model.generation_config)
        if temperature > 0:
            config.do_sample = True
            config.temperature = temperature
            config.top_p = top_p
        else:
            # Greedy: neutralise the checkpoint's sampling defaults (Qwen ships temperature,
            # top_p and top_k). Neutral values rather than None, because generate() fills
            # None back in from the checkpoint and then warns that greedy ignores them.
            config.do_sample = False
            config.temperature = 1.0
            config.top_p = 1.0
            config.top_k = 50
        config.max_new_tokens = max_new
        config.max_length = None
        if config.pad_token_id is None:
            config.pad_token_id = loaded.tokenizer.pad_token_id
            if config.pad_token_id is None and loaded.eos_ids:
                config.pad_token_id = min(loaded.eos_ids)
        return config

    def _render(self, loaded: LoadedModel, messages: Sequence[BaseMessage]) -> Any:
        conversation, images = to_hf_messages(messages)
        processor = loaded.processor
        if getattr(processor, "chat_template", None):
            prompt = processor.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=True
            )
        else:
            prompt = loaded.tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=True
            )
        inputs = processor(text=[prompt], images=images or None, return_tensors="pt")
        return inputs.to(loaded.device, dtype=loaded.dtype)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        import torch  # heavy: optional [hf] extra

        loaded = self.load()
        max_new = kwargs.get("max_tokens", kwargs.get("max_new_tokens"))
        max_new = int(self.max_new_tokens if max_new is None else max_new)
        temperature = float(kwargs.get("temperature", self.temperature) or 0.0)
        top_p = float(kwargs.get("top_p", self.top_p) or 1.0)
        stops = _stop_list(stop)

        inputs = self._render(loaded, messages)
        prompt_len = int(inputs["input_ids"].shape[1])
        gen_kwargs: dict[str, Any] = dict(self.generate_kwargs)
        gen_kwargs["generation_config"] = self._generation_config(
            loaded, max_new, temperature, top_p
        )
        if stops:
            gen_kwargs["stop_strings"] = stops
            gen_kwargs["tokenizer"] = loaded.tokenizer
        with loaded.lock, torch.inference_mode():
            out = loaded.model.generate(**inputs, **gen_kwargs)
        # A batch of one is never padded: everything after the prompt was generated.
        new_ids = [int(t) for t in out[0, prompt_len:].tolist()]
        text = loaded.tokenizer.decode(new_ids, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, stops)
        if stopped or (new_ids and new_ids[-1] in loaded.eos_ids) or len(new_ids) < max_new:
            finish = "stop"
        else:
            finish = "length"
        n_out = len(new_ids)
        message = AIMessage(
            content=text,
            response_metadata={"finish_reason": finish, "model_name": self.model_path},
            usage_metadata={
                "input_tokens": prompt_len,
                "output_tokens": n_out,
                "total_tokens": prompt_len + n_out,
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])
