"""The evaluation's written results beyond the numbers: the paper's table beside ours
(``--paper-table``), per-frame scores, one unit everywhere, where predictions came from,
and plots whose labels stay out of each other's way."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from segresearch.agents.context import Context
from segresearch.cli import main
from segresearch.eval import results as res
from segresearch.eval.datasets import ABILITIES, load_okvos
from segresearch.eval.metrics import boundary_f, region_j
from segresearch.eval.paper_table import PaperTableError, read_paper_table
from segresearch.eval.runner import evaluate
from segresearch.eval.spec import EvalError, EvalSpec
from segresearch.testing.okvos import make_synthetic_okvos, write_oracle_cassette
from segresearch.testing.oracle import GroundTruthSegmenter

CSV = """\ufeff# Seg-Research 4B, OK-VOS test (paper, table 2)
group,J&F,J,F
one-hop,60.1,58.0,62.2
Multi Hop,52.4%,50.3,54.5
relational,49.9,,
overall,55.3,53.4,57.2
"""


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ reading


def test_csv_and_json_tables_read_the_same(tmp_path):
    csv = read_paper_table(_write(tmp_path / "p.csv", CSV), "okvos").match_groups(ABILITIES)
    js = read_paper_table(_write(tmp_path / "p.json", json.dumps({
        "one hop": {"J&F": 60.1, "J": 58.0, "F": 62.2},
        "multi-hop": {"j&f": "52.4", "J": 50.3, "F": 54.5},
        "relational": {"J&F": 49.9, "J": None, "F": "-"},
        "Overall": {"J&F": 55.3, "J": 53.4, "F": 57.2},
    })), "okvos").match_groups(ABILITIES)
    assert csv.rows == js.rows
    assert list(csv.rows) == ["one-hop", "multi-hop", "relational", "overall"]
    assert csv.rows["relational"] == {"J&F": pytest.approx(0.499)}  # empty cells: not reported
    assert csv.rows["overall"]["F"] == pytest.approx(0.572)
    assert csv.file == str((tmp_path / "p.csv").resolve())
    images = read_paper_table(_write(tmp_path / "i.csv", "group,gIoU,cIoU\noverall,61.3,\n"),
                              "images")
    assert images.match_groups(["reason"]).rows == {"overall": {"gIoU": pytest.approx(0.613)}}


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("empty.csv", "", "no header row"),
        ("noheader.csv", "one-hop,1,2,3\n", "the first row must be the header"),
        ("metric.csv", "group,J&F,mIoU\n", "unknown metric 'mIoU'; use J&F, J, F"),
        ("nometric.csv", "group\n", "names no metric"),
        ("twice.csv", "group,J,J\n", "a metric column appears twice"),
        ("wide.csv", "group,J\noverall,50,60\n", "line 2: 2 values for 1 metric columns"),
        ("text.csv", "group,J\noverall,high\n", "line 2 (overall, J): 'high' is not a number"),
        ("big.csv", "group,J\noverall,120\n", "120 is not a percentage between 0 and 100"),
        ("neg.csv", "group,J\noverall,-3\n", "-3 is not a percentage"),
        ("nan.csv", "group,J\noverall,nan\n", "nan is not a percentage"),
        ("fractions.csv", "group,J&F\none-hop,0.61\noverall,0.55\n", "looks like fractions"),
        ("dup.csv", "group,J\nOverall,50\noverall,51\n", "group 'overall' appears twice"),
        ("nothing.csv", "group,J\noverall,\n", "holds no numbers"),
        ("nogroup.csv", "group,J\n,50\n", "a row has no group name"),
        ("list.json", "[1, 2]", "expected an object of groups"),
        ("flat.json", '{"overall": 55.1}', "group 'overall' must be an object of metrics"),
        ("bool.json", '{"overall": {"J": true}}', "True is not a number"),
        ("broken.json", '{"overall": {"J": 5', "not JSON"),
        ("latin1.csv", "group,J\nüb,50\n".encode("latin-1"), "not UTF-8 text"),
    ],
)
def test_a_bad_table_is_one_line_naming_the_file(tmp_path, name, content, says):
    path = _write(tmp_path / name, content)
    with pytest.raises(PaperTableError) as e:
        read_paper_table(path, "okvos")
    msg = str(e.value)
    assert msg.startswith(f"--paper-table {path}") and says in msg and "\n" not in msg


def test_files_that_are_not_a_table(tmp_path):
    with pytest.raises(PaperTableError, match="file not found"):
        read_paper_table(tmp_path / "missing.csv", "okvos")
    with pytest.raises(PaperTableError, match="not a regular file"):
        read_paper_table(tmp_path, "okvos")
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)  # would block in open() if it were opened
    with pytest.raises(PaperTableError, match="not a regular file"):
        read_paper_table(fifo, "okvos")
    huge = _write(tmp_path / "huge.csv", "group,J\n" + "x" * (1 << 20))
    with pytest.raises(PaperTableError, match="is not a small table"):
        read_paper_table(huge, "okvos")
    with pytest.raises(PaperTableError, match=r"unknown metric 'J&F'; use gIoU, cIoU"):
        read_paper_table(_write(tmp_path / "v.csv", CSV), "images")


def test_a_group_we_never_report_is_refused_with_ours_listed(tmp_path):
    table = read_paper_table(_write(tmp_path / "p.csv", "group,J&F\ntwo-hop,50\n"), "okvos")
    with pytest.raises(PaperTableError) as e:
        table.match_groups(ABILITIES)
    assert "unknown group 'two-hop'; groups of this evaluation: one-hop, multi-hop, " \
        "relational, in-video, overall" in str(e.value)


# ------------------------------------------------------------------------------ command line


def test_cli_refuses_a_bad_table_before_anything_else(tmp_path, capsys):
    bad = _write(tmp_path / "p.csv", "group,J&F\noverall,0.55\n")
    out = tmp_path / "out"
    rc = main(["eval", "okvos", "--root", str(tmp_path / "no-data"), "--split", "test",
               "--predictions", str(tmp_path / "none.jsonl"), "--out", str(out),
               "--paper-table", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"error: --paper-table {bad}") and "fractions" in err[0]
    assert not out.exists()


@pytest.fixture(scope="module")
def okvos(tmp_path_factory):
    root = tmp_path_factory.mktemp("okvos")
    make_synthetic_okvos(root, split="test", n_videos=1, n_frames=6)
    cassette = write_oracle_cassette(root, "test", root / "cassette.json")
    return root, cassette


def _spec(okvos, out: Path, **kw) -> EvalSpec:
    root, cassette = okvos
    return EvalSpec(dataset="okvos", split="test", root=str(root), out=str(out),
                    models=[f"replay:{cassette}"], segmenter=GroundTruthSegmenter(),
                    context=Context(run_segmentation=False, search="none"), concurrency=4,
                    trajectories=False, html=False, progress=False, **kw)


def test_unknown_group_is_refused_before_any_query_runs(okvos, tmp_path):
    paper = _write(tmp_path / "p.csv", "group,J&F\none-hop,50\nOne Hop,51\n")
    with pytest.raises(EvalError, match="group 'One Hop' appears twice"):
        evaluate(_spec(okvos, tmp_path / "a", paper_table=str(paper)))
    paper = _write(tmp_path / "q.csv", "group,J&F\nzero-hop,50\n")
    with pytest.raises(EvalError, match="unknown group 'zero-hop'"):
        evaluate(_spec(okvos, tmp_path / "b", paper_table=str(paper)))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_paper_numbers_and_per_frame_scores_in_the_results(okvos, tmp_path):
    root, _ = okvos
    paper = _write(tmp_path / "p.csv", CSV)
    out = tmp_path / "eval"
    r = evaluate(_spec(okvos, out, paper_table=str(paper)))
    assert r["paper"]["file"] == str(paper.resolve())
    assert r["paper"]["rows"]["multi-hop"]["J&F"] == pytest.approx(0.524)
    saved = json.loads((out / "results.json").read_text())
    assert saved["paper"] == r["paper"]

    # per-frame J and F are those of the DAVIS metrics on each annotated frame
    q = next(q for q in load_okvos(root, "test") if q.ability == "relational")
    entry = next(e for e in saved["queries"] if e["id"] == q.id)
    names = sorted(p.name for p in Path(q.gt).glob("*.png"))
    gt = np.stack([cv2.imread(str(Path(q.gt) / n), 0) > 0 for n in names])
    pred = np.stack([cv2.imread(str(out / entry["seg_dir"] / n), 0) > 0 for n in names])
    pf = entry["per_frame"]
    assert pf["frame"] == [Path(n).stem for n in names]
    assert pf["J"] == pytest.approx(region_j(gt, pred).tolist(), abs=1e-4)
    assert pf["F"] == pytest.approx(boundary_f(gt, pred).tolist(), abs=1e-4)
    assert np.mean(pf["J"]) == pytest.approx(entry["J"], abs=1e-4)
    assert entry["gt"] == str(Path(q.gt).resolve())

    md = (out / "results.md").read_text()
    ours = r["overall"]["J&F"]
    line = next(x for x in md.splitlines() if x.startswith("| overall |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:4] == [res.pct(ours), "55.3", res.pct_diff(ours, 0.553)]
    assert md.index("## Against the paper") < md.index("## By number of searches")
    rel = next(x for x in md.splitlines() if x.startswith("| relational |") and "49.9" in x)
    assert rel.endswith("| 49.9 | " + res.pct_diff(r["by_ability"]["relational"]["J&F"], 0.499)
                        + " | " + res.pct(r["by_ability"]["relational"]["J"]) + " | — | — | "
                        + res.pct(r["by_ability"]["relational"]["F"]) + " | — | — |")


# ------------------------------------------------------------------------------ results.md


def _results(**settings) -> dict:
    return {
        "dataset": {"name": "okvos", "split": "test", "queries": 2},
        "settings": {"search": "serper", "kb": "", "num_frames": 6, "max_turns": 6,
                     "segmenter": {"name": "sam2"}, "coord_style": "qwen3",
                     "keyframe_size": 864, **settings},
        "created": "2026-12-01T00:00:00Z", "metric": "J&F",
        "overall": {"J": 0.5555, "F": 0.4444, "J&F": 0.49995, "n": 2},
        "by_ability": {"one-hop": {"J": 0.5555, "F": 0.4444, "J&F": 0.49995, "n": 2}},
        "by_searches": {"1": {"J": 0.5555, "F": 0.4444, "J&F": 0.49995, "n": 2}},
        "counts": {"queries": 2, "predicted": 2, "missing_predictions": 0, "missing_masks": 0,
                   "missing_frames": 0, "no_usable_answer": 0, "rule_differs": 0,
                   "stop_reasons": {"answer": 2}},
        "queries": [],
    }


def test_markdown_names_where_predictions_came_from():
    md = res.results_markdown(_results(predictions="/runs/dump/0.jsonl", models=None))
    head = md.split("\n\n")[1]
    assert "predictions read from /runs/dump/0.jsonl (no model was run and nothing was " \
        "searched by this evaluation)" in head
    assert "serper" not in md and "search:" not in head and "segmenter: sam2" in head
    md = res.results_markdown(_results(models=["openai:m@http://h/v1"], predictions=None))
    assert "predictions made by openai:m@http://h/v1, searching with serper" in md
    assert "- search: serper" in md


def test_percent_with_one_decimal_and_signed_differences():
    assert [res.pct(v) for v in (0.49995, 0.5555, 1, 0, None, float("nan"), "x")] == [
        "50.0", "55.5", "100.0", "0.0", "—", "—", "—"]
    assert res.pct_diff(0.5555, 0.553) == "+0.2"
    assert res.pct_diff(0.5, 0.553) == "-5.3"
    assert res.pct_diff(0.5, 0.5004) == "±0.0"
    assert res.pct_diff(0.5, None) == "—"
    assert res.pct_diff(0.4, 0.55, minus="\u2212") == "\u221215.0"
    md = res.results_markdown(_results(models=["m"]))
    assert "| one-hop | 2 | 50.0 | 55.5 | 44.4 |" in md and "0.5" not in md.split("## Counts")[0]


# ------------------------------------------------------------------------------ plots


def test_plot_labels_keep_clear_of_the_top_and_of_each_other(tmp_path, monkeypatch):
    """Bars near 100 % with the paper's ticks just above and below them: every label stays
    inside the axes, none overlaps another or a paper tick, and legends sit below."""
    figs: dict[str, object] = {}

    def keep(fig, path):
        fig.canvas.draw()
        figs[path.name] = fig

    monkeypatch.setattr(res, "_save", keep)
    r = _results(models=["m"])
    groups = {a: {"J": 0.99, "F": 1.0, "J&F": 0.995, "n": 3} for a in ABILITIES}
    groups["one-hop"] = {"J": 0.62, "F": 0.6, "J&F": 0.61, "n": 3}
    r["by_ability"] = groups
    r["overall"] = {"J": 0.9, "F": 0.9, "J&F": 0.9, "n": 12}
    r["paper"] = {"file": "p.csv", "rows": {"one-hop": {"J": 0.63, "F": 0.58, "J&F": 0.61},
                                            "overall": {"J&F": 0.97}}}
    r["queries"] = [{"J&F": v, "num_search": n} for v, n in ((1.0, 0), (0.99, 1), (0.2, 1))]
    r["by_searches"] = {"0": {"J&F": 1.0, "J": 1.0, "F": 1.0, "n": 1},
                        "1": {"J&F": 0.595, "J": 0.6, "F": 0.59, "n": 2}}
    assert res.write_plots(tmp_path, r) == ["plots/by_category.png", "plots/score_vs_searches.png"]
    assert set(figs) == {"by_category.png", "score_vs_searches.png"}

    for name, fig in figs.items():
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        box = ax.get_window_extent(renderer)
        assert all(leg.get_window_extent(renderer).y1 <= box.y0 for leg in fig.legends), name
        assert not ax.get_legend(), name  # nothing drawn over the data
        labels = [t.get_window_extent(renderer) for t in ax.texts]
        assert labels, name
        for i, a in enumerate(labels):
            assert box.y0 <= a.y0 and a.y1 <= box.y1, (name, ax.texts[i].get_text())
            for b in labels[i + 1 :]:
                assert not a.overlaps(b), name
        assert ax.title.get_window_extent(renderer).y0 >= box.y1 - 1, name
        if name == "by_category.png":
            ticks = [seg for coll in ax.collections for seg in coll.get_segments()]
            assert len(ticks) == 4  # one-hop J, F, J&F and overall J&F
            for seg in ticks:
                (x0, y), (x1, _) = ax.transData.transform(seg)
                for t in labels:
                    if t.x0 < x1 and x0 < t.x1:
                        assert not (t.y0 < y < t.y1), "a label sits on a paper tick"
