"""The HTML report of an evaluation: offline, escaped, one row per query, robust to bad rows,
and actually rendered by a real browser (headless Chromium), not just well-formed text."""

from __future__ import annotations

import html
import os
import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from PIL import Image

from segresearch.eval.datasets import Query
from segresearch.eval.report_html import ASSETS_DIR, write_html_report
from segresearch.eval.runner import evaluate
from segresearch.eval.scoring import score_video_query
from segresearch.eval.spec import EvalSpec
from segresearch.testing.browser import headless_chromium, missing_browser
from segresearch.testing.rvos import make_synthetic_revos, write_rvos_oracle_predictions
from segresearch.testing.scenes import (
    inner_point,
    mask_box,
    render_scene,
    write_frames,
    write_masks,
)

XSS = "<script>alert(1)</script>"
ODD_ID = 'clip 5/<b>&"x"'
LONG_PATH = "/data/knowledge_bases/wikipedia_snapshot/english-2026-11/dense_index_folder"


def _query(qid: str, media: Path, **kw) -> dict:
    q = {
        "id": qid,
        "ability": "one-hop",
        "question": f"Which shape won? ({qid})",
        "kind": "video",
        "media": str(media),
        "J": 0.8123,
        "F": 0.7456,
        "J&F": 0.77895,
        "stop_reason": "answer",
        "num_search": 0,
        "searches": [],
        "prompt": None,
        "problem": None,
        "graph_keyframe": None,
        "first_keyframe": None,
        "rule_differs": False,
        "missing_prediction": False,
        "missing_frames": 0,
        "annotated_frames": 8,
        "seg_dir": f"seg/{qid}",
        "run_dir": None,
    }
    q.update(kw)
    return q


def _prompt(mask: np.ndarray, frame: int) -> dict:
    return {
        "frame": frame,
        "box": [float(v) for v in mask_box(mask)],
        "point": [float(v) for v in inner_point(mask)],
    }


def build_eval(root: Path) -> tuple[Path, dict]:
    """An evaluation folder with the awkward cases a real run produces."""
    out = root / "eval"
    media = root / "media"
    frames, masks = render_scene(n_frames=8, size=(160, 120))
    write_frames(frames, media / "v1")
    blue, red = masks["blue square"], masks["red circle"]
    Image.fromarray(frames[0]).save(media / "still.jpg", quality=95)

    drift = blue.copy()
    drift[5:] = False  # the prediction loses the object after frame 4
    write_masks(drift, out / "seg" / "q1")
    write_masks(blue, root / "gt" / "blue")
    write_masks(red, root / "gt" / "red")
    Image.fromarray(red[0].astype(np.uint8) * 255).save(root / "gt" / "still.png")
    write_masks(np.zeros_like(blue), out / "seg" / "q2")
    write_masks(red, out / "seg" / ODD_ID)
    Image.fromarray(red[0].astype(np.uint8) * 255).save(_mkdir(out / "seg" / "q6") / "still.png")
    run5 = _mkdir(out / "runs" / "q5")
    (run5 / "trajectory.json").write_text("{}")

    def scored(qid: str, gt: str) -> dict:
        """J, F and per-frame scores as the evaluation computes them."""
        q = Query(qid, "", "one-hop", "", str(media / "v1"), str(root / "gt" / gt))
        seg = out / "seg" / qid
        s = score_video_query(q, seg if seg.is_dir() else None)
        keep = ("J", "F", "J&F", "per_frame")
        return {"gt": str(root / "gt" / gt), **{k: s[k] for k in keep}}

    queries = [
        _query(
            "q1",
            media / "v1",
            prompt=_prompt(blue[3], 3),
            num_search=1,
            searches=[{"name": "web", "query": "Zephyr Prize 2030 winner"}],
            **scored("q1", "blue"),
        ),
        _query(
            "q2",
            media / "v1",
            stop_reason="max_turns",
            graph_keyframe=5,
            problem="the box was outside the frame",
            **scored("q2", "blue"),
        ),
        _query(
            "q3",
            media / "v1",
            missing_prediction=True,
            missing_frames=8,
            stop_reason=None,
            **scored("q3", "blue"),
        ),
        _query("q4", media / "gone", prompt={"frame": 0, "box": [1, 2, 30, 40], "point": None}),
        _query(
            ODD_ID,
            media / "v1",
            question=f"Is this {XSS} the <b>red</b> one?",
            prompt=_prompt(red[6], 6),
            rule_differs=True,
            graph_keyframe=6,
            first_keyframe=1,
            num_search=2,
            run_dir=str(run5),
            searches=[{"name": "kb", "query": f"red {XSS}"}, {"name": "web", "query": "a&b"}],
            **scored(ODD_ID, "red"),
        ),
        {
            k: v
            for k, v in _query(
                "q6",
                media / "still.jpg",
                kind="image",
                prompt=_prompt(red[0], 0),
                gt=str(root / "gt" / "still.png"),
                **{"IoU": 0.9012},
            ).items()
            if k not in ("J", "F", "J&F")
        },
    ]
    plots = _mkdir(out / "plots")
    Image.fromarray(np.tile(np.linspace(0, 255, 300, dtype=np.uint8), (160, 1))).convert(
        "RGB"
    ).save(plots / "jf_histogram.png")
    results = {
        "dataset": {"name": "okvos", "root": str(media), "split": "valid", "queries": 6},
        "settings": {
            "models": ["qwen-vl-7b"],
            "search": "kb+web",
            "kb": LONG_PATH,
            "segmenter": {"name": "sam2", "size": "tiny"},
            "num_frames": 8,
            "max_turns": 4,
        },
        "created": "2026-12-01T12:00:00Z",
        "metric": "J&F",
        "overall": {"J": 0.41, "F": 0.38, "J&F": 0.395, "n": 6},
        "by_ability": {"one-hop": {"J": 0.41, "F": 0.38, "J&F": 0.395, "n": 6}},
        "counts": {
            "queries": 6,
            "predicted": 5,
            "missing_predictions": 1,
            "missing_frames": 8,
            "stop_reasons": {"answer": 4, "max_turns": 1},
            "rule_differs": 1,
            "no_usable_answer": 2,
        },
        "queries": queries,
        "paper": {
            "file": "/papers/okvos table.csv",
            "rows": {"one-hop": {"J&F": 0.421, "J": 0.40}, "overall": {"J&F": 0.38}},
        },
    }
    return out, results


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[str] = []
        self.urls: list[str] = []
        self.imgs: list[dict] = []
        self.scripts: list[dict] = []
        self.texts: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "row" in (a.get("class") or "").split():
            self.rows.append(a.get("id") or "")
        for k in ("src", "href"):
            if a.get(k) is not None:
                self.urls.append(a[k])
        if tag == "img":
            self.imgs.append(a)
        if tag in ("script", "link"):
            self.scripts.append(a)

    def handle_data(self, data):
        self.texts.append(data)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict, Path]:
    root = tmp_path_factory.mktemp("report")
    out, results = build_eval(root)
    t0 = time.perf_counter()
    path = write_html_report(out, results)
    assert time.perf_counter() - t0 < 10
    return out, results, path


