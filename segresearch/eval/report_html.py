"""An HTML page of an evaluation that someone can open anywhere, offline.

Numbers alone do not tell why a query failed; the page puts each query's answer (keyframe,
box, point, mask) next to its score and searches so a reader can scan hundreds of them.
It has to survive being zipped and mailed, so everything it needs lives in the evaluation
folder and is referenced by relative paths: no CDN, fonts or remote scripts, and the little
JavaScript there is (a row filter) is optional. Pictures are small JPEGs made one query at a
time, so a long video or a large evaluation never has to fit in memory, and one query whose
media or masks are broken shows a message in its row instead of stopping the report.
"""

from __future__ import annotations

import hashlib
import html
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

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


def _href(rel: str) -> str:
    """A relative URL for an attribute: percent-encoded so odd file names still resolve."""
    return _e(quote(rel, safe="/"))


def _num(value: Any, digits: int = 3) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(v) else f"{v:.{digits}f}"


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
    unavailable: str | None = None  # the media could not be opened at all
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


def _strip(media: Media, seg: Path, assets: Path, stem: str) -> _Picture:
    fids = sample_frame_ids(media.frame_ids, STRIP_FRAMES)
    tiles: list[np.ndarray] = []
    names: list[str] = []
    masked = 0
    for fid in fids:
        name = media.frame_name(fid)
        rgb, mask, _, _ = _small(media.frame(fid), _read_mask(seg, name), TILE_SIZE)
        if mask is not None and mask.any():
            rgb = overlay_mask(rgb, mask)
            masked += 1
        tiles.append(annotate(rgb, label=name) if len(fids) > 1 else rgb)
        names.append(name)
    height = max(t.shape[0] for t in tiles)
    width = sum(t.shape[1] for t in tiles) + STRIP_GAP * (len(tiles) - 1)
    canvas = np.full((height, width, 3), 32, np.uint8)
    x = 0
    for t in tiles:
        y = (height - t.shape[0]) // 2
        canvas[y : y + t.shape[0], x : x + t.shape[1]] = t
        x += t.shape[1] + STRIP_GAP
    file = f"{stem}_strip.jpg"
    _save_jpeg(canvas, assets / file)
    label = "frame" if len(names) == 1 else "frames"
    caption = (
        f"{label} {', '.join(names)} of {len(media)} · mask visible in {masked} of {len(names)}"
    )
    return _Picture(f"{ASSETS_DIR}/{file}", width, height, caption)


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
            pics.strip = _strip(media, seg, assets, stem)
        except MediaError as e:
            pics.strip_note = f"frames unavailable: {e}"
        except Exception as e:
            log.warning("report: frame strip of %s failed: %r", q.get("id"), e)
            pics.strip_note = f"frame strip failed: {type(e).__name__}: {e}"
    finally:
        if media.kind == "video":  # one decoder open at a time, however many videos
            media.close()
    pics.files = [p.src.rsplit("/", 1)[1] for p in (pics.key, pics.strip) if p is not None]
    return pics


# ---------------------------------------------------------------------------- rows


def _row_safely(out_dir: Path, assets: Path, q: dict, index: int, used: set[str]) -> str:
    qid = str(q["id"]) if q.get("id") is not None else f"#{index}"
    try:
        return _row(out_dir, assets, q, qid, index, used)
    except Exception as e:  # malformed data: still one row, saying what went wrong
        log.warning("report: row %s failed: %r", qid, e)
        return (
            f'<tr class="row flagged" id="q-{_e(qid)}" data-attention="1">'
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
            f'<p class="run">run folder (outside the report folder): <code>{_e(run_dir)}</code></p>'
        )
    links = [f'<a href="{_href(rel + "/")}">run folder</a>']
    if (p / "trajectory.json").is_file():
        links.append(f'<a href="{_href(rel + "/trajectory.json")}">trajectory.json</a>')
    return f'<p class="run">{" · ".join(links)}</p>'


