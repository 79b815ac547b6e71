"""Printing a run as it happens: one block per model turn and per tool result."""

from __future__ import annotations

import math
import re
import time
from typing import Any

from rich.console import Console
from rich.text import Text
from tqdm import tqdm

from segresearch.core import events as ev_types

_THINK_RE = re.compile(r"<thinking>(.*?)(?:</thinking>|$)", re.DOTALL)

# Terminal control sequences (ECMA-48), in 7-bit (ESC ...) and 8-bit (C1) form: CSI
# (ESC [ ... final; ``ESC[2J`` clears the screen), OSC / DCS / SOS / PM / APC strings up to
# their terminator (``ESC]0;title BEL`` sets the window title; an unterminated one ends at
# the line's end), and two-byte escapes. Whatever control character is left after
# them (C0 but tab and newline, DEL, C1) is dropped on its own.
_CONTROL_SEQ = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)
_CONTROL_CHAR = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: object) -> str:
    """``text`` with every terminal control sequence and control character removed, tab
    and newline kept. Model output and search results are text from elsewhere: printed as
    they are, ``ESC[2J`` would clear the user's screen and an OSC string retitle the
    window or, on some terminals, write to the clipboard. Only what is printed is cleaned;
    trajectory.json keeps the text as it was."""
    return _CONTROL_CHAR.sub("", _CONTROL_SEQ.sub("", str(text)))