def _parse(path: Path) -> _Page:
    p = _Page()
    p.feed(path.read_text("utf-8"))
    p.close()
    return p


def test_rows_escaping_and_content(report):
    out, results, path = report
    assert path == out / "report.html"
    raw = path.read_text("utf-8")
    page = _parse(path)
    assert page.rows == ["q-" + q["id"] for q in results["queries"]]
    assert XSS not in raw and "<b>red</b>" not in raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    text = " ".join(" ".join(page.texts).split())
    assert f"Is this {XSS} the <b>red</b> one?" in text  # shown literally, not executed
    for needle in (
        "J&F 77.9 %",  # q4's scores as percent with one decimal, like results.md
        "J 81.2 %",
        "F 74.6 %",
        "IoU 90.1 %",
        "no search",
        "no usable answer: the box was outside the frame",
        "missing prediction (scored as empty masks)",
        "8 missing frames",
        "first-keyframe rule differs from the graph's answer",
        "media unavailable",
        "Zephyr Prize 2030 winner",
        "stop: max_turns",
        "sam2 (size=tiny)",
        "J&F",
        "jf histogram",
    ):
        assert needle in text, needle
    for fraction in ("0.812", "0.746", "0.779", "0.901", "0.395", "0.41"):
        assert fraction not in text, fraction  # one unit everywhere
    # every script is inline, no stylesheet or font is fetched
    assert all("src" not in s and "href" not in s for s in page.scripts)
    assert "@import" not in raw and "url(" not in raw
    assert all(i.get("alt") for i in page.imgs)


def test_assets_are_small_jpegs_with_relative_links(report):
    out, results, path = report
    raw = path.read_text("utf-8")
    assert "file://" not in raw and "http" not in raw.lower()
    page = _parse(path)
    srcs = [i["src"] for i in page.imgs]
    # q1, q2 (graph keyframe), ODD_ID and q6 get a keyframe; every readable media a strip,
    # and the ground truth on the same frames
    assert len([s for s in srcs if s.endswith("_key.jpg")]) == 4
    assert len([s for s in srcs if s.endswith("_strip.jpg")]) == 5
    assert len([s for s in srcs if s.endswith("_gt.jpg")]) == 5
    for url in page.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and not url.startswith("/"), url
    total = 0
    for src in srcs:
        if not src.startswith(ASSETS_DIR + "/"):
            continue
        f = out / unquote(src)
        with Image.open(f) as im:
            assert im.format == "JPEG"
            w, h = im.size
        if src.endswith("_key.jpg"):
            assert w == 320
        elif "q6" not in src:
            assert 600 <= w <= 660 and h == 120
        total += f.stat().st_size
    assert total < 300_000
    assert not list(out.glob(".report.html*"))  # no temp file left behind


