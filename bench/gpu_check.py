"""Torch-only device check: SAM 2, frame prefetch and the transformers backend on a GPU.

The full GPU smoke (``bench/gpu_smoke.sh``) needs vLLM, verl and Ray; this check needs only a
CUDA torch, transformers, tokenizers, sam2 (built from its sdist), pillow and OpenCV, so it
runs on a bare GPU machine too. Every row compares the device against a reference:

- ``sam2``: our segmenter (frames decoded on demand, prefetched in the direction of
  propagation) against the bare SAM 2 video predictor driven the published way
  (``segresearch.testing.sam2_reference``), both on the device, from one random-weight SAM 2.1
  tiny checkpoint (or ``--sam2-checkpoint``): masks equal and logits within ``SAM2_ATOL``;
- ``prefetch``: the frame store, walked forward then backward with prefetching, against SAM 2's
  own JPEG loader: bit-equal tensors, and frames really served by the prefetch thread;
- ``transformers``: the tiny random-weight Qwen-VL checkpoints (``segresearch.testing.tiny_vlm``)
  in float32 and bfloat16 on the device against float32 on the CPU, on scripted prompts: the
  parsed tag actions equal and the scripted reply's log-probabilities within ``LOGPROB_ATOL``.
  A random model writes gibberish, so each reply is steered by a logits bias of ``SCRIPT_BIAS``
  (the model's own logits stay within about ±1): the action comes out through generate, the
  stop strings, decoding and the tag parser, and broken numerics (NaN, overflow) still show;
- ``hf backend``: the same prompts through ``HFChatModel``, where langchain-core is installed
  (the class is a LangChain chat model; that row alone imports it).

Nothing here imports LangGraph, verl, Ray or vLLM (the ``imports`` row checks). Without a GPU,
``--device cpu`` runs every comparison CPU against CPU and says that CUDA was skipped.

    python bench/gpu_check.py [--device auto|cuda|cpu] [--quick] [--sam2-checkpoint PT]

Exit status: 0 all compared equal, 1 a mismatch or an error, 2 a check could not run (a
package is missing, or --device cuda without CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the checkout under test, installed or not
    sys.path.insert(0, str(ROOT))

OK, MISMATCH, ERROR, MISSING, SKIPPED = "ok", "MISMATCH", "ERROR", "missing", "skipped"
EXIT_OK, EXIT_MISMATCH, EXIT_INCOMPLETE = 0, 1, 2

# Our segmenter and the bare predictor run the same kernels on the same bits: expected equal.
SAM2_ATOL = 1e-4
# Scripted-reply log-probs against CPU float32. Float32 on CUDA differs by summation order and
# cuDNN's TF32 convolutions (the vision patch embedding); bfloat16 by its 8-bit mantissa
# (measured on CPU, bfloat16 against float32: 2.6e-3 Qwen3-VL, 3.3e-3 Qwen2.5-VL).
LOGPROB_ATOL = {"float32": 2e-3, "bfloat16": 2e-2}
SCRIPT_BIAS = 10.0
FORBIDDEN_MODULES = ("langgraph", "langchain_core", "verl", "ray", "vllm")


@dataclass
class Row:
    check: str
    device: str
    result: str
    detail: str


@dataclass
class Settings:
    device: str
    frames: int
    image_size: int
    families: list[str]
    dtypes: list[str]
    sam2_checkpoint: str
    sam2_config: str
    work: Path
    clip: tuple[Path, Any] | None = None
    outcomes: dict[tuple[str, str, str], Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ rows


def missing_row(check: str, device: str, exc: ImportError) -> Row:
    name = getattr(exc, "name", None) or str(exc)
    return Row(check, device, MISSING, f"cannot import {name} ({exc}); see README, GPU environment")


def guarded(check: str, device: str, fn: Callable[[], list[Row]]) -> list[Row]:
    """Runs one check; an import failure becomes a ``missing`` row and any other exception an
    ``ERROR`` row, so one broken part never hides the others."""
    try:
        return fn()
    except ImportError as e:
        return [missing_row(check, device, e)]
    except Exception as e:  # noqa: BLE001 - reported in the table
        first = (str(e).strip().splitlines() or [""])[0][:160]
        return [Row(check, device, ERROR, f"{type(e).__name__}: {first}")]


def verdict(ok: bool) -> str:
    return OK if ok else MISMATCH


# ------------------------------------------------------------------------------ SAM 2


def answer_pixels(xy: Sequence[int], width: int, height: int) -> tuple[float, ...]:
    """Pixel coordinates after the round trip of a 0–1000 answer (``× width / 1000``): the
    fractional values a model's box and point reach SAM 2 with."""
    sizes = [width if i % 2 == 0 else height for i in range(len(xy))]
    return tuple(round(v * 1000 / n) * n / 1000 for v, n in zip(xy, sizes, strict=True))


