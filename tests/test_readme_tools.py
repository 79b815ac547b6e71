"""The README's table of the tool-calling protocol's tools is the tools the graph binds: a
reader writes a cassette, a prompt or a client from that table, so a renamed tool or
argument there must fail here rather than surprise them."""

from __future__ import annotations

import re
from pathlib import Path

from segresearch.core.tool_protocol import tool_definitions

README = Path(__file__).resolve().parents[1] / "README.md"


def _argument_text(name: str, prop: dict, required: bool = True) -> str:
    """One argument as the README writes it: ``name``: type, arrays with their length; an
    optional one marked so, and an array of objects as such."""
    kind = prop.get("type")
    if not required:
        assert kind == "array" and prop["items"].get("type") == "object", (name, prop)
        return f"`{name}` (optional): array of objects"
    if kind == "array":
        n = prop.get("minItems")
        assert n == prop.get("maxItems"), (name, prop)
        items = prop.get("items", {}).get("type")
        return f"`{name}`: array of {n} {'numbers' if items in ('number', 'integer') else items}"
    return f"`{name}`: {kind}"


def _readme_rows() -> list[tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Tool-calling protocol\n", 1)[1].split("\n## ", 1)[0]
    table = section.split("| tool | arguments |", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^\| `(\w+)` \| (.+?) \|$", table, re.M)


def test_readme_tool_table_matches_the_definitions():
    defs = tool_definitions("qwen3", 1000, use_search=True)
    expected = []
    for d in defs:
        params = d["function"]["parameters"]
        props = params["properties"]
        required = params["required"]
        assert required == [k for k in props if k in required], d["function"]["name"]  # required first
        expected.append((d["function"]["name"],
                         ", ".join(_argument_text(k, p, k in required) for k, p in props.items())))
    assert _readme_rows() == expected
