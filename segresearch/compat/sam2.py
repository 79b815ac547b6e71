"""SAM 2 contact beyond its public API (written against sam2 1.1.0).

The segmenter feeds SAM 2's video predictor frames prepared on demand instead of a JPEG
folder loaded whole (``tools/segmenters/sam2.py``), which SAM 2's public ``init_state``
cannot do. So this module restates the inference state ``init_state`` builds, calls the
private method that computes and caches a frame's features, silences the progress bar
the predictor draws through its module-level ``tqdm`` and drops its warning about a missing
optional extension by the warning's text. Each assumption has a contract test in
``tests/test_compat.py`` that reads the installed sam2 and names its version when it fails.

torch and sam2 are imported inside the functions: both come with the optional ``[sam2]``
extra, and the segmenter module must import without them.
"""

from __future__ import annotations

import functools
import warnings
from collections import OrderedDict
from typing import Any

TESTED_VERSION = "1.1.0"

# The keys sam2 1.1.0's SAM2VideoPredictor.init_state sets on its inference state.
STATE_KEYS = (
    "images", "num_frames", "offload_video_to_cpu", "offload_state_to_cpu", "video_height",
    "video_width", "device", "storage_device", "point_inputs_per_obj", "mask_inputs_per_obj",
    "cached_features", "constants", "obj_id_to_idx", "obj_idx_to_id", "obj_ids",
    "output_dict_per_obj", "temp_output_dict_per_obj", "frames_tracked_per_obj",
)


def new_inference_state(predictor: Any, images: Any, num_frames: int, video_height: int,
                        video_width: int, offload_state_to_cpu: bool) -> dict[str, Any]:
    """The inference state ``SAM2VideoPredictor.init_state`` (sam2 1.1.0) would build, over
    ``images`` (anything indexable by frame that yields the normalised frame tensor) instead
    of the frames it would load itself; video frames stay on the CPU as its
    ``offload_video_to_cpu=True`` keeps them. Features are not computed: see
    :func:`cache_image_feature`."""
    import torch  # heavy: optional [sam2] extra

    device = predictor.device
    state: dict[str, Any] = {
        "images": images,
        "num_frames": num_frames,
        "offload_video_to_cpu": True,
        "offload_state_to_cpu": offload_state_to_cpu,
        "video_height": video_height,
        "video_width": video_width,
        "device": device,
        "storage_device": torch.device("cpu") if offload_state_to_cpu else device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }
    return state


def cache_image_feature(predictor: Any, state: dict[str, Any], frame_idx: int) -> None:
    """Compute frame ``frame_idx``'s image features into ``state["cached_features"]``, the
    warm-up ``init_state`` does for frame 0. sam2 1.1.0 has no public method for it:
    ``SAM2VideoPredictor._get_image_feature(inference_state, frame_idx, batch_size)``."""
    import torch  # heavy: optional [sam2] extra

    with torch.inference_mode():
        predictor._get_image_feature(state, frame_idx=frame_idx, batch_size=1)


def silence_progress_bars() -> None:
    """SAM 2 draws a tqdm bar for every propagation and has no switch for it; ours report
    progress instead. ``propagate_in_video`` calls the ``tqdm`` name of its module (sam2
    1.1.0, ``sam2.sam2_video_predictor``), which is replaced with a disabled one, once per
    process (idempotent)."""
    import sam2.sam2_video_predictor as svp  # heavy: optional [sam2] extra
    from tqdm import tqdm  # with SAM 2's own module, patched together

    if not isinstance(svp.tqdm, functools.partial):
        svp.tqdm = functools.partial(tqdm, disable=True)


class quiet_missing_extension(warnings.catch_warnings):
    """SAM 2 warns on every mask it post-processes when its optional CUDA hole-filling
    extension is missing (sam2 1.1.0: ``sam2.utils.misc.fill_holes_in_mask_scores`` and
    ``sam2.utils.transforms``, a message mentioning "post-processing"); the masks are
    unaffected, so the warning is dropped within the block."""

    def __enter__(self) -> Any:
        out = super().__enter__()
        warnings.filterwarnings("ignore", message=r"(?s).*post-processing")
        return out