def test_links_resolve_after_moving_the_folder(report, tmp_path):
    out, _, _ = report
    moved = tmp_path / "zipped and unpacked" / "eval copy"
    shutil.copytree(out, moved)
    page = _parse(moved / "report.html")
    checked = 0
    for url in page.urls:
        if url.startswith("#"):
            continue
        target = (moved / unquote(urlsplit(url).path)).resolve()
        assert target.exists(), url
        assert target.is_relative_to(moved.resolve()), url
        checked += 1
    assert checked >= 10


def test_rerun_limits_rows_and_drops_stale_assets(report, tmp_path):
    out, results, _ = report
    copy = tmp_path / "again"
    shutil.copytree(out, copy)
    path = write_html_report(copy, results, max_rows=2, progress=True)
    page = _parse(path)
    assert page.rows == ["q-q1", "q-q2"]
    assert "showing the first 2 of 6 queries" in path.read_text("utf-8")
    assert len(list((copy / ASSETS_DIR).glob("*.jpg"))) == 6  # keyframe, prediction, truth


def test_bad_rows_never_stop_the_report(tmp_path):
    media = _mkdir(tmp_path / "m")
    frames, _ = render_scene(n_frames=3, size=(64, 48))
    write_frames(frames, media / "v")
    seg = _mkdir(tmp_path / "seg" / "bad-mask")
    (seg / "00000.png").write_bytes(b"not a png")
    results = {
        "queries": [
            {
                "id": "bad-mask",
                "media": str(media / "v"),
                "prompt": {"frame": 0, "box": None, "point": [5, 5]},
            },
            {"id": "no-frame", "media": str(media / "v"), "prompt": {"frame": 99}},
            {"id": "garbage", "media": str(media / "v"), "prompt": {"frame": "x"}, "J&F": "?"},
            {"id": "no-media"},
        ]
    }
    path = write_html_report(tmp_path, results)
    page = _parse(path)
    assert page.rows == ["q-bad-mask", "q-no-frame", "q-garbage", "q-no-media"]
    text = " ".join(page.texts)
    assert "keyframe unavailable: frame id 99" in text
    assert "keyframe picture failed: ValueError" in text  # the rest of that row is still there
    assert "no media path" in text


def test_image_dataset_headline(tmp_path):
    results = {
        "dataset": {"name": "images", "root": "/r", "split": None, "queries": 0},
        "metric": "gIoU",
        "overall": {"gIoU": 0.6512, "cIoU": 0.7, "n": 0},
        "by_ability": {"attribute": {"gIoU": 0.5, "cIoU": 0.25, "n": 3}},
        "queries": [],
    }
    raw = write_html_report(tmp_path, results).read_text("utf-8")
    assert '65.1<span class="u">%</span>' in raw and "0.651" not in raw
    assert "cIoU" in raw and "attribute" in raw and "25.0" in raw
    assert "no queries in the results" in raw and _parse(tmp_path / "report.html").rows == []


def _row_html(raw: str, qid: str) -> str:
    """The HTML of one query's row, found by its id attribute (escaped on the page in
    whichever form the template engine writes entities)."""
    starts = [m.start() for m in re.finditer(r'<tr class="row', raw)] + [len(raw)]
    for start, end in zip(starts, starts[1:], strict=False):
        ident = re.match(r'<tr class="row[^"]*" id="([^"]*)"', raw[start:end])
        if ident and html.unescape(ident[1]) == f"q-{qid}":
            return raw[start:end]
    raise AssertionError(f"no row for {qid!r}")


def _captions(row: str) -> list[str]:
    return [html.unescape(c) for c in re.findall(r"<figcaption>(.*?)</figcaption>", row)]


