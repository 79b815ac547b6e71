"""Tiny random-weight Qwen-VL checkpoints, built offline.

Tests of the policy side (the local transformers backend, verl's tokenisation of multi-turn
trajectories) need a real Qwen-VL model, processor and chat template, but no model hub is
reachable and no VLM ships in a package. So we train a small byte-level BPE tokenizer on the
tag protocol and save a model of about 0.25 M parameters that every
``Auto*.from_pretrained`` call can load from a folder.

By default the checkpoint is built like the released ones: the published chat templates
(``chat_templates/*.jinja``, verbatim; their origin is in ``chat_templates/README.md``), the
published image-processor pixel limits (so frames expand to realistic token counts: a
448-px frame is 196 tokens for Qwen3-VL, 256 for Qwen2.5-VL), and the released tokenizers'
added tokens (``<tool_call>``, ``<think>`` … as ordinary, non-special added tokens). As in the
released Qwen2.5-VL, its tokenizer carries the Qwen2.5 text template and its processor the VL
template; Qwen3-VL ships one template for both. ``template="reduced"`` and ``pixels="tiny"``
give our own minimal turn format and 1–9 tokens per image, for tests that need tiny
sequences.

torchvision cannot be imported beside our CPU torch, and the Qwen processors insist on a video
processor (whose real class imports torchvision). :func:`install_video_processor_stub` fills
that gap for image-only use; the saved checkpoint itself names no custom class, so wherever
torchvision exists it loads with the real Qwen video processor.
"""

from __future__ import annotations

import json
import random
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)

from segresearch.compat.transformers import install_video_processor_stub, stub_video_processor_class

__all__ = [
    "QWEN_SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "FAMILIES",
    "PUBLISHED_ADDED_TOKENS",
    "PUBLISHED_PIXELS",
    "published_template",
    "stub_video_processor_class",
    "install_video_processor_stub",
    "build_tiny_tokenizer",
    "build_tiny_qwen_vl",
]

Family = Literal["qwen3_vl", "qwen2_5_vl"]
Template = Literal["published", "reduced"]
Pixels = Literal["published", "tiny"]
FAMILIES: tuple[str, ...] = ("qwen3_vl", "qwen2_5_vl")

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Added tokens of the released tokenizers that are not special (``special: false`` in their
# ``added_tokens_decoder``): they are matched whole before BPE, but decoding keeps them even
# with ``skip_special_tokens``. The fim/repo markers are left out (no template uses them).
PUBLISHED_ADDED_TOKENS = {
    "qwen2_5_vl": ("<tool_call>", "</tool_call>"),
    "qwen3_vl": ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
                 "<think>", "</think>"),
}

# The Qwen turn format, reduced to what our graph sends: string or part-list content, image
# (and video) parts as vision placeholders. Unlike Qwen's own template it adds no default
# system prompt, so token counts in tests depend only on the conversation.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] in ('image', 'image_url') -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

_VOCAB_SIZE = 640

# Per family: vision patch size, text rope, vision-tower extras, image normalisation.
_FAMILY: dict[str, dict[str, Any]] = {
    "qwen2_5_vl": {
        "patch": 14,
        "rope": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        "vision": {"window_size": 112, "fullatt_block_indexes": [1]},
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    },
    "qwen3_vl": {
        "patch": 16,
        "rope": {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [4, 2, 2],
            "mrope_interleaved": True,
        },
        "vision": {
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],
            "hidden_act": "gelu_pytorch_tanh",
        },
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    },
}


# --------------------------------------------------------------------------- tokenizer


