"""The local transformers backend, run for real on tiny random-weight Qwen-VL checkpoints.

The checkpoints are built like the released ones (published chat templates, tokenizer added
tokens, preprocessor pixel limits); every backend test runs on Qwen3-VL and Qwen2.5-VL.

A random model writes gibberish, so what the graph relies on (stop strings kept and cut,
finish reasons, token counts) is checked by forcing scripted tokens through a logits
processor, which exercises the same generate / stop-string / decode path as a trained model.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
)

from segresearch.agents.backends.hf_local import (  # noqa: E402
    HFChatModel,
    load_hf_model,
    to_hf_messages,
)
from segresearch.agents.content import image_block  # noqa: E402
from segresearch.core.protocol import cut_at_stop  # noqa: E402
from segresearch.testing.tiny_vlm import (  # noqa: E402
    FAMILIES,
    PUBLISHED_ADDED_TOKENS,
    PUBLISHED_PIXELS,
    QWEN_SPECIAL_TOKENS,
    build_tiny_qwen_vl,
    install_video_processor_stub,
    published_template,
)

# transformers turns token tensors into numpy arrays in a way numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

STOPS = ["</search>", "</keyframe>"]


MODEL_CLASS = {"qwen3_vl": "Qwen3VLForConditionalGeneration",
               "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}
# SHA-256 of the published templates as stored (see chat_templates/README.md).
TEMPLATE_SHA256 = {
    "qwen3_vl": "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4",
    "qwen2_5_vl": "a0bc6f6fc7a29a80017a433e8f03a1cc1236e838a944a2d034295a60c4f2fddb",
    "qwen2_5_vl_tokenizer": "44d5f08f3f72b837eaad09f13a54c1f9f4eb58d75240334548b7fd52a5437fa5",
}


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory) -> Path:
    """A checkpoint built like the released one (published template and pixel limits)."""
    return build_tiny_qwen_vl(tmp_path_factory.mktemp(f"tiny_{request.param}"), request.param)


@pytest.fixture(scope="module")
def tok(tiny):
    return AutoTokenizer.from_pretrained(tiny, local_files_only=True)


@pytest.fixture(scope="module")
def suppress(tok) -> list[int]:
    """Vision and turn tokens a random model could otherwise sample (<|im_end|> stays allowed)."""
    names = [
        "<|im_start|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
        "<|endoftext|>",
    ]
    return [tok.convert_tokens_to_ids(n) for n in names]


def _frames(n: int = 2) -> list[Image.Image]:
    sizes = [(80, 60), (50, 90), (64, 64)]
    colours = [(200, 30, 30), (30, 30, 200), (30, 200, 30)]
    return [Image.new("RGB", sizes[i % 3], colours[i % 3]) for i in range(n)]


def _conversation() -> list:
    a, b = _frames(2)
    return [
        SystemMessage(content="You are a helpful assistant."),
        HumanMessage(
            content=[
                {"type": "text", "text": "frame 0 "},
                image_block(a),
                {"type": "text", "text": "\nframe 5 "},
                image_block(b),
                {"type": "text", "text": "\n\nfind the car"},
            ]
        ),
    ]


class Scripted(LogitsProcessor):
    """Forces a fixed token sequence, then ``after`` forever."""

    def __init__(self, ids: list[int], after: int) -> None:
        self.ids = list(ids)
        self.after = after
        self.start: int | None = None

    def __call__(self, input_ids, scores):
        if self.start is None:
            self.start = input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        forced = self.ids[step] if step < len(self.ids) else self.after
        out = torch.full_like(scores, float("-inf"))
        out[:, forced] = 0.0
        return out


def _scripted_model(
    path: Path, tok, text: str, *, after: str = "<|im_end|>", **kw
) -> tuple[HFChatModel, list[int]]:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    proc = Scripted(ids, tok.convert_tokens_to_ids(after))
    model = HFChatModel(
        model_path=str(path),
        device="cpu",
        generate_kwargs={"logits_processor": LogitsProcessorList([proc])},
        **kw,
    )
    return model, ids


def test_checkpoint_reloads_offline(tiny, tok):
    install_video_processor_stub()
    processor = AutoProcessor.from_pretrained(tiny, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(tiny, local_files_only=True)
    family = model.config.model_type
    assert type(model).__name__ == MODEL_CLASS[family]
    assert processor.chat_template == published_template(family)
    assert 150_000 < sum(p.numel() for p in model.parameters()) < 400_000
    for t in QWEN_SPECIAL_TOKENS:
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert tok.eos_token == "<|im_end|>"
    assert tok.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id
    # Protocol text survives encode -> decode unchanged.
    sample = '<answer>{"bbox_2d": [1, 2, 3, 4], "point_2d": [5, 6]}</answer> frame 12 '
    assert tok.decode(tok(sample)["input_ids"]) == sample

    conversation, images = to_hf_messages(_conversation())
    assert len(images) == 2 and conversation[0] == {
        "role": "system",
        "content": "You are a helpful assistant.",
    }
    prompt = processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nframe 0 <|vision_start|><|image_pad|><|vision_end|>\n"
        "frame 5 <|vision_start|><|image_pad|><|vision_end|>\n\nfind the car<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    inputs = processor(text=[prompt], images=images, return_tensors="pt")
    n_pad = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_pad == int(inputs["image_grid_thw"].prod(dim=1).sum()) // 4
    with torch.inference_mode():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape


def test_invoke_with_images_returns_text_and_usage(tiny, tok, suppress):
    model = HFChatModel.from_spec(
        str(tiny), device="cpu", max_new_tokens=6, generate_kwargs={"suppress_tokens": suppress}
    )
    messages = _conversation()
    out = model.invoke(messages)
    assert isinstance(out, AIMessage) and isinstance(out.content, str)
    meta = out.response_metadata
    assert meta["finish_reason"] in ("stop", "length")
    assert meta["model_name"] == str(tiny)
    usage = out.usage_metadata
    assert 0 < usage["output_tokens"] <= 6
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    loaded = model.load()
    conversation, images = to_hf_messages(messages)
    prompt = loaded.processor.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=True
    )
    expected = loaded.processor(text=[prompt], images=images, return_tensors="pt")
    assert usage["input_tokens"] == expected["input_ids"].shape[1]
    # Greedy decoding is deterministic, and later turns (with an assistant turn) render too.
    assert model.invoke(messages).content == out.content
    follow = [
        *messages,
        AIMessage(content="<keyframe> 5 </keyframe>"),
        HumanMessage(content=[image_block(_frames(3)[2])]),
    ]
    assert isinstance(model.invoke(follow, max_tokens=2).content, str)


def test_stop_string_is_kept_and_nothing_after(tiny, tok):
    head = '<thinking>x</thinking><search>{"name": "text_search", "query": "q"}</search>'
    model, ids = _scripted_model(tiny, tok, head + " trailing words", max_new_tokens=64)
    out = model.invoke(_conversation(), stop=STOPS)
    assert out.content == head
    assert out.response_metadata["finish_reason"] == "stop"
    # Generation itself stopped at the tag: the trailing words were never generated.
    assert out.usage_metadata["output_tokens"] == len(tok(head)["input_ids"]) < len(ids)


def test_stop_string_ending_inside_a_token(tiny, tok):
    text = '<thinking>look</thinking><keyframe> 7 </keyframe>{"x": 1} more'
    tokens = tok.convert_ids_to_tokens(tok(text)["input_ids"])
    assert '>{"' in tokens  # the tag's ">" is fused with what follows it
    model, _ = _scripted_model(tiny, tok, text, max_new_tokens=64)
    out = model.invoke(_conversation(), stop=STOPS)
    assert out.content == "<thinking>look</thinking><keyframe> 7 </keyframe>"
    assert out.response_metadata["finish_reason"] == "stop"


def test_max_tokens_gives_length(tiny, tok):
    model, _ = _scripted_model(
        tiny, tok, "<thinking>a long thought that goes on", max_new_tokens=64
    )
    out = model.invoke(_conversation(), stop=STOPS, max_tokens=3)
    assert out.response_metadata["finish_reason"] == "length"
    assert out.usage_metadata["output_tokens"] == 3
    assert out.content == tok.decode(tok("<thinking>a long")["input_ids"][:3])


def test_eos_is_a_stop_and_special_tokens_are_skipped(tiny, tok):
    model, ids = _scripted_model(tiny, tok, "<answer>done</answer>", max_new_tokens=64)
    out = model.invoke(_conversation(), stop=STOPS)
    assert out.content == "<answer>done</answer>"
    assert out.response_metadata["finish_reason"] == "stop"
    assert out.usage_metadata["output_tokens"] == len(ids) + 1  # the <|im_end|> itself


def test_sampling_kwargs_and_shared_weights(tiny, suppress):
    a = HFChatModel(
        model_path=str(tiny),
        device="cpu",
        temperature=1.0,
        top_p=0.9,
        max_new_tokens=4,
        generate_kwargs={"suppress_tokens": suppress},
    )
    b = HFChatModel.from_spec(f" {tiny} ", device="cpu")
    assert a.load() is b.load() is load_hf_model(str(tiny), "cpu", "auto")
    out = a.invoke([HumanMessage(content="hello")], temperature=0.7, top_p=0.5)
    assert 0 < out.usage_metadata["output_tokens"] <= 4
    assert a._llm_type == "segresearch-hf"


def test_concurrent_calls_share_one_copy(tiny, suppress):
    model = HFChatModel(
        model_path=str(tiny),
        device="cpu",
        max_new_tokens=4,
        generate_kwargs={"suppress_tokens": suppress},
    )
    outs = model.batch([_conversation(), _conversation(), [HumanMessage(content="hi")]])
    assert outs[0].content == outs[1].content
    assert all(o.response_metadata["finish_reason"] in ("stop", "length") for o in outs)


def test_resolve_model_spec(tiny):
    from segresearch.agents.models import resolve_model

    model = resolve_model(f"hf:{tiny}")
    assert isinstance(model, HFChatModel) and model.model_path == str(tiny)


def test_load_error_names_the_path(tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    model = HFChatModel(model_path=str(missing), device="cpu")
    with pytest.raises(RuntimeError, match="no-such-checkpoint"):
        model.invoke([HumanMessage(content="hi")])


def test_cut_after_stop_keeps_the_earliest():
    assert cut_at_stop("a</keyframe>b</search>c", STOPS) == ("a</keyframe>", True)
    assert cut_at_stop("plain", STOPS) == ("plain", False)


def test_published_templates_are_stored_verbatim():
    for name, digest in TEMPLATE_SHA256.items():
        assert hashlib.sha256(published_template(name).encode("utf-8")).hexdigest() == digest, name
    assert published_template("qwen3_vl").startswith("{%- if tools %}")
    assert published_template("qwen2_5_vl").startswith("{% set image_count = namespace(value=0) %}")


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_is_laid_out_like_the_released_one(tmp_path, family):
    install_video_processor_stub()
    path = build_tiny_qwen_vl(tmp_path / family, family)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    # Qwen3-VL: one template for both; Qwen2.5-VL: the VL template on the processor, the
    # Qwen2.5 text (tool-calling) template on the tokenizer, as released.
    tok_template = "qwen2_5_vl_tokenizer" if family == "qwen2_5_vl" else family
    assert processor.chat_template == published_template(family)
    assert tok.chat_template == published_template(tok_template)
    size = processor.image_processor.size
    assert (size.shortest_edge, size.longest_edge) == tuple(PUBLISHED_PIXELS[family].values())
    # The released tokenizers' tool/think markers: whole tokens, but not special ones.
    for t in PUBLISHED_ADDED_TOKENS[family]:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and t not in tok.all_special_tokens, t
        assert tok.decode(ids, skip_special_tokens=True) == t
    assert len(tok("<thinking>", add_special_tokens=False)["input_ids"]) > 1  # not <think>
    # A tool call and its response render with those markers (the tool branches: Qwen2.5-VL
    # has them only in the tokenizer's template, its processor template has none).
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"function": {"name": "text_search", "arguments": {"query": "x"}}}]},
        {"role": "tool", "content": "r"},
    ]
    renderer = tok if family == "qwen2_5_vl" else processor
    text = renderer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert '<tool_call>\n{"name": "text_search", "arguments": {"query": "x"}}\n</tool_call>' in text
    assert "<|im_start|>user\n<tool_response>\nr\n</tool_response><|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    # The reduced variant stays available for tests that want tiny sequences.
    small = build_tiny_qwen_vl(tmp_path / "small", family, pixels="tiny", template="reduced")
    assert AutoProcessor.from_pretrained(small, local_files_only=True).chat_template != processor.chat_template


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_fresh_process_reload(tmp_path, family):
    """A process that did not build the checkpoint loads it with only the stub installed."""
    path = build_tiny_qwen_vl(tmp_path / family, family)
    script = textwrap.dedent(f"""
        from segresearch.testing.tiny_vlm import install_video_processor_stub
        install_video_processor_stub()
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from PIL import Image
        p = AutoProcessor.from_pretrained({str(path)!r})
        m = AutoModelForImageTextToText.from_pretrained({str(path)!r})
        text = p.apply_chat_template(
            [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "hi"}}]}}],
            tokenize=False, add_generation_prompt=True)
        inputs = p(text=[text], images=[Image.new("RGB", (40, 40))], return_tensors="pt")
        m.generate(**inputs, max_new_tokens=2)
        print("OK", type(p).__name__)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=240
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "OK" in res.stdout


