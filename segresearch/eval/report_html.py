"""An HTML page of an evaluation that someone can open anywhere, offline.

Numbers alone do not tell why a query failed; the page puts each query's answer (keyframe,
box, point, mask) next to its score and searches so a reader can scan hundreds of them,
and beside the prediction the ground truth on the same frames with J and F of every
annotated frame, so a low score can be traced to the frames where it happened (a wrong
object, a drift, a mask lost after the keyframe). Every score is a percentage with one
decimal, as in ``results.md`` and the paper; a ``--paper-table`` puts the paper's numbers
and the difference beside ours.

It has to survive being zipped and mailed, so everything it needs lives in the evaluation
folder and is referenced by relative paths: no CDN, fonts or remote scripts, and the little
JavaScript there is (a row filter and sorting) is optional. Pictures are small JPEGs made
one query at a time, so a long video or a large evaluation never has to fit in memory, and
one query whose media or masks are broken shows a message in its row instead of stopping
the report. Every string that comes from a user or a model is escaped.
"""

from __future__ import annotations

import hashlib
import html
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from segresearch.eval.datasets import DatasetError, Query, image_ground_truth
from segresearch.eval.results import (
    our_group,
    paper_groups,
    paper_metrics,
    pct,
    pct_diff,
    pct_value,
    predictions_source,
)
from segresearch.graphs.outputs import write_atomic
from segresearch.tools.media import Media, MediaError, open_media, sample_frame_ids
from segresearch.tools.visualize import annotate, overlay_mask

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
ASSETS_DIR = "report_assets"
KEY_SIZE = (320, 360)  # keyframe thumbnail: width, and a height cap for portrait media
TILE_SIZE = (160, 200)  # one frame of the overlay strip
STRIP_FRAMES = 4
STRIP_GAP = 2
JPEG_QUALITY = 85
PLOT_EXTS = (".png", ".svg", ".jpg", ".jpeg")
GT_COLOUR = (0, 200, 255)  # ground truth: sky blue, apart from the prediction's magenta
MINUS = "\u2212"
# Frames of the per-frame plot that get their own hover title; beyond this the plot
# is only lines (a page of hundreds of long videos stays a few megabytes).
MAX_TITLED_FRAMES = 300
# Settings that describe how a model made predictions; a run that re-scores a saved file
# made none of them, so its page must not name them (no search backend, no model).
_MODEL_RUN_SETTINGS = ("models", "search", "kb", "retriever_url", "num_frames", "max_turns",
                       "frame_size", "prompt_variant", "system_prompt_file", "temperature",
                       "text_topk", "image_topk", "concurrency", "workers")
_PATH_SETTINGS = ("root", "kb", "predictions", "system_prompt_file", "meta_mapping")


def write_html_report(
    out_dir: Path,
    results: dict,
    *,
    max_rows: int | None = None,
    progress: bool = False,
) -> Path:
    """Write ``out_dir/report.html`` and its thumbnails under ``out_dir/report_assets/``.

    ``max_rows`` keeps only the first rows (the page says how many were left out), for a
    quick look at a large evaluation. Thumbnails left over from an earlier report that this
    one does not use are removed so the folder does not grow with every rerun.
    """
    out_dir = Path(out_dir)
    assets = out_dir / ASSETS_DIR
    assets.mkdir(parents=True, exist_ok=True)
    queries = [q for q in (results.get("queries") or []) if isinstance(q, dict)]
    shown = queries if max_rows is None else queries[: max(0, int(max_rows))]
    used: set[str] = set()
    rows: list[str] = []
    for index, q in enumerate(tqdm(shown, desc="report", unit="query", disable=not progress)):
        rows.append(_row_safely(out_dir, assets, q, index, used))
    for old in assets.glob("*.jpg"):
        if old.name not in used:
            old.unlink(missing_ok=True)
    page = _page(results, out_dir, rows, total=len(queries))
    path = out_dir / REPORT_NAME
    write_atomic(path, page.encode("utf-8"))
    return path


# ---------------------------------------------------------------------------- small helpers


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _path(value: Any) -> str:
    """Escaped text in which every path wraps only after a separator: each folder name is
    an unbreakable box (``.seg``), so a line never ends inside one, nor at a hyphen in it;
    only a single name wider than the line is cut. Other words wrap as usual."""
    out = []
    for token in re.split(r"(\s+)", "" if value is None else str(value)):
        if "/" in token or "\\" in token:
            parts = re.findall(r"[^/\\]*[/\\]+|[^/\\]+$", token)
            out.append("".join(f'<span class="seg">{_e(part)}</span>' for part in parts))
        else:
            out.append(_e(token))
    return "".join(out)


def _href(rel: str) -> str:
    """A relative URL for an attribute: percent-encoded so odd file names still resolve."""
    return _e(quote(rel, safe="/"))


def _pc(value: Any) -> str:
    """A score as the page shows it: percent, one decimal, with its unit."""
    text = pct(value)
    return text if text == "—" else f'{text}<span class="u">%</span>'


def _delta(ours: Any, paper: Any) -> str:
    d = pct_diff(ours, paper, minus=MINUS)
    cls = "pos" if d.startswith("+") else "neg" if d.startswith(MINUS) else "zero"
    return f'<span class="delta {cls}">{_e(d)}</span>'