def _corpus(rng: random.Random) -> list[str]:
    """Lines in the tag protocol, so BPE merges cover what tests and prompts contain."""
    subjects = [
        "the car", "the man", "the dog", "the red truck", "the horse", "the woman",
        "the driver", "the bag", "the cup", "the person on the left", "the toy",
    ]  # fmt: skip
    facts = [
        "won the 2025 Qatar Grand Prix", "is the capital of France", "was born in 1990",
        "plays for the team", "is next to the window", "holds the blue umbrella",
        "wears a yellow helmet", "painted the picture", "is the fastest animal",
    ]  # fmt: skip
    words = [
        "I", "need", "to", "find", "which", "object", "is", "the", "answer", "first", "search",
        "then", "look", "at", "frame", "keyframe", "so", "it", "shows", "target", "query",
        "video", "image", "title", "text", "box", "point", "left", "right", "of", "and", "a",
        "in", "on", "with", "who", "what", "where", "when", "x", "q",
    ]  # fmt: skip
    lines: list[str] = []
    for _ in range(60):
        s, f = rng.choice(subjects), rng.choice(facts)
        lines.append(f"<thinking>I need to find who {f}, then locate {s}.</thinking>")
        q = " ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))
        name = rng.choice(["text_search", "image_search"])
        lines.append(f'<search>{{"name": "{name}", "query": "{q}"}}</search>')
        lines.append(f"<keyframe> {rng.randint(0, 199)} </keyframe>")
        box = sorted(rng.randint(0, 1000) for _ in range(4))
        pt = [rng.randint(0, 1000), rng.randint(0, 1000)]
        lines.append(
            f'<answer>{{"bbox_2d": [{box[0]}, {box[1]}, {box[2]}, {box[3]}], '
            f'"point_2d": [{pt[0]}, {pt[1]}]}}</answer>'
        )
        lines.append(
            f"<information>1. (Title: {s.title()}) {s} {f}.\n2. (Title: Note) "
            f"{' '.join(rng.choice(words) for _ in range(8))}</information>"
        )
        lines.append("".join(f"frame {rng.randint(0, 199)} \n" for _ in range(3)))
        lines.append(" ".join(str(rng.randint(0, 1000)) for _ in range(6)))
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(5, 12))) + ".")
    lines += [
        "system",
        "user",
        "assistant",
        "You are a helpful assistant.",
        '{"bbox_2d": [1, 2, 3, 4], "point_2d": [5, 6]}',
        "0 1 2 3 4 5 6 7 8 9",
    ]
    return lines


@cache
def published_template(name: str) -> str:
    """A published chat template, verbatim: ``qwen3_vl``, ``qwen2_5_vl`` (the processor's)
    or ``qwen2_5_vl_tokenizer`` (the Qwen2.5 text template of the Qwen2.5-VL tokenizer)."""
    path = resources.files("segresearch.testing").joinpath("chat_templates", f"{name}.jinja")
    with path.open("r", encoding="utf-8", newline="") as fh:
        return fh.read()


def _templates(family: str, template: str) -> tuple[str, str]:
    """(tokenizer template, processor template)."""
    if template == "reduced":
        return CHAT_TEMPLATE, CHAT_TEMPLATE
    if template != "published":
        raise ValueError(f"template must be 'published' or 'reduced', got {template!r}")
    if family == "qwen2_5_vl":
        return published_template("qwen2_5_vl_tokenizer"), published_template("qwen2_5_vl")
    return published_template("qwen3_vl"), published_template("qwen3_vl")


def build_tiny_tokenizer(seed: int = 0, family: Family = "qwen3_vl",
                         template: Template = "published") -> Any:
    """A small byte-level BPE tokenizer with the Qwen special tokens and a chat template.

    ``template="published"`` adds the released tokenizer's non-special added tokens and sets
    its chat template (for Qwen2.5-VL the tokenizer's own, which is not the processor's);
    ``"reduced"`` gives our minimal turn format and no extra added tokens.
    """
    if family not in _FAMILY:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(random.Random(seed)), trainer=trainer)
    if template == "published":
        backend.add_tokens([AddedToken(t, special=False, normalized=False)
                            for t in PUBLISHED_ADDED_TOKENS[family]])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=[
            t for t in QWEN_SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")
        ],
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = _templates(family, template)[0]
    return tok


# --------------------------------------------------------------------------- model


def _model_config(family: str, tok: Any) -> Any:
    spec = _FAMILY[family]
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text = {
        "vocab_size": len(tok),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 8192,
        "rope_parameters": dict(spec["rope"]),
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": spec["patch"],
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 64,
        **spec["vision"],
    }
    token_ids = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    if family == "qwen2_5_vl":
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **token_ids)
    text["head_dim"] = 16
    return Qwen3VLConfig(text_config=text, vision_config=vision, **token_ids)


# The pixel limits of the released preprocessors (min/max pixels per image): with them a
# 448-px frame becomes 256 (Qwen2.5-VL, patch 14) or 196 (Qwen3-VL, patch 16) tokens.
PUBLISHED_PIXELS = {
    "qwen2_5_vl": {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384},
    "qwen3_vl": {"shortest_edge": 256 * 256, "longest_edge": 4096 * 4096},
}


