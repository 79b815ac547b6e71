"""System prompts and the fixed texts around observations.

Two variants: one that offers the search tools, one for questions answerable from the
video alone. Both state the tag protocol and the tool JSON exactly, because the parser and
the RL reward match those strings. ``{coord_note}`` is filled in per run; a user's own
prompt file may use it too (filled by plain replacement, so JSON braces stay as written).
"""

from __future__ import annotations

from pathlib import Path

from segresearch.core.jsonl import read_utf8

SEARCH_SYSTEM_PROMPT = """\
You are a visual search agent. The user shows you frames sampled from a video (or a single \
image), each introduced by its label "frame <id>", and then describes one target object. \
Your job is to locate that target. The description may depend on knowledge that the pixels \
do not contain, such as who a person is, which team won an event, or what a product looks \
like, so look it up instead of guessing.

Work in steps. Begin every step with your reasoning inside <thinking> </thinking>, then end \
the step with exactly one of these actions:

1. Search the web or the knowledge base:
   <search>{"name": "text_search", "query": "your query"}</search>
   returns short text passages;
   <search>{"name": "image_search", "query": "a name"}</search>
   returns a picture of the named person, object or logo.
   Results come back inside <information> </information>. Search as often as you need, \
one query per step, and refine the query when the results do not settle the question.
2. Pick the frame where the target is easiest to see:
   <keyframe> id </keyframe>
   using one of the frame ids you were shown. That frame is then shown to you at a higher \
resolution.
3. After the keyframe has been shown, answer on one line:
   <answer>{"bbox_2d": [x1, y1, x2, y2], "point_2d": [x, y]}</answer>
   a tight box around the target in the keyframe and one point that lies on the target, \
{coord_note}

Always pick a keyframe before you answer. For a single image, answer about frame 0.
"""

NO_SEARCH_SYSTEM_PROMPT = """\
You are a visual grounding agent. The user shows you frames sampled from a video (or a \
single image), each introduced by its label "frame <id>", and then describes one target \
object. Everything needed is visible in the frames.

Work in steps. Begin every step with your reasoning inside <thinking> </thinking>, then end \
the step with exactly one of these actions:

1. Pick the frame where the target is easiest to see:
   <keyframe> id </keyframe>
   using one of the frame ids you were shown. That frame is then shown to you at a higher \
resolution.
2. After the keyframe has been shown, answer on one line:
   <answer>{"bbox_2d": [x1, y1, x2, y2], "point_2d": [x, y]}</answer>
   a tight box around the target in the keyframe and one point that lies on the target, \
{coord_note}

Always pick a keyframe before you answer. For a single image, answer about frame 0.
"""

COORD_NOTES = {
    "qwen3": "as integers from 0 to 1000 relative to the image width and height.",
    "qwen25": "as integer pixel coordinates of the image as shown to you.",
    # not taught to the published checkpoints: for a model told to answer in its own family's
    # convention (coord_style gemini / normalized), which the answer is converted from
    "gemini": "as integers from 0 to 1000 relative to the image height and width, written y "
              "first: bbox_2d as [ymin, xmin, ymax, xmax] and point_2d as [y, x].",
    "normalized": "as decimal fractions from 0 to 1 of the image width and height (e.g. 0.25).",
}

FEEDBACK_PROMPT = (
    "Your last message ended without a usable action ({reason}). End the step with one "
    "<search>...</search>, <keyframe> id </keyframe> or <answer>...</answer> exactly as "
    "described."
)

KEYFRAME_CAPTION = "frame {fid} at high resolution:"

# The tool-calling protocol (Context.protocol "tools") is for general chat models that were
# never trained on the tags: the actions are offered as tools, and this prompt says what the
# task is and how the tools fit together, in plain words. ``{search_part}`` lists the search
# tools when the run has them, ``{verify_part}`` when the verify tools may be called
# (``TOOLS_VERIFY_PART``); ``{coord_note}`` is the answer tool's coordinate sentence.
TOOLS_SYSTEM_PROMPT = """\
You help locate one object in a video or an image. The user shows you frames sampled from a \
video (a single image is frame 0); each frame comes right after its label "frame <id>". Then \
the user describes the target, sometimes in words that need outside knowledge.

You act by calling the tools you are given, exactly one tool call per turn. Each result comes \
back to you before your next turn. You may think briefly in plain text before a call.
{search_part}
Pick the frame where the target is clearest with the keyframe tool: it shows you that frame \
at a higher resolution. Then call the answer tool once with that frame's id, a tight box \
around the target and one point that lies on it. {coord_note}

Calling answer ends the task, so make sure of the target first. Do not describe the answer \
in text instead of calling the tool.
{verify_part}"""

TOOLS_SEARCH_PART = """
When the description depends on facts the frames do not show (who someone is, which team \
won, what a product or logo looks like), look them up: text_search returns short passages, \
image_search returns a picture of a named person, object or logo. Search as often as you \
need, one query per call, and refine the query when the results do not settle it.
"""

