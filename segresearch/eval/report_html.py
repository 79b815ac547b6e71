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
one query at a time (``report_pictures``), so a long video or a large evaluation never has
to fit in memory, and one query whose media or masks are broken shows a message in its row
instead of stopping the report.

The markup lives in Jinja2 templates shipped with the package (``templates/``: the page,
its rows, and the stylesheet and script it inlines); this module turns ``results.json``
into plain view objects (text and numbers, no markup) and renders them. Autoescape is on,
so every string from a user or a model is escaped by the template engine, not by hand.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import numpy as np
from markupsafe import Markup
from PIL import Image
from tqdm import tqdm

from segresearch.core.files import write_atomic
from segresearch.eval.report_pictures import (
    ASSETS_DIR,
    Picture,
    asset_stem,
    per_frame,
    pictures,
)
from segresearch.eval.results import (
    R_CAPTION,
    REVOS_OVERALL,
    objects_overall_rule,
    our_group,
    paper_groups,
    paper_metrics,
    pct,
    pct_diff,
    pct_value,
    predictions_source,
    table_keys,
)

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
PLOT_EXTS = (".png", ".svg", ".jpg", ".jpeg")
MINUS = "\u2212"
# Frames of the per-frame plot that get their own hover title; beyond this the plot
# is only lines (a page of hundreds of long videos stays a few megabytes).
MAX_TITLED_FRAMES = 300
# Settings that describe how a model made predictions; a run that re-scores a saved file
# made none of them, so its page must not name them (no search backend, no model).
_MODEL_RUN_SETTINGS = ("models", "search", "kb", "retriever_url", "num_frames", "max_turns",
                       "frame_size", "protocol", "prompt_variant", "system_prompt_file", "temperature",
                       "text_topk", "image_topk", "concurrency", "workers")
TEMPLATES = "templates"  # package data of segresearch.eval


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
    env = template_environment()
    row_macros = env.get_template("row.html.j2").module
    used: set[str] = set()
    rows: list[Markup] = []
    for index, q in enumerate(tqdm(shown, desc="report", unit="query", disable=not progress)):
        rows.append(_row_safely(row_macros, out_dir, assets, q, index, used))
    for old in assets.glob("*.jpg"):
        if old.name not in used:
            old.unlink(missing_ok=True)
    page = render_page(env, page_view(results, out_dir, total=len(queries)), rows)
    path = out_dir / REPORT_NAME
    write_atomic(path, page.encode("utf-8"))
    return path


# ---------------------------------------------------------------------------- templates


def path_parts(value: Any) -> list[tuple[str, bool]]:
    """``value`` cut so that a path wraps only after a separator: each folder name with its
    separator is one part to box (``True``), other text is left to wrap as usual. A folder
    name cut in two at a line end, or at a hyphen in it, is unreadable."""
    out: list[tuple[str, bool]] = []
    for token in re.split(r"(\s+)", "" if value is None else str(value)):
        if "/" in token or "\\" in token:
            out.extend((part, True) for part in re.findall(r"[^/\\]*[/\\]+|[^/\\]+$", token))
        elif token:
            out.append((token, False))
    return out


def _href(rel: str) -> str:
    """A relative URL for an attribute: percent-encoded so odd file names still resolve
    (the template escapes it like any other value)."""
    return quote(rel, safe="/")


def _finalize(value: Any) -> Any:
    """``None`` prints as nothing: an absent field of a query is an empty cell, not the
    word "None"."""
    return "" if value is None else value