def _processor(family: str, tok: Any, pixels: str, template: str) -> Any:
    spec = _FAMILY[family]
    unit = spec["patch"] * 2  # one merged token covers a (patch * merge)² square
    # Tiny: between 1×1 and 3×3 merged tokens per image (real image handling, tiny
    # sequences); published: the released limits, so images expand to realistic counts.
    if pixels not in ("published", "tiny"):
        raise ValueError(f"pixels must be 'published' or 'tiny', got {pixels!r}")
    size = (dict(PUBLISHED_PIXELS[family]) if pixels == "published"
            else {"shortest_edge": unit * unit, "longest_edge": 9 * unit * unit})
    image_processor = Qwen2VLImageProcessorPil(
        size=size,
        patch_size=spec["patch"],
        temporal_patch_size=2,
        merge_size=2,
        image_mean=spec["mean"],
        image_std=spec["std"],
    )
    install_video_processor_stub()
    video_processor = _video_processor(size, spec)
    cls = Qwen2_5_VLProcessor if family == "qwen2_5_vl" else Qwen3VLProcessor
    return cls(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        chat_template=_templates(family, template)[1],
    )


def _video_processor(size: dict[str, int], spec: dict[str, Any]) -> Any:
    # The stub even where torchvision exists: it is a real BaseVideoProcessor there, and the
    # saved entry names no class (see _strip_video_processor_type), so reloading picks the
    # real Qwen class. Its settings are ones both real Qwen video processors accept.
    return stub_video_processor_class()(
        size=dict(size),
        patch_size=spec["patch"],
        temporal_patch_size=2,
        merge_size=2,
        image_mean=spec["mean"],
        image_std=spec["std"],
    )


def _strip_video_processor_type(out: Path) -> None:
    """Make the saved video-processor entry name no class.

    ``AutoVideoProcessor`` then picks the class from the model type: the real Qwen one where
    torchvision exists, our stub where :func:`install_video_processor_stub` registered it.
    A class name in the file would pin one of the two and break loading in the other setting.
    """
    path = out / "processor_config.json"
    if not path.exists():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    video = data.get("video_processor")
    if isinstance(video, dict):
        video.pop("video_processor_type", None)
        video.pop("auto_map", None)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_tiny_qwen_vl(out_dir: str | Path, family: Family = "qwen3_vl", seed: int = 0,
                      pixels: Pixels = "published", template: Template = "published") -> Path:
    """Build and save a random-weight Qwen-VL checkpoint folder (about 1 MB) and return it.

    ``pixels``: ``"published"`` (the released preprocessor limits, realistic image token
    counts) or ``"tiny"`` (1–9 tokens per image). ``template``: ``"published"`` (the released
    chat templates and added tokens) or ``"reduced"`` (our minimal turn format).

    The folder loads offline with ``AutoProcessor``, ``AutoTokenizer`` and
    ``AutoModelForImageTextToText``. Building installs the video-processor stub in this
    process; any other process without torchvision must call
    :func:`install_video_processor_stub` (importing this module is not enough) before
    ``AutoProcessor.from_pretrained``. Weights depend only on ``seed``, and the caller's
    torch RNG is left untouched.
    """
    if family not in _FAMILY:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer(seed, family, template)
    config = _model_config(family, tok)
    model_cls = (
        Qwen2_5_VLForConditionalGeneration
        if family == "qwen2_5_vl"
        else Qwen3VLForConditionalGeneration
    )
    # Seed a private generator state so that building a model does not disturb the
    # caller's torch RNG, yet the same seed always gives the same weights.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).eval()
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )
    model.save_pretrained(out)
    processor = _processor(family, tok, pixels, template)
    processor.save_pretrained(out)
    _strip_video_processor_type(out)
    _split_templates(out, *_templates(family, template))
    return out


def _split_templates(out: Path, tokenizer_template: str, processor_template: str) -> None:
    """Save the two chat templates where the released checkpoints keep them when they differ.

    ``save_pretrained`` writes one ``chat_template.jinja`` that both the tokenizer and the
    processor read back. The released Qwen2.5-VL has the processor template in
    ``chat_template.json`` and the tokenizer's in ``tokenizer_config.json``; both loaders read
    those, so write that layout there.
    """
    if tokenizer_template == processor_template:
        return
    (out / "chat_template.jinja").unlink(missing_ok=True)
    (out / "chat_template.json").write_text(
        json.dumps({"chat_template": processor_template}, indent=2) + "\n", encoding="utf-8")
    path = out / "tokenizer_config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["chat_template"] = tokenizer_template
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
