"""Environment variables, parsed in one place.

Every setting a deployment may make without code (``SEGRESEARCH_*``, the per-run
:class:`~segresearch.agents.context.Context` defaults and the process-wide ones listed in
:data:`SETTINGS`) is read through the functions here, so that a malformed value is always
answered the same way: an :class:`EnvError` whose one line names the variable, what it
holds and what it should hold. Before this, a typo surfaced as ``invalid literal for
int()`` from deep inside a run, or, for yes/no settings, was silently read as "no".

Values are converted by pydantic (booleans accept 1/0, true/false, yes/no, on/off, t/f,
y/n in any case), are checked against the same bounds as the settings sent as JSON, and
never accept NaN or infinity. The command line checks the whole environment once at start
(``segresearch.agents.context.check_environment``), so a bad variable stops it before anything is written.

A few settings are re-read by a long-running server on every request (the upload limit,
the media disk budget); those are marked ``lenient``: a bad value met at run time logs a
warning naming the variable and keeps the default, since failing every request would take
the service down over a setting the operator can fix, while the command line still
refuses the value when it starts.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

PREFIX = "SEGRESEARCH_"

Kind = Literal["bool", "int", "float", "str", "choice"]


class EnvError(ValueError):
    """An environment variable holds a value that cannot be used; the message names it."""

    def __init__(self, name: str, raw: str, expected: str) -> None:
        self.name, self.raw, self.expected = name, raw, expected
        shown = raw if len(raw) <= 60 else raw[:57] + "..."
        super().__init__(f"environment variable {name}={shown!r} {expected}; correct it "
                         f"or remove it (unset {name})")


def raw_value(name: str) -> str | None:
    """The variable's text without surrounding blanks, or None when unset or blank (an
    empty ``VAR=`` means "not set", as the shell's ``${VAR:-default}`` reads it)."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


_BOOL, _INT, _FLOAT = bool, int, float


@functools.cache
def _adapter(kind: type) -> Any:
    # pydantic is imported on first use, not with this module: the media reader uses this
    # module and must stay importable where only torch is installed (bench/gpu_check.py).
    from pydantic import TypeAdapter  # optional: see above (bench/gpu_check.py)

    return TypeAdapter(kind)


def _convert(kind: type, raw: str) -> Any:
    from pydantic import ValidationError  # optional: as in _adapter

    try:
        return _adapter(kind).validate_python(raw)
    except ValidationError:
        return None


def _range_text(minimum: float | None, above: float | None, maximum: float | None) -> str:
    parts = []
    if above is not None:
        parts.append(f"above {above:g}")
    elif minimum is not None:
        parts.append(f"at least {minimum:g}")
    if maximum is not None:
        parts.append(f"at most {maximum:g}")
    return " and ".join(parts)


def parse(name: str, raw: str, kind: Kind, *, minimum: float | None = None,
          above: float | None = None, maximum: float | None = None,
          choices: tuple[str, ...] = ()) -> Any:
    """``raw`` (the text of variable ``name``) as a value of ``kind``; EnvError otherwise."""
    if kind == "str":
        return raw
    if kind == "choice":
        if raw.lower() in choices:
            return raw.lower()
        raise EnvError(name, raw, "must be one of " + ", ".join(choices))
    if kind == "bool":
        value = _convert(_BOOL, raw)
        if value is None:
            raise EnvError(name, raw, "is not a yes/no value; use 1, true, yes or on "
                                      "(or 0, false, no, off)")
        return bool(value)
    bounds = _range_text(minimum, above, maximum)
    if kind == "int":
        value = _convert(_INT, raw)
        if value is None:
            raise EnvError(name, raw, "is not a whole number" + (f" (it must be {bounds})" if bounds else ""))
    else:
        value = _convert(_FLOAT, raw)
        if value is None or not math.isfinite(value):
            raise EnvError(name, raw, "is not a finite number" + (f" (it must be {bounds})" if bounds else ""))
    if ((minimum is not None and value < minimum) or (above is not None and value <= above)
            or (maximum is not None and value > maximum)):
        raise EnvError(name, raw, f"must be {bounds}")
    return value


def env_str(name: str, default: str = "") -> str:
    """A text setting (surrounding blanks removed); ``default`` when unset or blank."""
    raw = raw_value(name)
    return default if raw is None else raw


def env_bool(name: str, default: bool) -> bool:
    raw = raw_value(name)
    return default if raw is None else parse(name, raw, "bool")


def env_int(name: str, default: int, *, minimum: float | None = None,
            above: float | None = None, maximum: float | None = None) -> int:
    raw = raw_value(name)
    return default if raw is None else parse(name, raw, "int", minimum=minimum, above=above,
                                             maximum=maximum)


