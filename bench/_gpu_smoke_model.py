"""A small random-weight Qwen2.5-VL that vLLM can serve, for bench/gpu_smoke.sh.

The test models (segresearch.testing.tiny_vlm) use 16-dimensional attention heads, which vLLM's
GPU attention kernels do not support. This keeps their tokenizer, processor, chat template and
published pixel limits and rebuilds the weights with head sizes the kernels accept (text 64,
vision 64); about 2 M parameters, still random.

    python bench/_gpu_smoke_model.py --out runs/gpu-smoke/model [--family qwen2_5_vl]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLForConditionalGeneration,
)

from segresearch.testing.tiny_vlm import build_tiny_qwen_vl


def build(out: Path, family: str = "qwen2_5_vl", seed: int = 0) -> Path:
    build_tiny_qwen_vl(out, family, seed=seed, pixels="published", template="published")
    cfg = AutoConfig.from_pretrained(out)
    text, vision = cfg.text_config, cfg.vision_config
    text.hidden_size, text.intermediate_size = 128, 256
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = 2, 1, 64
    rope = dict(getattr(text, "rope_parameters", None) or {})
    # M-RoPE sections (temporal, height, width) must sum to head_dim / 2.
    rope["mrope_section"] = [8, 12, 12] if family == "qwen2_5_vl" else [16, 8, 8]
    text.rope_parameters = rope
    vision.hidden_size, vision.intermediate_size, vision.num_heads = 128, 256, 2
    vision.out_hidden_size = text.hidden_size
    model_cls = Qwen2_5_VLForConditionalGeneration if family == "qwen2_5_vl" else Qwen3VLForConditionalGeneration
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(cfg).eval()
    generation = json.loads((out / "generation_config.json").read_text())
    model.save_pretrained(out)
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--family", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    path = build(Path(args.out), args.family, args.seed)
    n = sum(p.numel() for p in Qwen2_5_VLForConditionalGeneration.from_pretrained(path).parameters()) \
        if args.family == "qwen2_5_vl" else 0
    print(f"model: {path} ({args.family}{f', {n / 1e6:.1f} M parameters' if n else ''})")


if __name__ == "__main__":
    main()
