"""What a finished run leaves on disk: ``trajectory.json``, ``report.md``, the frames the
model saw (``frames_shown.jpg``) and the annotated keyframe.

The trajectory is what a person reads to see why a run went as it did, so it has every
turn, action and observation (images replaced by ``<image>`` markers), timings and the stop
reason; files are written atomically so a crash never leaves half a JSON behind.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segresearch.agents.content import block_image, content_text, count_images, is_image_block
from segresearch.agents.context import Context
from segresearch.agents.path_policy import policy_active
from segresearch.core.events import (
    ASK_USER,
    ERROR,
    FEEDBACK,
    MEDIA,
    MODEL,
    SEGMENT,
    START,
    TOOL,
    VERIFY,
)
from segresearch.core.files import created_mode, write_atomic
from segresearch.core.media import MediaError, open_media
from segresearch.core.protocol import clean_text
from segresearch.tools.segmenters.writers import OVERLAY_IMAGE, OVERLAY_VIDEO
from segresearch.tools.visualize import OBJECT_COLOURS, DrawnObject, annotate_objects, draw_answer

TRAJECTORY = "trajectory.json"
REPORT = "report.md"
ANNOTATED = "keyframe_annotated.jpg"
FRAMES_SHOWN = "frames_shown.jpg"
VERIFY_PICTURE = "verify_round_{round}.jpg"  # the frames a verify round showed, masks drawn


def mask_for(masks_dir: str | None, name: str) -> np.ndarray | None:
    if not masks_dir:
        return None
    p = Path(masks_dir) / f"{name}.png"
    if not p.is_file():
        return None
    with Image.open(p) as im:
        return np.asarray(im.convert("L")) > 127


def trajectory(state: dict[str, Any], ctx: Context) -> dict[str, Any]:
    events = list(state.get("events") or [])
    started = next((e.get("time") for e in events if e.get("type") == START), None)
    model_s = sum(e.get("seconds", 0.0) for e in events if e.get("type") == MODEL)
    tool_s = sum(e.get("seconds", 0.0) for e in events if e.get("type") in (TOOL, SEGMENT, MEDIA))
    messages = []
    for m in state.get("messages") or []:
        messages.append({
            "role": {"human": "user", "ai": "assistant"}.get(m.type, m.type),
            "text": content_text(m.content, image_marker="<image>"),
            "images": count_images(m.content),
        })
    media = state.get("media")
    return {
        "query": state.get("query"),
        "media": media if isinstance(media, str) else list(media or []),
        "stop_reason": state.get("stop_reason"),
        "error": state.get("error"),
        "turns": state.get("turns", 0),
        "tool_calls": state.get("tool_calls", 0),
        "tokens": state.get("tokens_used", 0),
        "frame_ids": state.get("frame_ids"),
        "answer": state.get("answer"),
        "answer_px": state.get("answer_px"),
        "answer_note": state.get("answer_note"),
        "objects": state.get("objects"),
        "objects_px": state.get("objects_px"),
        "masks_dir": state.get("masks_dir"),
        "object_masks_dirs": state.get("object_masks_dirs"),
        "segmenter": state.get("segmenter"),
        "searches": state.get("searches", []),
        "corrections": state.get("corrections") or [],
        "questions": state.get("questions") or [],
        "timings": {
            "total_s": round(time.time() - started, 3) if started else None,
            "model_s": round(model_s, 3),
            "tools_s": round(tool_s, 3),
        },
        "context": ctx.public_dict(),
        "events": events,
        "messages": messages,
    }


def report(traj: dict[str, Any], files: list[str]) -> str:
    """The trajectory as Markdown a person can skim: each turn's reasoning, action and
    what came back, then the result and the pictures."""
    out = [f"# {traj.get('query')}", "", f"- media: `{traj.get('media')}`",
           f"- frames shown: {traj.get('frame_ids')}",
           f"- stop reason: **{traj.get('stop_reason')}**" + (f" ({traj['error']})" if traj.get("error") else ""),
           f"- model turns: {traj.get('turns')}, tokens: {traj.get('tokens')}, "
           f"time: {traj['timings'].get('total_s')} s (model {traj['timings']['model_s']} s)", ""]
    for ev in traj.get("events", []):
        kind = ev.get("type")
        if kind == MODEL:
            out += [f"## Turn {ev['turn']}", "", "```text", ev.get("response", "").strip(), "```", ""]
        elif kind == TOOL:
            label = ev.get("name")
            if ev.get("query"):
                label += f" `{ev['query']}`"
            out += [f"**{label}** →", "", "```text", str(ev.get("observation", "")).strip()
                    + ("  [+image]" * int(ev.get("images", 0))), "```", ""]
        elif kind == FEEDBACK:
            out += [f"**format reminder**: {ev.get('reason')}", ""]
        elif kind == SEGMENT:
            body = ev.get("skipped") or str(ev.get("summary"))
            if ev.get("empty"):
                body += f" — {ev['empty']}"
            if ev.get("prompt"):
                p = ev["prompt"]
                body += (f"\n\nprompt on frame {p['frame']} (pixels): box {_fmt(p.get('box'))}, "
                         f"point {_fmt(p.get('point'))}; box first, then the point")
            for k, o in enumerate(ev.get("objects") or [], 1):
                body += (f"\n- object {k}{_named(o.get('label'))}: {o.get('keyframe_area')} pixels on its "
                         f"keyframe, masks on {o.get('reached')} frames")
            out += ["## Segmentation", "", body, ""]
        elif kind == ERROR:
            out += [f"**error ({ev.get('kind')})**: {ev.get('message')}", ""]
        elif kind == VERIFY:
            out += _verify_section(ev)
        elif kind == ASK_USER:
            out += _ask_user_section(ev)
    if traj.get("answer"):
        out += ["## Answer", "", f"- model coordinates: `{traj['answer']}`",
                f"- pixels: `{traj['answer_px']}`"]
        if traj.get("answer_note"):
            out.append(f"- note: {traj['answer_note']}; the masks are empty")
        out += _objects_lines(traj)
        out.append("")
    for name in files:
        out.append(f"![{name}]({name})" if name.endswith(".jpg") else f"- [{name}]({name})")
    return "\n".join(out) + "\n"


def _verify_section(ev: dict[str, Any]) -> list[str]:
    """One verify round: what the model was shown, its reply and what it decided."""
    out = [f"## Verify round {ev.get('round')}", "", f"frames shown: {ev.get('frames')}", "",
           "```text", str(ev.get("response", "")).strip(), "```", ""]
    corr = ev.get("correction")
    if ev.get("decision") == "correct" and corr:
        pts = ", ".join(f"{_fmt(p)} ({'on' if lab else 'off'})"
                        for p, lab in zip(corr.get("points") or [], corr.get("labels") or [], strict=False))
        out.append(f"**correction** of object {corr.get('object', 0) + 1} on frame {corr.get('frame')} "
                   f"(pixels): points {pts or '—'}; box {_fmt(corr.get('box'))}; the masks are made again")
    else:
        out.append("**accepted**" + (f" — {ev['note']}" if ev.get("note") else ""))
    out.append("")
    if ev.get("picture"):
        out += [f"![{ev['picture']}]({ev['picture']})", ""]
    return out


def write_verify_picture(run_dir: Path, round_: int, picture: Image.Image) -> str:
    """Save a verify round's pictures in the run folder; returns the file's name."""
    run_dir.mkdir(parents=True, exist_ok=True)
    name = VERIFY_PICTURE.format(round=round_)
    _save_jpeg(picture, run_dir / name)
    return name


def _ask_user_section(ev: dict[str, Any]) -> list[str]:
    """A question the model asked the user and the reply (``auto``: the run's fixed reply)."""
    who = "fixed reply (ask_user_reply)" if ev.get("auto") else "the user"
    return [f"**ask_user** `{ev.get('question')}` →", "", f"{who}: {ev.get('reply')}", ""]


def _named(label: Any) -> str:
    return f" ({label})" if label else ""


def _objects_lines(traj: dict[str, Any]) -> list[str]:
    """Every object of an answer naming several (the answer above is the first): label,
    keyframe, box and point in model coordinates and in pixels, and its mask folder."""
    objects = traj.get("objects") or []
    if len(objects) < 2:
        return []
    pixels = traj.get("objects_px") or []
    dirs = traj.get("object_masks_dirs") or []
    out = ["", f"{len(objects)} objects (the masks folder holds their union):", ""]
    for k, o in enumerate(objects):
        px = pixels[k] if k < len(pixels) else {}
        line = (f"{k + 1}. **{o.get('label') or 'unlabelled'}**: keyframe {o.get('keyframe')}, box "
                f"`{o.get('bbox_2d')}`, point `{o.get('point_2d')}` (pixels: box {_fmt(px.get('bbox_2d'))}, "
                f"point {_fmt(px.get('point_2d'))})")
        if k < len(dirs):
            line += f"; masks `{dirs[k]}`"
        out.append(line)
    return out


def _fmt(v: list[float] | None) -> str:
    return "—" if v is None else "[" + ", ".join(f"{x:.1f}" for x in v) + "]"


def _frames_sheet(state: dict[str, Any]) -> Image.Image | None:
    """The frames the model saw, labelled, in one picture. The model gets them squashed to
    squares; the sheet stretches them back to the media's own proportions, since squashed
    tiles make a wide scene look unlike the video a person is comparing them with."""
    msgs = state.get("messages") or []
    first = next((m for m in msgs if m.type == "human"), None)
    if first is None or isinstance(first.content, str):
        return None
    imgs = [block_image(b) for b in first.content if is_image_block(b)]
    if not imgs:
        return None
    tw, th = _tile_size(state.get("media_info") or {}, imgs[0].size)
    cols = min(3, len(imgs))
    rows = (len(imgs) + cols - 1) // cols
    gap = SHEET_GAP
    sheet = Image.new("RGB", (cols * tw + (cols - 1) * gap, rows * th + (rows - 1) * gap), (255, 255, 255))
    for k, (img, fid) in enumerate(zip(imgs, state.get("frame_ids") or [], strict=False)):
        tile = draw_answer(img.convert("RGB").resize((tw, th), Image.Resampling.BICUBIC),
                           None, None, label=f"frame {fid}")
        sheet.paste(tile, ((k % cols) * (tw + gap), (k // cols) * (th + gap)))
    return sheet


SHEET_TILE = 288  # longer side of one tile, in pixels
SHEET_GAP = 4  # white between tiles, so neighbouring frames do not read as one picture


def _tile_size(info: dict[str, Any], fallback: tuple[int, int]) -> tuple[int, int]:
    """Tile (width, height) with the media's aspect ratio; the shorter side is kept at
    least a quarter of the longer so an extreme panorama still shows something."""
    w, h = info.get("width"), info.get("height")
    if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
        w, h = fallback
    long_side = max(w, h)
    tw = max(SHEET_TILE // 4, round(SHEET_TILE * w / long_side))
    th = max(SHEET_TILE // 4, round(SHEET_TILE * h / long_side))
    return tw, th


def _save_jpeg(img: Image.Image, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".jpg")
    try:
        os.fchmod(fd, created_mode())
        os.close(fd)
        img.save(tmp, format="JPEG", quality=92)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_outputs(run_dir: Path, state: dict[str, Any], ctx: Context) -> list[str]:
    """Write the run's record; returns one line per picture that could not be made (its
    images gone from the media store, the media moved since), after writing the trajectory
    and the report anyway: a picture's trouble must not cost the run its record, and the
    caller says what is missing instead of reporting a complete folder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    traj = trajectory(state, ctx)
    write_atomic(run_dir / TRAJECTORY, _utf8(json.dumps(traj, indent=2, ensure_ascii=False, default=str)))
    files: list[str] = []
    problems: list[str] = []
    try:
        sheet = _frames_sheet(state)
        if sheet is not None:
            _save_jpeg(sheet, run_dir / FRAMES_SHOWN)
            files.append(FRAMES_SHOWN)
    except (OSError, KeyError, ValueError) as e:  # KeyError: ImageUnavailable
        problems.append(f"{FRAMES_SHOWN}: {one_line(e)}")
    try:
        files += _write_annotated(run_dir, state)
    except (OSError, KeyError, ValueError) as e:
        problems.append(f"{ANNOTATED}: {one_line(e)}")
    for overlay in ("overlay.mp4", "overlay.jpg"):  # a video's, or a single image's
        if (run_dir / overlay).is_file():
            files.append(overlay)
    write_atomic(run_dir / REPORT, _utf8(report(traj, files)))
    return problems


def one_line(e: BaseException) -> str:
    """An exception as one line of text (messages with line breaks, an empty message)."""
    return " ".join(str(e).split()) or type(e).__name__


def missing_outputs(run_dir: str | os.PathLike[str], state: dict[str, Any]) -> list[str]:
    """What a run that ended in ``state`` should have left in ``run_dir`` and did not (names
    as the folder holds them; an incomplete mask folder says how many frames it has).

    The same list whatever way the run got there, so that a run resumed after Ctrl-C or a
    crash is held to what an uninterrupted run writes: the record (trajectory, report), the
    frames the model saw, the annotated keyframe when there is an answer, and, when masks
    were made, one per frame plus the overlay (a video, or a picture for a single frame)."""
    folder = Path(run_dir)
    wanted = [TRAJECTORY, REPORT]
    if state.get("frame_ids"):
        wanted.append(FRAMES_SHOWN)
    if (state.get("answer_px") or {}).get("keyframe") is not None:
        wanted.append(ANNOTATED)
    missing = [name for name in wanted if not (folder / name).is_file()]
    if state.get("masks_dir"):
        frames = (state.get("media_info") or {}).get("num_frames")
        masks = Path(state["masks_dir"])
        found = sum(1 for _ in masks.glob("*.png")) if masks.is_dir() else 0
        if not masks.is_dir():
            missing.append(f"{masks.name}/")
        elif isinstance(frames, int) and found < frames:
            missing.append(f"{masks.name}/ ({found} of {frames} frame masks)")
        overlay = OVERLAY_IMAGE if frames == 1 else OVERLAY_VIDEO
        if not (folder / overlay).is_file():
            missing.append(overlay)
        for d in state.get("object_masks_dirs") or []:  # an answer naming several objects
            objects = Path(d)
            found = sum(1 for _ in objects.glob("*.png")) if objects.is_dir() else 0
            if isinstance(frames, int) and found < frames:
                missing.append(f"objects/{objects.name}/ ({found} of {frames} frame masks)")
    return missing


def _utf8(text: str) -> bytes:
    """UTF-8 that cannot fail. Model text is cleaned where it is parsed, but a trajectory
    also holds text from elsewhere (a query given on the command line with undecodable
    bytes, a web search result): a stray lone surrogate must not cost the run its record."""
    return clean_text(text).encode("utf-8")


def _own_masks(run_dir: Path, masks_dir: Any) -> str | None:
    """The masks folder to draw from. When served, a thread's state may have been written
    by a client, so only this run's own ``masks`` folder is read, never one the state names
    elsewhere (which would copy someone else's PNG into the picture)."""
    if not policy_active() or not masks_dir:
        return masks_dir
    own = str(run_dir / "masks")
    return own if masks_dir == own else None


def _write_annotated(run_dir: Path, state: dict[str, Any]) -> list[str]:
    ans = state.get("answer_px")
    if not ans or ans.get("keyframe") is None:
        return []
    try:
        media = open_media(state["media"])
        frame = media.frame(ans["keyframe"])
        name = media.frame_name(ans["keyframe"])
    except MediaError:
        return []
    objects = state.get("objects_px") or []
    if len(objects) > 1 and not state.get("answer_note"):
        picture = _annotated_objects(run_dir, state, frame, name, ans["keyframe"], objects)
        _save_jpeg(picture, run_dir / ANNOTATED)
        return [ANNOTATED]
    mask = mask_for(_own_masks(run_dir, state.get("masks_dir")), name)
    label = f"frame {ans['keyframe']}" + (" + mask" if mask is not None else "")
    box, point = ans["bbox_2d"], ans["point_2d"]
    edited = (state.get("reviewed") or {}).get("decision") == "edit"
    if state.get("answer_note") and not edited:  # a degenerate box: nothing to draw, say so
        box, point, label = None, None, label + ": no box"
    _save_jpeg(draw_answer(frame, box, point, mask, label), run_dir / ANNOTATED)
    return [ANNOTATED]


def _annotated_objects(run_dir: Path, state: dict[str, Any], frame: Image.Image, name: str,
                       keyframe: int, objects: list[dict[str, Any]]) -> Image.Image:
    """The answer's keyframe with every object in its own colour (``OBJECT_COLOURS``): its
    mask on this frame, and its box, point and label when its keyframe is this one (an
    object answered on another frame shows its mask only)."""
    dirs = _own_object_masks(run_dir, state.get("object_masks_dirs"))
    drawn = []
    for k, obj in enumerate(objects):
        colour = OBJECT_COLOURS[k % len(OBJECT_COLOURS)]
        here = obj.get("keyframe") == keyframe
        drawn.append(DrawnObject(
            mask=mask_for(dirs[k], name) if k < len(dirs) else None,
            box=obj.get("bbox_2d") if here else None, point=obj.get("point_2d") if here else None,
            name=(obj.get("label") or f"object {k + 1}") if here else None,
            colour=colour, box_colour=colour))
    if not dirs:  # no per-object folders (not segmented): the union, if there is one
        union = mask_for(_own_masks(run_dir, state.get("masks_dir")), name)
        if union is not None:
            drawn.insert(0, DrawnObject(mask=union))
    masked = any(d.mask is not None for d in drawn)
    label = f"frame {keyframe}: {len(objects)} objects" + (" + masks" if masked else "")
    rgb = np.asarray(frame.convert("RGB"), dtype=np.uint8)
    return Image.fromarray(annotate_objects(rgb, drawn, label))


def _own_object_masks(run_dir: Path, dirs: Any) -> list[str | None]:
    """The per-object mask folders to draw from; when served, only this run's own
    ``objects/<k>`` folders (as ``_own_masks``)."""
    if not isinstance(dirs, list):
        return []
    if not policy_active():
        return list(dirs)
    return [d if d == str(run_dir / "objects" / str(k)) else None for k, d in enumerate(dirs, 1)]