def _score(q: dict) -> str:
    if q.get("kind") == "image" or ("IoU" in q and "J&F" not in q):
        keys = ["IoU"]
    else:
        keys = ["J&F", "J", "F"]
    items = "".join(
        f'<span class="m{" head" if i == 0 else ""}"><span class="k">{_e(k)}</span> '
        f'<span class="v">{_num(q.get(k))}</span></span>'
        for i, k in enumerate(keys)
    )
    try:
        head = float(q.get(keys[0]))
    except (TypeError, ValueError):
        head = math.nan
    bar = ""
    if not math.isnan(head):
        v = min(1.0, max(0.0, head))
        bar = (
            f'<span class="bar" aria-hidden="true"><span style="width:{v * 100:.0f}%;'
            f'background:hsl({v * 120:.0f},65%,40%)"></span></span>'
        )
    stop = q.get("stop_reason")
    stop_cls = "ok" if stop == "answer" else "warn"
    extra = ""
    if q.get("annotated_frames"):
        extra = f'<span class="muted">scored on {_e(q.get("annotated_frames"))} frames</span>'
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

    if pics.strip is not None:
        strip_cell = _picture_html(pics.strip, f"masks of {qid}: {pics.strip.caption}", "strip")
    elif pics.unavailable is not None:
        strip_cell = '<p class="note bad">media unavailable</p>'
    else:
        strip_cell = f'<p class="note bad">{_e(pics.strip_note or "no frames")}</p>'

    broken = q.get("missing_prediction") or not prompt or pics.unavailable is not None
    # what the "only rows with problems" filter keeps: anything a reader should look at
    attention = broken or flags or q.get("stop_reason") != "answer" or pics.key_note
    attention = attention or pics.strip_note
    cls = "row flagged" if broken else "row"
    mark = ' data-attention="1"' if attention else ""
    return (
        f'<tr class="{cls}" id="q-{_e(qid)}"{mark}>'
        f'<td class="q" data-label="Query">{query_cell}</td>'
        f'<td class="pic key" data-label="Keyframe">{"".join(key_parts)}</td>'
        f'<td class="pic strip" data-label="Frames">{strip_cell}</td>'
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
    return "–" if v is None else str(v)


def _dl(items: Iterable[tuple[str, Any]]) -> str:
    body = "".join(f"<dt>{_e(k)}</dt><dd>{_e(_value(v))}</dd>" for k, v in items)
    return f'<dl class="kv">{body}</dl>'


def _metric_keys(results: dict) -> list[str]:
    overall = results.get("overall") or {}
    primary = results.get("metric") or ("J&F" if "J&F" in overall else next(iter(overall), ""))
    keys = [primary] if primary else []
    keys += [k for k in overall if k not in keys and k != "n"]
    return keys


def _metric_table(results: dict, keys: Sequence[str]) -> str:
    by = results.get("by_ability") or {}
    if not by:
        return ""
    head = "".join(f'<th scope="col">{_e(k)}</th>' for k in keys)
    rows = "".join(
        f'<tr><th scope="row">{_e(name)}</th>'
        + "".join(f"<td>{_num((m or {}).get(k))}</td>" for k in keys)
        + f"<td>{_e((m or {}).get('n', '–'))}</td></tr>"
        for name, m in by.items()
    )
    overall = results.get("overall") or {}
    foot = (
        '<tr class="total"><th scope="row">overall</th>'
        + "".join(f"<td>{_num(overall.get(k))}</td>" for k in keys)
        + f"<td>{_e(overall.get('n', '–'))}</td></tr>"
    )
    return (
        '<section class="card wide"><h2>By ability</h2><div class="scroll">'
        f'<table class="metrics"><thead><tr><th scope="col">ability</th>{head}'
        f'<th scope="col">n</th></tr></thead><tbody>{rows}{foot}</tbody></table></div></section>'
    )


def _headline(results: dict, keys: Sequence[str]) -> str:
    overall = results.get("overall") or {}
    tiles = []
    for i, k in enumerate(keys):
        cls = "big primary" if i == 0 else "big"
        tiles.append(
            f'<div class="{cls}"><span class="v">{_num(overall.get(k))}</span>'
            f'<span class="k">{_e(k)}</span></div>'
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


def _page(results: dict, out_dir: Path, rows: list[str], total: int) -> str:
    ds = results.get("dataset") or {}
    settings = results.get("settings") or {}
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
    settings_dl = _dl(settings.items())
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
{_headline(results, keys)}
<div class="cards">
<section class="card"><h2>Dataset</h2>{dataset_dl}</section>
<section class="card"><h2>Settings</h2>{settings_dl}</section>
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
Frames: evenly spaced frames with the predicted masks. Click a picture for full size.</p>
{note}
<div id="filter-box" class="filter" hidden>
<label for="filter">Filter rows</label>
<input id="filter" type="search" placeholder="id, ability, question, search…" autocomplete="off">
<label class="check"><input id="flagged" type="checkbox"> only rows with problems</label>
<span id="filter-count" class="muted" aria-live="polite"></span>
</div>
<table class="rows">
<caption class="sr">One row per query, in the order of the results</caption>
<thead><tr><th scope="col">Query and score</th>
<th scope="col">Keyframe</th><th scope="col">Frames</th></tr></thead>
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
.big.primary{border-color:var(--accent);box-shadow:inset 0 0 0 1px var(--accent)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:.75rem}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:.8rem 1rem;
min-width:0}
.card.wide{grid-column:1/-1}
.kv{display:grid;grid-template-columns:max-content 1fr;gap:.15rem .8rem;margin:0;font-size:.9rem}
.kv dt{color:var(--muted)}.kv dd{margin:0;min-width:0}
.scroll{overflow-x:auto}
table.metrics{border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:.9rem}
table.metrics th,table.metrics td{padding:.25rem .8rem;border-bottom:1px solid var(--line);
text-align:right}
table.metrics th[scope=row],table.metrics thead th:first-child{text-align:left}
table.metrics tr.total{font-weight:650}
table.metrics tr.total>*{border-bottom:0}
.plots-section{margin-bottom:1.25rem}
.plots{display:flex;flex-wrap:wrap;gap:.75rem;align-items:flex-start}
.plots figure{margin:0;background:var(--card);border:1px solid var(--line);border-radius:10px;
padding:.5rem;max-width:100%}
.plots img{max-width:min(100%,640px);height:auto;display:block}
figcaption{font-size:.8rem;color:var(--muted);margin-top:.25rem}
.legend{font-size:.9rem;color:var(--muted)}
.lg-box{color:#008a00;font-weight:600}.lg-point{color:#d42020;font-weight:600}
.lg-mask{color:#c0307a;font-weight:600}
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
}
"""

_JS = """
(function(){
var box=document.getElementById('filter-box');if(!box)return;box.hidden=false;
var input=document.getElementById('filter'),only=document.getElementById('flagged');
var count=document.getElementById('filter-count');
var rows=Array.prototype.slice.call(document.querySelectorAll('tr.row'));
var text=rows.map(function(r){return r.textContent.toLowerCase();});
function apply(){var t=input.value.trim().toLowerCase(),n=0;
rows.forEach(function(r,i){var ok=(!t||text[i].indexOf(t)>=0)&&
(!only.checked||r.hasAttribute('data-attention'));
r.hidden=!ok;if(ok)n++;});
count.textContent=n+' of '+rows.length+' rows';}
input.addEventListener('input',apply);only.addEventListener('change',apply);apply();
})();
"""