def template_environment() -> jinja2.Environment:
    """The Jinja2 environment of the report: templates from the package, autoescape on for
    every template (the page shows questions, queries, ids and paths that users and models
    wrote), and an error for any name a template uses that its view does not have."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("segresearch.eval", TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["path_parts"] = path_parts
    env.filters["href"] = _href
    return env


def render_page(env: jinja2.Environment, page: PageView, rows: Sequence[Markup]) -> str:
    """The whole page: ``rows`` are already rendered (one query at a time, see
    ``write_html_report``); the stylesheet and script are inlined so the page needs nothing
    beside its folder. They are our own package files, hence trusted as markup."""
    loader = env.loader
    assert loader is not None
    css = loader.get_source(env, "report.css")[0]
    js = loader.get_source(env, "report.js")[0]
    return env.get_template("report.html.j2").render(
        page=page, rows=list(rows), css=Markup(css), js=Markup(js)
    )


# ---------------------------------------------------------------------------- small helpers


def _text(value: Any) -> str:
    return "" if value is None else str(value)


# ---------------------------------------------------------------------------- views
# What the templates show, as plain text and numbers: no markup is made here, so none has
# to be escaped here either.


@dataclass(frozen=True)
class Figure:
    """A thumbnail that links to its full-size picture."""

    src: str  # relative to the report
    width: int
    height: int
    alt: str
    caption: str
    cls: str


@dataclass(frozen=True)
class Note:
    text: str
    cls: str = "note"  # "note bad" for a problem


@dataclass(frozen=True)
class Badge:
    text: str
    kind: str  # bad, warn or info
    title: str = ""


@dataclass(frozen=True)
class Delta:
    """Ours minus the paper's as printed, and the colour of its sign."""

    text: str
    cls: str


@dataclass(frozen=True)
class Metric:
    key: str
    value: str  # percent text, or "—"


@dataclass(frozen=True)
class Bar:
    width: str  # percent of the bar
    hue: str  # 0 (red) to 120 (green)


@dataclass(frozen=True)
class ScoreView:
    metrics: list[Metric]
    bar: Bar | None
    stop: str
    stop_ok: bool
    frames_note: str


@dataclass(frozen=True)
class Search:
    name: str
    query: str


@dataclass(frozen=True)
class RunLink:
    """Links to the query's run folder, or its path when it lies outside the report folder
    (a link out of the folder breaks as soon as the folder is moved)."""

    outside: str | None
    links: list[tuple[str, str]]  # label, relative URL


@dataclass(frozen=True)
class Mark:
    x: str
    worst: bool


@dataclass(frozen=True)
class Hit:
    x: str
    width: str
    title: str


@dataclass(frozen=True)
class JfPlot:
    """J and F of every annotated frame in the plot's 1000 x 100 coordinates."""

    summary: str
    j_points: str
    f_points: str
    marks: list[Mark]
    hits: list[Hit]
    n: int
    span: str
    low: str


@dataclass(frozen=True)
class RowView:
    qid: str
    index: int
    broken: bool  # marked red: no prediction, no answer or no media
    attention: bool  # kept by the "only rows with problems" filter
    sort_score: str
    ability: str
    kind: str
    score: ScoreView
    question: str
    badges: list[Badge]
    searches: list[Search]
    searches_note: str
    run: RunLink | None
    key: Figure | None
    key_notes: list[Note]
    strip: Figure | None
    strip_note: str
    gt: Figure | None
    gt_note: str
    pair: bool  # one frame each: prediction and truth side by side
    jf: JfPlot | None
    jf_note: str


@dataclass(frozen=True)
class ErrorRow:
    qid: str
    index: int
    error: str


@dataclass(frozen=True)
class Tile:
    key: str
    value: str
    primary: bool
    paper: str
    delta: Delta | None  # with the paper's number, when the paper reports this metric


@dataclass(frozen=True)
class Cell:
    ours: str
    paper: str
    delta: Delta | None


@dataclass(frozen=True)
class TableRow:
    name: str
    cells: list[Cell]
    n: str
    total: bool = False


@dataclass(frozen=True)
class MetricTable:
    keys: list[str]
    rows: list[TableRow]
    compared: bool
    paper_file: str
    notes: list[str]  # what a column or the overall row means, where the benchmark defines it


