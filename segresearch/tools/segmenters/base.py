"""What every segmenter offers: open a video once, then turn prompts into masks.

A prompt is a box and/or a point on one frame, in pixels of the original frames, as floats:
the published post-segmentation passes ``coordinate × (size / 1000)`` to SAM 2 unrounded,
and rounding first would change its masks. A session holds whatever is costly to set up for
one video (decoded frames, SAM 2's inference state), so an evaluation that asks several
questions about one video loads it once and resets between queries.

Masks depend on the prompt and the frames only: a segmenter that draws random numbers
(GrabCut's colour-model initialisation) seeds them from ``Prompt.seed`` (an evaluation sets
it from the query id) or, without one, from the prompt itself, so a resumed, sharded or
threaded run writes the same masks as a clean one.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from segresearch.core.media import Media


def stable_seed(*parts: object) -> int:
    """A non-negative 31-bit seed from ``parts`` (their ``repr``), the same in every process,
    run and machine: Python's ``hash`` of a string is salted per process, so a seed made
    with it would differ between a run and its resumption or a Ray worker."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class Prompt:
    """A box ``(x1, y1, x2, y2)`` and/or a positive point ``(x, y)`` on frame id ``frame``,
    in original-frame pixels. At least one of the two is set. ``seed``: where the segmenter
    draws random numbers, they come from this (an evaluation derives it from the query id);
    None derives it from the prompt's own values."""

    frame: int
    box: tuple[float, float, float, float] | None = None
    point: tuple[float, float] | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.box is None and self.point is None:
            raise ValueError("a prompt needs a box, a point or both")

    def base_seed(self) -> int:
        """The seed every random draw for this prompt starts from."""
        if self.seed is not None:
            return int(self.seed) & 0x7FFFFFFF
        return stable_seed(self.frame, self.box, self.point)

    def as_dict(self) -> dict[str, Any]:
        return {"frame": self.frame, "box": None if self.box is None else list(self.box),
                "point": None if self.point is None else list(self.point)}


class VideoSession(ABC):
    """One opened video. Not thread-safe: one prompt at a time (segmenters serialise
    sessions that share a model)."""

    media: Media

    @abstractmethod
    def masks(self, prompt: Prompt) -> Iterator[tuple[int, np.ndarray]]:
        """``(frame id, boolean H×W mask)`` for every frame the segmenter reaches, in the
        order they are computed (a frame may come twice; the last one counts). Masks have
        the original frame size."""

    def close(self) -> None:  # noqa: B027 - most sessions hold nothing to release
        """Release what the session holds (frames, model state)."""

    def __enter__(self) -> VideoSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Segmenter(ABC):
    """Turns prompts into masks; ``name`` is what run outputs and trajectories report."""

    name: str = "segmenter"

    @abstractmethod
    def open(self, media: Media) -> VideoSession:
        """Prepare ``media`` for any number of prompts."""

    def segment(self, media: Media, prompt: Prompt) -> dict[int, np.ndarray]:
        """All masks for one prompt (the last mask computed for each frame)."""
        with self.open(media) as session:
            return dict(session.masks(prompt))

    def describe(self) -> dict[str, Any]:
        """Settings that identify what produced a set of masks (stored beside them)."""
        return {"name": self.name}