class ScriptedTurns(LogitsProcessor):
    """Forces one scripted text per ``generate`` call, in order: a policy for whole runs."""

    def __init__(self, scripts: list[list[int]], end: int) -> None:
        self.scripts, self.end = scripts, end
        self.turn, self.start, self.last = -1, 0, None

    def __call__(self, input_ids, scores):
        n = input_ids.shape[1]
        if self.last is None or n != self.last + 1:  # a new generate call
            self.turn, self.start = self.turn + 1, n
        self.last = n
        ids = self.scripts[self.turn]
        step = n - self.start
        out = torch.full_like(scores, float("-inf"))
        out[:, ids[step] if step < len(ids) else self.end] = 0.0
        return out


def test_graph_end_to_end_with_the_hf_backend(tiny, tok, scene_dir, tmp_path):
    """The whole graph on a real (tiny) Qwen-VL: frames go through the processor, the
    stop string ends turn 1, the keyframe image reaches turn 2, and the answer is parsed."""
    from segresearch.agents.context import Context
    from segresearch.graphs.seg_research import graph

    texts = [
        "<thinking>look closer</thinking><keyframe> 6 </keyframe> and more",
        '<thinking>there</thinking><answer>{"bbox_2d": [400, 480, 560, 720], "point_2d": [480, 600]}</answer>',
    ]
    proc = ScriptedTurns([tok(t, add_special_tokens=False)["input_ids"] for t in texts],
                         tok.convert_tokens_to_ids("<|im_end|>"))
    model = HFChatModel(model_path=str(tiny), device="cpu", max_new_tokens=96,
                        generate_kwargs={"logits_processor": LogitsProcessorList([proc])})
    # the scripted answer is on the 0-1000 grid, whichever family answers it (a Qwen2.5-VL
    # checkpoint would otherwise be read in its own pixel convention: coord_style "auto")
    ctx = Context(model=model, search="none", segmenter="grabcut", frame_size=56,
                  keyframe_size=84, output_dir=str(tmp_path / "run"), coord_style="qwen3")
    out = graph.invoke({"query": "the blue square", "media": str(scene_dir / "frames")}, context=ctx)
    assert out["stop_reason"] == "answer", out.get("error")
    assert out["turns"] == 2 and proc.turn == 1
    assert out["messages"][2].content == "<thinking>look closer</thinking><keyframe> 6 </keyframe>"
    assert out["answer"] == {"keyframe": 6, "bbox_2d": [400, 480, 560, 720], "point_2d": [480, 600]}
    assert out["messages"][2].usage_metadata["input_tokens"] > 6  # the six frames' vision tokens
    assert out["messages"][4].usage_metadata["input_tokens"] > out["messages"][2].usage_metadata["input_tokens"]
    assert (Path(out["masks_dir"]) / "00006.png").is_file()