@dataclass(frozen=True)
class ObjectRow:
    name: str
    object_j: str  # percent text
    right: str  # "k of n": answers that named as many objects as the expression has
    several: str  # expressions naming two or more objects
    total: bool = False


@dataclass(frozen=True)
class ObjectTable:
    """Per-object matching per group and overall (MeViS / ReVOS), as results.md's."""

    rows: list[ObjectRow]
    caption: str


@dataclass(frozen=True)
class Plot:
    src: str
    width: int | None  # lets the page lay out before the picture arrives
    height: int | None
    stem: str
    caption: str


@dataclass(frozen=True)
class PageView:
    title: str
    source: str
    headline: list[Tile]
    scored: str
    dataset: list[tuple[str, str]]
    settings: list[tuple[str, str]]
    counts: list[tuple[str, str]]
    table: MetricTable | None
    objects: ObjectTable | None
    plots: list[Plot]
    head_metric: str
    total: int


def _delta(ours: Any, paper: Any) -> Delta:
    d = pct_diff(ours, paper, minus=MINUS)
    return Delta(d, "pos" if d.startswith("+") else "neg" if d.startswith(MINUS) else "zero")


# ---------------------------------------------------------------------------- per-frame plot


def _jf_plot(q: dict, qid: str, shown: Sequence[str], worst: str | None) -> JfPlot | None:
    """J and F of every annotated frame (None when the query has no usable per-frame
    scores); the dashed marks are the frames the strips show."""
    pf = per_frame(q)
    if pf is None:
        return None
    names, js, fs = pf["frame"], pf["J"], pf["F"]
    n = len(names)

    def x(i: int) -> float:
        return 1000 * (i + 0.5) / n

    def line(values: Sequence[float]) -> str:
        if n == 1:  # one frame: a short level line, visible at any width
            y = 100 - 100 * values[0]
            return f"{x(0) - 40:.1f},{y:.1f} {x(0) + 40:.1f},{y:.1f}"
        return " ".join(f"{x(i):.1f},{100 - 100 * v:.1f}" for i, v in enumerate(values))

    marks = [Mark(f"{x(i):.1f}", name == worst)
             for i, name in enumerate(names) if name in shown or name == worst]
    hits = []
    if n <= MAX_TITLED_FRAMES:
        w = 1000 / n
        hits = [Hit(f"{i * w:.1f}", f"{w:.1f}", f"frame {name}: J {pct(j)}%, F {pct(f)}%")
                for i, (name, j, f) in enumerate(zip(names, js, fs, strict=True))]
    lo = int(np.argmin(js))
    if min(js) == max(js):
        low = f"J {pct(js[0])}% on every frame" if n > 1 else f"J {pct(js[0])}%"
    else:
        low = f"lowest J {pct(js[lo])}% at frame {names[lo]}"
    summary = (f"J and F per annotated frame of {qid}: {n} frame{'s' if n != 1 else ''}, "
               f"mean J {pct(float(np.mean(js)))}%, {low}")
    span = names[0] if n == 1 else f"{names[0]}–{names[-1]}"
    return JfPlot(summary, line(js), line(fs), marks, hits, n, span, low)


# ---------------------------------------------------------------------------- rows


def _head_key(q: dict) -> str:
    if q.get("kind") == "image" or ("IoU" in q and "J&F" not in q):
        return "IoU"
    return "J&F"


def _sort_score(q: dict) -> str:
    """The row's score for client-side sorting (percent; empty when it has none)."""
    v = pct_value(q.get(_head_key(q)))
    return "" if v is None else f"{v:.1f}"


def _row_safely(macros: Any, out_dir: Path, assets: Path, q: dict, index: int,
                used: set[str]) -> Markup:
    """One rendered row; malformed data (in the view or while rendering it) still gives a
    row, saying what went wrong, so one bad query never stops the report."""
    qid = str(q["id"]) if q.get("id") is not None else f"#{index}"
    try:
        return macros.row(_row(out_dir, assets, q, qid, index, used))
    except Exception as e:
        log.warning("report: row %s failed: %r", qid, e)
        return macros.error_row(ErrorRow(qid, index, f"{type(e).__name__}: {e}"))