def test_ground_truth_and_per_frame_scores_beside_the_prediction(report):
    out, results, path = report
    raw = path.read_text("utf-8")
    by_id = {q["id"]: q for q in results["queries"]}

    # q1 loses the object after frame 4: the strips show the same frames, including the
    # worst one, the prediction without the object there and the truth with it
    row = _row_html(raw, "q1")
    srcs = re.findall(r'<img src="([^"]+)"', row)
    assert [s.rsplit("_", 1)[1] for s in srcs] == ["key.jpg", "strip.jpg", "gt.jpg"]
    strip, gt = _captions(row)[1:3]
    frames = "frames 00000, 00002, 00005 (lowest J), 00007 of 8"
    assert strip == f"prediction · {frames} · mask visible in 2 of 4"
    assert gt == f"ground truth · {frames} · object in 4 of 4"
    with Image.open(out / unquote(srcs[1])) as a, Image.open(out / unquote(srcs[2])) as b:
        assert a.size == b.size
        assert np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() > 1.0

    # the per-frame plot is the scored J and F of every annotated frame, in order
    pf = by_id["q1"]["per_frame"]
    assert pf["J"] == [1.0] * 5 + [0.0] * 3
    for cls, values in (("j", pf["J"]), ("f", pf["F"])):
        points = re.search(rf'<polyline class="{cls}" points="([^"]+)"', row)[1].split()
        ys = [float(p.split(",")[1]) for p in points]
        assert ys == pytest.approx([100 - 100 * v for v in values])
    titles = [html.unescape(t) for t in re.findall(r"<title>(.*?)</title>", row)]
    assert len(titles) == 8 and titles[5] == "frame 00005: J 0.0%, F 0.0%"
    assert "lowest J 0.0% at frame 00005" in html.unescape(row)
    assert row.count('class="mark') == 4 and row.count('class="mark worst"') == 1

    # the same for the query with an awkward id; a perfect query has no "lowest" frame
    odd = _row_html(raw, ODD_ID)
    assert "_gt.jpg" in odd and "J 100.0% on every frame" in html.unescape(odd)
    assert "(lowest J)" not in html.unescape(odd)
    # an image: prediction and truth side by side, no per-frame plot
    still = _row_html(raw, "q6")
    assert '<div class="pair">' in still and "<svg" not in still
    assert [c.split(" · ")[:2] for c in _captions(still)[1:]] == [
        ["prediction", "the image"],
        ["ground truth", "the image"],
    ]
    # no media: no pictures, and the plot still shows where the score came from
    gone = _row_html(raw, "q4")
    assert "_gt.jpg" not in gone and "per-frame J/F unavailable" in gone


def test_ground_truth_that_cannot_be_read_is_said_in_the_row(tmp_path):
    media = _mkdir(tmp_path / "m")
    frames, masks = render_scene(n_frames=3, size=(64, 48))
    write_frames(frames, media / "v")
    base = {"media": str(media / "v"), "kind": "video", "J&F": 0.5}
    results = {
        "queries": [
            {**base, "id": "no-gt"},
            {**base, "id": "gone-gt", "gt": str(tmp_path / "nowhere")},
            {**base, "id": "image", "kind": "image", "media": str(media / "v" / "00000.jpg"),
             "gt": str(tmp_path / "broken.png")},
        ]
    }
    (tmp_path / "broken.png").write_bytes(b"not a png")
    raw = write_html_report(tmp_path, results).read_text("utf-8")
    assert "ground truth not shown: no ground truth recorded for this query" in raw
    assert f"ground truth not shown: ground-truth folder not found: {tmp_path / 'nowhere'}" in raw
    note = re.search(r"ground truth not shown: ([^<]*broken\.png[^<]*)</p>", raw)
    assert note and "Error:" not in note[1]  # the data set's own words, no exception name
    assert "_gt.jpg" not in raw


def test_paper_numbers_beside_ours_with_the_difference(report):
    _, _, path = report
    raw = path.read_text("utf-8")
    table = raw[raw.index('<table class="metrics compared">') : raw.index("</table>")]
    cells = [
        html.unescape(re.sub(r"<[^>]+>", " ", c)).split()
        for c in re.findall(r"<td>(.*?)</td>", table)
    ]
    # one-hop: J&F 39.5 against 42.1, J 41.0 against 40.0, F not in the paper's table
    assert cells[0] == ["39.5", "paper", "42.1", "Δ", "\u22122.6"]
    assert cells[1] == ["41.0", "paper", "40.0", "Δ", "+1.0"]
    assert cells[2] == ["38.0"]
    # overall: the paper reports J&F only
    assert cells[4] == ["39.5", "paper", "38.0", "Δ", "+1.5"]
    assert cells[5] == ["41.0", "paper", "—", "Δ", "—"]
    headline = raw[raw.index('<div class="headline"') : raw.index('<p class="units')]
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", headline)).split())
    assert text.startswith("39.5 % J&F paper 38.0 · +1.5 41.0 % J 38.0 % F 6 queries scored")


def test_header_says_where_predictions_came_from(tmp_path):
    base = {
        "dataset": {"name": "okvos", "root": "/d", "split": "test", "queries": 0},
        "metric": "J&F",
        "overall": {"J": 0.5, "F": 0.5, "J&F": 0.5, "n": 1},
        "by_ability": {},
        "queries": [],
    }
    rescored = {
        **base,
        "settings": {"predictions": "/runs/dump/0.jsonl", "models": None, "search": "serper",
                     "kb": "", "num_frames": 6, "segmenter": {"name": "grabcut"},
                     "coord_style": "qwen3", "keyframe_size": 864},
    }
    raw = write_html_report(tmp_path / "a", rescored).read_text("utf-8")
    text = html.unescape(re.sub(r"<[^>]+>", "", raw))
    assert "Predictions read from /runs/dump/0.jsonl (no model was run and nothing was " \
        "searched by this evaluation)." in text
    assert "serper" not in text and "searching" not in text
    settings = raw[raw.index("<h2>Settings</h2>") : raw.index("<h2>Counts</h2>")]
    assert "<dt>search</dt>" not in settings and "<dt>num_frames</dt>" not in settings
    assert "<dt>predictions</dt>" in settings and "<dt>segmenter</dt>" in settings

    ran = {**base, "settings": {"models": ["openai:m@http://h/v1"], "search": "local",
                                "kb": "/kbs/demo_kb", "predictions": None}}
    raw = write_html_report(tmp_path / "b", ran).read_text("utf-8")
    text = html.unescape(re.sub(r"<[^>]+>", "", raw))
    assert ("Predictions made by openai:m@http://h/v1, searching with local "
            "(knowledge base /kbs/demo_kb).") in text


