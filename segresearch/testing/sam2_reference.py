"""The bare SAM 2 video predictor driven as the paper's post-segmentation drives it.

``post_segmentation/sam2_okvos.py`` restated (not copied): ``init_state`` on a JPEG folder,
``reset_state``, one ``add_new_points_or_box`` call with the box and a second with the
point on the same frame and object, propagation forward and then backward into a (T, H, W)
array. Tests compare our segmenter with it mask for mask, and ``bench/segment.py`` times
and measures both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segresearch.tools.segmenters.base import Prompt


def bare_published(predictor: Any, folder: str | Path, prompt: Prompt) -> tuple[dict[str, Any], np.ndarray]:
    """(the inference state, boolean masks (T, H, W)) for ``prompt`` on frame position
    ``prompt.frame`` of the JPEG folder."""
    import torch  # heavy: optional [sam2] extra

    with torch.inference_mode():
        state = predictor.init_state(video_path=str(folder))
        predictor.reset_state(state)
        if prompt.box is not None:
            predictor.add_new_points_or_box(inference_state=state, frame_idx=prompt.frame, obj_id=1,
                                            box=np.asarray(prompt.box, np.float32))
        if prompt.point is not None:
            predictor.add_new_points_or_box(inference_state=state, frame_idx=prompt.frame, obj_id=1,
                                            points=np.asarray([prompt.point], np.float32),
                                            labels=np.array([1], np.int32))
        masks = np.zeros((state["num_frames"], state["video_height"], state["video_width"]), bool)
        for idx, _ids, logits in predictor.propagate_in_video(state):
            masks[idx] = (logits > 0).squeeze(1).cpu().numpy()
        for idx, _ids, logits in predictor.propagate_in_video(state, reverse=True):
            masks[idx] = (logits > 0).squeeze(1).cpu().numpy()
    return state, masks