def _flags(q: dict) -> list[Badge]:
    out = []
    if q.get("missing_prediction"):
        out.append(Badge("missing prediction (scored as empty masks)", "bad"))
    missing = q.get("missing_frames") or 0
    if isinstance(missing, (int, float)) and missing > 0:
        n = int(missing)
        out.append(Badge(f"{n} missing frame{'s' if n != 1 else ''}", "warn",
                         "frames with no mask file, scored as empty"))
    if q.get("rule_differs"):
        text = "first-keyframe rule differs from the graph's answer"
        graph, first = q.get("graph_keyframe"), q.get("first_keyframe")
        if graph is not None and first is not None:
            text += f" (graph: frame {graph}, rule: frame {first})"
        out.append(Badge(text, "info"))
    if q.get("score_error"):
        out.append(Badge(f"not scored: {q.get('score_error')}", "bad"))
    return out


def _searches(q: dict) -> tuple[list[Search], str]:
    """The searches the model made, or why none are listed."""
    items = [s for s in (q.get("searches") or []) if isinstance(s, dict)]
    if items:
        return [Search(str(s.get("name") or "search"), _text(s.get("query"))) for s in items], ""
    n = q.get("num_search") or 0
    if isinstance(n, int) and n > 0:
        return [], f"{n} search{'es' if n != 1 else ''} (not recorded)"
    return [], "no search"


def _run_link(out_dir: Path, run_dir: Any) -> RunLink | None:
    if not run_dir:
        return None
    p = Path(str(run_dir))
    if not p.is_absolute():
        p = out_dir / p
    try:
        rel = p.resolve().relative_to(out_dir.resolve()).as_posix()
    except ValueError:
        return RunLink(str(run_dir), [])
    links = [("run folder", rel + "/")]
    if (p / "trajectory.json").is_file():
        links.append(("trajectory.json", rel + "/trajectory.json"))
    return RunLink(None, links)


def _score(q: dict) -> ScoreView:
    keys = ["IoU"] if _head_key(q) == "IoU" else ["J&F", "J", "F"]
    head = pct_value(q.get(keys[0]))
    bar = None
    if head is not None:
        v = min(1.0, max(0.0, head / 100))
        bar = Bar(f"{v * 100:.0f}", f"{v * 120:.0f}")
    stop = q.get("stop_reason")
    n = q.get("annotated_frames")
    frames = ""
    if n and _head_key(q) != "IoU":
        frames = f"scored on {n} frame{'s' if n != 1 else ''}"
    metrics = [Metric(k, pct(q.get(k))) for k in keys]
    if q.get("object_J") is not None:  # per-object matching (MeViS / ReVOS)
        metrics.append(Metric("object J", pct(q["object_J"])))
        named = f"{q.get('objects_pred')} of {q.get('objects_gt')} objects named"
        frames = f"{frames}; {named}" if frames else named
    return ScoreView(metrics, bar, str(stop or "none"), stop == "answer", frames)


def _figure(p: Picture, alt: str, cls: str) -> Figure:
    return Figure(p.src, p.width, p.height, alt, p.caption, cls)