def write_clip(folder: Path, n_frames: int) -> Any:
    """A synthetic clip as a JPEG folder (SAM 2's loader reads those) and a box-and-point
    prompt on its middle frame."""
    from segresearch.testing.scenes import inner_point, mask_box, render_scene, write_frames
    from segresearch.tools.segmenters.base import Prompt

    width, height = 96, 64
    frames, masks = render_scene(n_frames=n_frames, size=(width, height))
    write_frames(frames, folder)
    key = n_frames // 2
    target = masks["blue square"][key]
    return Prompt(key, answer_pixels(mask_box(target), width, height),  # type: ignore[arg-type]
                  answer_pixels(inner_point(target), width, height))  # type: ignore[arg-type]


def clip_for(s: Settings) -> tuple[Path, Any]:
    """The run's clip folder and prompt, written on first use."""
    if s.clip is None:
        folder = s.work / "clip"
        s.clip = (folder, write_clip(folder, s.frames))
    return s.clip


def random_sam2_checkpoint(path: Path) -> Path:
    """A seeded random-weight SAM 2.1 tiny checkpoint, saved as official ones are
    (``{"model": state_dict}``): no checkpoint ships in any package."""
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    from segresearch.tools.segmenters import SAM2_CONFIGS

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_sam2_video_predictor(SAM2_CONFIGS["tiny"], ckpt_path=None, device="cpu")
    torch.save({"model": model.state_dict()}, path)
    return path


@contextlib.contextmanager
def recorded_logits(predictor: Any) -> Iterator[list[list[tuple[int, Any]]]]:
    """Every (frame, logits) that ``propagate_in_video`` yields, one list per call."""
    calls: list[list[tuple[int, Any]]] = []
    original = predictor.propagate_in_video

    def recording(*args: Any, **kwargs: Any) -> Iterator[Any]:
        seen: list[tuple[int, Any]] = []
        calls.append(seen)
        for idx, ids, logits in original(*args, **kwargs):
            seen.append((idx, logits.detach().float().cpu().clone()))
            yield idx, ids, logits

    predictor.propagate_in_video = recording
    try:
        yield calls
    finally:
        del predictor.propagate_in_video  # the class's method again


def compare_sam2(ours: dict[int, Any], bare: Any, ours_calls: list, bare_calls: list) -> tuple[bool, str]:
    """Logits within ``SAM2_ATOL``, pass by pass and frame by frame (so a mask can differ only
    where a logit sits within ``SAM2_ATOL`` of the threshold), masks for every frame, and a
    non-empty mask somewhere (a prompt that reached the model)."""
    if [[i for i, _ in c] for c in ours_calls] != [[i for i, _ in c] for c in bare_calls]:
        return False, "the two sides visited frames in a different order"
    pairs = [(a, b) for mine, theirs in zip(ours_calls, bare_calls, strict=True)
             for (_, a), (_, b) in zip(mine, theirs, strict=True)]
    worst = max(float((a - b).abs().max()) for a, b in pairs)
    flipped = sum(int((mask != bare[idx]).sum()) for idx, mask in ours.items())
    ok = worst <= SAM2_ATOL and sorted(ours) == list(range(len(bare))) and bool(bare.any())
    how = "bit-equal logits" if worst == 0.0 else f"max|Δlogit| {worst:.2e}"
    masks = "masks equal" if flipped == 0 else f"{flipped} mask pixels differ"
    return ok, f"{len(ours)} frames, {len(pairs)} logit maps: {how} (atol {SAM2_ATOL:g}), {masks}"


