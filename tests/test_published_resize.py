"""Every image the policy is shown is resized as the published tool it stands for resized it.

Published (iSEE-Laboratory/Seg-ReSearch, read by hand; nothing is fetched at test time):
- sampled frames: the parquet's ``{"image", "resized_height", "resized_width"}`` entries go
  through qwen_vl_utils ``fetch_image``, whose ``image.resize((w, h))`` uses PIL's default
  filter for RGB images, BICUBIC (448 px in the published data);
- keyframe tool (verl_tool/servers/tools/keyframe.py): ``resize((864, 864), LANCZOS)``;
- image search (verl_tool/servers/tools/local_retrieval.py): ``resize((256, 256), LANCZOS)``.

Each size and filter is one named constant next to its tool; these tests pin the constants
and compare what each tool makes with PIL's own output, byte for byte.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segresearch.core.media import FRAME_RESIZE, SquareResize, open_media, resize_square
from segresearch.core.media_store import FrameRecipe, MediaStore, digest_of
from segresearch.tools.keyframe import KEYFRAME_RESIZE, make_keyframe_tool
from segresearch.tools.search.base import ImageHit, SearchBackend, TextHit
from segresearch.tools.search.tools import SEARCH_IMAGE_RESIZE, make_search_tools

PUBLISHED = {  # constant → (side, filter) of the published tool it stands for
    "FRAME_RESIZE": (FRAME_RESIZE, 448, Image.Resampling.BICUBIC),
    "KEYFRAME_RESIZE": (KEYFRAME_RESIZE, 864, Image.Resampling.LANCZOS),
    "SEARCH_IMAGE_RESIZE": (SEARCH_IMAGE_RESIZE, 256, Image.Resampling.LANCZOS),
}


def _known(size: tuple[int, int] = (97, 61), seed: int = 3) -> Image.Image:
    """A noisy RGB image, so that any two filters give different bytes."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_each_tool_resizes_with_the_published_filter(name):
    resize, side, resample = PUBLISHED[name]
    assert (resize.side, resize.resample) == (side, resample)
    img = _known()
    got = resize(img)
    assert got.size == (side, side)
    assert got.tobytes() == img.resize((side, side), resample).tobytes()
    other = next(r for r in (Image.Resampling.BICUBIC, Image.Resampling.LANCZOS) if r != resample)
    assert got.tobytes() != img.resize((side, side), other).tobytes()  # the filter matters


def test_methods_are_named_for_keys_and_recipes():
    assert FRAME_RESIZE.method == "square-bicubic"
    assert KEYFRAME_RESIZE.method == SEARCH_IMAGE_RESIZE.method == "square-lanczos"
    assert SquareResize(10, Image.Resampling.NEAREST)(_known(), 5).size == (5, 5)
    # resize_square keeps the sampled frames' filter by default
    img = _known()
    assert resize_square(img, 448).tobytes() == FRAME_RESIZE(img).tobytes()


def test_keyframe_tool_shows_the_frame_at_864_with_lanczos(scene_dir):
    media = open_media(str(scene_dir / "frames"))
    tool = make_keyframe_tool(media, [0, 6])
    result = tool.invoke({"type": "tool_call", "id": "k", "name": "keyframe", "args": {"frame": 6}})
    (img,) = result.artifact["images"]
    want = media.frame(6).resize((864, 864), Image.Resampling.LANCZOS)
    assert img.size == (864, 864) and img.tobytes() == want.tobytes()


class _OneImage(SearchBackend):
    name = "one-image"

    def __init__(self, image: Image.Image) -> None:
        self.image = image

    def search_text(self, query: str, k: int) -> list[TextHit]:
        return []

    def search_images(self, query: str, k: int) -> list[ImageHit]:
        return [ImageHit("Zephyr", self.image, 1.0)]


def test_image_search_results_are_256_lanczos():
    source = _known((300, 200), seed=9)
    tool = make_search_tools(_OneImage(source))["image_search"]
    result = tool.invoke({"type": "tool_call", "id": "s", "name": "image_search", "args": {"query": "Zephyr"}})
    (img,) = result.artifact["images"]
    assert img.tobytes() == source.resize((256, 256), Image.Resampling.LANCZOS).tobytes()


def test_agent_loop_defaults_are_the_tools_sizes(monkeypatch):
    pytest.importorskip("verl")
    from segresearch.agents.context import Context
    from segresearch.rl.agent_loop import SETTING_FIELDS

    # an agent-loop config may set the sizes; one that does not gets the Context's defaults
    sizes = {"frame_size": FRAME_RESIZE.side, "keyframe_size": KEYFRAME_RESIZE.side,
             "search_image_size": SEARCH_IMAGE_RESIZE.side}
    assert set(sizes) <= set(SETTING_FIELDS)
    for name in sizes:
        monkeypatch.delenv(f"SEGRESEARCH_{name.upper()}", raising=False)
    ctx = Context()
    assert {name: getattr(ctx, name) for name in sizes} == sizes


# ------------------------------------------------------------------ recipes and the store


def test_a_lanczos_keyframe_recipe_is_persisted_and_remade_exactly(scene_dir, tmp_path):
    spec = str(scene_dir / "frames")
    media = open_media(spec)
    img = KEYFRAME_RESIZE(media.frame(6), 96)
    recipe = FrameRecipe.for_frame(media, spec, 6, 96, KEYFRAME_RESIZE.resample)
    folder = tmp_path / "media"
    digest = MediaStore(folder).put(img, recipe)
    png = folder / digest[:2] / f"{digest}.png"
    side = json.loads(png.with_suffix(".json").read_text())
    assert side["resize"] == "square-lanczos"
    png.unlink()  # evicted; a new process has only the sidecar
    again = MediaStore(folder).get(digest)
    assert digest_of(again) == digest and again.tobytes() == img.convert("RGB").tobytes()


def test_recipes_differ_by_filter_and_unknown_methods_are_refused(scene_dir):
    spec = str(scene_dir / "frames")
    media = open_media(spec)
    bicubic = FrameRecipe.for_frame(media, spec, 6, 96)
    lanczos = FrameRecipe.for_frame(media, spec, 6, 96, Image.Resampling.LANCZOS)
    assert bicubic != lanczos and bicubic().tobytes() != lanczos().tobytes()
    assert bicubic.to_json()["resize"] == "square-bicubic"  # what version-1 sidecars say
    assert FrameRecipe.from_json(bicubic.to_json()) == bicubic
    assert FrameRecipe.from_json(lanczos.to_json()) == lanczos
    assert FrameRecipe.from_json({**lanczos.to_json(), "resize": "square-magic"}) is None


def test_the_graph_shows_keyframes_with_lanczos(scene_dir):
    from segresearch.agents.backends.replay import ReplayChatModel
    from segresearch.agents.content import block_image, is_image_block
    from segresearch.agents.context import Context
    from segresearch.graphs.seg_research import graph

    turns = ["<thinking>ok</thinking>\n<keyframe> 6 </keyframe>",
             '<thinking>ok</thinking>\n<answer>{"bbox_2d": [1, 2, 30, 40], "point_2d": [9, 9]}</answer>']
    frames = str(scene_dir / "frames")
    out = graph.invoke({"query": "the blue square", "media": frames},
                       context=Context(model=ReplayChatModel(turns=turns), search="none", segmenter="none"))
    blocks = [b for m in out["messages"] if not isinstance(m.content, str) for b in m.content if is_image_block(b)]
    keyframe = block_image(blocks[-1])
    assert keyframe.tobytes() == KEYFRAME_RESIZE(open_media(frames).frame(6)).tobytes()
