"""``eval`` and ``segment`` tell the truth about their inputs: a setup that cannot work is
refused before the first query (one ``error:`` line, exit 2, no folder written), a run
where every query failed exits non-zero, unreadable ground truth is an error rather than
a smaller n, and a resumed folder compares file settings as the files they name."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from segresearch.agents.context import Context
from segresearch.cli import main
from segresearch.eval.runner import evaluate
from segresearch.eval.spec import EvalError, EvalSpec, resolve_spec, settings
from segresearch.testing.okvos import make_synthetic_okvos, oracle_turns, write_oracle_cassette
from segresearch.testing.oracle import GroundTruthSegmenter


@pytest.fixture(scope="module")
def okvos(tmp_path_factory):
    """One small synthetic video (16 queries, all four abilities), a cassette answering
    every query from its ground truth, and a one-passage knowledge base."""
    root = tmp_path_factory.mktemp("okvos")
    make_synthetic_okvos(root, split="test", n_videos=1, n_frames=6, size=(96, 72))
    cassette = write_oracle_cassette(root, "test", root / "cassette.json")
    kb = root / "kb"
    kb.mkdir()
    (kb / "text_corpus.jsonl").write_text(
        json.dumps({"id": 0, "contents": "Tessellate Cup\nWon by the Cobalt Squares."}) + "\n")
    return {"root": root, "cassette": cassette, "kb": kb,
            "df": pd.read_parquet(root / "test.parquet")}


@pytest.fixture(autouse=True)
def _no_search_settings_from_env(monkeypatch):
    for name in ("SEGRESEARCH_KB", "SEGRESEARCH_SEARCH", "SEGRESEARCH_RETRIEVER_URL",
                 "SERPER_API_KEY", "TAVILY_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def _spec(okvos, out: Path, **kw) -> EvalSpec:
    kw.setdefault("models", [f"replay:{okvos['cassette']}"])
    kw.setdefault("context", Context(run_segmentation=False, search="bm25", kb=str(okvos["kb"])))
    return EvalSpec(dataset="okvos", root=str(okvos["root"]), split="test", out=str(out),
                    segmenter=GroundTruthSegmenter(), concurrency=4, html=False, progress=False,
                    trajectories=False, **kw)


def _run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


# ------------------------------------------------------- search backend requirements


@pytest.mark.parametrize("search, kb, expect", [
    ("local", "", "no knowledge base configured"),
    ("bm25", "", "no knowledge base configured"),
    ("hybrid", "", "no knowledge base configured"),
    ("bm25", "EMPTY", "no text_corpus.jsonl"),
    ("local", "MISSING", "knowledge base folder not found"),
    ("retriever", "", "no server configured"),
    ("serper", "", "SERPER_API_KEY"),
    ("tavily", "", "TAVILY_API_KEY"),
])
def test_a_search_backend_without_what_it_needs_is_refused_before_any_query(
        okvos, tmp_path, search, kb, expect):
    (tmp_path / "EMPTY").mkdir()
    kb_path = str(tmp_path / kb) if kb else ""
    out = tmp_path / "eval"
    spec = _spec(okvos, out, context=Context(run_segmentation=False, search=search, kb=kb_path))
    with pytest.raises(EvalError, match=expect) as err:
        evaluate(spec)
    assert f"search backend {search!r}" in str(err.value)
    assert "12 of the 16 queries search" in str(err.value)  # in-video questions never do
    assert not out.exists()  # nothing predicted, nothing pinned


def test_search_is_not_checked_where_no_query_searches(okvos, tmp_path):
    """In-video questions run without search (as published) and a predictions file runs
    no model: neither needs a knowledge base."""
    no_kb = Context(run_segmentation=False, search="local", kb="")
    in_video = okvos["df"].index[okvos["df"]["ability"] == "in-video"]
    dump = tmp_path / "dump.jsonl"
    rec = okvos["df"].iloc[int(in_video[0])].to_dict()
    dump.write_text(json.dumps({"id": rec["id"], "output": "\n".join(
        oracle_turns(okvos["root"], "test", rec))}) + "\n")
    res = evaluate(_spec(okvos, tmp_path / "p", models=[], predictions=str(dump), context=no_kb,
                         limit=int(in_video[0]) + 1))
    assert res["counts"]["predicted"] == 1


def test_eval_cli_refuses_the_default_search_without_a_kb_in_one_line(okvos, tmp_path, capsys):
    out = tmp_path / "e"
    code, stdout, err = _run_cli(
        capsys, "eval", "okvos", "--root", str(okvos["root"]), "--split", "test", "--out", str(out),
        "--model", f"replay:{okvos['cassette']}", "--segmenter", "grabcut", "--no-progress")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: search backend 'local'") and "--kb" in lines[0]
    assert "--search none" in lines[0] and not out.exists() and "J&F" not in stdout


# ------------------------------------------------------------------ predictions files


def _bad_predictions(tmp_path: Path, okvos) -> dict[str, tuple[Path, str]]:
    first = okvos["df"]["id"].iloc[0]
    files = {
        "empty": ("", "the file is empty"),
        "blank lines": ("\n\n  \n", "the file is empty"),
        "garbage": ("not json\n{also not\n", "line 1: not JSON"),
        "not utf-8": ("caf\udce9\n", "line 1: not UTF-8 text"),
        "objects without ids": ('{"output": "x"}\n[1, 2]\n', 'line 1: not a JSON object with an "id"'),
        "torn only line": ('{"id": "' + first + '", "outp', "not a complete JSON row"),
        "ids without outputs": (json.dumps({"id": first, "answer": None}) + "\n", 'has an "output" text'),
    }
    out = {}
    for name, (text, expect) in files.items():
        p = tmp_path / (name.replace(" ", "_") + ".jsonl")
        p.write_bytes(text.encode("utf-8", "surrogateescape"))
        out[name] = (p, expect)
    out["a folder"] = (tmp_path, "is not a regular file")
    out["missing"] = (tmp_path / "nope.jsonl", "predictions file not found")
    return out


def test_predictions_files_with_no_usable_row_are_refused_alike_by_eval_and_segment(
        okvos, tmp_path, capsys):
    (tmp_path / "files").mkdir()
    for name, (path, expect) in _bad_predictions(tmp_path / "files", okvos).items():
        out = tmp_path / f"e-{name}"
        with pytest.raises(EvalError, match=expect):
            evaluate(_spec(okvos, out, models=[], predictions=str(path)))
        assert not out.exists(), name
        code, _, err = _run_cli(capsys, "eval", "okvos", "--root", str(okvos["root"]), "--split",
                                "test", "--out", str(out), "--predictions", str(path),
                                "--segmenter", "grabcut", "--no-progress")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and expect in lines[0], (name, err)
        assert str(path.name) in lines[0] and not out.exists(), name
        code, _, err2 = _run_cli(capsys, "segment", str(path), "--root", str(okvos["root"] / "test"),
                                 "--out", str(tmp_path / f"s-{name}"), "--segmenter", "grabcut")
        assert code == 2 and err2.strip().splitlines() == lines, (name, err2)


def test_predictions_only_for_ids_unknown_to_the_split_are_refused(okvos, tmp_path, capsys):
    df = okvos["df"]
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"id": f"elsewhere_{i}", "output": ""}) + "\n" for i in range(3)))
    out = tmp_path / "e"
    with pytest.raises(EvalError, match="none of its 3 prediction rows has an id of split 'test'") as err:
        evaluate(_spec(okvos, out, models=[], predictions=str(other)))
    assert "'elsewhere_0'" in str(err.value) and repr(str(df["id"].iloc[0])) in str(err.value)
    assert not out.exists()
    # with --limit, ids beyond the first N queries are unknown to this run
    late = tmp_path / "late.jsonl"
    late.write_text(json.dumps({"id": df["id"].iloc[-1], "output": ""}) + "\n")
    with pytest.raises(EvalError, match=r"the first 2 queries of split 'test'.*\(--limit\)"):
        evaluate(_spec(okvos, out, models=[], predictions=str(late), limit=2))
    code, _, err = _run_cli(capsys, "eval", "okvos", "--root", str(okvos["root"]), "--split", "test",
                            "--out", str(out), "--predictions", str(other), "--segmenter", "grabcut")
    assert code == 2 and "none of its 3 prediction rows" in err and not out.exists()


# -------------------------------------------------------------------- failed queries


def test_every_query_failing_exits_non_zero_and_some_failing_is_counted(okvos, tmp_path, capsys):
    df = okvos["df"]
    first = df.iloc[0].to_dict()
    answers_first = tmp_path / "one.json"  # turns for the first question only
    answers_first.write_text(json.dumps({"queries": {
        first["question"]: oracle_turns(okvos["root"], "test", first)}}))
    nothing = tmp_path / "none.json"  # answers only a question the set does not ask
    nothing.write_text(json.dumps({"queries": {"what is elsewhere?": ["<thinking>x</thinking>"]}}))
    base = ["eval", "okvos", "--root", str(okvos["root"]), "--split", "test", "--search", "bm25",
            "--kb", str(okvos["kb"]), "--segmenter", "grabcut", "--no-progress", "--no-html",
            "--no-trajectories", "--limit", "3"]
    code, stdout, err = _run_cli(capsys, *base, "--out", str(tmp_path / "all"),
                                 "--model", f"replay:{nothing}")
    assert code == 1, err
    assert "error: every query that ran failed (3 of 3: error:model 3; e.g." in err
    assert "--retry-errors" in err and "results:" in stdout  # the folder is still there to read
    code, _, err = _run_cli(capsys, *base, "--out", str(tmp_path / "some"),
                            "--model", f"replay:{answers_first}")
    assert code == 0, err
    assert "warning: 2 of 3 queries failed (error:model 2; e.g." in err and "error:" not in err.replace(
        "error:model", "")
    # a predictions file whose rows all record a failure: the same verdict, without
    # advice to rerun a model that this command does not run
    failed = tmp_path / "failed.jsonl"
    failed.write_text("".join(json.dumps({"id": i, "output": "", "stop_reason": "error:model",
                                          "error": "HTTP 500\nfrom the server"}) + "\n"
                              for i in df["id"].iloc[:2]))
    code, _, err = _run_cli(capsys, "eval", "okvos", "--root", str(okvos["root"]), "--split", "test",
                            "--out", str(tmp_path / "file"), "--predictions", str(failed),
                            "--segmenter", "grabcut", "--no-progress", "--no-html", "--limit", "2")
    assert code == 1 and "every query that ran failed (2 of 2" in err
    assert "HTTP 500 from the server" in err and "--retry-errors" not in err


# --------------------------------------------------------------------- flag values


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_limit_below_one_is_a_flag_error(okvos, tmp_path, capsys, limit):
    code, _, err = _run_cli(capsys, "eval", "okvos", "--root", str(okvos["root"]), "--split", "test",
                            "--out", str(tmp_path / "e"), "--model", f"replay:{okvos['cassette']}",
                            "--limit", limit)
    assert code == 2 and err.strip() == (
        f"error: --limit must be at least 1 (the number of queries to run); got {limit}")
    with pytest.raises(EvalError, match="--limit must be at least 1"):
        evaluate(_spec(okvos, tmp_path / "e", limit=int(limit)))
    assert not (tmp_path / "e").exists()


# --------------------------------------------------------- resume and file settings


def test_resume_compares_file_settings_after_resolving_them(okvos, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "demo_kb").symlink_to(okvos["kb"], target_is_directory=True)
    (work / "c.json").symlink_to(okvos["cassette"])
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path))
    out = tmp_path / "eval"

    def run(kb: str, model: str = "replay:c.json", root: str | None = None) -> dict:
        ctx = Context(run_segmentation=False, search="bm25", kb=kb)
        spec = _spec(okvos, out, models=[model], context=ctx, limit=1)
        if root is not None:
            spec.root = root
        return evaluate(spec)

    first = run("demo_kb")
    recorded = json.loads((out / "eval_config.json").read_text())
    assert recorded["kb"] == str(okvos["kb"].resolve()) == first["settings"]["kb"]
    assert recorded["models"] == [f"replay:{okvos['cassette'].resolve()}"]
    # the same folder typed otherwise: absolute, through the link, with ~, with a slash
    rel_root = os.path.relpath(okvos["root"], work)
    for kb, model, root in [(str(okvos["kb"]), f"replay:{okvos['cassette']}", None),
                            (str(work / "demo_kb"), "replay:./c.json", rel_root),
                            ("~/work/demo_kb/", "replay:~/work/c.json", rel_root + "/")]:
        run(kb, model, root)
    # another knowledge base is another setting
    other = tmp_path / "other_kb"
    other.mkdir()
    (other / "text_corpus.jsonl").write_text(json.dumps({"id": 0, "contents": "x\ny"}) + "\n")
    with pytest.raises(EvalError, match="other settings.*kb"):
        run(str(other))
    # a folder written before paths were resolved (kb and model as typed) still resumes
    recorded.update(kb="demo_kb", models=["replay:c.json"], root=rel_root)
    (out / "eval_config.json").write_text(json.dumps(recorded))
    run("~/work/demo_kb")


def test_the_resolved_path_is_the_one_used(okvos, tmp_path, monkeypatch):
    """What is compared is what is opened: the run's Context, the model spec and the data
    root all carry the resolved form that eval_config.json records."""
    monkeypatch.chdir(okvos["root"])
    spec = _spec(okvos, tmp_path / "e", models=["replay:cassette.json"],
                 context=Context(run_segmentation=False, search="bm25", kb="kb",
                                 system_prompt_file="~/p.txt", search_cache="off"))
    spec.root = "."
    used = resolve_spec(spec)
    recorded = settings(used, GroundTruthSegmenter())
    assert used.context.kb == recorded["kb"] == str(okvos["kb"].resolve())
    assert used.context.system_prompt_file == recorded["system_prompt_file"] == str(
        Path("~/p.txt").expanduser().resolve())
    assert used.context.search_cache == "off"  # a switch, not a file
    assert used.root == recorded["root"] == str(okvos["root"].resolve())
    assert list(used.models) == recorded["models"] == [f"replay:{okvos['cassette'].resolve()}"]


# ------------------------------------------------------------------- ground truth


def _image_set(root: Path) -> list[dict]:
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(3):
        cv2.imwrite(str(root / f"im{i}.png"), np.full((40, 60, 3), 40 * i, np.uint8))
        mask = np.zeros((40, 60), np.uint8)
        mask[5:20, 5:30] = 255
        cv2.imwrite(str(root / f"im{i}_mask.png"), mask)
        items.append({"id": f"im{i}", "image": f"im{i}.png", "mask": f"im{i}_mask.png",
                      "question": f"thing {i}"})
    return items


def _write_manifest(root: Path, items: list[dict]) -> None:
    (root / "queries.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))


@pytest.mark.parametrize("damage, expect", [
    ("empty", "im1_mask.png cannot be read as an image"),
    ("garbage", "im1_mask.png cannot be read as an image"),
    ("wrong size", "im1_mask.png is 30x20 but its image"),
    ("folder", "mask " + "{root}/im1_mask.png is not a regular file"),
    ("ignore missing", "ignore mask not found"),
    ("ignore wrong size", "im1_ignore.png is 30x20 but its image"),
])
def test_image_ground_truth_that_cannot_be_used_is_an_error_naming_the_file(
        tmp_path, capsys, damage, expect):
    root = tmp_path / "imgs"
    items = _image_set(root)
    mask = root / "im1_mask.png"
    if damage == "empty":
        mask.write_bytes(b"")
    elif damage == "garbage":
        mask.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    elif damage == "wrong size":
        cv2.imwrite(str(mask), np.zeros((20, 30), np.uint8))
    elif damage == "folder":
        mask.unlink()
        mask.mkdir()
    elif damage == "ignore missing":
        items[1]["ignore"] = "im1_ignore.png"
    elif damage == "ignore wrong size":
        cv2.imwrite(str(root / "im1_ignore.png"), np.zeros((20, 30), np.uint8))
        items[1]["ignore"] = "im1_ignore.png"
    _write_manifest(root, items)
    cassette = tmp_path / "c.json"
    cassette.write_text(json.dumps({"queries": {"thing 1": ["<thinking>x</thinking>"]}}))
    out = tmp_path / "e"
    expect = expect.format(root=root)
    with pytest.raises(EvalError, match=r"query (im1|2): ") as err:  # by id, or manifest line
        evaluate(EvalSpec(dataset="images", root=str(root), out=str(out),
                          models=[f"replay:{cassette}"], segmenter=GroundTruthSegmenter(),
                          context=Context(run_segmentation=False, search="none"),
                          html=False, progress=False))
    assert expect in str(err.value)
    assert not out.exists()  # refused before the first query, not a smaller n afterwards
    code, stdout, stderr = _run_cli(capsys, "eval", "images", "--root", str(root), "--out", str(out),
                                    "--model", f"replay:{cassette}", "--search", "none",
                                    "--segmenter", "grabcut")
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and expect in lines[0] and not stdout, stderr


def test_several_queries_with_bad_ground_truth_are_counted(tmp_path):
    root = tmp_path / "imgs"
    items = _image_set(root)
    (root / "im0_mask.png").write_bytes(b"")
    cv2.imwrite(str(root / "im2_mask.png"), np.zeros((20, 30), np.uint8))
    _write_manifest(root, items)
    with pytest.raises(EvalError, match=r"query im0: .*im0_mask\.png.*\(2 of the 3 queries have "):
        evaluate(EvalSpec(dataset="images", root=str(root), out=str(tmp_path / "e"),
                          models=["replay:x.json"], segmenter=GroundTruthSegmenter(),
                          context=Context(run_segmentation=False, search="none"),
                          html=False, progress=False))


def test_video_ground_truth_folders_are_checked_before_any_query(okvos, tmp_path):
    df = okvos["df"]
    mapping = [[i, str(okvos["root"] / "test" / "Annotations" / v / str(o)), a]
               for i, v, o, a in zip(df["id"], df["video"], df["oid"], df["ability"], strict=True)]
    mapping[1][1] = str(tmp_path / "missing")
    empty = tmp_path / "no_pngs"
    empty.mkdir()
    (empty / "00000.jpg").write_bytes(b"")
    mapping[2][1] = str(empty)
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(mapping))
    out = tmp_path / "e"
    with pytest.raises(EvalError, match=rf"query {df['id'].iloc[1]}: ground-truth folder not found: "
                                        r".*missing \(2 of the 16 queries"):
        evaluate(_spec(okvos, out, meta_mapping=str(meta)))
    assert not out.exists()
    mapping[1][1] = mapping[0][1]
    meta.write_text(json.dumps(mapping))
    with pytest.raises(EvalError, match=r"no ground-truth masks \(\*\.png\) in .*no_pngs"):
        evaluate(_spec(okvos, out, meta_mapping=str(meta)))
    (empty / "00003.png").write_bytes(b"")  # an empty frame among the masks
    with pytest.raises(EvalError, match=r"ground-truth mask .*no_pngs/00003\.png cannot be read"):
        evaluate(_spec(okvos, out, meta_mapping=str(meta)))
    assert not out.exists()