def _row(out_dir: Path, assets: Path, q: dict, qid: str, index: int, used: set[str]) -> RowView:
    stem = asset_stem(qid, index, used)
    pics = pictures(out_dir, assets, q, stem)
    used.update(pics.files)

    prompt = q.get("prompt")
    flags = _flags(q)
    if pics.unavailable is not None:
        flags.append(Badge("media unavailable", "bad"))
    if not prompt:
        flags.append(Badge("no usable answer", "bad"))

    key_notes: list[Note] = []
    if not prompt:
        problem = q.get("problem") or "the model gave no answer"
        key_notes.append(Note(f"no usable answer: {problem}", "note bad"))
    elif q.get("problem"):
        key_notes.append(Note(str(q.get("problem"))))
    if pics.unavailable is not None:
        key_notes.append(Note(f"media unavailable: {pics.unavailable}", "note bad"))
    if pics.key_note:
        key_notes.append(Note(pics.key_note, "note bad"))

    if pics.strip is not None:
        strip_note = ""
    elif pics.unavailable is not None:
        strip_note = "media unavailable"
    else:
        strip_note = pics.strip_note or "no frames"
    gt_note = (pics.gt_note or "") if pics.unavailable is None else ""

    jf = _jf_plot(q, qid, pics.shown, pics.worst)
    jf_note = ""
    if jf is None and q.get("kind") != "image":
        jf_note = str(q.get("score_error") or "not in results.json (scored by an older version)")

    searches, searches_note = _searches(q)
    broken = bool(q.get("missing_prediction") or not prompt or pics.unavailable is not None)
    # what the "only rows with problems" filter keeps: anything a reader should look at
    attention = bool(broken or flags or q.get("stop_reason") != "answer" or pics.key_note
                     or pics.strip_note)
    return RowView(
        qid=qid,
        index=index,
        broken=broken,
        attention=attention,
        sort_score=_sort_score(q),
        ability=str(q.get("ability")) if q.get("ability") else "",
        kind=str(q.get("kind")) if q.get("kind") else "",
        score=_score(q),
        question=_text(q.get("question")),
        badges=flags,
        searches=searches,
        searches_note=searches_note,
        run=_run_link(out_dir, q.get("run_dir")),
        key=None if pics.key is None else _figure(
            pics.key, f"keyframe of {qid}: {pics.key.caption}", "key"),
        key_notes=key_notes,
        strip=None if pics.strip is None else _figure(
            pics.strip, f"predicted masks of {qid}: {pics.strip.caption}", "strip"),
        strip_note=strip_note,
        gt=None if pics.gt is None else _figure(
            pics.gt, f"ground truth of {qid}: {pics.gt.caption}", "strip gt"),
        gt_note=gt_note,
        pair=pics.strip is not None and pics.gt is not None and len(pics.shown) == 1,
        jf=jf,
        jf_note=jf_note,
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


def _items(pairs: Iterable[tuple[str, Any]]) -> list[tuple[str, str]]:
    return [(str(k), _value(v)) for k, v in pairs]


def _settings_items(results: dict) -> list[tuple[str, Any]]:
    settings = results.get("settings") or {}
    if settings.get("predictions"):
        return [(k, v) for k, v in settings.items() if k not in _MODEL_RUN_SETTINGS]
    return list(settings.items())


def _metric_keys(results: dict) -> list[str]:
    if results.get("metric"):  # results.md's columns (ReVOS: with R)
        return list(table_keys(results))
    overall = results.get("overall") or {}
    primary = results.get("metric") or ("J&F" if "J&F" in overall else next(iter(overall), ""))
    keys = [primary] if primary else []
    keys += [k for k in overall if k not in keys and k != "n"]
    return keys


def _metric_table(results: dict, keys: Sequence[str]) -> MetricTable | None:
    """Our numbers per ability and overall; with a paper table, each cell also holds the
    paper's number and the difference, stacked, so the table stays narrow enough for a
    phone instead of tripling its columns."""
    by = results.get("by_ability") or {}
    paper = (results.get("paper") or {}).get("rows") or {}
    compared = [k for k in keys if k in paper_metrics(results)]
    if not by and not paper:
        return None

    def cells(name: str, m: dict) -> list[Cell]:
        theirs = paper.get(name) or {}
        return [
            Cell(pct(m.get(k)), pct(theirs.get(k)),
                 _delta(m.get(k), theirs.get(k)) if k in compared else None)
            for k in keys
        ]

    extra = [g for g in paper_groups(results) if g not in by and g != "overall"]
    rows = []
    for name in list(by) + extra:
        group = our_group(results, name)
        rows.append(TableRow(str(name), cells(name, group), _text(group.get("n", "–"))))
    overall = results.get("overall") or {}
    rows.append(TableRow("overall", cells("overall", overall), _text(overall.get("n", "–")),
                         total=True))
    paper_file = _text((results.get("paper") or {}).get("file")) if compared else ""
    notes = [R_CAPTION, REVOS_OVERALL[:1].upper() + REVOS_OVERALL[1:]] if "R" in keys else []
    return MetricTable(list(keys), rows, bool(compared), paper_file, notes)


def _object_table(results: dict) -> ObjectTable | None:
    """The per-object numbers per group and overall; None where the ground truth lists no
    objects (OK-VOS, images)."""
    objs = results.get("objects")
    if not isinstance(objs, dict):
        return None
    named = [(str(a), g, False) for a, g in (objs.get("by_ability") or {}).items()]
    rows = [
        ObjectRow(name, pct(g.get("object_J")), f"{g.get('right_count')} of {g.get('n')}",
                  _text(g.get("several_gt")), total)
        for name, g, total in [*named, ("overall", objs.get("overall"), True)]
        if isinstance(g, dict)
    ]
    if not rows:
        return None
    caption = ("Object J: each object the answer named paired one to one with one of the "
               "expression's (Hungarian on video-level J), the paired J summed and divided by "
               "the larger count; the union scores above are unchanged. "
               + objects_overall_rule(objs))
    return ObjectTable(rows, caption)


def _headline(results: dict, keys: Sequence[str]) -> list[Tile]:
    overall = results.get("overall") or {}
    paper = ((results.get("paper") or {}).get("rows") or {}).get("overall") or {}
    return [
        Tile(str(k), pct(overall.get(k)), i == 0,
             pct(paper[k]) if k in paper else "",
             _delta(overall.get(k), paper[k]) if k in paper else None)
        for i, k in enumerate(keys)
    ]


def _plots(out_dir: Path) -> list[Plot]:
    folder = out_dir / "plots"
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PLOT_EXTS)
    plots = []
    for p in files:
        width = height = None
        try:  # the size lets the page lay out before the picture arrives
            with Image.open(p) as im:
                width, height = im.width, im.height
        except Exception:
            pass
        plots.append(Plot("plots/" + p.name, width, height, p.stem, p.stem.replace("_", " ")))
    return plots


