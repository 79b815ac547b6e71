"""Every event a run produces, typed in one place.

A run reports itself through dicts that code outside this package reads by their ``type``:
the entries of ``State.events`` (kept in the thread and in ``trajectory.json``), the
``custom`` stream events of a live run (the CLI's bars, the web page, SDK clients) and the
review pause's payload; ``State.pending`` carries the parsed action from ``reason`` to the
node that runs it. Those shapes are a public format, so each one is a ``TypedDict`` here:
still a plain dict at run time (payloads and stored threads stay byte for byte what they
were), but one definition that producers build, consumers read, and
``segresearch.core.event_schema`` publishes as JSON Schema.

This module is in the bottom layer: it imports nothing from the rest of the package, and
only ``typing`` (no pydantic), so the CLI and the console read these names for free.
"""

from __future__ import annotations

from typing import Final, Literal

from typing_extensions import NotRequired, TypedDict

# ----------------------------------------------------------------- the type tags
# Plain strings, not an Enum: threads and trajectories store the value itself, and an Enum
# member would be serialised as something else by a checkpointer.
START: Final = "start"
MEDIA: Final = "media"
MODEL: Final = "model"
TOOL: Final = "tool"
FEEDBACK: Final = "feedback"
SEGMENT: Final = "segment"
REVIEW: Final = "review"
ERROR: Final = "error"
STATUS: Final = "status"
PROGRESS: Final = "progress"
TURN: Final = "turn"
SEARCH: Final = "search"
KEYFRAME: Final = "keyframe"
FINAL: Final = "final"
ANSWER: Final = "answer"
NONE: Final = "none"
VERIFY: Final = "verify"
ASK_USER: Final = "ask_user"

# --------------------------------------------------------------- shared pieces


class Answer(TypedDict):
    """A box and point on one frame: model coordinates in ``answer``, original-frame pixels in
    ``answer_px``. ``keyframe`` is None when a video's answer never named its frame."""

    keyframe: int | None
    bbox_2d: list[float]
    point_2d: list[float]


class ObjectAnswer(TypedDict):
    """One object of an answer (``State.objects``, ``objects_px``): an ``Answer`` with the
    object's ``label`` when the model named it."""

    keyframe: int | None
    bbox_2d: list[float]
    point_2d: list[float]
    label: str | None


class SegmentPrompt(TypedDict):
    """What the segmenter was prompted with, in frame pixels (box first, then the point)."""

    frame: int | None
    box: list[float] | None
    point: list[float] | None


class FrameRange(TypedDict):
    """Evenly spaced frame ids, small whatever the video's length."""

    first: int
    last: int
    count: int
    step: int


# ------------------------------------------------------------ parsed actions
# A model turn's action as the trajectory records it (``ModelEvent.action``, ``TurnEvent``).


class ActionSearch(TypedDict):
    """A search call; ``error`` when it was malformed (the model is told so instead)."""

    type: Literal["search"]
    name: str
    query: str
    error: NotRequired[str]


class ActionKeyframe(TypedDict):
    """A keyframe request; ``frame`` is None when ``raw`` was not a frame id."""

    type: Literal["keyframe"]
    frame: int | None
    raw: str


class ActionAnswer(TypedDict):
    """The final answer as written (numbers as the model wrote them, before clamping)."""

    type: Literal["answer"]
    bbox_2d: list[float]
    point_2d: list[float]
    objects: NotRequired[list[ActionObject]]  # an answer naming 2+ objects: each of them


class ActionObject(TypedDict):
    """One object of an answer naming several, as written (the first is also the answer's
    ``bbox_2d`` and ``point_2d``); ``keyframe`` when the call named the object's frame."""

    bbox_2d: list[float]
    point_2d: list[float]
    label: str | None
    keyframe: int | None


class ActionNone(TypedDict):
    """A turn with no usable action, and why."""

    type: Literal["none"]
    reason: str


class ActionAskUser(TypedDict):
    """A question for the user (``Context.ask_user``, tools protocol); ``error`` when the
    call was malformed (e.g. an empty question: the model is told so, nobody is asked)."""

    type: Literal["ask_user"]
    question: str
    error: NotRequired[str]


Action = ActionSearch | ActionKeyframe | ActionAnswer | ActionNone | ActionAskUser