def _asset_stem(qid: str, index: int, used: set[str]) -> str:
    """A file name that is safe on every file system and unique per query, yet still
    recognisable when someone browses the assets folder."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", qid).strip("-")[:48] or "q"
    stem = f"{slug}-{hashlib.sha1(qid.encode('utf-8', 'replace')).hexdigest()[:8]}"
    if f"{stem}_key.jpg" in used or f"{stem}_strip.jpg" in used:  # a repeated id
        stem = f"{stem}-{index}"
    return stem


def _save_jpeg(rgb: np.ndarray, path: Path) -> None:
    Image.fromarray(rgb).save(path, "JPEG", quality=JPEG_QUALITY, optimize=True)


def _fit(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    w, h = size
    s = min(box[0] / w, box[1] / h)
    return max(1, round(w * s)), max(1, round(h * s))


def _read_mask(seg: Path, name: str) -> np.ndarray | None:
    path = seg / f"{name}.png"
    if not path.is_file():
        return None
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    return None if m is None else m > 127


def _small(img: Image.Image, mask: np.ndarray | None, box: tuple[int, int]):
    """The frame and its mask at thumbnail size, and the factors that map original pixel
    coordinates onto it. Drawing at thumbnail size keeps lines equally visible whatever
    the resolution of the video."""
    tw, th = _fit(img.size, box)
    sx, sy = tw / img.size[0], th / img.size[1]
    rgb = np.asarray(img.convert("RGB").resize((tw, th), Image.BICUBIC, reducing_gap=2.0))
    if mask is not None:
        mask = cv2.resize(mask.astype(np.uint8) * 255, (tw, th), interpolation=cv2.INTER_AREA)
        mask = mask > 127
    return np.ascontiguousarray(rgb, dtype=np.uint8), mask, sx, sy


def _per_frame(q: dict) -> dict[str, list[Any]] | None:
    """The query's per-frame scores when they are usable: names with finite J and F."""
    pf = q.get("per_frame")
    if not isinstance(pf, dict):
        return None
    names, js, fs = pf.get("frame"), pf.get("J"), pf.get("F")
    if not (isinstance(names, list) and isinstance(js, list) and isinstance(fs, list)):
        return None
    if not names or not len(names) == len(js) == len(fs):
        return None
    try:
        js_f = [float(v) for v in js]
        fs_f = [float(v) for v in fs]
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in js_f + fs_f):
        return None
    return {"frame": [str(n) for n in names], "J": js_f, "F": fs_f}


# ---------------------------------------------------------------------------- pictures


@dataclass
class _Picture:
    src: str  # relative to the report
    width: int
    height: int
    caption: str


@dataclass
class _Pictures:
    key: _Picture | None = None
    key_note: str | None = None
    strip: _Picture | None = None
    strip_note: str | None = None
    gt: _Picture | None = None
    gt_note: str | None = None
    unavailable: str | None = None  # the media could not be opened at all
    shown: list[str] = field(default_factory=list)  # frame names of the strips
    worst: str | None = None  # the annotated frame with the lowest J, when known
    files: list[str] = field(default_factory=list)


def _key_frame_id(q: dict) -> int | None:
    prompt = q.get("prompt")
    if isinstance(prompt, dict) and prompt.get("frame") is not None:
        return int(prompt["frame"])
    if q.get("graph_keyframe") is not None:
        return int(q["graph_keyframe"])
    return None


def _keyframe(media: Media, q: dict, seg: Path, assets: Path, stem: str) -> _Picture:
    fid = _key_frame_id(q)
    assert fid is not None
    name = media.frame_name(fid)
    img = media.frame(fid)
    rgb, mask, sx, sy = _small(img, _read_mask(seg, name), KEY_SIZE)
    prompt = q.get("prompt") if isinstance(q.get("prompt"), dict) else {}
    box = prompt.get("box")
    point = prompt.get("point")
    if box is not None:
        box = [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]
    if point is not None:
        point = [point[0] * sx, point[1] * sy]
    out = annotate(rgb, mask, box, point)
    file = f"{stem}_key.jpg"
    _save_jpeg(out, assets / file)
    what = []
    if box is not None:
        what.append("box")
    if point is not None:
        what.append("point")
    if mask is not None:
        what.append("mask" if mask.any() else "empty mask")
    caption = f"frame {name}" + (f" · {', '.join(what)}" if what else " · nothing drawn")
    if not q.get("prompt"):
        caption += " (the graph's keyframe)"
    return _Picture(f"{ASSETS_DIR}/{file}", out.shape[1], out.shape[0], caption)


def _strip_frames(media: Media, q: dict) -> tuple[list[int], str | None]:
    """The frames both strips show, and the annotated frame with the lowest J.

    With per-frame scores the frames are spread over the annotated frames (where there is
    ground truth to compare with) and always include the worst one, which is usually the
    frame that explains a low score; otherwise they are spread over the whole media."""
    pf = _per_frame(q)
    if pf is None:
        return sample_frame_ids(media.frame_ids, STRIP_FRAMES), None
    j_of = dict(zip(pf["frame"], pf["J"], strict=True))
    annotated = [f for f in media.frame_ids if media.frame_name(f) in j_of]
    if not annotated:
        return sample_frame_ids(media.frame_ids, STRIP_FRAMES), None
    fids = sample_frame_ids(annotated, STRIP_FRAMES)
    worst = min(annotated, key=lambda f: j_of[media.frame_name(f)])
    if j_of[media.frame_name(worst)] == max(j_of[media.frame_name(f)] for f in annotated):
        return fids, None  # every frame scores the same: no frame is the worst
    if worst not in fids:
        pos = annotated.index(worst)
        nearest = min(range(len(fids)), key=lambda k: abs(annotated.index(fids[k]) - pos))
        fids[nearest] = worst
        fids.sort(key=annotated.index)
    return fids, media.frame_name(worst)


def _strip_image(
    media: Media,
    fids: Sequence[int],
    mask_of: Callable[[int, str, Image.Image], np.ndarray | None],
    colour: tuple[int, int, int],
) -> tuple[np.ndarray, int]:
    """Tiles of ``fids`` side by side with ``mask_of``'s mask tinted in ``colour``; also
    how many tiles had a non-empty mask."""
    tiles: list[np.ndarray] = []
    masked = 0
    for fid in fids:
        name = media.frame_name(fid)
        img = media.frame(fid)
        rgb, mask, _, _ = _small(img, mask_of(fid, name, img), TILE_SIZE)
        if mask is not None and mask.any():
            rgb = overlay_mask(rgb, mask, colour)
            masked += 1
        tiles.append(annotate(rgb, label=name) if len(fids) > 1 else rgb)
    height = max(t.shape[0] for t in tiles)
    width = sum(t.shape[1] for t in tiles) + STRIP_GAP * (len(tiles) - 1)
    canvas = np.full((height, width, 3), 32, np.uint8)
    x = 0
    for t in tiles:
        y = (height - t.shape[0]) // 2
        canvas[y : y + t.shape[0], x : x + t.shape[1]] = t
        x += t.shape[1] + STRIP_GAP
    return canvas, masked


def _frames_caption(media: Media, names: Sequence[str], worst: str | None) -> str:
    if len(media) == 1:
        return "the image" if media.kind == "image" else "the only frame"
    label = "frame" if len(names) == 1 else "frames"
    shown = ", ".join(f"{n} (lowest J)" if n == worst and len(names) > 1 else n for n in names)
    return f"{label} {shown} of {len(media)}"


