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

Several objects: :meth:`VideoSession.track` takes each object's prompts (the answer's first,
then any corrections, which may carry extra labelled points) and yields every object's
masks. A segmenter that tracks one prompt at a time (GrabCut) tracks each object apart and
lets, on every frame, the object's prompt nearest in time decide; SAM 2 tracks them all
in one propagation, one object id each.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
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
    in original-frame pixels, and ``points``: further labelled points ``(x, y, label)``
    (label 1 positive, 0 negative), as a correction gives them. At least one of box, point
    or points is set. ``label``: the object's name, for a segmenter prompted by text; it
    does not move the object, so it changes no seed. ``seed``: where the segmenter draws
    random numbers, they come from this (an evaluation derives it from the query id); None
    derives it from the prompt's own values (a prompt without ``points`` keeps the seed and
    the stored dict it had before ``points`` and ``label`` existed)."""

    frame: int
    box: tuple[float, float, float, float] | None = None
    point: tuple[float, float] | None = None
    seed: int | None = None
    points: tuple[tuple[float, float, int], ...] = ()
    label: str | None = None

    def __post_init__(self) -> None:
        if self.box is None and self.point is None and not self.points:
            raise ValueError("a prompt needs a box, a point or points")
        for p in self.points:
            if len(p) != 3 or p[2] not in (0, 1):
                raise ValueError(f"a labelled point is (x, y, 1 or 0), got {p!r}")

    def base_seed(self) -> int:
        """The seed every random draw for this prompt starts from."""
        if self.seed is not None:
            return int(self.seed) & 0x7FFFFFFF
        if self.points:
            return stable_seed(self.frame, self.box, self.point, self.points)
        return stable_seed(self.frame, self.box, self.point)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"frame": self.frame, "box": None if self.box is None else list(self.box),
                               "point": None if self.point is None else list(self.point)}
        if self.points:
            out["points"] = [[float(x), float(y)] for x, y, _ in self.points]
            out["labels"] = [int(lab) for _, _, lab in self.points]
        if self.label is not None:
            out["label"] = self.label
        return out


def nearest_prompt_wins(
    prompts: Sequence[Prompt], frame_ids: Sequence[int]
) -> list[frozenset[int]]:
    """For each prompt of one object, the frame ids it decides when each prompt is tracked
    on its own: those nearer (in position) to its frame than to any earlier prompt's, a tie
    going to the later prompt (a correction outranks what it corrects). Streaming the
    prompts in order and each one's masks on these frames only, the last mask of a frame is
    the nearest prompt's."""
    pos = {fid: i for i, fid in enumerate(frame_ids)}
    missing = [p.frame for p in prompts if p.frame not in pos]
    if missing:
        raise ValueError(f"prompt on frame {missing[0]}, which the media does not have")
    at = [pos[p.frame] for p in prompts]
    out = []
    for j, pj in enumerate(at):
        out.append(frozenset(fid for fid, i in pos.items()
                             if all(abs(i - pj) <= abs(i - pk) for pk in at[:j])))
    return out


class VideoSession(ABC):
    """One opened video. Not thread-safe: one prompt at a time (segmenters serialise
    sessions that share a model)."""

    media: Media

    @abstractmethod
    def masks(self, prompt: Prompt) -> Iterator[tuple[int, np.ndarray]]:
        """``(frame id, boolean H×W mask)`` for every frame the segmenter reaches, in the
        order they are computed (a frame may come twice; the last one counts). Masks have
        the original frame size."""

    def track(self, objects: Sequence[Sequence[Prompt]]) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(object index, frame id, boolean H×W mask)`` for several objects, ``objects[k]``
        being object k's prompts in order (the answer's first, then corrections); a frame
        may come twice for an object, the last one counts. Here each object is tracked on
        its own, prompt by prompt, and on every frame the prompt nearest in time decides
        (:func:`nearest_prompt_wins`); one object with one prompt gives exactly
        :meth:`masks`. Memory does not grow with the video: masks stream as ``masks`` makes
        them. Segmenters that track objects jointly override this."""
        for k, prompts in enumerate(objects):
            prompts = list(prompts)
            if len(prompts) == 1:
                for fid, mask in self.masks(prompts[0]):
                    yield k, fid, mask
                continue
            for prompt, decides in zip(prompts, nearest_prompt_wins(prompts, self.media.frame_ids),
                                       strict=True):
                for fid, mask in self.masks(prompt):
                    if fid in decides:
                        yield k, fid, mask

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
