"""Images outside the state (media references), Context validation and the serving path
policy, in process (the server-side checks are in test_server_deploy.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from langchain_core.load import dumpd
from langgraph.checkpoint.memory import InMemorySaver

from segresearch.agents.backends.replay import ReplayChatModel
from segresearch.agents.client_settings import validate_context
from segresearch.agents.content import block_image, block_url, is_image_block
from segresearch.agents.context import Context, ContextError
from segresearch.agents.path_policy import PathRefused, check_input
from segresearch.core.media import open_media, resize_square
from segresearch.core.media_store import MediaStore, get_store
from segresearch.graphs.seg_research import build_graph, graph
from segresearch.tools.keyframe import KEYFRAME_RESIZE

T = "<thinking>ok</thinking>\n"
TURNS = [T + "<keyframe> 6 </keyframe>",
         T + '<answer>{"bbox_2d": [100, 200, 300, 400], "point_2d": [200, 300]}</answer>']


def _images(messages) -> list[dict]:
    return [b for m in messages if not isinstance(m.content, str) for b in m.content if is_image_block(b)]


def test_state_holds_references_and_backends_get_the_exact_pixels(scene_dir):
    frames = str(scene_dir / "frames")
    saver = InMemorySaver()
    g = build_graph(checkpointer=saver)
    cfg = {"configurable": {"thread_id": "lean"}}
    out = g.invoke({"query": "the blue square", "media": frames}, cfg,
                   context=Context(model=ReplayChatModel(turns=TURNS), search="none", segmenter="none"))
    blocks = _images(out["messages"])
    assert len(blocks) == 7 and all(block_url(b).startswith("media-ref:") for b in blocks)
    media = open_media(frames)
    # the sampled frames and the keyframe, bit for bit as resized (no JPEG step), each with
    # its tool's filter (frames BICUBIC, the keyframe LANCZOS)
    want = [resize_square(media.frame(f), 448) for f in out["frame_ids"]] + [KEYFRAME_RESIZE(media.frame(6), 864)]
    for b, w in zip(blocks, want, strict=True):
        assert np.array_equal(np.asarray(block_image(b)), np.asarray(w.convert("RGB")))
    state_bytes = len(json.dumps(dumpd(g.get_state(cfg).values), default=str))
    assert state_bytes < 20_000  # a few KB of text, not base64 frames
    history = sum(len(json.dumps(dumpd(h.values), default=str)) for h in g.get_state_history(cfg))
    assert history < 50_000


def test_store_evicts_by_bytes_and_remakes_frames_from_their_recipe():
    store = MediaStore(max_bytes=3 * 32 * 32 * 3)
    rng = np.random.default_rng(1)
    from PIL import Image

    imgs = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(5)]
    made = []

    def recipe(i=0):
        made.append(i)
        return imgs[0]

    first = store.put(imgs[0], recipe)
    digests = [first] + [store.put(im) for im in imgs[1:]]
    assert store.stats()["images"] == 3 and store.stats()["bytes"] <= store.max_bytes
    assert np.array_equal(np.asarray(store.get(first)), np.asarray(imgs[0])) and made == [0]
    with pytest.raises(KeyError, match="no longer available"):
        store.get(digests[1])  # evicted, no folder, no recipe: a clear error, not wrong pixels
    assert store.put(imgs[4]) == digests[4]  # content-addressed: same pixels, same digest


def test_store_folder_serves_another_process(tmp_path):
    from PIL import Image

    img = Image.fromarray(np.arange(48 * 40 * 3, dtype=np.uint8).reshape(40, 48, 3))
    digest = MediaStore(tmp_path / "media").put(img)
    assert (tmp_path / "media" / digest[:2] / f"{digest}.png").is_file()
    code = (f"from segresearch.core.media_store import MediaStore; import numpy as np; "
            f"im = MediaStore({str(tmp_path / 'media')!r}).get({digest!r}); "
            f"print(int(np.asarray(im, dtype=np.int64).sum()))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == str(int(np.asarray(img, dtype=np.int64).sum())), res.stderr


def test_context_bounds_types_and_unknown_keys_are_refused():
    for bad, needle in [({"num_frames": 10_000}, "num_frames"), ({"frame_size": 4096}, "frame_size"),
                        ({"frame_size": "big"}, "frame_size"), ({"colour": "red"}, "unknown context key 'colour'"),
                        ({"model": 42}, "model"), ({"temperature": -1}, "temperature"),
                        ({"max_turns": 0}, "max_turns")]:
        with pytest.raises(ContextError) as e:
            validate_context(bad)
        assert any(needle in p for p in e.value.problems), (bad, e.value.problems)
    assert validate_context({"num_frames": 8, "max_response_tokens": None}).num_frames == 8
    with pytest.raises(ValueError, match="num_frames must be >= 1 and <= 64"):
        Context(num_frames=10_000)  # Python callers get the same bounds
    schema = graph.get_context_jsonschema()["properties"]
    assert schema["num_frames"]["maximum"] == 64 and schema["frame_size"]["maximum"] == 1536
    assert schema["request_timeout"]["exclusiveMinimum"] == 0 and "review" in schema


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A served deployment's environment: roots, an output root, and a secret outside."""
    root, out, outside = tmp_path / "root", tmp_path / "out", tmp_path / "outside"
    for d in (root, out, outside):
        d.mkdir()
    (outside / "secret.txt").write_text("TOP SECRET LINE\n")
    (outside / "c.json").write_text(json.dumps(TURNS))
    (root / "prompt.txt").write_text("You segment. {coord_note}")
    (root / "link.txt").symlink_to(outside / "secret.txt")
    monkeypatch.setenv("SEGRESEARCH_MEDIA_ROOTS", str(root))
    monkeypatch.setenv("SEGRESEARCH_OUTPUT_ROOT", str(out))
    return root, out, outside


