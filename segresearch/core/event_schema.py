"""The JSON Schema of every event (``segresearch.core.events``), for clients that do not run
Python: the web page, SDK clients, anything reading ``trajectory.json``.

Kept apart from the types so that reading an event's names costs no pydantic import; this
module is what builds, checks and prints the published document. ``assets/events.schema.json``
is its output, checked in (a test keeps the two equal); ``python -m segresearch.core.event_schema``
prints it, and the README's event tables are ``markdown_table``'s output.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Final, Literal

from pydantic import Field, TypeAdapter

from segresearch.core import events

# The published unions, by the name a client refers to them with (``#/$defs/<name>``). Each
# is tagged by ``type``: within one union every shape has its own tag.
UNIONS: Final[dict[str, Any]] = {
    "TrajectoryEvent": events.TrajectoryEvent,
    "StreamEvent": events.StreamEvent,
    "Pending": events.Pending,
    "ReviewRequest": events.ReviewRequest,
    "AskUserRequest": events.AskUserRequest,
}
SCHEMA_ID: Final = "https://segresearch.invalid/events.schema.json"
DRAFT: Final = "https://json-schema.org/draft/2020-12/schema"


def _tagged(tp: Any) -> Any:
    """A union as pydantic's discriminated union (the schema then names the tag and maps
    each value to its shape); a single shape as it is."""
    if getattr(tp, "__args__", None):
        return Annotated[tp, Field(discriminator="type")]
    return tp


def json_schema() -> dict[str, Any]:
    """Every event as one JSON Schema (draft 2020-12) document: ``$defs`` hold each shape and
    the four unions (``TrajectoryEvent``: an entry of ``State.events`` and of
    ``trajectory.json``; ``StreamEvent``: a ``stream_mode="custom"`` event; ``Pending``:
    ``State.pending``; ``ReviewRequest``: the review pause's interrupt value). A client
    validates one kind with ``{"$ref": "<id>#/$defs/StreamEvent"}``.

    Every shape is closed (``additionalProperties: false``): every key is listed, so a key
    added without being declared here is a change to the public format that the tests see."""
    keyed: list[tuple[str, Literal["validation"], TypeAdapter[Any]]] = [
        (name, "validation", TypeAdapter(_tagged(tp))) for name, tp in UNIONS.items()]
    roots, found = TypeAdapter.json_schemas(keyed, ref_template="#/$defs/{model}")
    defs: dict[str, Any] = dict(found.get("$defs", {}))
    for (name, _mode), schema in roots.items():
        if schema.get("$ref") != f"#/$defs/{name}":  # a single shape is already a def
            defs[name] = schema
    for shape in defs.values():
        if shape.get("type") == "object" and "properties" in shape:
            shape["additionalProperties"] = False
    return {
        "$schema": DRAFT,
        "$id": SCHEMA_ID,
        "title": "SegResearch events",
        "description": ("TrajectoryEvent: an entry of State.events and trajectory.json; "
                        "StreamEvent: a stream_mode='custom' event; Pending: State.pending; "
                        "ReviewRequest: the review pause's interrupt value."),
        "anyOf": [{"$ref": f"#/$defs/{name}"} for name in UNIONS],
        "$defs": dict(sorted(defs.items())),
    }


def schema_text() -> str:
    """``json_schema()`` as the checked-in file holds it (stable key order, final newline)."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def _shapes(defs: dict[str, Any], name: str) -> list[dict[str, Any]]:
    refs = defs[name].get("oneOf")
    if refs is None:
        return [defs[name]]
    return [defs[ref["$ref"].rsplit("/", 1)[1]] for ref in refs]


def tags(name: str) -> list[str]:
    """The ``type`` values of ``name`` (a key of ``UNIONS``), in the union's order."""
    defs = json_schema()["$defs"]
    return [shape["properties"]["type"]["const"] for shape in _shapes(defs, name)]


def markdown_table(name: str) -> str:
    """The union ``name`` as the README's table: one row per shape, its keys in the order a
    payload has them (``[key]`` when it may be absent) and the shape's description. The
    README holds exactly this text (a test compares), so the table cannot drift from the
    schema."""
    rows = ["| `type` | keys | meaning |", "|---|---|---|"]
    for shape in _shapes(json_schema()["$defs"], name):
        props = shape["properties"]
        required = set(shape.get("required", []))
        keys = ", ".join(f"`{k}`" if k in required else f"`[{k}]`" for k in props if k != "type")
        meaning = " ".join(shape.get("description", "").split())
        rows.append(f"| `{props['type']['const']}` | {keys} | {meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(schema_text(), end="")
