"""Command-line flags for ``Context`` fields, made from the fields themselves.

A flag that mirrors a run setting takes its name, type, choices and help from the field
(``metadata["description"]``, the ``Literal`` words, the enum the published schema lists),
so the CLI, the server's JSON schema and the environment variables describe one setting
in one place. A flag left out is absent from the namespace's settings (``None``), so the
Context's own default, its ``SEGRESEARCH_*`` variable, applies.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, Field, fields
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from segresearch.agents.context import Context

# The reading order of the names a schema enum lists (search backends from the registry are
# otherwise sorted by name): local ones first, then the retrieval server, then the web;
# names not here follow in their own order, and "none" always comes last.
_READING_ORDER = ("local", "bm25", "hybrid", "retriever", "ddg", "tavily", "serper", "sam2", "grabcut", "auto")
# Shorter spellings a field's flag also answers to (the name for the setting).
_ALIASES = {"coord_style": ("--coords",)}


def _field(name: str) -> Field[Any]:
    found = next((f for f in fields(Context) if f.name == name), None)
    if found is None:
        raise KeyError(f"Context has no field {name!r}")
    return found


def _flag_type(hint: Any) -> tuple[type, tuple[str, ...]]:
    """(argparse type, choices) of a field's annotation: a ``Literal`` gives its words, an
    optional number its number type, anything else (a path, a spec, a backend name) text."""
    if get_origin(hint) is Literal:
        return str, tuple(str(a) for a in get_args(hint))
    parts = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    for t in (bool, int, float):
        if t in parts:
            return t, ()
    return str, ()


def _schema_enum(name: str) -> tuple[str, ...]:
    """The names the published JSON schema offers for a field (``json_schema_extra`` on its
    annotation fills ``enum`` from a registry), in reading order; () when it has none."""
    hint = get_type_hints(Context, include_extras=True)[name]
    if get_origin(hint) is not Annotated:
        return ()
    schema: dict[str, Any] = {}
    for meta in get_args(hint)[1:]:
        extra = getattr(meta, "json_schema_extra", None)
        if callable(extra):
            extra(schema)
        elif isinstance(extra, Mapping):
            schema.update(extra)
    names = [str(n) for n in schema.get("enum") or ()]
    rank = {n: i for i, n in enumerate(_READING_ORDER)}
    return tuple(sorted(names, key=lambda n: (n == "none", rank.get(n, len(rank)), names.index(n))))


def add_context_arguments(parser: argparse.ArgumentParser, names: Iterable[str], *,
                          defaults: Mapping[str, Any] | None = None,
                          notes: Mapping[str, str] | None = None,
                          helps: Mapping[str, str] | None = None,
                          choices: Mapping[str, Sequence[str]] | None = None) -> None:
    """One ``--field-name`` flag (dest ``field_name``) per Context field in ``names``.

    ``defaults``: a fixed default for a command whose setting does not follow the run's
    environment variable (its help then names the default instead of the variable);
    ``notes``: a remark the command adds to the field's help; ``helps``: the whole help,
    for the rare flag whose command restricts the field (``eval`` refuses segmenter none);
    ``choices``: the words a command takes when it accepts fewer than the field (``segment``
    reads saved answers on a grid, so a coordinate style there is never 'auto')."""
    defaults, notes, helps, only = defaults or {}, notes or {}, helps or {}, choices or {}
    hints = get_type_hints(Context)
    for name in names:
        f = _field(name)
        kind, choices = _flag_type(hints[name])
        if name in only:
            choices = tuple(c for c in choices if c in only[name])
        flag = "--" + name.replace("_", "-")
        if name in helps:
            text = helps[name]
        else:
            enum = () if choices else _schema_enum(name)
            text = str(f.metadata.get("description", "")).rstrip(".")
            if enum:
                text = f"{' | '.join(enum)}: {text}"
            said = [notes[name]] if name in notes else []
            if name not in defaults:
                said.append(f"env SEGRESEARCH_{name.upper()}")
            elif defaults[name] not in (None, ""):
                said.append(f"default {defaults[name]}")
            if said:
                text += f" ({'; '.join(said)})"
        kwargs: dict[str, Any] = {"dest": name, "default": defaults.get(name),
                                  "help": text.replace("%", "%%")}
        if kind is bool:
            kwargs["action"] = "store_const"
            kwargs["const"] = True
        else:
            kwargs["type"] = kind
            if choices:
                kwargs["choices"] = list(choices)
        parser.add_argument(flag, *_ALIASES.get(name, ()), **kwargs)


def context_overrides(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The settings among ``names`` that the command line gave (a flag left out is not one)."""
    return {n: v for n in names if (v := getattr(args, n, None)) is not None}


def context_from_args(args: argparse.Namespace, names: Iterable[str], **fixed: Any) -> Context:
    """The Context of a command: ``fixed`` settings, then the flags given among ``names``;
    every other field keeps its environment default. A bad value raises ValueError or
    TypeError, as Context does."""
    return Context(**{**fixed, **context_overrides(args, names)})


def context_default(name: str) -> Any:
    """What a Context field is when nothing sets it: its environment variable or its default."""
    f = _field(name)
    return f.default_factory() if f.default_factory is not MISSING else f.default