def _strip(media: Media, fids: Sequence[int], seg: Path, assets: Path, stem: str,
           caption: str) -> _Picture:
    canvas, masked = _strip_image(media, fids, lambda _f, name, _i: _read_mask(seg, name),
                                  (255, 64, 160))
    file = f"{stem}_strip.jpg"
    _save_jpeg(canvas, assets / file)
    caption = f"prediction · {caption} · mask visible in {masked} of {len(fids)}"
    return _Picture(f"{ASSETS_DIR}/{file}", canvas.shape[1], canvas.shape[0], caption)


def _gt_mask_reader(q: dict, media: Media) -> Callable[[int, str, Image.Image], np.ndarray | None]:
    """How to get the ground-truth mask of a frame of this query: the annotation folder's
    ``<frame>.png`` for a video, the mask file or polygons of an image query."""
    gt = str(q.get("gt") or "")
    if q.get("kind") == "image" or media.kind == "image":
        query = Query(id=str(q.get("id")), question="", ability="", media=media.source,
                      segment_media=media.source, gt=gt, kind="image",
                      polygons=str(q.get("gt_polygons") or ""), ignore=str(q.get("gt_ignore") or ""))
        if not gt and not query.polygons:
            raise LookupError("no ground truth recorded for this query")
        w, h = media.source_size or (media.width, media.height)
        target, _ = image_ground_truth(query, h, w)
        return lambda _f, _n, _i: target
    if not gt:
        raise LookupError("no ground truth recorded for this query")
    folder = Path(gt)
    if not folder.is_dir():
        raise LookupError(f"ground-truth folder not found: {folder}")

    def read(_fid: int, name: str, _img: Image.Image) -> np.ndarray | None:
        m = cv2.imread(str(folder / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        return None if m is None else m > 0  # binarised as the score binarises it

    return read


def _gt_strip(media: Media, fids: Sequence[int], q: dict, assets: Path, stem: str,
              caption: str) -> _Picture:
    reader = _gt_mask_reader(q, media)
    canvas, masked = _strip_image(media, fids, reader, GT_COLOUR)
    file = f"{stem}_gt.jpg"
    _save_jpeg(canvas, assets / file)
    caption = f"ground truth · {caption} · object in {masked} of {len(fids)}"
    return _Picture(f"{ASSETS_DIR}/{file}", canvas.shape[1], canvas.shape[0], caption)


def _pictures(out_dir: Path, assets: Path, q: dict, stem: str) -> _Pictures:
    pics = _Pictures()
    media_path = q.get("media")
    if not media_path:
        pics.unavailable = "no media path in the results"
        return pics
    try:
        media = open_media(str(media_path))
    except MediaError as e:
        pics.unavailable = str(e)
        return pics
    seg = out_dir / str(q.get("seg_dir") or f"seg/{q.get('id')}")
    try:
        try:
            if _key_frame_id(q) is not None:
                pics.key = _keyframe(media, q, seg, assets, stem)
        except MediaError as e:
            pics.key_note = f"keyframe unavailable: {e}"
        except Exception as e:  # a bad row must not stop the report
            log.warning("report: keyframe of %s failed: %r", q.get("id"), e)
            pics.key_note = f"keyframe picture failed: {type(e).__name__}: {e}"
        try:
            fids, pics.worst = _strip_frames(media, q)
            pics.shown = [media.frame_name(f) for f in fids]
            caption = _frames_caption(media, pics.shown, pics.worst)
        except MediaError as e:
            pics.strip_note = f"frames unavailable: {e}"
            return pics
        try:
            pics.strip = _strip(media, fids, seg, assets, stem, caption)
        except MediaError as e:
            pics.strip_note = f"frames unavailable: {e}"
        except Exception as e:
            log.warning("report: frame strip of %s failed: %r", q.get("id"), e)
            pics.strip_note = f"frame strip failed: {type(e).__name__}: {e}"
        try:
            pics.gt = _gt_strip(media, fids, q, assets, stem, caption)
        except (LookupError, DatasetError) as e:  # missing or unreadable ground truth
            pics.gt_note = str(e)
        except MediaError as e:
            pics.gt_note = f"frames unavailable: {e}"
        except Exception as e:
            log.warning("report: ground truth of %s failed: %r", q.get("id"), e)
            pics.gt_note = f"ground truth picture failed: {type(e).__name__}: {e}"
    finally:
        if media.kind == "video":  # one decoder open at a time, however many videos
            media.close()
        pics.files = [p.src.rsplit("/", 1)[1] for p in (pics.key, pics.strip, pics.gt)
                      if p is not None]
    return pics


# ---------------------------------------------------------------------------- per-frame plot


def _jf_plot(q: dict, qid: str, shown: Sequence[str], worst: str | None) -> str:
    """J and F of every annotated frame as a small inline SVG: a dip shows where the
    prediction lost the object. Lines stretch with the page; the labels are HTML so they
    stay readable at any width."""
    pf = _per_frame(q)
    if pf is None:
        if q.get("kind") == "image":
            return ""
        why = q.get("score_error") or "not in results.json (scored by an older version)"
        return f'<p class="note">per-frame J/F unavailable: {_e(why)}</p>'
    names, js, fs = pf["frame"], pf["J"], pf["F"]
    n = len(names)

    def x(i: int) -> float:
        return 1000 * (i + 0.5) / n

    def line(values: Sequence[float]) -> str:
        if n == 1:  # one frame: a short level line, visible at any width
            y = 100 - 100 * values[0]
            return f"{x(0) - 40:.1f},{y:.1f} {x(0) + 40:.1f},{y:.1f}"
        return " ".join(f"{x(i):.1f},{100 - 100 * v:.1f}" for i, v in enumerate(values))

    marks = "".join(
        f'<line class="mark{" worst" if name == worst else ""}" x1="{x(i):.1f}" y1="0" '
        f'x2="{x(i):.1f}" y2="100"/>'
        for i, name in enumerate(names) if name in shown or name == worst
    )
    titles = ""
    if n <= MAX_TITLED_FRAMES:
        w = 1000 / n
        titles = "".join(
            f'<rect class="hit" x="{i * w:.1f}" y="0" width="{w:.1f}" height="100">'
            f"<title>frame {_e(name)}: J {pct(j)}%, F {pct(f)}%</title></rect>"
            for i, (name, j, f) in enumerate(zip(names, js, fs, strict=True))
        )
    lo = int(np.argmin(js))
    if min(js) == max(js):
        low = f"J {pct(js[0])}% on every frame" if n > 1 else f"J {pct(js[0])}%"
    else:
        low = f"lowest J {pct(js[lo])}% at frame {names[lo]}"
    summary = (f"J and F per annotated frame of {qid}: {n} frame{'s' if n != 1 else ''}, "
               f"mean J {pct(float(np.mean(js)))}%, {low}")
    span = names[0] if n == 1 else f"{names[0]}–{names[-1]}"
    return (
        '<figure class="jf">'
        '<div class="jf-plot"><span class="jf-y hi" aria-hidden="true">100</span>'
        '<span class="jf-y mid" aria-hidden="true">50</span>'
        '<span class="jf-y lo" aria-hidden="true">0</span>'
        f'<svg viewBox="0 -3 1000 106" preserveAspectRatio="none" role="img" '
        f'aria-label="{_e(summary)}" focusable="false">'
        '<line class="grid" x1="0" y1="0" x2="1000" y2="0"/>'
        '<line class="grid" x1="0" y1="50" x2="1000" y2="50"/>'
        '<line class="grid" x1="0" y1="100" x2="1000" y2="100"/>'
        f"{marks}"
        f'<polyline class="f" points="{line(fs)}"/>'
        f'<polyline class="j" points="{line(js)}"/>'
        f"{titles}</svg></div>"
        f'<figcaption><span class="lg-j">J</span> and <span class="lg-f">F</span> (%) per '
        f"annotated frame ({n}, {_e(span)}) · {_e(low)} · dashed lines: the frames "
        "shown above</figcaption></figure>"
    )


# ---------------------------------------------------------------------------- rows


def _head_key(q: dict) -> str:
    if q.get("kind") == "image" or ("IoU" in q and "J&F" not in q):
        return "IoU"
    return "J&F"


def _sort_score(q: dict) -> str:
    """The row's score for client-side sorting (percent; empty when it has none)."""
    v = pct_value(q.get(_head_key(q)))
    return "" if v is None else f"{v:.1f}"


def _row_safely(out_dir: Path, assets: Path, q: dict, index: int, used: set[str]) -> str:
    qid = str(q["id"]) if q.get("id") is not None else f"#{index}"
    try:
        return _row(out_dir, assets, q, qid, index, used)
    except Exception as e:  # malformed data: still one row, saying what went wrong
        log.warning("report: row %s failed: %r", qid, e)
        return (
            f'<tr class="row flagged" id="q-{_e(qid)}" data-attention="1" data-order="{index}" '
            f'data-score="" data-id="{_e(qid)}">'
            '<td class="q" data-label="Query">'
            f'<div class="qid"><a href="#q-{_href(qid)}">{_e(qid)}</a></div></td>'
            f'<td colspan="2" class="note bad">row could not be shown: '
            f"{_e(type(e).__name__)}: {_e(e)}</td></tr>"
        )


def _badge(text: str, kind: str, title: str = "") -> str:
    t = f' title="{_e(title)}"' if title else ""
    return f'<span class="badge {kind}"{t}>{_e(text)}</span>'


def _flags(q: dict) -> list[str]:
    out = []
    if q.get("missing_prediction"):
        out.append(_badge("missing prediction (scored as empty masks)", "bad"))
    missing = q.get("missing_frames") or 0
    if isinstance(missing, (int, float)) and missing > 0:
        n = int(missing)
        out.append(
            _badge(
                f"{n} missing frame{'s' if n != 1 else ''}",
                "warn",
                "frames with no mask file, scored as empty",
            )
        )
    if q.get("rule_differs"):
        text = "first-keyframe rule differs from the graph's answer"
        graph, first = q.get("graph_keyframe"), q.get("first_keyframe")
        if graph is not None and first is not None:
            text += f" (graph: frame {graph}, rule: frame {first})"
        out.append(_badge(text, "info"))
    if q.get("score_error"):
        out.append(_badge(f"not scored: {q.get('score_error')}", "bad"))
    return out


def _searches(q: dict) -> str:
    items = [s for s in (q.get("searches") or []) if isinstance(s, dict)]
    if not items:
        n = q.get("num_search") or 0
        if isinstance(n, int) and n > 0:
            return f'<p class="muted">{n} search{"es" if n != 1 else ""} (not recorded)</p>'
        return '<p class="muted">no search</p>'
    lis = "".join(
        f'<li><span class="sname">{_e(s.get("name") or "search")}</span> '
        f'<span class="squery">{_e(s.get("query"))}</span></li>'
        for s in items
    )
    return f'<ol class="searches" aria-label="searches">{lis}</ol>'


def _run_link(out_dir: Path, run_dir: Any) -> str:
    if not run_dir:
        return ""
    p = Path(str(run_dir))
    if not p.is_absolute():
        p = out_dir / p
    try:
        rel = p.resolve().relative_to(out_dir.resolve()).as_posix()
    except ValueError:  # a link out of the folder breaks as soon as it is moved
        return (
            f'<p class="run">run folder (outside the report folder): '
            f"<code>{_path(run_dir)}</code></p>"
        )
    links = [f'<a href="{_href(rel + "/")}">run folder</a>']
    if (p / "trajectory.json").is_file():
        links.append(f'<a href="{_href(rel + "/trajectory.json")}">trajectory.json</a>')
    return f'<p class="run">{" · ".join(links)}</p>'


def _score(q: dict) -> str:
    keys = ["IoU"] if _head_key(q) == "IoU" else ["J&F", "J", "F"]
    items = "".join(
        f'<span class="m{" head" if i == 0 else ""}"><span class="k">{_e(k)}</span> '
        f'<span class="v">{_pc(q.get(k))}</span></span>'
        for i, k in enumerate(keys)
    )
    head = pct_value(q.get(keys[0]))
    bar = ""
    if head is not None:
        v = min(1.0, max(0.0, head / 100))
        bar = (
            f'<span class="bar" aria-hidden="true"><span style="width:{v * 100:.0f}%;'
            f'background:hsl({v * 120:.0f},65%,40%)"></span></span>'
        )
    stop = q.get("stop_reason")
    stop_cls = "ok" if stop == "answer" else "warn"
    extra = ""
    n = q.get("annotated_frames")
    if n and _head_key(q) != "IoU":
        extra = f'<span class="muted">scored on {_e(n)} frame{"s" if n != 1 else ""}</span>'
    return (
        f'<div class="score">{items}{bar}'
        f'<span class="stop {stop_cls}">stop: {_e(stop or "none")}</span>{extra}</div>'
    )


def _picture_html(p: _Picture, alt: str, cls: str) -> str:
    return (
        f'<figure class="{cls}"><a href="{_href(p.src)}"><img src="{_href(p.src)}" '
        f'width="{p.width}" height="{p.height}" alt="{_e(alt)}" loading="lazy" '
        f'decoding="async"></a><figcaption>{_e(p.caption)}</figcaption></figure>'
    )


def _row(out_dir: Path, assets: Path, q: dict, qid: str, index: int, used: set[str]) -> str:
    stem = _asset_stem(qid, index, used)
    pics = _pictures(out_dir, assets, q, stem)
    used.update(pics.files)

    prompt = q.get("prompt")
    flags = _flags(q)
    if pics.unavailable is not None:
        flags.append(_badge("media unavailable", "bad"))
    if not prompt:
        flags.append(_badge("no usable answer", "bad"))

    ability = q.get("ability")
    kind = q.get("kind")
    query_cell = (
        f'<div class="qid"><a href="#q-{_href(qid)}" title="link to this row">{_e(qid)}</a>'
        + (f' <span class="chip">{_e(ability)}</span>' if ability else "")
        + (f' <span class="chip kind">{_e(kind)}</span>' if kind else "")
        + "</div>"
        + _score(q)
        + f'<p class="question">{_e(q.get("question"))}</p>'
        + (f'<div class="badges">{"".join(flags)}</div>' if flags else "")
        + _searches(q)
        + _run_link(out_dir, q.get("run_dir"))
    )

    key_parts: list[str] = []
    if not prompt:
        problem = q.get("problem") or "the model gave no answer"
        key_parts.append(f'<p class="note bad">no usable answer: {_e(problem)}</p>')
    elif q.get("problem"):
        key_parts.append(f'<p class="note">{_e(q.get("problem"))}</p>')
    if pics.unavailable is not None:
        key_parts.append(f'<p class="note bad">media unavailable: {_e(pics.unavailable)}</p>')
    if pics.key is not None:
        alt = f"keyframe of {qid}: {pics.key.caption}"
        key_parts.insert(0, _picture_html(pics.key, alt, "key"))
    if pics.key_note:
        key_parts.append(f'<p class="note bad">{_e(pics.key_note)}</p>')

    frame_parts: list[str] = []
    if pics.strip is not None:
        frame_parts.append(
            _picture_html(pics.strip, f"predicted masks of {qid}: {pics.strip.caption}", "strip")
        )
    elif pics.unavailable is not None:
        frame_parts.append('<p class="note bad">media unavailable</p>')
    else:
        frame_parts.append(f'<p class="note bad">{_e(pics.strip_note or "no frames")}</p>')
    if pics.gt is not None:
        frame_parts.append(
            _picture_html(pics.gt, f"ground truth of {qid}: {pics.gt.caption}", "strip gt")
        )
    elif pics.gt_note and pics.unavailable is None:
        frame_parts.append(f'<p class="note">ground truth not shown: {_e(pics.gt_note)}</p>')
    if pics.strip is not None and pics.gt is not None and len(pics.shown) == 1:
        # one picture each: side by side, like the two halves of a comparison
        frame_parts[:2] = [f'<div class="pair">{"".join(frame_parts[:2])}</div>']
    frame_parts.append(_jf_plot(q, qid, pics.shown, pics.worst))

    broken = q.get("missing_prediction") or not prompt or pics.unavailable is not None
    # what the "only rows with problems" filter keeps: anything a reader should look at
    attention = broken or flags or q.get("stop_reason") != "answer" or pics.key_note
    attention = attention or pics.strip_note
    cls = "row flagged" if broken else "row"
    mark = ' data-attention="1"' if attention else ""
    return (
        f'<tr class="{cls}" id="q-{_e(qid)}"{mark} data-order="{index}" '
        f'data-score="{_sort_score(q)}" data-id="{_e(qid)}">'
        f'<td class="q" data-label="Query">{query_cell}</td>'
        f'<td class="pic key" data-label="Keyframe">{"".join(key_parts)}</td>'
        f'<td class="pic strip" data-label="Prediction and ground truth">'
        f'{"".join(frame_parts)}</td>'
        "</tr>"
    )


# ---------------------------------------------------------------------------- page


def _value(v: Any) -> str:
    if isinstance(v, dict):
        name = v.get("name")
        rest = ", ".join(f"{k}={_value(x)}" for k, x in v.items() if k != "name")
        return f"{name} ({rest})" if name and rest else str(name or rest)
    if isinstance(v, (list, tuple)):
        return ", ".join(_value(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    return "–" if v is None or v == "" else str(v)


def _dl(items: Iterable[tuple[str, Any]]) -> str:
    """Key/value pairs; every value may wrap after a path separator (paths are long and a
    folder name cut in two is unreadable)."""
    body = "".join(f"<dt>{_e(k)}</dt><dd>{_path(_value(v))}</dd>" for k, v in items)
    return f'<dl class="kv">{body}</dl>'


def _settings_items(results: dict) -> list[tuple[str, Any]]:
    settings = results.get("settings") or {}
    if settings.get("predictions"):
        return [(k, v) for k, v in settings.items() if k not in _MODEL_RUN_SETTINGS]
    return list(settings.items())


def _metric_keys(results: dict) -> list[str]:
    overall = results.get("overall") or {}
    primary = results.get("metric") or ("J&F" if "J&F" in overall else next(iter(overall), ""))
    keys = [primary] if primary else []
    keys += [k for k in overall if k not in keys and k != "n"]
    return keys


def _metric_table(results: dict, keys: Sequence[str]) -> str:
    """Our numbers per ability and overall; with a paper table, each cell also holds the
    paper's number and the difference, stacked, so the table stays narrow enough for a
    phone instead of tripling its columns."""
    by = results.get("by_ability") or {}
    paper = (results.get("paper") or {}).get("rows") or {}
    compared = [k for k in keys if k in paper_metrics(results)]
    if not by and not paper:
        return ""
    head = "".join(f'<th scope="col">{_e(k)}</th>' for k in keys)

    def cells(name: str, m: dict) -> str:
        theirs = paper.get(name) or {}
        out = []
        for k in keys:
            ref = ""
            if k in compared:
                ref = (f'<span class="ref">paper {_e(pct(theirs.get(k)))}</span>'
                       f'<span class="ref">Δ {_delta(m.get(k), theirs.get(k))}</span>')
            out.append(f'<td><span class="ours">{_e(pct(m.get(k)))}</span>{ref}</td>')
        return "".join(out)

    names = list(by)
    extra = [g for g in paper_groups(results) if g not in by and g != "overall"]
    rows = "".join(
        f'<tr><th scope="row">{_e(name)}</th>{cells(name, our_group(results, name))}'
        f"<td>{_e((our_group(results, name) or {}).get('n', '–'))}</td></tr>"
        for name in names + extra
    )
    overall = results.get("overall") or {}
    foot = (
        f'<tr class="total"><th scope="row">overall</th>{cells("overall", overall)}'
        f"<td>{_e(overall.get('n', '–'))}</td></tr>"
    )
    note = ""
    if compared:
        note = (
            '<p class="muted">In each cell: ours, the paper\'s number, and Δ = ours − paper '
            f'in percentage points. Paper numbers from <code>{_path(results["paper"].get("file"))}'
            "</code>.</p>"
        )
    cls = "metrics compared" if compared else "metrics"
    return (
        '<section class="card wide"><h2>By ability (%)</h2><div class="scroll">'
        f'<table class="{cls}"><thead><tr><th scope="col">ability</th>{head}'
        f'<th scope="col">n</th></tr></thead><tbody>{rows}{foot}</tbody></table></div>'
        f"{note}</section>"
    )


def _headline(results: dict, keys: Sequence[str]) -> str:
    overall = results.get("overall") or {}
    paper = ((results.get("paper") or {}).get("rows") or {}).get("overall") or {}
    tiles = []
    for i, k in enumerate(keys):
        cls = "big primary" if i == 0 else "big"
        ref = ""
        if k in paper:
            ref = (f'<span class="ref">paper {_e(pct(paper[k]))} · '
                   f"{_delta(overall.get(k), paper[k])}</span>")
        tiles.append(
            f'<div class="{cls}"><span class="v">{_pc(overall.get(k))}</span>'
            f'<span class="k">{_e(k)}</span>{ref}</div>'
        )
    tiles.append(
        f'<div class="big"><span class="v">{_e(overall.get("n", "–"))}</span>'
        f'<span class="k">queries scored</span></div>'
    )
    return f'<div class="headline" aria-label="overall metrics">{"".join(tiles)}</div>'


def _plots(out_dir: Path) -> str:
    folder = out_dir / "plots"
    if not folder.is_dir():
        return ""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PLOT_EXTS)
    figs = []
    for p in files:
        size = ""
        try:  # the size lets the page lay out before the picture arrives
            with Image.open(p) as im:
                size = f' width="{im.width}" height="{im.height}"'
        except Exception:
            pass
        src = _href("plots/" + p.name)
        figs.append(
            f'<figure><a href="{src}"><img src="{src}"{size} alt="plot: {_e(p.stem)}"></a>'
            f"<figcaption>{_e(p.stem.replace('_', ' '))}</figcaption></figure>"
        )
    if not figs:
        return ""
    return (
        f'<section id="plots" class="plots-section"><h2>Plots</h2>'
        f'<div class="plots">{"".join(figs)}</div></section>'
    )


def _source(results: dict) -> str:
    """Where the predictions came from, with paths breakable at their separators."""
    if not results.get("settings"):
        return ""
    text = predictions_source(results)
    return f'<p class="source">{_path(text[:1].upper() + text[1:])}.</p>'


def _page(results: dict, out_dir: Path, rows: list[str], total: int) -> str:
    ds = results.get("dataset") or {}
    counts = results.get("counts") or {}
    keys = _metric_keys(results)
    title = " · ".join(str(x) for x in (ds.get("name"), ds.get("split")) if x) or "evaluation"

    dataset_dl = _dl(
        [
            ("name", ds.get("name")),
            ("split", ds.get("split")),
            ("root", ds.get("root")),
            ("queries", ds.get("queries")),
            ("created", results.get("created")),
            ("metric", results.get("metric")),
        ]
    )
    settings_dl = _dl(_settings_items(results))
    count_items = [(k.replace("_", " "), v) for k, v in counts.items() if k != "stop_reasons"]
    stops = counts.get("stop_reasons")
    if isinstance(stops, dict):
        count_items.append(("stop reasons", ", ".join(f"{k}: {v}" for k, v in stops.items())))
    counts_dl = _dl(count_items)

    note = ""
    if len(rows) < total:
        note = (
            f'<p class="note warn">showing the first {len(rows)} of {total} queries (max_rows)</p>'
        )
    body = (
        "".join(rows)
        if rows
        else ('<tr><td colspan="3" class="muted">no queries in the results</td></tr>')
    )
    head_metric = "J&F" if results.get("metric", "J&F") == "J&F" else "IoU"

    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="segresearch.eval.report_html">
<title>SegResearch report: {_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header class="top">
<h1>SegResearch evaluation <span class="muted">· {_e(title)}</span></h1>
{_source(results)}
{_headline(results, keys)}
<p class="units muted">All scores are percentages with one decimal.</p>
<div class="cards">
<section class="card"><h2>Dataset</h2>{dataset_dl}</section>
<section class="card settings"><h2>Settings</h2>{settings_dl}</section>
<section class="card"><h2>Counts</h2>{counts_dl}</section>
{_metric_table(results, keys)}
</div>
</header>
<main>
{_plots(out_dir)}
<section id="queries">
<h2>Queries</h2>
<p class="legend">Keyframe: the model's <span class="lg-box">box</span> and
<span class="lg-point">point</span> with the <span class="lg-mask">mask</span> tinted.
Prediction and ground truth: the same frames with the
<span class="lg-mask">predicted mask</span> and the <span class="lg-gt">ground truth</span>,
including the frame with the lowest J; below them J and F of every annotated frame.
Click a picture for full size.</p>
{note}
<div id="filter-box" class="filter" hidden>
<label for="filter">Filter rows</label>
<input id="filter" type="search" placeholder="id, ability, question, search…" autocomplete="off">
<label class="check"><input id="flagged" type="checkbox"> only rows with problems</label>
<span class="sortby"><label for="sort">Sort</label>
<select id="sort">
<option value="order">in the order of the results</option>
<option value="asc">by {_e(head_metric)}, lowest first</option>
<option value="desc">by {_e(head_metric)}, highest first</option>
<option value="id">by query id</option>
</select></span>
<span id="filter-count" class="muted" aria-live="polite"></span>
</div>
<table class="rows">
<caption class="sr">One row per query</caption>
<thead><tr><th scope="col">Query and score</th>
<th scope="col">Keyframe</th><th scope="col">Prediction and ground truth</th></tr></thead>
<tbody>
{body}
</tbody>
</table>
</section>
</main>
<footer class="muted">Written by segresearch.eval.report_html · {total} queries</footer>
<script>{_JS}</script>
</body>
</html>
"""


_CSS = """
:root{--fg:#1d232b;--muted:#5d6875;--bg:#f4f6f8;--card:#fff;--line:#dde2e8;
--accent:#2f6fde;--bad:#b3261e;--bad-bg:#fde8e6;--warn:#8a5a00;--warn-bg:#fff3d6;
--info:#174ea6;--info-bg:#e3ecfb;--ok:#1e6b35;
--mono:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,
sans-serif;color:var(--fg);background:var(--bg);overflow-wrap:anywhere}
h1{font-size:1.5rem;margin:0 0 .8rem}h2{font-size:1.1rem;margin:0 0 .5rem}
a{color:var(--accent)}
code{font:13px/1.3 var(--mono)}
p{margin:.2rem 0}
.muted{color:var(--muted)}
.top,main,footer{max-width:1600px;margin:0 auto;padding:1rem 1.25rem}
.top{padding-top:1.25rem}
.headline{display:flex;flex-wrap:wrap;gap:.75rem;margin-bottom:1rem}
.big{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:.6rem 1rem;
min-width:7.5rem;display:flex;flex-direction:column}
.big .v{font-size:1.6rem;font-weight:650;font-variant-numeric:tabular-nums}
.big .k{color:var(--muted);font-size:.85rem}
.big .ref{font-size:.8rem;color:var(--muted)}
.big.primary{border-color:var(--accent);box-shadow:inset 0 0 0 1px var(--accent)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:.75rem}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:.8rem 1rem;
min-width:0}
.card.wide{grid-column:1/-1}
.kv{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.15rem .8rem;margin:0;
font-size:.9rem}
.kv dt{color:var(--muted)}.kv dd{margin:0;min-width:0;overflow-wrap:break-word}
.seg{display:inline-block;max-width:100%;overflow-wrap:anywhere}
@media (min-width:900px){.card.settings{grid-column:span 2}}
.source{margin:-.4rem 0 .8rem;overflow-wrap:break-word}
.units{font-size:.85rem;margin:-.5rem 0 .8rem}
.u{font-size:.7em;font-weight:500;margin-left:.05em;color:var(--muted)}
.scroll{overflow-x:auto}
table.metrics{border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:.9rem}
table.metrics th,table.metrics td{padding:.25rem .8rem;border-bottom:1px solid var(--line);
text-align:right}
table.metrics th[scope=row],table.metrics thead th:first-child{text-align:left}
table.metrics tr.total{font-weight:650}
table.metrics th,table.metrics td{white-space:nowrap;overflow-wrap:normal}
table.metrics .ours,table.metrics .ref{display:block}
table.metrics .ref{color:var(--muted);font-size:.78rem;font-weight:400}
table.metrics.compared td,table.metrics.compared th[scope=row]{vertical-align:top}
.delta.pos{color:var(--ok)}.delta.neg{color:var(--bad)}
table.metrics tr.total>*{border-bottom:0}
.plots-section{margin-bottom:1.25rem}
.plots{display:flex;flex-wrap:wrap;gap:.75rem;align-items:flex-start}
.plots figure{margin:0;background:var(--card);border:1px solid var(--line);border-radius:10px;
padding:.5rem;max-width:100%}
.plots img{max-width:min(100%,880px);height:auto;display:block}
figcaption{font-size:.8rem;color:var(--muted);margin-top:.25rem}
.legend{font-size:.9rem;color:var(--muted)}
.lg-box{color:#008a00;font-weight:600}.lg-point{color:#d42020;font-weight:600}
.lg-mask{color:#c0307a;font-weight:600}.lg-gt{color:#007bb0;font-weight:600}
.lg-j{color:#2f6fde;font-weight:600}.lg-f{color:#c25e00;font-weight:600}
.filter{display:flex;flex-wrap:wrap;align-items:center;gap:.5rem .8rem;margin:.5rem 0 .75rem}
.filter input[type=search]{font:inherit;padding:.35rem .6rem;border:1px solid var(--line);
border-radius:6px;width:22rem;max-width:100%}
.check{font-size:.9rem}
[hidden]{display:none!important}
table.rows{width:100%;border-collapse:separate;border-spacing:0;background:var(--card);
border:1px solid var(--line);border-radius:10px}
table.rows thead th{position:sticky;top:0;z-index:1;background:#e9edf2;text-align:left;
padding:.5rem .75rem;font-size:.85rem;border-bottom:1px solid var(--line)}
table.rows thead th:first-child{border-top-left-radius:10px}
table.rows thead th:last-child{border-top-right-radius:10px}
tr.row>td{vertical-align:top;padding:.75rem;border-bottom:1px solid var(--line)}
tr.row:last-child>td{border-bottom:0}
tr.row.flagged>td:first-child{box-shadow:inset 4px 0 0 var(--bad)}
td.q{min-width:16rem}
.qid{font:600 .9rem/1.3 var(--mono)}
.qid a{color:var(--fg);text-decoration:none}.qid a:hover{text-decoration:underline}
.chip{display:inline-block;font:500 .75rem/1.5 system-ui,sans-serif;padding:0 .45rem;
border-radius:999px;background:#eef1f5;color:var(--muted);border:1px solid var(--line)}
.chip.kind{background:transparent}
.score{display:flex;flex-wrap:wrap;align-items:center;gap:.15rem .7rem;margin:.35rem 0;
font-variant-numeric:tabular-nums;font-size:.9rem}
.score .k{color:var(--muted)}.score .v{font-weight:600}
.score .head .v{font-size:1.1rem}
.bar{display:inline-block;width:4.5rem;height:6px;background:#e6e9ee;border-radius:3px;
overflow:hidden}
.bar span{display:block;height:100%}
.stop{font-size:.82rem}
.stop.ok{color:var(--ok)}
.stop.warn{color:var(--warn);background:var(--warn-bg);border:1px solid #f0d08a;
padding:0 .4rem;border-radius:4px;font-weight:600}
.question{margin:.35rem 0 .45rem;font-size:.98rem}
.badges{display:flex;flex-wrap:wrap;gap:.3rem;margin:.3rem 0}
.badge{font-size:.78rem;font-weight:600;padding:.1rem .5rem;border-radius:6px;border:1px solid}
.badge.bad{color:var(--bad);background:var(--bad-bg);border-color:#f3b8b2}
.badge.warn{color:var(--warn);background:var(--warn-bg);border-color:#f0d08a}
.badge.info{color:var(--info);background:var(--info-bg);border-color:#b5c9f0}
ol.searches{margin:.3rem 0;padding-left:1.4rem;font-size:.85rem}
ol.searches li{margin:.1rem 0}
.sname{font:600 .78rem/1.3 var(--mono);color:var(--info);background:var(--info-bg);
padding:0 .3rem;border-radius:4px}
.run{font-size:.85rem;margin:.3rem 0 0}
.note{font-size:.85rem;padding:.3rem .5rem;border-radius:6px;background:#eef1f5;margin:.3rem 0}
.note.bad{color:var(--bad);background:var(--bad-bg)}
.note.warn{color:var(--warn);background:var(--warn-bg)}
figure.key,figure.strip{margin:0}
figure.strip+figure.strip{margin-top:.4rem}
.pair{display:flex;flex-wrap:wrap;gap:.4rem .75rem;align-items:flex-start}
.pair figure.strip+figure.strip{margin-top:0}
.pair figure{max-width:calc(50% - .4rem)}
figure.jf{margin:.4rem 0 0;max-width:640px}
.jf-plot{position:relative;height:64px;margin-left:1.8rem;background:#f7f9fb;border:1px solid var(--line);border-radius:4px}
.jf-plot svg{display:block;width:100%;height:100%;overflow:visible}
.jf-y{position:absolute;left:-1.9rem;width:1.6rem;text-align:right;font-size:.68rem;
line-height:1;color:var(--muted);white-space:nowrap;overflow-wrap:normal}
.jf-y.hi{top:-.1rem}.jf-y.mid{top:calc(50% - .34rem)}.jf-y.lo{bottom:-.1rem}
.jf line.grid{stroke:#dde2e8;stroke-width:1;vector-effect:non-scaling-stroke}
.jf line.mark{stroke:#9aa3ad;stroke-width:1;stroke-dasharray:3 3;vector-effect:non-scaling-stroke}
.jf line.mark.worst{stroke:var(--bad)}
.jf polyline{fill:none;stroke-width:2;vector-effect:non-scaling-stroke;stroke-linejoin:round}
.jf polyline.j{stroke:#2f6fde}.jf polyline.f{stroke:#e07b00}
.jf rect.hit{fill:transparent}.jf rect.hit:hover{fill:rgba(47,111,222,.12)}
.sortby{display:inline-flex;align-items:center;gap:.4rem}
.filter select{font:inherit;padding:.3rem .4rem;border:1px solid var(--line);border-radius:6px;max-width:100%}
figure.key img,figure.strip img{display:block;max-width:100%;height:auto;border-radius:4px;
background:#d5dae0}
td.key{width:calc(min(320px,22vw) + 1.5rem)}
td.strip{width:calc(min(640px,44vw) + 1.5rem)}
.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
footer{font-size:.8rem;padding-bottom:2rem}
@media (max-width:1180px){
 table.rows,table.rows tbody,table.rows tr{display:block;width:auto}
 table.rows thead{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}
 table.rows tr.row{border-bottom:1px solid var(--line);padding:.35rem 0}
 table.rows tr.row:last-child{border-bottom:0}
 tr.row>td{border-bottom:0;padding:.35rem .75rem}
 td.q{display:block;min-width:0}
 td.key,td.strip{display:inline-block;vertical-align:top;max-width:100%}
 td.key{width:calc(320px + 1.5rem)}td.strip{width:calc(640px + 1.5rem)}
 td.key::before,td.strip::before{content:attr(data-label);display:block;font-size:.72rem;
 color:var(--muted);text-transform:uppercase;letter-spacing:.05em;margin-bottom:.2rem}
 tr.row.flagged{box-shadow:inset 4px 0 0 var(--bad)}
 tr.row.flagged>td:first-child{box-shadow:none}
}
@media (max-width:600px){
 .top,main,footer{padding:.75rem}
 h1{font-size:1.25rem}
 .big{min-width:6rem;padding:.4rem .7rem}.big .v{font-size:1.3rem}
 table.metrics th,table.metrics td{padding:.25rem .4rem}
 .card{padding:.7rem .75rem}
}
"""

_JS = """
(function(){
var box=document.getElementById('filter-box');if(!box)return;box.hidden=false;
var input=document.getElementById('filter'),only=document.getElementById('flagged');
var sort=document.getElementById('sort'),count=document.getElementById('filter-count');
var rows=Array.prototype.slice.call(document.querySelectorAll('tr.row'));
var body=rows.length?rows[0].parentNode:null;
var text=rows.map(function(r){return r.textContent.toLowerCase();});
function apply(){var t=input.value.trim().toLowerCase(),n=0;
rows.forEach(function(r,i){var ok=(!t||text[i].indexOf(t)>=0)&&
(!only.checked||r.hasAttribute('data-attention'));
r.hidden=!ok;if(ok)n++;});
count.textContent=n+' of '+rows.length+' rows';}
function num(r,k){var v=r.getAttribute(k);return v===null||v===''?null:parseFloat(v);}
function order(){if(!body)return;var how=sort.value;
var sorted=rows.slice().sort(function(a,b){var d=0;
if(how==='asc'||how==='desc'){var x=num(a,'data-score'),y=num(b,'data-score');
if(x===null&&y!==null)return 1;if(y===null&&x!==null)return -1;
if(x!==null&&y!==null)d=how==='asc'?x-y:y-x;}
else if(how==='id'){d=a.getAttribute('data-id').localeCompare(b.getAttribute('data-id'),
undefined,{numeric:true});}
return d||num(a,'data-order')-num(b,'data-order');});
sorted.forEach(function(r){body.appendChild(r);});}
input.addEventListener('input',apply);only.addEventListener('change',apply);
sort.addEventListener('change',order);order();apply();
})();
"""
