"""Shared fixtures: a synthetic clip with known masks and a small knowledge base."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from segresearch.testing.scenes import (
    inner_point,
    mask_box,
    render_scene,
    write_frames,
    write_masks,
)
from segresearch.tools.segmenters import Prompt

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """Indexes built on first use and other caches go to a folder of the test session, never
    into the user's ~/.cache (subprocesses inherit it)."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture()
def fresh_media_store():
    """The process-wide media store made anew from the environment the test sets (call
    ``media_store.get_store()`` after setting it), and dropped again afterwards so that later
    tests do not keep a store pointing into this test's folders."""
    from segresearch.core import (
        media_store,  # noqa: F401 - registers "media.store" on import
        shared_cache,
    )

    shared_cache.clear("media.store")
    yield
    shared_cache.clear("media.store")


@pytest.fixture(scope="session")
def scene_dir(tmp_path_factory) -> Path:
    """12 frames, 160×120, four shapes; masks of the blue square under masks/."""
    root = tmp_path_factory.mktemp("scene")
    frames, masks = render_scene(n_frames=12, size=(160, 120))
    write_frames(frames, root / "frames")
    write_masks(masks["blue square"], root / "masks")
    np.save(root / "blue_square.npy", masks["blue square"])
    return root


@pytest.fixture(scope="session")
def kb_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kb")
    docs = [
        "Zephyr Prize 2030\nThe Zephyr Prize 2030 went to the Blue Square collective.",
        "Blue Square collective\nAn art group whose logo is a blue square.",
        "Red Circle society\nA club whose symbol is a red circle; it lost the Zephyr Prize.",
        "Unrelated\nNothing about prizes here at all.",
    ]
    with (root / "text_corpus.jsonl").open("w") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": i, "contents": d}) + "\n")
    from PIL import Image

    (root / "images").mkdir()
    Image.new("RGB", (40, 30), (30, 60, 220)).save(root / "images" / "blue.png")
    Image.new("RGB", (40, 30), (220, 30, 30)).save(root / "images" / "red.png")
    with (root / "image_corpus.jsonl").open("w") as f:
        f.write(json.dumps({"id": 0, "name": "Blue Square logo", "image_path": "images/blue.png"}) + "\n")
        f.write(json.dumps({"id": 1, "name": "Red Circle symbol", "image_path": "images/red.png"}) + "\n")
    return root


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repository (real footage, images, a knowledge base): the one
    place tests find it. CI has it; a bare checkout skips what needs it."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED


@pytest.fixture(scope="session")
def shared_path(shared_dir: Path):
    """``shared_path("data", "videos", "dog.mp4")``: a path in ``../shared``, or a skip
    naming what is missing."""

    def find(*parts: str) -> Path:
        p = shared_dir.joinpath(*parts)
        if not p.exists():
            pytest.skip(f"{p} is not present")
        return p

    return find


@pytest.fixture(scope="session")
def pg_services(tmp_path_factory):
    """One throwaway PostgreSQL cluster and one Redis for the session (Debian's packages);
    each deployment takes a database and a Redis database number of its own
    (``segresearch.testing.databases.new_deployment``). Skips when the servers are not installed."""
    from segresearch.testing.databases import ServiceUnavailable, postgres_server, redis_server

    tmp = tmp_path_factory.mktemp("services")
    try:
        with postgres_server(tmp / "pg") as pg, redis_server(tmp / "redis") as redis:
            yield {"pg": pg, "redis": redis, "n": 0}
    except ServiceUnavailable as e:
        pytest.skip(str(e))



@pytest.fixture()
def own_hydra_state():
    """The test starts without Hydra's global state and leaves whatever was there before
    (e.g. sam2's, when the suite imported it) as it found it. Hydra is imported here, not at
    the top: only the trainer's tests need it."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    saved = get_gh_backup()
    GlobalHydra.instance().clear()
    yield
    restore_gh_from_backup(saved)


@pytest.fixture(scope="session")
def tiny_sam2_checkpoint(tmp_path_factory) -> Path:
    """A random-weight SAM 2.1 tiny checkpoint saved the way official ones are ({"model": sd});
    no checkpoint ships in any package, so only the code path can be tested here. Skips
    without the [sam2] extra."""
    pytest.importorskip("sam2")
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    torch.manual_seed(0)
    pred = build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu")
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": pred.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def sam2_clip(tmp_path_factory):
    """6 frames, 96×64, as a JPEG folder; the frames; a prompt on the blue square of frame 2
    with fractional pixels, as 0-1000 coordinates scaled by width/1000 give."""
    root = tmp_path_factory.mktemp("sam2clip")
    frames, masks = render_scene(n_frames=6, size=(96, 64))
    write_frames(frames, root / "frames")
    gt = masks["blue square"][2]
    b, p = mask_box(gt), inner_point(gt)
    prompt = Prompt(2, (b[0] + 0.5, b[1] + 0.25, b[2] - 0.3, b[3] + 0.1), (p[0] + 0.7, p[1] - 0.2))
    return root, frames, prompt