def memory_window(predictor: Any) -> int:
    """How many frames back (in the direction of propagation) SAM 2 reads a frame's outputs
    when it tracks the next one (sam2 1.1.0, ``SAM2Base._prepare_memory_conditioned_features``):
    the mask memories of the last ``num_maskmem - 1`` frames, taken every
    ``memory_temporal_stride_for_eval``-th frame plus the frame just before, and the object
    pointers of the last ``max_obj_ptrs_in_encoder - 1`` frames. Outputs of frames farther
    away are never read again during that propagation."""
    stride = max(1, int(getattr(predictor, "memory_temporal_stride_for_eval", 1)))
    # the farthest memory frame: 1 + (num_maskmem - 2) × stride frames back (6 by default)
    maskmem = 1 + max(0, int(predictor.num_maskmem) - 2) * stride
    ptrs = int(predictor.max_obj_ptrs_in_encoder) - 1 if predictor.use_obj_ptrs_in_encoder else 0
    return max(1, maskmem, ptrs)


def drop_outputs_outside_window(predictor: Any, state: dict[str, Any], frame_idx: int,
                                reverse: bool) -> int:
    """Forget the per-frame outputs SAM 2 can no longer read, once ``frame_idx`` has been
    tracked, so that propagation holds a fixed number of frames however long the video.

    Kept: every conditioning (prompted) frame's output, the outputs within
    :func:`memory_window` behind ``frame_idx`` (the next frames read them), and those within
    the window of a conditioning frame on either side (the other direction's pass starts
    there and reads them). Dropped: other non-conditioning outputs (``output_dict_per_obj``
    and the temporary ones) behind the window. The masks of the frames dropped were already
    yielded; ``frames_tracked_per_obj`` (a few bytes a frame) is left as SAM 2 wrote it.
    Returns how many outputs were dropped."""
    window = memory_window(predictor)
    dropped = 0
    for per_obj in (state["output_dict_per_obj"], state["temp_output_dict_per_obj"]):
        for outputs in per_obj.values():
            cond = outputs["cond_frame_outputs"]
            non_cond = outputs["non_cond_frame_outputs"]
            stale = [t for t in non_cond
                     if ((t - frame_idx) > window if reverse else (frame_idx - t) > window)
                     and not any(abs(t - c) <= window for c in cond)]
            for t in stale:
                del non_cond[t]
            dropped += len(stale)
    return dropped


def cast_memory_to_feature_dtype(predictor: Any) -> None:
    """Let memory attention read bfloat16 memories alongside float32 features, as it does
    under CUDA autocast (idempotent, per predictor).

    sam2 1.1.0 stores every frame's mask memory in bfloat16
    (``SAM2VideoPredictor._run_single_frame_inference`` and ``_run_memory_encoder``). Its
    memory attention usually reads them concatenated with float32 object pointers, which
    ``torch.cat`` promotes to float32; but with several objects prompted on different frames,
    propagation reaches an object before its own prompted frame, where it has no pointer yet,
    and the bfloat16 memories alone meet float32 weights (``mat1 and mat2 must have the same
    dtype``) unless autocast is on. ``MemoryAttention.forward``'s ``memory`` is cast to the
    features' dtype then, which is the promotion ``torch.cat`` does otherwise: whenever the
    dtypes already agree (every single-object propagation) nothing changes."""
    attn = predictor.memory_attention
    if getattr(attn, "_segresearch_casts_memory", False):
        return
    forward = attn.forward

    def cast_forward(curr: Any, memory: Any, *args: Any, **kwargs: Any) -> Any:
        ref = curr[0] if isinstance(curr, list) else curr
        if memory.dtype != ref.dtype:
            memory = memory.to(ref.dtype)
        return forward(curr, memory, *args, **kwargs)

    attn.forward = cast_forward
    attn._segresearch_casts_memory = True