def check_sam2(s: Settings) -> list[Row]:
    import sam2  # noqa: F401 - missing: a "missing" row, not the segmenter's ValueError

    from segresearch.core.media import open_media
    from segresearch.testing.sam2_reference import bare_published
    from segresearch.tools.segmenters import SAM2Segmenter

    folder, prompt = clip_for(s)
    checkpoint = s.sam2_checkpoint or str(random_sam2_checkpoint(s.work / "sam2.1_hiera_tiny.pt"))
    # No kept frames, so every read goes through preparation; prefetching also on a CPU,
    # where the segmenter's default is off. On CUDA the default thread count is what runs.
    seg = SAM2Segmenter(checkpoint, s.sam2_config, device=s.device, image_size=s.image_size,
                        frame_cache_mb=0, prefetch_threads=2 if s.device == "cpu" else None)
    predictor, _lock = seg.predictor()
    started = time.perf_counter()
    with recorded_logits(predictor) as calls:
        with seg.open(open_media(folder)) as session:
            ours = dict(session.masks(prompt))
            decoded = session.frames.decoded
        _state, bare = bare_published(predictor, folder, prompt)
    ok, detail = compare_sam2(ours, bare, calls[:2], calls[2:4])
    weights = Path(checkpoint).name if s.sam2_checkpoint else "random tiny weights"
    detail += (f"; {weights}, {s.image_size} px, {seg.prefetch_threads} prefetch threads, "
               f"{decoded} frames prepared, "
               f"{time.perf_counter() - started:.1f} s")
    return [Row("sam2: ours vs bare predictor", s.device, verdict(ok), detail)]


def check_prefetch(s: Settings) -> list[Row]:
    """Walks the frame store forward and back, as propagation does, with prefetching on."""
    import torch
    from sam2.utils.misc import load_video_frames_from_jpg_images

    from segresearch.core.media import open_media
    from segresearch.tools.segmenters.sam2 import FrameStore

    folder, _prompt = clip_for(s)
    reference, _h, _w = load_video_frames_from_jpg_images(str(folder), s.image_size, True)
    store = FrameStore(open_media(folder), s.image_size, cache_mb=0, prefetch=4, threads=2)
    order = [*range(s.frames), *range(s.frames - 1, -1, -1)]
    equal = served = 0
    try:
        for pos in order:
            served += pos in store._ready  # prepared by a prefetch thread before it was asked
            on_device = store[pos].to(s.device)
            equal += bool(torch.equal(on_device.cpu(), reference[pos]))
    finally:
        store.close()
    ok = equal == len(order) and served > 0
    detail = (f"{equal}/{len(order)} reads bit-equal to SAM 2's loader, {served} served by the "
              f"prefetch threads")
    return [Row("prefetch: frame store vs sam2 loader", s.device, verdict(ok), detail)]


# ------------------------------------------------------------------------------ transformers


@dataclass(frozen=True)
class Script:
    """A prompt and the reply the model is steered to write."""

    name: str
    question: str
    reply: str


SCRIPTS = (
    Script("search", "Which square won the 2031 Tessellate Cup? Segment it.",
           '<think>I do not know the winner.</think>\n<search>{"name": "text_search", '
           '"query": "Tessellate Cup 2031 winner"}</search> and more'),
    Script("keyframe", "Pick the frame where the winner is clearest.",
           "<think>It is largest in frame 5.</think>\n<keyframe>5</keyframe>"),
    Script("answer", "Give its box and point.",
           '<answer>{"bbox_2d": [120, 80, 360, 300], "point_2d": [240, 190]}</answer>'),
)


def script_bias(reply_ids: list[int], end_id: int, prompt_len: int, bias: float) -> Any:
    """A logits processor adding ``bias`` to the scripted token of each step (then to the end
    token): the model's own logits still count, so NaN or overflow shows in the output."""
    import torch
    from transformers import LogitsProcessor

    class ScriptBias(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            step = input_ids.shape[1] - prompt_len
            target = reply_ids[step] if step < len(reply_ids) else end_id
            scores = scores.clone()
            scores[:, target] += bias
            return scores

    return ScriptBias()


def frames_for_prompt() -> list[Any]:
    from PIL import Image

    return [Image.new("RGB", (448, 336), (200, 40, 40)), Image.new("RGB", (320, 240), (40, 40, 200))]


def conversation(script: Script) -> list[dict[str, Any]]:
    """The HF chat format the backend produces: text parts and image placeholders."""
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [
            {"type": "text", "text": "frame 0 "}, {"type": "image"},
            {"type": "text", "text": "\nframe 5 "}, {"type": "image"},
            {"type": "text", "text": f"\n\n{script.question}"},
        ]},
    ]