def test_settings_wrap_at_path_separators(report):
    _, _, path = report
    raw = path.read_text("utf-8")
    settings = raw[raw.index("<h2>Settings</h2>") : raw.index("<h2>Counts</h2>")]
    kb = re.search(r"<dt>kb</dt><dd>(.*?)</dd>", settings)[1]
    # every folder name is one unbreakable box ending at its separator
    segs = re.findall(r'<span class="seg">([^<]*)</span>', kb)
    assert "".join(segs) == LONG_PATH and re.sub(r'<span class="seg">[^<]*</span>', "", kb) == ""
    assert all(seg.endswith("/") for seg in segs[:-1]) and segs[-1] == "dense_index_folder"
    assert ".seg{display:inline-block;max-width:100%" in raw
    # the paper table's path too, escaped
    assert '<span class="seg">papers/</span><span class="seg">okvos</span> table.csv' in raw


# A string that would run script, close the title or break out of an attribute if any place
# on the page inserted it unescaped; PATH_HOSTILE is one that is also a folder name.
HOSTILE = """</title><script>window.pwned=1</script><img src=x onerror="window.pwned=2">'&"""
PATH_HOSTILE = """<svg onload="window.pwned=3">'&"""


def _hostile_eval(root: Path) -> tuple[Path, dict]:
    """An evaluation in which every string a user or a model wrote (ids, questions,
    searches, problems, stop reasons, paths, settings, groups, plot names) is hostile."""
    out = _mkdir(root / "eval")
    frames, masks = render_scene(n_frames=3, size=(64, 48))
    write_frames(frames, root / "media" / "v")
    mask = masks["blue square"]
    hostile_dir = f"/data/{PATH_HOSTILE}/sub dir"
    (_mkdir(out / "plots") / f"{PATH_HOSTILE}.png").write_bytes(b"not a png")
    queries = [
        _query(HOSTILE, root / "media" / "v", question=HOSTILE, ability=HOSTILE,
               problem=HOSTILE, stop_reason=HOSTILE, score_error=HOSTILE,
               prompt=_prompt(mask[0], 0), missing_frames=1, rule_differs=True,
               graph_keyframe=HOSTILE, first_keyframe=HOSTILE, annotated_frames=HOSTILE,
               searches=[{"name": HOSTILE, "query": HOSTILE}], num_search=1,
               gt=str(root / PATH_HOSTILE / "gt"), run_dir=hostile_dir,
               per_frame={"frame": [HOSTILE, "00001"], "J": [0.5, 0.25], "F": [0.5, 0.5]}),
        _query("gone", root / PATH_HOSTILE / "media", prompt=None, problem=None),
    ]
    results = {
        "dataset": {"name": HOSTILE, "split": HOSTILE, "root": hostile_dir, "queries": 2},
        "settings": {"models": [HOSTILE], "search": HOSTILE, "kb": hostile_dir,
                     "segmenter": {"name": HOSTILE, HOSTILE: HOSTILE}},
        "created": HOSTILE,
        "metric": "J&F",
        "overall": {"J&F": 0.5, "J": 0.5, "F": 0.5, "n": HOSTILE},
        "by_ability": {HOSTILE: {"J&F": 0.5, "J": 0.5, "F": 0.5, "n": HOSTILE}},
        "counts": {HOSTILE: 1, "stop_reasons": {HOSTILE: 1}},
        "queries": queries,
        "paper": {"file": hostile_dir, "rows": {HOSTILE: {"J&F": 0.4}, "overall": {"J&F": 0.4}}},
    }
    return out, results