def test_every_path_field_outside_the_roots_is_refused_without_a_leak(served, scene_dir):
    root, out, outside = served
    secret = str(outside / "secret.txt")
    dotdot = str(root / ".." / "outside" / "secret.txt")
    cases = {
        "system_prompt_file": [secret, dotdot, str(root / "link.txt"), str(outside / "missing.txt")],
        "kb": [str(outside), dotdot],
        "sam2_checkpoint": [secret],
        "model": [f"replay:{outside / 'c.json'}", f"hf:{outside}", "openai:m@http://169.254.169.254/v1"],
        "output_dir": [str(outside), "../outside"],
        "search_cache": [str(outside / "c.db")],
        "retriever_url": ["http://10.0.0.5:8001"],
        "allow_private_urls": [True],
    }
    messages = set()
    for name, values in cases.items():
        for v in values:
            with pytest.raises(PathRefused) as e:
                validate_context({name: v})
            text = str(e.value)
            assert "TOP SECRET" not in text and "exist" not in text and "No such file" not in text
            messages.add((name, text))
    # existing and missing files are refused with the same words
    missing = {t for n, t in messages if n == "system_prompt_file"}
    assert len(missing) == 1
    ok = validate_context({"system_prompt_file": str(root / "prompt.txt"), "output_dir": "run1"})
    assert ok.output_dir == "run1"
    for bad in ({"media": 42}, {"media": []}, {"query": 3, "media": "x"}):
        with pytest.raises(ContextError):
            check_input(bad)
    with pytest.raises(PathRefused):
        check_input({"media": str(root / "link.txt")})


def test_the_graph_applies_the_policy_itself(served, scene_dir, tmp_path):
    """A caller who bypasses validation (Python, or a server without the middleware) still
    cannot read outside the roots: the first node refuses before opening anything."""
    root, out, outside = served
    model = f"replay:{outside / 'c.json'}"
    res = graph.invoke({"query": "q", "media": str(root / "prompt.txt")},
                       context={"model": model, "search": "none"})
    assert res["stop_reason"] == "error:config" and "outside the allowed roots" in res["error"]
    res = graph.invoke({"query": "q", "media": str(root)},
                       context={"model": "replay:x.json", "system_prompt_file": str(root / "link.txt")})
    assert res["stop_reason"] == "error:config" and not res["messages"]
    assert "system_prompt_file" in res["error"]
    res = graph.invoke({"query": "q", "media": 42}, context={"model": "replay:x.json"})
    assert res["stop_reason"] == "error:media" and "path" in res["error"]


def test_nothing_is_written_without_an_output_dir(scene_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    out = graph.invoke({"query": "q", "media": str(scene_dir / "frames")},
                       context=Context(model=ReplayChatModel(turns=TURNS), search="none", segmenter="grabcut"))
    assert out["stop_reason"] == "answer" and out["masks_dir"] is None and out["run_dir"] is None
    assert list(tmp_path.iterdir()) == []
    seg = [e for e in out["events"] if e["type"] == "segment"]
    assert seg and "no output_dir" in seg[0]["skipped"]


def test_relative_output_dir_lands_under_the_output_root(served, scene_dir, monkeypatch):
    root, out, _ = served
    frames = root / "frames"
    frames.symlink_to(scene_dir / "frames")
    monkeypatch.setenv("SEGRESEARCH_MEDIA_ROOTS", f"{root}:{scene_dir}")
    (root / "c.json").write_text(json.dumps(TURNS))
    res = graph.invoke({"query": "q", "media": str(frames)},
                       context={"model": f"replay:{root / 'c.json'}", "search": "none",
                                "segmenter": "grabcut", "output_dir": "job-1"})
    assert res["run_dir"] == str(out / "job-1") and (out / "job-1" / "trajectory.json").is_file()
    assert len(list((out / "job-1" / "masks").iterdir())) == 12


def test_frames_shown_sheet_reads_references(scene_dir, tmp_path):
    out = graph.invoke({"query": "q", "media": str(scene_dir / "frames")},
                       context=Context(model=ReplayChatModel(turns=TURNS), search="none",
                                       segmenter="none", output_dir=str(tmp_path / "o")))
    assert (Path(out["run_dir"]) / "frames_shown.jpg").is_file()
    assert get_store().stats()["images"] >= 7
