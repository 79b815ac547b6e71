"""LangGraph contact beyond its public API (written against langgraph 1.2.24).

Two assumptions, each pinned by a contract test in ``tests/test_compat.py``:

- a node can tell whether its run persists checkpoints only from the run's config, under a
  key LangGraph keeps public "for backwards compatibility (mostly langgraph-api)" and plans
  to drop in v2;
- a compiled graph can be made an instance of a ``CompiledStateGraph`` subclass by passing
  its attributes to the subclass's constructor, which is exactly what ``Pregel.copy`` does
  (``StateGraph.compile`` offers no class to compile into), so the copies langgraph-api makes
  per run keep the subclass.
"""

from __future__ import annotations

from typing import Any, TypeVar

from langgraph.config import get_config
from langgraph.constants import CONFIG_KEY_CHECKPOINTER
from langgraph.graph.state import CompiledStateGraph

TESTED_VERSION = "1.2.24"

G = TypeVar("G", bound=CompiledStateGraph[Any, Any, Any, Any])

def run_has_checkpointer() -> bool:
    """Whether the run of the node calling this saves checkpoints (so ``interrupt`` can pause
    it and a later run can resume). Only valid inside a node.

    LangGraph offers no public question for this: ``Runtime`` carries no checkpointer, and
    langgraph-api injects its own per run, so the graph's ``checkpointer`` attribute does not
    tell either. The checkpointer in use is in the run's configurable under
    ``CONFIG_KEY_CHECKPOINTER`` (langgraph 1.2.24, ``langgraph.constants``)."""
    return get_config().get("configurable", {}).get(CONFIG_KEY_CHECKPOINTER) is not None


def compiled_as(compiled: CompiledStateGraph[Any, Any, Any, Any], cls: type[G]) -> G:
    """``compiled`` rebuilt as ``cls``, a subclass that overrides some of its public methods.

    Built through the constructor with the attributes ``compiled`` holds, the way
    ``Pregel.copy`` builds a copy in langgraph 1.2.24 (``self.__class__(**self.__dict__)``
    minus ``__orig_class__``). ``compile`` also sets private attributes after construction
    (1.2.24: ``_serde_allowlist``, which limits what a checkpointer handed in later may
    deserialise, and the stream mappers); those are carried over as they are, so the rebuilt
    graph holds exactly what ``compiled`` held. ``copy``, ``with_config`` and langgraph-api's
    per-run copies then keep the subclass, with no object's class swapped after the fact."""
    if not (isinstance(cls, type) and issubclass(cls, CompiledStateGraph)):
        raise TypeError(f"{cls!r} is not a CompiledStateGraph subclass")
    attrs = {k: v for k, v in vars(compiled).items() if k != "__orig_class__"}
    rebuilt = cls(**{k: v for k, v in attrs.items() if not k.startswith("_")})
    for name, value in attrs.items():
        if name.startswith("_") or name not in vars(rebuilt):
            setattr(rebuilt, name, value)
    return rebuilt
