"""``keyframe``: show the model one of the sampled frames again, at high resolution."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool
from PIL import Image
from pydantic import BaseModel, Field

from segresearch.core.media import Media, SquareResize
from segresearch.core.prompts import KEYFRAME_CAPTION
from segresearch.core.protocol import render_bad_keyframe

# The published keyframe tool (verl_tool/servers/tools/keyframe.py) opens the frame and
# resizes it to 864×864 with LANCZOS.
KEYFRAME_RESIZE = SquareResize(864, Image.Resampling.LANCZOS)


class KeyframeArgs(BaseModel):
    frame: int = Field(description="Id of one of the frames shown to the model.")


def make_keyframe_tool(media: Media, shown: Sequence[int], size: int = KEYFRAME_RESIZE.side,
                       render: Callable[[int], Any] | None = None) -> BaseTool:
    """A tool that returns frame ``frame`` resized to ``size``² with ``KEYFRAME_RESIZE``'s
    filter, or a correction when the id was not among the ``shown`` frames (the run goes on
    either way). ``render`` replaces the resize (the graph passes one that reuses an already
    made image block); it must resize the same way."""
    shown = list(shown)

    def keyframe(frame: int) -> tuple[str, dict[str, Any]]:
        if frame not in shown:
            return render_bad_keyframe(shown), {"images": [], "valid": False}
        img = render(frame) if render is not None else KEYFRAME_RESIZE(media.frame(frame), size)
        return KEYFRAME_CAPTION.format(fid=frame), {"images": [img], "valid": True}

    return StructuredTool.from_function(
        keyframe,
        name="keyframe",
        description="Show a sampled frame again at high resolution.",
        args_schema=KeyframeArgs,
        response_format="content_and_artifact",
    )