@dataclass
class Outcome:
    text: str
    action: Any
    logprobs: Any


def expected_action(script: Script) -> Any:
    """What the graph would read from the scripted reply itself."""
    from segresearch.core.protocol import STOP_STRINGS, cut_at_stop, parse_action

    return parse_action(cut_at_stop(script.reply, STOP_STRINGS)[0])


def tiny_checkpoint(s: Settings, family: str) -> Path:
    """The tiny random-weight checkpoint of ``family``, built once per run."""
    from segresearch.testing.tiny_vlm import build_tiny_qwen_vl

    path = s.work / f"tiny_{family}"
    if not (path / "config.json").is_file():
        build_tiny_qwen_vl(path, family)  # type: ignore[arg-type]
    return path


def load_processor(path: Path) -> Any:
    from transformers import AutoProcessor

    from segresearch.compat.transformers import install_video_processor_stub

    install_video_processor_stub()  # no-op where torchvision provides the real one
    return AutoProcessor.from_pretrained(path)


def load_tiny(path: Path, device: str, dtype: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForImageTextToText

    processor = load_processor(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, dtype))
    return model.to(device).eval(), processor


def render(processor: Any, script: Script) -> Any:
    """The prompt's model inputs on the CPU, as the backend renders them."""
    prompt = processor.apply_chat_template(conversation(script), tokenize=False,
                                           add_generation_prompt=True)
    return processor(text=[prompt], images=frames_for_prompt(), return_tensors="pt")


def steering(processor: Any, script: Script, prompt_len: int) -> tuple[list[int], Any]:
    """The scripted reply's token ids and the logits processor that steers towards them."""
    from transformers import LogitsProcessorList

    tok = processor.tokenizer
    reply_ids = tok(script.reply, add_special_tokens=False)["input_ids"]
    end_id = tok.convert_tokens_to_ids("<|im_end|>")
    return reply_ids, LogitsProcessorList([script_bias(reply_ids, end_id, prompt_len, SCRIPT_BIAS)])


def run_script(model: Any, processor: Any, script: Script, device: str) -> Outcome:
    """Generate the steered reply (published stop strings, greedy), parse its action, and
    score the scripted reply teacher-forced."""
    import torch

    from segresearch.core.protocol import STOP_STRINGS, cut_at_stop, parse_action

    tok = processor.tokenizer
    inputs = render(processor, script).to(device, dtype=model.dtype)
    n_prompt = int(inputs["input_ids"].shape[1])
    reply_ids, steer = steering(processor, script, n_prompt)
    with torch.inference_mode():
        out = model.generate(**inputs, logits_processor=steer, do_sample=False,
                             max_new_tokens=len(reply_ids) + 4, stop_strings=STOP_STRINGS,
                             tokenizer=tok, pad_token_id=tok.pad_token_id)
    text, _ = cut_at_stop(tok.decode(out[0, n_prompt:], skip_special_tokens=True), STOP_STRINGS)
    return Outcome(text, parse_action(text), teacher_forced(model, inputs, reply_ids))


def teacher_forced(model: Any, inputs: Any, reply_ids: list[int]) -> Any:
    """Log-probabilities of the scripted reply after the prompt (what verl compares). The
    prompt's per-token tensors grow by the reply: its ids, attention 1, and 0 for the rest
    (``mm_token_type_ids``, where 0 marks a text token)."""
    import torch

    n_prompt = int(inputs["input_ids"].shape[1])
    ids = torch.tensor([reply_ids], device=inputs["input_ids"].device)
    full = dict(inputs)
    for key, value in inputs.items():
        if key != "input_ids" and value.ndim == 2 and value.shape[1] == n_prompt:
            fill = torch.ones_like(ids) if key == "attention_mask" else torch.zeros_like(ids)
            full[key] = torch.cat([value, fill.to(value.dtype)], dim=1)
    full["input_ids"] = torch.cat([inputs["input_ids"], ids], dim=1)
    with torch.inference_mode():
        logits = model(**full).logits[0, n_prompt - 1 : -1].float()
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, :, None])[:, 0]
    return logprobs.cpu()


def outcomes(s: Settings, family: str, device: str, dtype: str) -> dict[str, Outcome]:
    """Every script's outcome for one model setting, computed once per run."""
    key = (family, device, dtype)
    if key not in s.outcomes:
        model, processor = load_tiny(tiny_checkpoint(s, family), device, dtype)
        s.outcomes[key] = {sc.name: run_script(model, processor, sc, device) for sc in SCRIPTS}
    return s.outcomes[key]


