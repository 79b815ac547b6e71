"""The self-contained demo: a synthetic clip, a tiny fictional knowledge base and a
recorded policy, run through the real graph, search and segmentation.

Nothing here needs a GPU, a key or the network; the clip is rendered on first use and the
policy is a replay cassette shipped in the package (and labelled as such when it runs).
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segresearch.agents.context import Context
from segresearch.core.envvars import env_str
from segresearch.testing.scenes import render_scene, write_frames, write_masks

DEMO_VERSION = "1"
DEMO_TARGET = "blue square"


def assets_dir() -> Path:
    return Path(str(resources.files("segresearch") / "assets"))


def demo_cassette() -> Path:
    return assets_dir() / "demo_cassette.json"


def demo_kb() -> Path:
    return assets_dir() / "demo_kb"


def demo_query() -> str:
    return json.loads(demo_cassette().read_text())["query"]


def cache_dir() -> Path:
    root = env_str("SEGRESEARCH_CACHE") or os.path.join(
        env_str("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "segresearch"
    )
    return Path(root) / f"demo-v{DEMO_VERSION}"


def ensure_demo_media(root: Path | None = None) -> Path:
    """Render the demo clip (frames and the target's masks) once; returns the frame folder."""
    root = root or cache_dir()
    frames_dir, masks_dir, done = root / "frames", root / "masks", root / ".complete"
    if not done.exists():
        frames, masks = render_scene()
        write_frames(frames, frames_dir)
        write_masks(masks[DEMO_TARGET], masks_dir)
        done.write_text(DEMO_VERSION)
    return frames_dir


def ground_truth_mask(frames_dir: Path, frame_name: str) -> np.ndarray:
    with Image.open(frames_dir.parent / "masks" / f"{frame_name}.png") as im:
        return np.asarray(im) > 127


def demo_masks(frames_dir: Path, masks_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(frame names, the clip's ground-truth masks, a run's masks from ``masks_dir``), stacked
    in frame order: what a demo run is scored on."""
    names = sorted(p.stem for p in frames_dir.glob("*.jpg"))
    gt = np.stack([ground_truth_mask(frames_dir, n) for n in names])
    pred = np.stack([_mask(masks_dir / f"{n}.png") for n in names])
    return names, gt, pred


def _mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im) > 127


def demo_context(out_dir: str | Path, **overrides: Any):
    kw: dict[str, Any] = dict(
        model=f"replay:{demo_cassette()}",
        search="local",
        kb=str(demo_kb()),
        segmenter="grabcut",
        output_dir=str(out_dir),
    )
    kw.update(overrides)
    return Context(**kw)