# ------------------------------------------------------------------- pending
# What ``reason`` leaves for the next node; routing reads its ``type``.


class PendingAnswer(TypedDict):
    """An answer on its way to review or segmentation (the answer itself is in the state)."""

    type: Literal["answer"]


class PendingFeedback(TypedDict):
    """A turn without an action that gets a format reminder (``Context.feedback_retries``)."""

    type: Literal["feedback"]
    reason: str


Pending = ActionSearch | ActionKeyframe | PendingAnswer | PendingFeedback | ActionAskUser


# ------------------------------------------------- events of both kinds


class MediaEvent(TypedDict):
    """The media opened and the frames the model is shown (first in both the trajectory
    and the stream). ``source_size`` only when it was decoded smaller than the file;
    ``note`` e.g. for a truncated video."""

    type: Literal["media"]
    source: str
    kind: str
    num_frames: int
    width: int
    height: int
    source_size: NotRequired[list[int]]
    note: NotRequired[str]
    frame_ids: list[int]
    seconds: float


# ------------------------------------------------------- trajectory entries


class StartEvent(TypedDict):
    """Begins a run: a thread invoked again drops the earlier run's entries here."""

    type: Literal["start"]
    time: float


class ModelEvent(TypedDict):
    """One model generation and the action parsed from it. ``notes``: what was clamped in
    an answer; ``answer_note``: why a well-formed answer outlines nothing."""

    type: Literal["model"]
    turn: int
    response: str
    action: Action
    tokens: int
    finish_reason: str | None
    seconds: float
    notes: NotRequired[list[str]]
    answer_note: NotRequired[str]


class ToolEvent(TypedDict):
    """A tool's observation: a search (``query``, ``error`` when it failed) or the
    keyframe tool (``frame``, ``valid``). ``name`` is what the model called, which may be
    a tool that does not exist (then ``error`` says so)."""

    type: Literal["tool"]
    name: str
    query: NotRequired[str]
    frame: NotRequired[int | None]
    observation: str
    images: int
    valid: NotRequired[bool]
    seconds: float
    error: NotRequired[str]


class FeedbackEvent(TypedDict):
    """A format reminder sent to the model, and what was wrong with its turn."""

    type: Literal["feedback"]
    reason: str


class SegmentEvent(TypedDict):
    """Masks made (or ``skipped``, and why, with no other key). ``empty`` says why the
    masks are empty; otherwise ``keyframe_area`` is the mask's pixel count on the
    prompted frame."""

    type: Literal["segment"]
    skipped: NotRequired[str]
    segmenter: NotRequired[str]
    requested: NotRequired[str | None]
    frames: NotRequired[int]
    reached: NotRequired[int | None]
    summary: NotRequired[str]
    prompt: NotRequired[SegmentPrompt | None]
    seconds: NotRequired[float]
    empty: NotRequired[str]
    keyframe_area: NotRequired[int | None]
    objects: NotRequired[list[SegmentObject]]  # an answer naming 2+ objects: each one's masks


class SegmentObject(TypedDict):
    """One object's masks (an answer naming several): its label, its mask's pixel count on
    its own keyframe, and how many frames its masks reached."""

    label: str | None
    keyframe_area: int | None
    reached: int | None


class ReviewEvent(TypedDict):
    """A reviewer's decision; an edit carries the box and point it put in its place. With an
    answer naming several objects, one event per object changed: ``object`` is its 0-based
    index as the review pause listed them (an edit of a one-object answer has 0), and a
    ``drop`` removed it."""

    type: Literal["review"]
    decision: Literal["accept", "reject", "edit", "drop"]
    answer_px: NotRequired[Answer]
    object: NotRequired[int]


class ErrorEvent(TypedDict):
    """What went wrong. ``kind`` is the stop reason's suffix (``error:<kind>``), except
    ``output``: a file that could not be written, after which the run goes on. ``note``
    when an answer stands although segmentation failed."""

    type: Literal["error"]
    kind: str
    message: str
    note: NotRequired[str]


class AskUserEvent(TypedDict):
    """A question the model asked the user and the reply it got; ``auto`` when the reply was
    the run's fixed one (``Context.ask_user_reply``, e.g. in an evaluation) rather than a
    person's."""

    type: Literal["ask_user"]
    question: str
    reply: str
    auto: bool
    seconds: float