def compare_outcomes(got: dict[str, Outcome], ref: dict[str, Outcome], dtype: str) -> tuple[bool, str]:
    same = sum(got[name].action == ref[name].action for name in ref)
    worst = max(float((got[n].logprobs - ref[n].logprobs).abs().max()) for n in ref)
    ok = same == len(ref) and worst <= LOGPROB_ATOL[dtype]
    return ok, (f"actions {same}/{len(ref)} equal ({','.join(ref)}); max|Δlogprob| {worst:.1e} "
                f"(atol {LOGPROB_ATOL[dtype]:g})")


def reference_problems(ref: dict[str, Outcome]) -> list[str]:
    """The CPU reference must itself give the scripted actions, else equality proves nothing."""
    return [f"{sc.name}: parsed {ref[sc.name].action!r}" for sc in SCRIPTS
            if ref[sc.name].action != expected_action(sc)]


def check_transformers(s: Settings) -> list[Row]:
    rows: list[Row] = []
    for family in s.families:
        ref = outcomes(s, family, "cpu", "float32")
        wrong = reference_problems(ref)
        if wrong:
            rows.append(Row(f"transformers {family} reference", "cpu", ERROR, "; ".join(wrong)))
            continue
        for dtype in s.dtypes:
            ok, detail = compare_outcomes(outcomes(s, family, s.device, dtype), ref, dtype)
            rows.append(Row(f"transformers {family} {dtype} vs cpu float32", s.device,
                            verdict(ok), detail))
    return rows


def backend_messages(script: Script) -> list[Any]:
    """``conversation(script)`` as the LangChain messages the graph hands the backend."""
    from langchain_core.messages import HumanMessage, SystemMessage

    from segresearch.agents.content import image_block

    a, b = frames_for_prompt()
    return [SystemMessage(content="You are a helpful assistant."),
            HumanMessage(content=[{"type": "text", "text": "frame 0 "}, image_block(a),
                                  {"type": "text", "text": "\nframe 5 "}, image_block(b),
                                  {"type": "text", "text": f"\n\n{script.question}"}])]


def check_backend(s: Settings) -> list[Row]:
    """The same prompts through ``HFChatModel`` (which needs langchain-core): the backend's own
    rendering, generation and stop handling must give the direct run's text and actions."""
    try:
        from segresearch.agents.backends.hf_local import HFChatModel
    except ImportError as e:
        return [Row("hf backend (HFChatModel)", s.device, SKIPPED,
                    f"optional: {e.name or e} is not installed (pip install 'langchain-core>=1.8,<2')")]
    from segresearch.core.protocol import STOP_STRINGS, parse_action

    family, dtype = s.families[0], s.dtypes[-1]
    path = tiny_checkpoint(s, family)
    direct = outcomes(s, family, s.device, dtype)
    processor = load_processor(path)
    same = 0
    for script in SCRIPTS:
        reply_ids, steer = steering(processor, script, int(render(processor, script)["input_ids"].shape[1]))
        chat = HFChatModel(model_path=str(path), device=s.device, dtype=dtype,
                           max_new_tokens=len(reply_ids) + 4, generate_kwargs={"logits_processor": steer})
        text = str(chat.invoke(backend_messages(script), stop=STOP_STRINGS).content)
        same += text == direct[script.name].text and parse_action(text) == direct[script.name].action
    return [Row(f"hf backend {family} {dtype} vs direct", s.device, verdict(same == len(SCRIPTS)),
                f"text and actions {same}/{len(SCRIPTS)} equal")]


def check_imports(_s: Settings) -> list[Row]:
    """Everything above ran without LangGraph, LangChain, verl, Ray or vLLM."""
    loaded = [m for m in FORBIDDEN_MODULES if m in sys.modules]
    ours = sorted(m for m in sys.modules if m.startswith("segresearch."))
    detail = (f"none of {', '.join(FORBIDDEN_MODULES)} loaded; {len(ours)} segresearch modules"
              if not loaded else f"loaded: {', '.join(loaded)}")
    return [Row("imports: torch-only", "-", verdict(not loaded), detail)]


# ------------------------------------------------------------------------------ running