def _source(results: dict) -> str:
    """Where the predictions came from, as a sentence (without its full stop)."""
    if not results.get("settings"):
        return ""
    text = predictions_source(results)
    return text[:1].upper() + text[1:]


def page_view(results: dict, out_dir: Path, total: int) -> PageView:
    """Everything the page shows above and around the rows."""
    ds = results.get("dataset") or {}
    counts = results.get("counts") or {}
    keys = _metric_keys(results)
    count_items = [(k.replace("_", " "), v) for k, v in counts.items() if k != "stop_reasons"]
    stops = counts.get("stop_reasons")
    if isinstance(stops, dict):
        count_items.append(("stop reasons", ", ".join(f"{k}: {v}" for k, v in stops.items())))
    return PageView(
        title=" · ".join(str(x) for x in (ds.get("name"), ds.get("split")) if x) or "evaluation",
        source=_source(results),
        headline=_headline(results, keys),
        scored=_text((results.get("overall") or {}).get("n", "–")),
        dataset=_items([
            ("name", ds.get("name")),
            ("split", ds.get("split")),
            ("root", ds.get("root")),
            ("queries", ds.get("queries")),
            ("created", results.get("created")),
            ("metric", results.get("metric")),
        ]),
        settings=_items(_settings_items(results)),
        counts=_items(count_items),
        table=_metric_table(results, keys),
        objects=_object_table(results),
        plots=_plots(out_dir),
        head_metric="J&F" if results.get("metric", "J&F") == "J&F" else "IoU",
        total=total,
    )