class Correction(TypedDict):
    """A verify round's correction in original-frame pixels, as ``State.corrections`` holds
    it: labelled points (1 on the object, 0 off it) and/or a box on one shown frame, for
    object ``object`` (0-based index into the answer's objects)."""

    round: int
    object: int
    frame: int
    points: list[list[float]]
    labels: list[int]
    box: list[float] | None


class VerifyEvent(TypedDict):
    """One verify round (``Context.verify_rounds``): the frames the model was shown with its
    masks drawn (``picture``, saved in the run folder), its reply, and whether it accepted
    them or sent a ``correction`` (then the masks are made again). ``note`` when the reply
    could not be read even after one reminder and was taken as an acceptance; ``turns``
    model generations (2 when a reminder was needed)."""

    type: Literal["verify"]
    round: int
    frames: list[int]
    response: str
    decision: Literal["accept", "correct"]
    correction: NotRequired[Correction]
    note: NotRequired[str]
    picture: NotRequired[str]
    turns: int
    tokens: int
    seconds: float


TrajectoryEvent = (StartEvent | MediaEvent | ModelEvent | ToolEvent | FeedbackEvent
                   | SegmentEvent | ReviewEvent | ErrorEvent | VerifyEvent | AskUserEvent)


# ------------------------------------------------------------- stream events


class StatusEvent(TypedDict):
    """A step that cannot be counted (loading a model, a local model generating); an
    empty ``message`` ends the line."""

    type: Literal["status"]
    message: str


class ProgressEvent(TypedDict):
    """Progress of a counted step: ``segment`` (frames; ``label`` the segmenter) or
    ``index`` (a knowledge base indexed on first use; ``label`` its folder)."""

    type: Literal["progress"]
    step: str
    label: str
    done: int
    total: int


class TurnEvent(TypedDict):
    """A model turn is done: its action, without the response text."""

    type: Literal["turn"]
    turn: int
    action: Action
    tokens: int
    seconds: float


class SearchEvent(TypedDict):
    """A search ran: which backend, how many hits, and ``error`` when it failed."""

    type: Literal["search"]
    name: str
    query: str
    backend: str
    hits: int
    seconds: float
    error: NotRequired[str]


class KeyframeEvent(TypedDict):
    """The model asked for a frame; ``valid`` is false when it was not one of those shown."""

    type: Literal["keyframe"]
    frame: int | None
    valid: bool


class ReviewRefusedEvent(TypedDict):
    """A review reply was refused: the thread keeps waiting; ``how`` lists the forms taken."""

    type: Literal["review"]
    decision: Literal["refused"]
    problem: str
    how: str


class FinalEvent(TypedDict):
    """The last event of a run that ended (a run paused for review sends none)."""

    type: Literal["final"]
    stop_reason: str | None
    answer: Answer | None
    answer_px: Answer | None
    answer_note: str | None
    masks_dir: str | None
    turns: int | None
    error: str | None
    objects_px: NotRequired[list[ObjectAnswer]]  # an answer naming 2+ objects: each, in pixels


StreamEvent = (MediaEvent | StatusEvent | ProgressEvent | TurnEvent | SearchEvent
               | KeyframeEvent | ReviewRefusedEvent | FinalEvent)


# ------------------------------------------------------------------ the pause


class ReviewRequest(TypedDict):
    """The review pause's interrupt value: the answer in both coordinate systems (every
    object when it names several), a picture of it (a media reference), the frame size and ids a reply is checked against, and
    ``problem`` when it asks again after a refused reply."""

    type: Literal["review"]
    query: str
    answer: Answer | None
    answer_px: Answer
    image: str
    frame_size: list[int]
    how: str
    frame_ids: NotRequired[FrameRange | list[int]]
    problem: NotRequired[str]
    # an answer naming 2+ objects: each (model coordinates, frame pixels), numbered from 0 as
    # a reply's "object" names them; the picture draws each in its colour with its number
    objects: NotRequired[list[ObjectAnswer]]
    objects_px: NotRequired[list[ObjectAnswer]]


class AskUserRequest(TypedDict):
    """The ask_user pause's interrupt value: the model's question, how to reply, and
    ``problem`` when it asks again after a refused reply."""

    type: Literal["ask_user"]
    question: str
    how: str
    problem: NotRequired[str]