def environment_rows(s: Settings) -> list[Row]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    rows = [Row("environment", s.device, OK,
                f"python {sys.version.split()[0]}, torch {torch.__version__}, {gpu}")]
    if s.device == "cpu":
        why = "--device cpu" if torch.cuda.is_available() else "no CUDA here"
        rows.append(Row("cuda comparisons", "cuda", SKIPPED,
                        f"{why}: every check compared CPU against CPU"))
    return rows


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def settings_from(args: argparse.Namespace, device: str, work: Path) -> Settings:
    quick = args.quick
    families = args.families.split(",") if args.families else (
        ["qwen3_vl"] if quick else ["qwen3_vl", "qwen2_5_vl"])
    size = args.image_size or (256 if quick or device == "cpu" else 1024)
    return Settings(device=device, frames=args.frames or (4 if quick else 8), image_size=size,
                    families=families, dtypes=["float32", "bfloat16"],
                    sam2_checkpoint=args.sam2_checkpoint, sam2_config=args.sam2_config, work=work)


CHECKS: tuple[tuple[str, Callable[[Settings], list[Row]]], ...] = (
    ("sam2", check_sam2),
    ("prefetch", check_prefetch),
    ("transformers", check_transformers),
    ("imports", check_imports),  # before the backend row, the only one allowed LangChain
    ("hf backend", check_backend),
)


def run_checks(s: Settings, only: Sequence[str] = ()) -> list[Row]:
    rows = environment_rows(s)
    for name, fn in CHECKS:
        if not only or name in only:
            rows += guarded(name, s.device, lambda fn=fn: fn(s))
    return rows


def table(rows: Sequence[Row]) -> str:
    header = Row("check", "device", "result", "detail")
    cols = [max(len(getattr(r, f)) for r in [header, *rows]) for f in ("check", "device", "result")]

    def line(r: Row) -> str:
        cells = [r.check.ljust(cols[0]), r.device.ljust(cols[1]), r.result.ljust(cols[2]), r.detail]
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in cols) + "|---|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def exit_code(rows: Sequence[Row]) -> int:
    results = {r.result for r in rows}
    if results & {MISMATCH, ERROR}:
        return EXIT_MISMATCH
    return EXIT_INCOMPLETE if MISSING in results else EXIT_OK


def summary(rows: Sequence[Row], code: int) -> str:
    counts = {k: sum(r.result == k for r in rows) for k in (OK, MISMATCH, ERROR, MISSING, SKIPPED)}
    text = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    word = {EXIT_OK: "passed", EXIT_MISMATCH: "FAILED", EXIT_INCOMPLETE: "INCOMPLETE"}[code]
    return f"gpu_check: {word} ({text})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="where to run (auto: cuda when torch sees a GPU); the references are "
                        "the bare SAM 2 predictor on the same device and CPU float32")
    p.add_argument("--quick", action="store_true",
                   help="4 frames at 256 px, Qwen3-VL only (the CPU test runs this)")
    p.add_argument("--frames", type=int, default=0, help="clip length (default 8, quick 4)")
    p.add_argument("--image-size", type=int, default=0,
                   help="SAM 2 input size (default 1024 on cuda, 256 on cpu or with --quick)")
    p.add_argument("--families", default="", help="comma-separated: qwen3_vl,qwen2_5_vl")
    p.add_argument("--sam2-checkpoint", default="", help="an official SAM 2 checkpoint "
                   "(default: random weights from the tiny config)")
    p.add_argument("--sam2-config", default="", help="its config (inferred from the name)")
    p.add_argument("--only", default="", help="comma-separated subset of: "
                   + ", ".join(name for name, _ in CHECKS))
    p.add_argument("--json", default="", help="also write the rows as JSON to this file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ImportError as e:
        print(f"gpu_check: torch is not installed ({e})", file=sys.stderr)
        return EXIT_INCOMPLETE
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: --device cuda but torch {torch.__version__} sees no CUDA device",
              file=sys.stderr)
        return EXIT_INCOMPLETE
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - {name for name, _ in CHECKS})
    if unknown:
        print(f"gpu_check: unknown check(s) {unknown}", file=sys.stderr)
        return EXIT_INCOMPLETE
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        rows = run_checks(settings_from(args, device, Path(tmp)), only)
    code = exit_code(rows)
    print(table(rows))
    print(summary(rows, code))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
