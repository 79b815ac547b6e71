"""Our Qwen2.5-VL chat template with tools (segresearch/rl/templates/qwen2_5_vl_tools.jinja).

Why these checks: a ``tools``-mode RL rollout on Qwen2.5-VL renders its whole token stream with
this template, so it must be exactly the model's own formats joined: on every conversation
without tools, byte for byte what the published processor template renders (what verl renders
a Qwen2.5-VL rollout with, and what the tags protocol trains on), and on every tool
conversation without images, byte for byte what the published tokenizer template renders (the
Qwen2.5 tool format: tools in the system turn, ``<tool_call>`` JSON, ``<tool_response>``
turns). Conversations are generated at random from a fixed seed, covering the shapes a
rollout writes and the edge cases of both templates (no system turn, list contents, a later
system turn, consecutive tool responses, string arguments, empty or missing content).
"""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest

pytest.importorskip("torch")

from transformers import AutoProcessor, AutoTokenizer  # noqa: E402

from segresearch.core.tool_protocol import tool_definitions  # noqa: E402
from segresearch.rl.tools_template import (  # noqa: E402
    agrees_without_tools,
    renders_tools,
    tools_chat_template,
    tools_template_kwargs,
)
from segresearch.testing.tiny_vlm import (  # noqa: E402
    CHAT_TEMPLATE,
    build_tiny_qwen_vl,
    install_video_processor_stub,
    published_template,
)

N = 150  # conversations per property


@pytest.fixture(scope="module")
def qwen25(tmp_path_factory):
    """The tiny Qwen2.5-VL built like the released checkpoint: its processor carries the
    published processor template, its tokenizer the published tokenizer template."""
    install_video_processor_stub()
    path = build_tiny_qwen_vl(tmp_path_factory.mktemp("tiny25_template"), "qwen2_5_vl",
                              pixels="tiny", template="published")
    proc, tok = AutoProcessor.from_pretrained(str(path)), AutoTokenizer.from_pretrained(str(path))
    assert proc.chat_template == published_template("qwen2_5_vl")
    assert tok.chat_template == published_template("qwen2_5_vl_tokenizer")
    return SimpleNamespace(proc=proc, tok=tok)


_WORDS = ["frame", "the", "blue", "square", "{", "}", '"q"', "\n", "\n\n", "é", "☃", "<b>", " ", "0 12",
          "You are a helpful assistant."]


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(_WORDS) + rng.choice(["", " "]) for _ in range(rng.randint(0, 6)))


def _parts(rng: random.Random, media: bool) -> list[dict]:
    kinds = ["text", "image", "image_url", "video"] if media else ["text"]
    out = []
    for _ in range(rng.randint(0, 5)):
        kind = rng.choice(kinds)
        if kind == "text":
            out.append({"type": "text", "text": _text(rng)})
        elif kind == "image":
            out.append({"type": "image"})
        elif kind == "image_url":
            out.append({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}})
        else:
            out.append({"type": "video"})
    return out


def _plain_conversation(rng: random.Random) -> list[dict]:
    """System (or none), user and assistant turns, a later system turn now and then; user and
    system contents as text or as lists of text, image and video parts."""
    conv = []
    if rng.random() < 0.7:
        conv.append({"role": "system", "content": _text(rng) if rng.random() < 0.5 else _parts(rng, False)})
    for i in range(rng.randint(1, 4)):
        conv.append({"role": "user", "content": _text(rng) if rng.random() < 0.3 else _parts(rng, True)})
        if rng.random() < 0.8:
            conv.append({"role": "assistant", "content": _text(rng)})
        if i and rng.random() < 0.15:
            conv.append({"role": "system", "content": _text(rng)})
    return conv