def _short(text: str, n: int) -> str:
    text = " ".join(terminal_safe(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


# tqdm's unit for the steps whose count is known to be frames; others count "it"
_UNITS = {"segment": "frame", "index": "doc"}
# Seconds between progress lines when stderr is a log, not a terminal.
PROGRESS_LINE_EVERY_S = 5.0


class RunPrinter:
    """Turns graph ``updates`` stream chunks into readable lines (no rich markup from model
    text: it may contain brackets). Bars and status lines go to stderr, so that stdout
    stays the run's record (and ``--json``'s last line stays parseable)."""

    def __init__(self, console: Console | None = None, width: int = 400,
                 err: Console | None = None) -> None:
        self.console = console or Console(highlight=False)
        self.err = err or Console(stderr=True, highlight=False)
        self.width = width
        self._bar: Any = None
        self._bar_key: tuple[str, str] | None = None
        self._status: Any = None
        # progress as log lines: (step, label), when it started, when a line was last printed
        self._lines: tuple[tuple[str, str], float, float] | None = None

    def custom(self, ev: Any) -> None:
        """Live signs of long, otherwise silent work (indexing a knowledge base, GrabCut,
        local generation, loading a model): a bar per counted step, a transient line for
        a step that cannot be counted. Other custom events repeat what ``updates`` print."""
        if not isinstance(ev, dict):
            return
        if ev.get("type") == ev_types.PROGRESS:
            self._progress(ev)
        elif ev.get("type") == ev_types.STATUS:
            self._show_status(terminal_safe(ev.get("message") or ""))

    def _progress(self, ev: dict[str, Any]) -> None:
        try:
            done, total = int(ev["done"]), int(ev["total"])
        except (KeyError, TypeError, ValueError):
            return
        step, label = terminal_safe(ev.get("step") or "working"), terminal_safe(ev.get("label") or "")
        if not self.err.is_terminal:
            self._progress_line(step, label, done, total)
            return
        self._stop_status()
        bar = self._bar
        if bar is not None and (self._bar_key != (step, label) or bar.total != total or done < bar.n):
            self._close_bar()  # another step, or the same step started over
        if self._bar is None:
            self._bar = tqdm(total=total, desc=f"{step} ({label})" if label else step,
                             unit=_UNITS.get(step, "it"), dynamic_ncols=True, leave=False)
            self._bar_key = (step, label)
        self._bar.update(done - self._bar.n)
        if done >= total:
            self._close_bar()

    def _progress_line(self, step: str, label: str, done: int, total: int) -> None:
        """Progress in a log: a bar's carriage returns would make one unreadable line, so a
        plain line every ``PROGRESS_LINE_EVERY_S`` seconds (and one at the end of a step
        that printed any); a step shorter than that prints nothing."""
        now = time.monotonic()
        key = (step, label)
        if self._lines is None or self._lines[0] != key or done == 0:
            self._lines = (key, now, now)
        _, t0, last = self._lines
        if now - last < PROGRESS_LINE_EVERY_S and not (done >= total and last > t0):
            return
        self._lines = (key, t0, now)
        rate = done / (now - t0) if done and now > t0 else 0.0
        left = f", about {math.ceil((total - done) / rate)} s left" if rate and done < total else ""
        unit = _UNITS.get(step, "item")
        name = f"{step} ({label})" if label else step
        self.err.print(Text(f"… {name}: {done} of {total} {unit}s ({100 * done // max(total, 1)} %)"
                            f"{left}", style="dim"))

    def _show_status(self, message: str) -> None:
        self._close_bar()
        if not message:
            self._stop_status()
            return
        if not self.err.is_terminal:  # a log file: one plain line, nothing to erase later
            self.err.print(Text(f"… {message}", style="dim"))
            return
        if self._status is None:
            self._status = self.err.status(Text(message, style="dim"))
            self._status.start()
        else:
            self._status.update(Text(message, style="dim"))

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._bar_key = None

    def close(self) -> None:
        """Take down any bar or status line, so the next printed line starts clean."""
        self._close_bar()
        self._stop_status()

    def line(self, style: str, head: str, body: str = "") -> None:
        self.close()
        t = Text(terminal_safe(head), style=style)
        if body:
            t.append(" " + terminal_safe(body))
        self.console.print(t)

    def event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind == ev_types.MEDIA:
            self.line("bold", "media", f"{ev['source']} ({ev['kind']}, {ev['num_frames']} frames, "
                      f"{ev['width']}x{ev['height']}); showing frames {ev['frame_ids']}")
            if ev.get("note"):
                self.line("yellow", "  note:", str(ev["note"]))
        elif kind == ev_types.MODEL:
            self.model_turn(ev)
        elif kind == ev_types.TOOL:
            name = ev.get("name")
            obs = _short(ev.get("observation", ""), self.width)
            extra = f" [+{ev['images']} image]" if ev.get("images") else ""
            self.line("cyan", f"  ← {name}:", obs + extra)
        elif kind == ev_types.FEEDBACK:
            self.line("yellow", "  ← format reminder:", ev.get("reason", ""))
        elif kind == ev_types.SEGMENT:
            if ev.get("skipped"):
                self.line("yellow", "segment skipped:", ev["skipped"])
            else:
                self.line("magenta", "segment:", f"{ev.get('summary')} ({ev.get('seconds', 0):.2f} s)")
        elif kind == ev_types.REVIEW:
            extra = f" → {ev['answer_px']}" if ev.get("answer_px") else ""
            self.line("bold yellow", "review:", f"{ev.get('decision')}{extra}")
        elif kind == ev_types.VERIFY:
            said = "accepted the masks" if ev.get("decision") == "accept" else "corrected"
            c = ev.get("correction") or {}
            if c:
                marks = ", ".join(f"{'+' if lab else '-'}({x:.0f}, {y:.0f})"
                                  for (x, y), lab in zip(c.get("points") or [], c.get("labels") or [], strict=False))
                box = f" box {[round(v) for v in c['box']]}" if c.get("box") else ""
                said += f" object {c.get('object', 0) + 1} on frame {c.get('frame')}: {marks}{box}".rstrip(": ")
            self.line("bold magenta", f"verify round {ev.get('round')}:",
                      f"frames {ev.get('frames')}; the model {said}")
            if ev.get("note"):
                self.line("yellow", "  note:", str(ev["note"]))
        elif kind == ev_types.ASK_USER:
            who = "answered automatically" if ev.get("auto") else "you answered"
            self.line("bold cyan", "  ← ask_user:", f"{ev.get('question')!r}; {who} {ev.get('reply')!r}")
        elif kind == ev_types.ERROR and ev.get("kind") == "output":  # the run goes on to its end
            self.line("bold red", "error (output):", ev.get("message", ""))
        # Any other error ends the run at once: the summary and the caller's ``error:``
        # line say it, so printing it here too showed one problem three times.

    def model_turn(self, ev: dict[str, Any]) -> None:
        text = ev.get("response", "")
        m = _THINK_RE.search(text)
        self.line("bold green", f"turn {ev['turn']}", f"({ev.get('tokens', 0)} tokens, {ev.get('seconds', 0):.2f} s)")
        if m and m.group(1).strip():
            self.line("dim", "  thinking:", _short(m.group(1), self.width))
        a = ev.get("action") or {}
        if a.get("type") == ev_types.SEARCH:
            self.line("bold cyan", f"  → {a.get('name')}:", repr(a.get("query", "")) + (f"  ({a['error']})" if a.get("error") else ""))
        elif a.get("type") == ev_types.KEYFRAME:
            self.line("bold cyan", "  → keyframe", str(a.get("frame") if a.get("frame") is not None else a.get("raw")))
        elif a.get("type") == ev_types.ANSWER and a.get("objects"):
            self.line("bold cyan", "  → answer", f"{len(a['objects'])} objects")
            for k, o in enumerate(a["objects"], 1):
                self.line("cyan", f"      {k}.", f"{o.get('label') or ''} bbox_2d={o.get('bbox_2d')} "
                                                 f"point_2d={o.get('point_2d')}".strip())
        elif a.get("type") == ev_types.ANSWER:
            self.line("bold cyan", "  → answer", f"bbox_2d={a.get('bbox_2d')} point_2d={a.get('point_2d')}")
        else:
            self.line("yellow", "  → no action:", a.get("reason", ""))

    def updates(self, chunk: dict[str, Any]) -> None:
        self.close()
        for _node, update in chunk.items():
            for ev in (update or {}).get("events", []) or []:
                self.event(ev)

    def summary(self, state: dict[str, Any], show_error: bool = True, peak_mb: float | None = None) -> None:
        """The run's outcome. ``show_error=False`` when the caller prints the error itself
        (the CLI's one ``error:`` line on stderr), so it is said once; ``peak_mb``: the peak
        memory of the process that ran it (not given when a finished thread is only shown)."""
        self.line("bold", "stop reason:", str(state.get("stop_reason")))
        if show_error and state.get("error"):
            self.line("red", "error:", str(state["error"]))
        objects = state.get("objects_px") or []
        if len(objects) > 1:  # an answer naming several objects: each, in frame pixels
            dirs = state.get("object_masks_dirs") or []
            self.line("bold", "objects (pixels):", f"{len(objects)}, masks: the union of theirs")
            for k, o in enumerate(objects):
                where = f" → {dirs[k]}" if k < len(dirs) else ""
                self.line("bold", f"  {k + 1}. {o.get('label') or 'object'}:",
                          f"frame {o.get('keyframe')} box {o.get('bbox_2d')} point {o.get('point_2d')}{where}")
        elif state.get("answer"):
            self.line("bold", "answer (model coords):", str(state["answer"]))
            self.line("bold", "answer (pixels):", str(state.get("answer_px")))
        if state.get("corrections"):
            self.line("bold", "verify corrections:", str(len(state["corrections"])))
        if state.get("questions"):
            self.line("bold", "questions asked:", str(len(state["questions"])))
        if state.get("masks_dir"):
            by = f" (segmenter: {state['segmenter']})" if state.get("segmenter") else ""
            self.line("bold", "masks:", str(state["masks_dir"]) + by)
        if state.get("run_dir"):
            self.line("bold", "outputs:", str(state["run_dir"]))
        if peak_mb is not None:
            self.line("bold", "peak memory:", f"{peak_mb:.0f} MB")