# With Context.verify_rounds > 0 the run's tools include accept_masks and correct_masks from
# the first turn (a rollout's tools are fixed by its system turn); this says when they work.
TOOLS_VERIFY_PART = """
After your answer the target is segmented in every frame, and you may then be shown a few \
frames with its masks. Only then call accept_masks if they cover the target, or correct_masks \
to fix them; before your answer these two tools are not available, and while you check the \
masks the other tools are not.
"""

TOOLS_FEEDBACK_PROMPT = (
    "Your last message made no usable tool call ({reason}). Call exactly one of the tools "
    "you were given: keyframe to look closer, or answer with the keyframe id, bbox_2d and point_2d."
)


# The verify step (Context.verify_rounds): after segmentation the model is shown a few frames
# with its masks drawn and accepts them or corrects them. The published system prompt is not
# changed; these texts come with the pictures. ``{shown}`` says which frames, ``{coord_note}`` the run's
# coordinate sentence for the keyframe-size pictures, ``{objects_note}`` empty or the sentence
# about several numbered objects.
VERIFY_PROMPT = """\
Your answer was segmented in every frame. Here {shown} with the masks drawn, each after its \
label "frame <id>".{objects_note}
Check whether the masks cover the target, and only the target. Begin with your reasoning inside \
<thinking> </thinking>, then end with exactly one of:
<verify>{{"accept": true}}</verify>
if the masks are right, or one correction on one of these frames:
<verify>{{"frame": id, "points": [[x, y], ...], "labels": [1, 0, ...], "box": [x1, y1, x2, y2]}}</verify>
where a point labelled 1 lies on the target where the mask missed it, a point labelled 0 lies \
where the mask covers something that is not the target, and the box (optional; points are \
optional when a box is given) is tight around the target on that frame. {coord_note}
"""

TOOLS_VERIFY_PROMPT = """\
Your answer was segmented in every frame. Here {shown} with the masks drawn, each after its \
label "frame <id>".{objects_note}
Check whether the masks cover the target, and only the target. Call accept_masks if they are \
right; otherwise call correct_masks once, on one of these frames, with points on the target \
the mask missed (label 1), points the mask covers wrongly (label 0), and/or a tight box \
around the target. {coord_note}
"""

VERIFY_OBJECTS_NOTE = (
    " The {count} objects of your answer are drawn in different colours, each with its number "
    "beside it; a correction names the object it is for with \"object\": number."
)

VERIFY_RETRY_PROMPT = (
    "Your reply could not be read ({reason}). End it with <verify>{{\"accept\": true}}</verify> "
    "or one correction <verify>{{\"frame\": id, \"points\": [[x, y]], \"labels\": [1]}}</verify> "
    "exactly as described."
)

TOOLS_VERIFY_RETRY_PROMPT = (
    "Your reply could not be read ({reason}). Call exactly one tool: accept_masks, or "
    "correct_masks with the frame id, points and their labels and/or a box."
)


def verify_prompt(protocol: str, n_frames: int, coord_note: str, n_objects: int = 1) -> str:
    """The text shown with a verify round's pictures (``Context.verify_rounds``)."""
    objects = VERIFY_OBJECTS_NOTE.format(count=n_objects) if n_objects > 1 else ""
    shown = ("is the frame" if n_frames == 1 else
             f"are {n_frames} of them (the keyframe, and the frames where the masks change most)")
    template = TOOLS_VERIFY_PROMPT if protocol == "tools" else VERIFY_PROMPT
    return template.format(shown=shown, objects_note=objects, coord_note=coord_note)


def system_prompt(use_search: bool, coord_style: str, prompt_file: str = "") -> str:
    """The system prompt for a run; ``prompt_file`` (if given) replaces the built-in text."""
    if prompt_file:
        template = read_utf8(Path(prompt_file).expanduser(), "system prompt file")
    else:
        template = SEARCH_SYSTEM_PROMPT if use_search else NO_SEARCH_SYSTEM_PROMPT
    return template.replace("{coord_note}", COORD_NOTES[coord_style])


def tools_system_prompt(use_search: bool, coord_note: str, prompt_file: str = "",
                        verify: bool = False) -> str:
    """The system prompt of the tool-calling protocol; ``coord_note`` is the sentence that
    states the answer's coordinate convention (``core.coords.describe_convention``);
    ``verify`` (``Context.verify_rounds`` > 0) adds when the verify tools may be called. A
    ``prompt_file`` replaces the built-in text, with ``{coord_note}`` filled as in tags."""
    if prompt_file:
        template = read_utf8(Path(prompt_file).expanduser(), "system prompt file")
    else:
        template = (TOOLS_SYSTEM_PROMPT.replace("{search_part}", TOOLS_SEARCH_PART if use_search else "")
                    .replace("{verify_part}", TOOLS_VERIFY_PART if verify else ""))
    return template.replace("{coord_note}", coord_note)


def frame_label(fid: int) -> str:
    return f"frame {fid} "