def _call(rng: random.Random) -> dict:
    name = rng.choice(["keyframe", "text_search", "answer", "other_tool"])
    args = rng.choice([{"index": rng.randint(0, 20)}, {"query": _text(rng)},
                       {"keyframe": 6, "bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3]}, {}])
    if rng.random() < 0.2:
        args = json.dumps(args)  # OpenAI-style string arguments (the template quotes them)
    call = {"name": name, "arguments": args}
    return {"id": f"c{rng.randint(0, 99)}", "type": "function", "function": call} if rng.random() < 0.8 else call


def _tool_conversation(rng: random.Random) -> list[dict]:
    """Text-only turns with tool calls and tool responses (one or several in a row)."""
    conv = []
    if rng.random() < 0.7:
        conv.append({"role": "system", "content": _text(rng)})
    conv.append({"role": "user", "content": _text(rng)})
    for _ in range(rng.randint(1, 4)):
        r = rng.random()
        if r < 0.6:
            content = rng.choice([_text(rng), "", None])
            conv.append({"role": "assistant", "content": content,
                         "tool_calls": [_call(rng) for _ in range(rng.randint(1, 3))]})
            for _ in range(rng.randint(1, 3)):
                conv.append({"role": "tool", "content": _text(rng), "tool_call_id": "c"})
        elif r < 0.8:
            conv.append({"role": "assistant", "content": _text(rng)})
            conv.append({"role": "user", "content": _text(rng)})
        else:
            conv.append({"role": "system", "content": _text(rng)})
            conv.append({"role": "user", "content": _text(rng)})
    return conv


def _tools(rng: random.Random) -> list[dict] | None:
    if rng.random() < 0.2:
        return None
    defs = tool_definitions("qwen25", rng.choice([448, 864]), rng.random() < 0.5)
    return defs[: rng.randint(1, len(defs))]


def test_without_tools_it_renders_as_the_processor_template(qwen25):
    rng = random.Random(21)
    ours = tools_chat_template()
    for _ in range(N):
        conv = _plain_conversation(rng)
        kw = {"add_generation_prompt": rng.random() < 0.5, "add_vision_id": rng.random() < 0.3}
        expected = qwen25.proc.apply_chat_template(conv, tokenize=False, **kw)
        assert qwen25.proc.apply_chat_template(conv, tokenize=False, chat_template=ours, **kw) == expected, conv


def test_tool_conversations_render_as_the_tokenizer_template(qwen25):
    rng = random.Random(25)
    ours = tools_chat_template()
    seen_string_args = seen_grouped = 0
    for _ in range(N):
        conv, tools = _tool_conversation(rng), _tools(rng)
        kw = {"add_generation_prompt": rng.random() < 0.5, "tools": tools}
        expected = qwen25.tok.apply_chat_template(conv, tokenize=False, **kw)
        assert qwen25.tok.apply_chat_template(conv, tokenize=False, chat_template=ours, **kw) == expected, conv
        seen_grouped += "</tool_response>\n<tool_response>" in expected
        seen_string_args += '"arguments": "{' in expected
    assert seen_grouped and seen_string_args  # the generator reached both template quirks


def test_images_inside_a_tool_response_are_the_processors_placeholders(qwen25):
    """What neither published template renders: a tool response holding an image, rendered
    as the processor renders an image, inside the tokenizer's ``<tool_response>`` block."""
    conv = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
            {"role": "assistant", "content": "", "tool_calls": [_call(random.Random(0))]},
            {"role": "tool", "content": [{"type": "text", "text": "frame 6: "}, {"type": "image"}]},
            {"role": "tool", "content": "second"}]
    text = qwen25.proc.apply_chat_template(conv, tokenize=False, chat_template=tools_chat_template(),
                                           tools=tool_definitions("qwen25", 448, False), add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\n<tool_response>\nframe 6: <|vision_start|><|image_pad|><|vision_end|>"
                         "\n</tool_response>\n<tool_response>\nsecond\n</tool_response><|im_end|>\n"
                         "<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\ns\n\n# Tools\n")


def test_the_template_is_chosen_by_probing(qwen25):
    """Ours stands in only where the model's template renders no tools and agrees with ours
    on conversations without them; a template that renders tools is kept as it is."""
    ours = tools_chat_template()
    assert not renders_tools(qwen25.proc) and agrees_without_tools(qwen25.proc, {}, ours)
    assert tools_template_kwargs(qwen25.proc, {"add_vision_id": False}) == {"add_vision_id": False,
                                                                            "chat_template": ours}
    assert renders_tools(qwen25.tok) and tools_template_kwargs(qwen25.tok) == {}
    assert tools_template_kwargs(qwen25.proc, {"chat_template": ours}) == {"chat_template": ours}
    assert not agrees_without_tools(qwen25.proc, {"chat_template": CHAT_TEMPLATE}, ours)
    with pytest.raises(ValueError, match="renders tools"):
        tools_template_kwargs(qwen25.proc, {"chat_template": CHAT_TEMPLATE})


def test_the_template_ships_as_package_data():
    """Rollouts run from an installed package on the training machines: the template must be
    in it, not only in this checkout."""
    tomllib = pytest.importorskip("tomllib")
    from fnmatch import fnmatch
    from pathlib import Path

    import segresearch

    pkg = Path(segresearch.__file__).parent
    patterns = tomllib.loads((pkg.parent / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"][
        "package-data"]["segresearch"]
    rel = "rl/templates/qwen2_5_vl_tools.jinja"
    assert (pkg / rel).is_file() and any(fnmatch(rel, pat) for pat in patterns)
    assert (pkg / rel).read_text("utf-8") == tools_chat_template()