def env_float(name: str, default: float, *, minimum: float | None = None,
              above: float | None = None, maximum: float | None = None) -> float:
    raw = raw_value(name)
    if raw is None:
        return default
    return float(parse(name, raw, "float", minimum=minimum, above=above, maximum=maximum))


@dataclass(frozen=True)
class Setting:
    """One process-wide variable: its type, default, bounds and what it is for."""

    name: str
    kind: Kind
    default: Any
    help: str
    minimum: float | None = None
    above: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    lenient: bool = False

    def parse(self, raw: str) -> Any:
        try:
            return parse(self.name, raw, self.kind, minimum=self.minimum, above=self.above,
                         maximum=self.maximum, choices=self.choices)
        except EnvError as e:  # say what the variable is for: its name alone may not
            raise EnvError(self.name, raw, f"{e.expected}; it sets the {self.help}") from None


# The typed settings that are not fields of Context (those are read by Context itself,
# through ``context_default`` below). Text settings (paths, URLs, keys) are listed where
# they are read; they need no parsing.
SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("SEGRESEARCH_MEDIA_CACHE_MB", "float", 1024.0, above=0,
            help="megabytes of decoded images the media store keeps in memory"),
    Setting("SEGRESEARCH_MEDIA_MAX_GB", "float", 0.0, lenient=True,
            help="disk budget of the media store and uploads in GB (0: unlimited)"),
    Setting("SEGRESEARCH_MAX_UPLOAD_MB", "float", 200.0, above=0, lenient=True,
            help="largest upload the server's page accepts, in MB"),
    Setting("SEGRESEARCH_SEARCH_CACHE_BYPASS", "bool", False,
            help="search cache bypass (fresh results are stored, none are read)"),
    Setting("SEGRESEARCH_KB_GPU", "bool", True,
            help="use of a GPU, when there is one, for a knowledge base's FAISS index"),
    Setting("SEGRESEARCH_LOOPBACK_ONLY", "bool", False,
            help="loopback-only Host check (set by `serve graph`)"),
    Setting("SEGRESEARCH_DEFAULT_DURABILITY", "choice", "", choices=("sync", "async", "exit"),
            help="checkpoint durability of runs that choose none (set by `serve graph`)"),
    Setting("SEGRESEARCH_FRAME_THREADS", "int", 0, minimum=0,
            help="threads that decode and resize shown frames (0: as many as CPUs, at most 8)"),
    Setting("SEGRESEARCH_SEARCH_THREADS", "int", 16, minimum=1,
            help="threads that run the search calls of a tool call side by side"),
    Setting("SEGRESEARCH_IMAGE_FETCH_THREADS", "int", 16, minimum=1,
            help="threads that download web image-search results"),
)}


def setting(name: str) -> Any:
    """The value of a registered process-wide setting (its default when unset)."""
    spec = SETTINGS[name]
    raw = raw_value(name)
    if raw is None:
        return spec.default
    try:
        return spec.parse(raw)
    except EnvError as e:
        if not spec.lenient:
            raise
        log.warning("%s; using the default (%s)", e, spec.default)
        return spec.default


def context_default(field_name: str, default: Any, kind: Kind | None = None, *,
                    bounds: tuple[float | None, bool, float | None] | None = None,
                    choices: tuple[str, ...] = (), none_words: tuple[str, ...] = ()) -> Any:
    """The default of Context field ``field_name`` from ``SEGRESEARCH_<FIELD>``: converted
    to the type of ``default`` (or ``kind``) and checked against the field's own bounds,
    so the error names the variable (``SEGRESEARCH_FRAME_SIZE``), not the field."""
    name = PREFIX + field_name.upper()
    raw = raw_value(name)
    if raw is None:
        return default
    if none_words and raw.lower() in none_words:
        return None
    if kind is None:
        kind = ("bool" if isinstance(default, bool) else "int" if isinstance(default, int)
                else "float" if isinstance(default, float) else "choice" if choices else "str")
    lo, lo_open, hi = bounds or (None, False, None)
    return parse(name, raw, kind, minimum=None if lo_open else lo, above=lo if lo_open else None,
                 maximum=hi, choices=choices)


def check_settings() -> None:
    """Parse every registered setting now (a ValueError naming the variable on the first
    bad one). The full start-up check, Context defaults included, is
    ``segresearch.agents.context.check_environment``."""
    for name, spec in SETTINGS.items():
        raw = raw_value(name)
        if raw is not None:
            spec.parse(raw)


__all__ = [
    "SETTINGS",
    "EnvError",
    "Setting",
    "check_settings",
    "context_default",
    "env_bool",
    "env_float",
    "env_int",
    "env_str",
    "parse",
    "raw_value",
    "setting",
]