class _Markup(HTMLParser):
    """Every element, attribute and text of a page, as a browser's parser reads them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str]] = []
        self.texts: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(k, v or "") for k, v in attrs]

    def handle_data(self, data):
        self.texts.append(data)


def test_hostile_strings_are_escaped_everywhere_they_appear(tmp_path):
    out, results = _hostile_eval(tmp_path)
    raw = write_html_report(out, results).read_text("utf-8")
    for fragment in ("<script>window", "<img src=x", "<svg onload", "</title><script",
                     'onerror="window', 'onload="window'):
        assert fragment not in raw, fragment
    page = _Markup()
    page.feed(raw)
    page.close()
    # the page's own script is the only one, and no element got an event handler
    assert page.tags.count("script") == 1 and page.tags.count("svg") == 1
    assert not [k for k, _ in page.attrs if k.startswith("on")]
    assert page.tags.count("img") == 3  # keyframe, prediction strip, plot
    # ...yet every hostile string is shown, literally, where the page uses it
    text = "".join(page.texts)
    for shown in (
        f"SegResearch report: {HOSTILE} · {HOSTILE}",  # the title, before any row
        f"{HOSTILE} {HOSTILE} video",  # the row's id link and its ability chip
        f"stop: {HOSTILE}",
        f"not scored: {HOSTILE}",
        f"graph: frame {HOSTILE}, rule: frame {HOSTILE}",
        f"scored on {HOSTILE} frames",
        f"frame {HOSTILE}: J 50.0%, F 50.0%",  # the per-frame plot's hover title
        f"run folder (outside the report folder): /data/{PATH_HOSTILE}/sub dir",
        f"searching with {HOSTILE} (knowledge base /data/{PATH_HOSTILE}/sub dir)",
        f"Paper numbers from /data/{PATH_HOSTILE}/sub dir.",
        f"ground truth not shown: ground-truth folder not found: {tmp_path / PATH_HOSTILE}/gt",
        f"plot: {PATH_HOSTILE}",
    ):
        assert shown in text or any(shown in v for _, v in page.attrs), shown
    assert text.count(HOSTILE) >= 20
    assert ("id", f"q-{HOSTILE}") in page.attrs and ("data-id", HOSTILE) in page.attrs
    assert any(k == "aria-label" and HOSTILE in v for k, v in page.attrs)  # the plot's summary
    assert any(k == "alt" and v.startswith(f"keyframe of {HOSTILE}: ") for k, v in page.attrs)
    # links to a hostile name are percent-encoded and still point at the file
    plot = next(v for k, v in page.attrs if k == "href" and v.startswith("plots/"))
    assert (out / unquote(plot)).is_file() and not set("<>\"' ") & set(plot)
    assert ("href", f"#q-{HOSTILE}") not in page.attrs  # the row's own link, encoded too


def test_templates_ship_as_package_data():
    """The report is rendered from files beside the code: an installed package (not only
    this checkout) must contain every one of them."""
    tomllib = pytest.importorskip("tomllib")
    from fnmatch import fnmatch

    import segresearch

    pkg = Path(segresearch.__file__).parent
    project = tomllib.loads((pkg.parent / "pyproject.toml").read_text("utf-8"))
    patterns = project["tool"]["setuptools"]["package-data"]["segresearch"]
    templates = [p for p in (pkg / "eval" / "templates").iterdir() if p.is_file()]
    assert {p.name for p in templates} >= {"report.html.j2", "row.html.j2", "report.css",
                                           "report.js"}
    for p in templates:
        rel = p.relative_to(pkg).as_posix()
        assert any(fnmatch(rel, pat) for pat in patterns), rel
    deps = project["project"]["dependencies"]
    assert any(re.match(r"jinja2\b", d, re.I) for d in deps)


# ------------------------------------------------------------------------------- browser


def _artefact(src: Path) -> None:
    dest = os.environ.get("SEGRESEARCH_TEST_ARTIFACTS")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, Path(dest) / src.name)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if why := missing_browser():
        pytest.skip(why)
    with headless_chromium(tmp_path_factory.mktemp("chromium-profile"), page_load_timeout=20) as driver:
        yield driver


def _wait_images(driver, timeout: float = 10.0) -> list[dict]:
    js = (
        "return Array.from(document.images).map(i => ({src: i.getAttribute('src'),"
        " done: i.complete, w: i.naturalWidth}));"
    )
    deadline = time.monotonic() + timeout
    while True:
        imgs = driver.execute_script(js)
        if all(i["done"] for i in imgs) or time.monotonic() > deadline:
            return imgs
        time.sleep(0.1)


def _full_height(driver, width: int) -> list[dict]:
    """Grow the window to the whole page, so one screenshot shows every row (pictures that
    arrive late can make the page taller, hence the second look)."""
    imgs: list[dict] = []
    for _ in range(3):
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, height)
        chrome = driver.execute_script("return window.outerHeight - window.innerHeight")
        if chrome > 0:  # the window size counts the (invisible) browser frame too
            driver.set_window_size(width, height + chrome)
        imgs = _wait_images(driver)
        if driver.execute_script("return document.documentElement.scrollHeight") <= height:
            break
    return imgs


def _not_blank(img: Image.Image, min_std: float = 12.0, min_colours: int = 8) -> bool:
    a = np.asarray(img.convert("RGB"))
    colours = len(np.unique(a.reshape(-1, 3)[:: max(1, a.size // 3 // 50_000)], axis=0))
    return float(a.std()) > min_std and colours >= min_colours


def test_browser_renders_every_row_and_picture(report, browser, tmp_path):
    out, results, path = report
    driver = browser
    driver.set_window_size(1280, 900)
    driver.get(path.as_uri())
    imgs = _full_height(driver, 1280)
    assert len(imgs) == 15  # the plot, 4 keyframes, 5 prediction and 5 ground-truth strips
    bad = [i["src"] for i in imgs if not (i["done"] and i["w"] > 0)]
    assert not bad, f"images that did not load: {bad}"

    rows = driver.find_elements("css selector", "tr.row")
    assert len(rows) == len(results["queries"])
    assert all(r.is_displayed() for r in rows)
    odd = driver.execute_script(
        "return document.getElementById(arguments[0]) !== null", "q-" + ODD_ID
    )
    assert odd
    assert driver.execute_script("return !document.getElementById('filter-box').hidden")
    assert driver.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth + 20"
    )

    shot = tmp_path / "report_1280.png"
    assert driver.save_screenshot(str(shot))
    _artefact(shot)
    with Image.open(shot) as im:
        im.load()
        assert _not_blank(im)
        rects = driver.execute_script(
            "return Array.from(document.querySelectorAll('tr.row')).map(r => {"
            "const b = r.getBoundingClientRect();"
            "return [b.left + scrollX, b.top + scrollY, b.right + scrollX, b.bottom + scrollY];"
            "});"
        )
        for (x1, y1, x2, y2), q in zip(rects, results["queries"], strict=True):
            assert 0 <= x1 < x2 <= im.width + 1 and 0 <= y1 < y2 <= im.height + 1, q["id"]
            assert _not_blank(im.crop((int(x1), int(y1), int(x2), int(y2))), 8.0), q["id"]

    # the filter hides rows that do not match (the page is readable without it too)
    box = driver.find_element("id", "filter")
    box.send_keys("alert")
    shown = [r.get_attribute("id") for r in rows if r.is_displayed()]
    assert shown == ["q-" + ODD_ID]
    box.clear()
    box.send_keys(" ")  # clear() fires no input event
    assert all(r.is_displayed() for r in rows)
    driver.find_element("id", "flagged").click()
    shown = [r.get_attribute("id") for r in rows if r.is_displayed()]
    assert shown == ["q-q2", "q-q3", "q-q4", "q-" + ODD_ID]


def test_browser_narrow_window_has_no_horizontal_overflow(report, browser, tmp_path):
    _, results, path = report
    driver = browser
    driver.set_window_size(420, 900)
    driver.get(path.as_uri())
    width = driver.execute_script("return window.innerWidth")
    assert width <= 440
    assert driver.execute_script("return document.documentElement.scrollWidth") <= width + 20
    _full_height(driver, 420)
    assert driver.execute_script("return document.documentElement.scrollWidth") <= width + 20
    rows = driver.find_elements("css selector", "tr.row")
    assert len(rows) == len(results["queries"]) and all(r.is_displayed() for r in rows)
    shot = tmp_path / "report_420.png"
    assert driver.save_screenshot(str(shot))
    _artefact(shot)
    with Image.open(shot) as im:
        assert _not_blank(im)


def _order(driver) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('tr.row')).map(r => r.dataset.id);"
    )


def test_browser_sorts_rows_by_score(report, browser):
    _, results, path = report
    driver = browser
    driver.set_window_size(1280, 900)
    driver.get(path.as_uri())
    ids = [q["id"] for q in results["queries"]]
    assert _order(driver) == ids
    from selenium.webdriver.support.ui import Select

    def score(qid: str) -> float:
        q = next(q for q in results["queries"] if q["id"] == qid)
        return round(100 * q.get("J&F", q.get("IoU")), 1)

    sort = Select(driver.find_element("id", "sort"))
    sort.select_by_value("asc")
    low = _order(driver)
    assert sorted(low) == sorted(ids)
    assert [score(i) for i in low] == sorted(score(i) for i in ids)
    assert low[0] in ("q2", "q3") and low[-1] == ODD_ID  # 0.0 first, 100.0 last
    sort.select_by_value("desc")
    high = _order(driver)
    assert [score(i) for i in high] == sorted((score(i) for i in ids), reverse=True)
    # equal scores keep the order of the results, in both directions
    assert high.index("q2") < high.index("q3") and low.index("q2") < low.index("q3")
    sort.select_by_value("id")
    assert _order(driver)[:3] == sorted(ids)[:3]
    sort.select_by_value("order")
    assert _order(driver) == ids
    # sorting and filtering work together
    sort.select_by_value("desc")
    driver.find_element("id", "flagged").click()
    shown = driver.execute_script(
        "return Array.from(document.querySelectorAll('tr.row')).filter(r => !r.hidden)"
        ".map(r => r.dataset.id);"
    )
    assert shown == [i for i in high if i in ("q2", "q3", "q4", ODD_ID)]


def test_browser_sort_puts_rows_without_a_score_last(tmp_path, browser):
    results = {"queries": [{"id": "a", "J&F": 0.5}, {"id": "b"}, {"id": "c", "J&F": 0.2},
                           {"id": "d", "J&F": "?"}]}
    path = write_html_report(tmp_path, results)
    driver = browser
    driver.get(path.as_uri())
    from selenium.webdriver.support.ui import Select

    sort = Select(driver.find_element("id", "sort"))
    sort.select_by_value("asc")
    assert _order(driver) == ["c", "a", "b", "d"]
    sort.select_by_value("desc")
    assert _order(driver) == ["a", "c", "b", "d"]


_LINE_BREAKS_JS = """
const dd = arguments[0], text = dd.textContent, breaks = [];
const walker = document.createTreeWalker(dd, NodeFilter.SHOW_TEXT);
let last = null, seen = '';
for (let node = walker.nextNode(); node; node = walker.nextNode()) {
  for (let i = 0; i < node.length; i++) {
    const r = document.createRange(); r.setStart(node, i); r.setEnd(node, i + 1);
    const top = r.getBoundingClientRect().top;
    if (last !== null && top > last + 2) breaks.push(seen);
    last = top; seen += node.data[i];
  }
}
return breaks;
"""


def test_browser_narrow_paths_wrap_at_separators_and_tables_fit(report, browser):
    _, _, path = report
    driver = browser
    driver.set_window_size(420, 900)
    driver.get(path.as_uri())
    width = driver.execute_script("return window.innerWidth")
    kb = driver.execute_script(
        "return Array.from(document.querySelectorAll('.settings dt'))"
        ".find(d => d.textContent === 'kb').nextElementSibling"
    )
    breaks = driver.execute_script(_LINE_BREAKS_JS, kb)
    assert breaks, "the long path should need more than one line at 420 px"
    assert all(b.endswith("/") for b in breaks), breaks
    # the comparison with the paper fits the card without a scroll bar
    fits = driver.execute_script(
        "const s = document.querySelector('table.metrics').parentElement;"
        "return [s.scrollWidth, s.clientWidth];"
    )
    assert fits[0] <= fits[1] + 1, fits
    assert driver.execute_script("return document.documentElement.scrollWidth") <= width


def test_browser_runs_no_hostile_script(tmp_path, browser):
    out, results = _hostile_eval(tmp_path)
    path = write_html_report(out, results)
    browser.set_window_size(1280, 900)
    browser.get(path.as_uri())  # returns after the load event: every eager image has failed
    # the page's own script ran (the filter is shown), none of the hostile ones did
    assert browser.execute_script("return !document.getElementById('filter-box').hidden")
    assert browser.execute_script("return window.pwned === undefined")
    assert browser.title == f"SegResearch report: {HOSTILE} · {HOSTILE}"


def test_browser_revos_r_column_and_per_object_table(tmp_path, browser):
    """A ReVOS page: R beside J&F, J and F in the table by ability, and the per-object table
    per group, both rendered and fitting a phone-width card."""
    root = make_synthetic_revos(tmp_path / "revos", n_videos=1)
    preds = write_rvos_oracle_predictions(root, tmp_path / "u.jsonl")
    out = tmp_path / "out"
    r = evaluate(EvalSpec(dataset="revos", root=str(root), predictions=str(preds), out=str(out),
                          segmenter="grabcut", progress=False))
    browser.set_window_size(420, 900)
    browser.get((out / "report.html").as_uri())
    got = browser.execute_script(
        "const text = t => Array.from(t.rows).map(r => Array.from(r.cells).map(c => c.innerText.trim()));"
        "const m = document.querySelector('table.metrics:not(.objects)');"
        "const o = document.querySelector('#per-object table');"
        "return {m: text(m), o: text(o), visible: o.getBoundingClientRect().height > 0,"
        " fits: [m, o].map(t => t.parentElement.scrollWidth <= t.parentElement.clientWidth + 1),"
        " page: document.documentElement.scrollWidth <= window.innerWidth};"
    )
    assert got["m"][0] == ["ability", "J&F", "J", "F", "R", "n"]
    groups = {**r["by_ability"], "overall": r["overall"]}
    assert {row[0]: row[4] for row in got["m"][1:]} == {g: f"{100 * v['R']:.1f}" for g, v in groups.items()}
    objs = {**r["objects"]["by_ability"], "overall": r["objects"]["overall"]}
    assert {row[0]: row[1] for row in got["o"][1:]} == {g: f"{100 * v['object_J']:.1f}" for g, v in objs.items()}
    assert got["visible"] and got["fits"] == [True, True] and got["page"]
    shot = tmp_path / "report_revos_420.png"
    browser.execute_script("document.getElementById('per-object').scrollIntoView()")
    assert browser.save_screenshot(str(shot))
    _artefact(shot)
    with Image.open(shot) as im:
        assert _not_blank(im)
