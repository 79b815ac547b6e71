"""What a newcomer meets first: cassettes written by hand, the synthetic set, labels on
pictures, a single image's outputs, and the wait while a knowledge base is indexed."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segresearch.agents.backends.replay import CASSETTE_FORMS, ReplayChatModel
from segresearch.tools.visualize import LABEL_BACKING, annotate

T = "<thinking>ok</thinking>\n"
ANSWER = T + '<answer>{"bbox_2d": [250, 250, 750, 750], "point_2d": [500, 500]}</answer>'

# ----------------------------------------------------------------------------- cassettes


@pytest.mark.parametrize("data", [
    [ANSWER],
    {"turns": [ANSWER], "label": "by hand", "latency": 0, "query": "kept as metadata"},
    {"queries": {"the square": [ANSWER]}},
    {"queries": {"  the square\n": [ANSWER]}},  # a hand-written key with stray spaces
    {"queries": {"the square": [ANSWER]}, "turns": [T + "<keyframe> 0 </keyframe>"]},
])
def test_every_documented_cassette_form_loads_and_plays(tmp_path, data):
    from langchain_core.messages import HumanMessage

    path = tmp_path / "c.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    model = ReplayChatModel.from_file(path)
    msg = HumanMessage(content=[{"type": "text", "text": "frame 0 "}, {"type": "text", "text": "\n\n the square "}])
    assert model.invoke([msg]).content == ANSWER
    if isinstance(data, dict) and "query" in data:
        assert model.meta == {"query": "kept as metadata"} and model.label == "by hand"


@pytest.mark.parametrize("text, why", [
    ("{", "is not valid JSON"),
    ("[1, 2]", "every turn must be a string"),
    ('{"turns": "one turn"}', "has the wrong shape"),
    ('{"answer": "x"}', "has the wrong shape"),
    ('{"queries": {"q": "not a list"}}', "the turns of question 'q' must be a list of strings"),
    ("[]", "holds no turns"),
    ('{"queries": {}}', "holds no turns"),
    ('{"turns": ["x"], "latency": -1}', "latency must be seconds between 0 and 600"),
])
def test_a_wrong_cassette_is_one_message_naming_the_file_and_the_forms(tmp_path, text, why):
    path = tmp_path / "hand-written.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as e:
        ReplayChatModel.from_file(path)
    msg = str(e.value)
    assert why in msg and str(path) in msg and "\n" not in msg
    if "latency" not in why:
        assert CASSETTE_FORMS in msg


def test_a_cassette_that_is_not_utf8_or_is_a_folder_is_named(tmp_path):
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'["caf\xe9"]')
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        ReplayChatModel.from_file(bad)
    with pytest.raises(ValueError, match="is a folder"):
        ReplayChatModel.from_file(tmp_path)


# ----------------------------------------------------------------------------- labels


def _luminance(rgb: np.ndarray) -> float:
    c = rgb.astype(np.float64) / 255
    c = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2])


def _contrast(a: np.ndarray, b: np.ndarray) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


@pytest.mark.parametrize("value", [255, 0, 200])
@pytest.mark.parametrize("size", [(540, 960), (120, 160), (1080, 1920)])
def test_labels_read_on_light_and_dark_scenes(value, size):
    """White text on a 65 % black box: at least WCAG AA contrast (4.5:1) against the box on
    a white frame, where text without backing used to vanish, and on a black one."""
    h, w = size
    frame = np.full((h, w, 3), value, np.uint8)
    out = annotate(frame, label="frame 13 (keyframe)  grabcut")
    changed = np.any(out != frame, axis=2)
    ys, xs = np.nonzero(changed)
    assert len(xs), "no label was drawn"
    assert xs.min() < w // 10 and ys.min() < h // 10 and ys.max() < h // 4  # top-left corner
    region = out[ys.min():ys.max() + 1, xs.min():xs.max() + 1].reshape(-1, 3)
    backing = np.full(3, int(value * (1 - LABEL_BACKING)), np.uint8)
    text = region[region.sum(axis=1).argmax()]
    assert tuple(text) == (255, 255, 255)
    assert _contrast(text, backing) >= 4.5
    if value:  # the box itself is there (on black it is black)
        counts = {tuple(p): n for p, n in zip(*np.unique(region, axis=0, return_counts=True), strict=True)}
        assert counts.get(tuple(backing), 0) > region.shape[0] // 3
    # nothing outside the label's box changes
    assert not changed[ys.max() + 1:].any() and not changed[:, xs.max() + 1:].any()


def test_a_long_label_on_a_narrow_picture_stays_inside_it():
    frame = np.full((48, 64, 3), 255, np.uint8)
    out = annotate(frame, label="frame 123456 (keyframe)  a very long segmenter name")
    ys, xs = np.nonzero(np.any(out != frame, axis=2))
    # scaled down, then cut: the box keeps its margin from the right edge, the text shows
    assert xs.min() == 2 and xs.max() <= 61 and ys.max() < 24
    assert out[ys, xs].max() > 200 and np.median(out[ys, xs]) < 120


# ----------------------------------------------------------------------------- one image


def test_a_single_image_gets_an_overlay_picture_and_a_mask_named_after_it(tmp_path):
    from segresearch.agents.context import Context
    from segresearch.graphs.seg_research import graph

    img = np.full((120, 160, 3), 230, np.uint8)
    img[40:80, 50:110] = (20, 40, 200)
    src = tmp_path / "street.png"
    Image.fromarray(img).save(src)
    out = tmp_path / "run"
    ctx = Context(model=ReplayChatModel(turns=[ANSWER]), search="none", prompt_variant="search",
                  segmenter="grabcut", output_dir=str(out))
    final = graph.invoke({"query": "the blue block", "media": str(src)}, context=ctx)
    assert final["stop_reason"] == "answer"
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["street.png"]
    assert not (out / "overlay.mp4").exists()
    overlay = Image.open(out / "overlay.jpg")
    assert overlay.size == (160, 120) and overlay.format == "JPEG"
    tinted = np.asarray(overlay.convert("RGB"))[60, 80].astype(int)
    assert abs(tinted - img[60, 80]).sum() > 60  # the mask is drawn on it
    assert "overlay.jpg" in (out / "report.md").read_text(encoding="utf-8")


def test_a_video_still_gets_overlay_mp4(scene_dir, tmp_path):
    from segresearch.agents.context import Context
    from segresearch.graphs.seg_research import graph

    out = tmp_path / "run"
    turns = [T + "<keyframe> 4 </keyframe>", ANSWER]
    ctx = Context(model=ReplayChatModel(turns=turns), search="none", prompt_variant="search",
                  segmenter="grabcut", output_dir=str(out))
    graph.invoke({"query": "q", "media": str(scene_dir / "frames")}, context=ctx)
    assert (out / "overlay.mp4").is_file() and not (out / "overlay.jpg").exists()
    assert (out / "masks" / "00004.png").is_file()


# ----------------------------------------------------------------------------- synthetic set


def test_data_synthetic_writes_train_and_test_with_oracle_predictions(tmp_path, capsys):
    from segresearch.cli import main
    from segresearch.eval.predictions import read_predictions

    root = tmp_path / "okvos"
    assert main(["data", "synthetic", "--out", str(root), "--videos", "1"]) == 0
    printed = capsys.readouterr().out
    import pandas as pd

    frames = {}
    for split in ("train", "test"):
        df = pd.read_parquet(root / f"{split}.parquet")
        assert len(df) == 16 and f"{root / split}.parquet (16 rows)" in printed
        rows = read_predictions(root / f"{split}_oracle_predictions.jsonl").rows
        assert set(rows) == set(df["id"])
        row = next(iter(rows.values()))
        assert row["data_source"].startswith("Search_RVOS_") and "<answer>" in row["output"]
        assert Path(row["video_path"]).is_dir()
        frames[split] = np.asarray(Image.open(root / split / "JPEGImages" / "vid000" / "00000.jpg"))
    assert not np.array_equal(frames["train"], frames["test"])  # each split its own videos


def test_data_synthetic_refuses_a_split_name_that_is_a_path(tmp_path, capsys):
    from segresearch.cli import main

    assert main(["data", "synthetic", "--out", str(tmp_path / "d"), "--split", "../x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--split '../x'" in err[0]
    assert not (tmp_path / "x.parquet").exists()


# ----------------------------------------------------------------------------- index progress


class _Fake:
    """A tiny deterministic embedder, so a build costs nothing."""

    name = "fake-progress"
    dim = 8

    def _enc(self, texts: list[str]) -> np.ndarray:
        v = np.array([[(hash(t) >> k) % 7 + 1 for k in range(8)] for t in texts], np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    encode_queries = encode_passages = _enc


def _corpus(folder: Path, n: int) -> Path:
    folder.mkdir()
    (folder / "text_corpus.jsonl").write_text("".join(
        json.dumps({"id": i, "contents": f"Title {i}\nPassage number {i}."}) + "\n" for i in range(n)))
    return folder


def test_a_first_use_build_reports_to_the_run_listening(tmp_path):
    from segresearch.tools.search.kb.index import ensure_index, index_progress

    heard: list[tuple[int, int]] = []
    with index_progress(lambda d, t: heard.append((d, t))):
        ensure_index(_corpus(tmp_path / "kb", 150), _Fake())
    assert heard[0] == (0, 150) and heard[-1] == (150, 150)
    assert [d for d, _ in heard] == sorted(d for d, _ in heard) and len(heard) == 4  # 64 a batch


def test_a_first_use_build_in_a_log_prints_lines_with_an_eta(tmp_path, monkeypatch, caplog):
    from segresearch.tools.search.kb import index

    monkeypatch.setattr(index, "INDEX_LOG_EVERY_S", 0.0)
    with caplog.at_level(logging.WARNING, logger="segresearch.kb"):
        index.ensure_index(_corpus(tmp_path / "kb", 150), _Fake())
    lines = [r.getMessage() for r in caplog.records if "embedded" in r.getMessage()]
    assert lines[0].startswith("embedding kb (fake-progress): 64 of 150 embedded (42 %), about ")
    assert lines[0].endswith(" s left") and lines[-1].startswith("embedding kb (fake-progress): 150 of 150")


def test_a_first_use_build_in_a_terminal_draws_a_bar(tmp_path, monkeypatch):
    from segresearch.tools.search.kb import index

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Tty()
    monkeypatch.setattr("sys.stderr", err)
    index.ensure_index(_corpus(tmp_path / "kb", 70), _Fake())
    shown = err.getvalue()
    assert "embedding kb (fake-progress)" in shown and "70/70" in shown and "doc/s" in shown


def test_the_run_printer_turns_progress_into_lines_in_a_log(monkeypatch):
    from rich.console import Console

    from segresearch.cli import console

    clock = [100.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: clock[0])
    buf = io.StringIO()
    printer = console.RunPrinter(console=Console(file=io.StringIO()), err=Console(file=buf, width=200))
    for done, at in ((0, 0), (50, 2), (100, 6), (200, 12), (284, 14)):
        clock[0] = 100.0 + at
        printer.custom({"type": "progress", "step": "index", "label": "kb", "done": done, "total": 284})
    lines = buf.getvalue().strip().splitlines()
    assert lines == ["… index (kb): 100 of 284 docs (35 %), about 12 s left",
                     "… index (kb): 200 of 284 docs (70 %), about 6 s left",
                     "… index (kb): 284 of 284 docs (100 %)"]
    buf.truncate(0)
    buf.seek(0)
    for done, at in ((0, 20), (24, 21)):  # a short step: nothing in the log
        clock[0] = 100.0 + at
        printer.custom({"type": "progress", "step": "segment", "label": "grabcut", "done": done, "total": 24})
    assert buf.getvalue() == ""


def test_a_graph_run_streams_the_index_build_as_progress_events(tmp_path):
    """The run's first node opens the knowledge base; its first-use build comes out as
    ``progress`` events (step ``index``), which ``segresearch run`` draws as a bar."""
    from segresearch.agents.context import Context
    from segresearch.graphs.seg_research import graph

    kb = _corpus(tmp_path / "notes", 3)
    img = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (200, 200, 200)).save(img)
    ctx = Context(model=ReplayChatModel(turns=[ANSWER]), search="bm25", kb=str(kb), segmenter="none")
    # bm25 builds nothing; local builds an index with the default embedder on first use
    ctx_local = Context(model=ReplayChatModel(turns=[ANSWER]), search="local", kb=str(kb), segmenter="none")
    events = [c for c in graph.stream({"query": "q", "media": str(img)}, stream_mode="custom", context=ctx)]
    assert not [e for e in events if e.get("step") == "index"]
    events = [c for c in graph.stream({"query": "q", "media": str(img)}, stream_mode="custom",
                                      context=ctx_local)]
    index_events = [e for e in events if e.get("type") == "progress" and e.get("step") == "index"]
    assert index_events[0]["done"] == 0 and index_events[-1]["done"] == index_events[-1]["total"] == 3
    assert index_events[0]["label"] == "notes"
