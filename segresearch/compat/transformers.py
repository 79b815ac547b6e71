"""Loading Qwen-VL processors where torchvision cannot be imported (transformers 4.5x-5.x).

transformers' Qwen-VL processors insist on a video processor, and theirs imports
torchvision, which is missing (or broken beside CPU torch builds) on many machines. The
graph only ever sends frames as images, so an image-only stand-in is enough: this lets the
local transformers backend, verl's processor loading and the tests' tiny checkpoints work
without torchvision, and does nothing where torchvision is importable.

transformers itself (the optional ``[hf]`` extra, seconds to import) is imported on first
use, so any layer may import this module without paying for it or needing the extra.
"""

from __future__ import annotations

import functools
import sys
import threading
from typing import Any

__all__ = ["stub_video_processor_class", "install_video_processor_stub"]


@functools.cache
def stub_video_processor_class() -> type:
    """The image-only stand-in for the Qwen video processor (one class per process)."""
    from transformers.processing_utils import VideosKwargs  # heavy: optional [hf] extra
    from transformers.video_processing_utils import BaseVideoProcessor  # heavy: optional [hf] extra

    class _StubVideoKwargs(VideosKwargs, total=False):
        patch_size: int
        temporal_patch_size: int
        merge_size: int
        min_pixels: int
        max_pixels: int
        min_frames: int
        max_frames: int

    class StubVideoProcessor(BaseVideoProcessor):
        """Stands in for the Qwen video processor where torchvision is missing.

        The Qwen processors only need one to exist (and its merge and patch sizes); we feed
        frames as images, so an actual video call is an error rather than a silent misuse.
        """

        size = {"shortest_edge": 128 * 28 * 28, "longest_edge": 768 * 28 * 28}
        do_resize = True
        do_rescale = True
        do_normalize = True
        do_convert_rgb = True
        patch_size = 14
        temporal_patch_size = 2
        merge_size = 2
        min_frames = 4
        max_frames = 768
        do_sample_frames = False
        valid_kwargs = _StubVideoKwargs
        model_input_names = ["pixel_values_videos", "video_grid_thw"]

        def __init__(self, **kwargs: Any) -> None:
            # Older Qwen configs spell the size as min/max pixels; the size dict already has them.
            kwargs.pop("min_pixels", None)
            kwargs.pop("max_pixels", None)
            super().__init__(**kwargs)

        def preprocess(self, videos: Any, **kwargs: Any) -> Any:
            raise NotImplementedError(
                "video input needs torchvision; this stub only lets image-only Qwen-VL "
                "processors load (pass video frames as images)"
            )

    StubVideoProcessor.__module__ = __name__
    StubVideoProcessor.__qualname__ = "StubVideoProcessor"
    return StubVideoProcessor


_STUB_LOCK = threading.Lock()
_STUB_INSTALLED = False


def install_video_processor_stub() -> bool:
    """Let Qwen-VL processors load without torchvision (image-only); True if it was needed.

    Two things break without torchvision, both fixed here once per process: the processor
    checks its video processor against ``transformers.BaseVideoProcessor``, which is then a
    dummy that nothing can be an instance of, so we put the (importable) real base class in
    its place; and ``AutoVideoProcessor`` maps Qwen configs to classes that import
    torchvision, so we register :func:`stub_video_processor_class` for them. Where torchvision is
    installed this does nothing, so real checkpoints keep their real video processors.
    """
    global _STUB_INSTALLED
    with _STUB_LOCK:
        if _STUB_INSTALLED:
            return True
        from transformers import (  # heavy: optional [hf] extra
            Qwen2_5_VLConfig,
            Qwen2VLConfig,
            Qwen3VLConfig,
            Qwen3VLMoeConfig,
            processing_utils,
        )
        from transformers.models.auto.video_processing_auto import (  # heavy: optional [hf] extra
            VIDEO_PROCESSOR_MAPPING,
        )
        from transformers.utils import is_torchvision_available  # heavy: optional [hf] extra
        from transformers.video_processing_utils import (
            BaseVideoProcessor,  # heavy: optional [hf] extra
        )

        if is_torchvision_available():
            return False
        # transformers re-executes its package __init__ for processing_utils, so the lazy
        # module the processor consults may differ from the one ``import transformers`` gave.
        modules = {
            id(m): m
            for m in (sys.modules.get("transformers"), processing_utils.transformers_module)
            if m is not None
        }
        for module in modules.values():
            if getattr(module, "BaseVideoProcessor", None) is not BaseVideoProcessor:
                module.BaseVideoProcessor = BaseVideoProcessor
        configs: list[type] = [Qwen2VLConfig, Qwen2_5_VLConfig, Qwen3VLConfig, Qwen3VLMoeConfig]
        for config_class in configs:
            VIDEO_PROCESSOR_MAPPING.register(config_class, stub_video_processor_class(), exist_ok=True)
        _STUB_INSTALLED = True
        return True
