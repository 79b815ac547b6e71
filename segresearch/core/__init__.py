"""The bottom layer: what every other part of SegResearch may use, and which uses none of them.

It holds the facts the whole package shares: the published tag protocol and its prompts,
reading media and the content-addressed media store, typed events, coordinates, settings from
the environment, process caches, cancellation and crash-safe file writing. Nothing here
imports from ``tools``, ``agents``, ``graphs`` or above (``make lint`` checks it with
import-linter), so a change here is the only kind that can ripple everywhere.
"""
