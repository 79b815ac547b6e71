"""Every use of a library's private or unstable API, one module per library.

LangGraph, langgraph-api, SAM 2 and verl are used through their public APIs wherever those
suffice. Where they do not (a private method, a module attribute patched, a route shape, a
state layout restated), the contact lives in ``compat/<library>.py``, behind a small function
whose docstring names the release it was written against, and ``tests/test_compat.py`` holds
one contract test per assumption. When an upgrade breaks one, that test fails naming the
library and its installed version, instead of a run failing somewhere downstream.

Rule for new code: a name with a leading underscore, a ``_internal`` module, a monkeypatch or
a copied layout from one of these libraries goes here, never into the module that needs it.
"""
