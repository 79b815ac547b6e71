"""One evaluation's settings, the layout of its folder, and what pins a folder to them.

Kept below both the single-process runner (``runner``) and the Ray shards
(``distributed``): each reads the same spec and writes the same folder layout, so neither
has to reach into the other for a file name or a type.

A folder remembers the settings it was made with (``eval_config.json``, written by
:func:`check_config`) and refuses to be resumed with others. File settings are compared
and used in one resolved form (:func:`resolve_spec`), so a path typed relative, absolute
or through a link is the same setting.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from segresearch.agents.context import Context
from segresearch.agents.coord_style import coord_style_for
from segresearch.agents.model_spec import ModelSpec
from segresearch.core.coords import CoordFrame
from segresearch.core.files import write_atomic
from segresearch.eval.predict import PER_QUERY_FIELDS, ModelChoice, eval_reply, model_label
from segresearch.tools.segmenters import EVAL_FRAME_CACHE_MB, Segmenter, get_segmenter

# The folder's layout.
PREDICTIONS = "predictions.jsonl"
CONFIG = "eval_config.json"
SEG = "seg"
RUNS = "runs"
OVERLAYS = "overlays"


class EvalError(ValueError):
    """An evaluation that cannot start or continue; one line for the user."""


def resolved_path(value: str | os.PathLike[str] | None) -> str:
    """The one form of a file setting, used both to open the file and to compare a folder's
    settings with a resumed run's: ``~`` expanded, absolute, symlinks resolved. Typed
    relative, absolute or through a link, the same file is the same setting, and the path
    that was compared is the path that is used. Empty stays empty."""
    if value is None or not str(value).strip():
        return ""
    return str(Path(value).expanduser().resolve())


def resolved_model(spec: ModelChoice) -> ModelChoice:
    """A model spec with the file of ``replay:`` / ``hf:`` resolved like any file setting
    (other specs and model objects as they are)."""
    if not isinstance(spec, str):
        return spec
    parsed = ModelSpec.parse(spec)
    if parsed.names_file and parsed.target:
        return parsed.with_target(resolved_path(parsed.target))
    return spec


@dataclass
class EvalSpec:
    """Everything one evaluation run needs (the CLI fills it from its arguments)."""

    dataset: str  # "okvos" | "images"
    root: str
    out: str
    split: str | None = None
    models: Sequence[ModelChoice] = ()
    predictions: str | None = None  # re-score a saved file instead of running a model
    context: Context = field(default_factory=lambda: Context(run_segmentation=False))
    segmenter: str | Segmenter = "auto"
    sam2_checkpoint: str = ""
    sam2_config: str = ""
    sam2_image_size: int | None = None
    device: str = "auto"
    concurrency: int = 8
    limit: int | None = None
    workers: int = 1
    ray: bool = False
    ray_address: str | None = None
    trajectories: bool = True
    overlays: bool = False
    html: bool = True
    progress: bool = True
    retry_errors: bool = False
    force: bool = False
    score_workers: int | None = None
    # SAM 2 frame preparation: frames kept per video for all its queries (MiB), and threads
    # preparing them ahead (None: by device). Neither changes a mask.
    frame_cache_mb: float = EVAL_FRAME_CACHE_MB
    prefetch_threads: int | None = None
    # score against the published evaluator's [id, mask folder, ability] list instead of
    # the parquet's folders (its relative paths resolve from the current folder, as there)
    meta_mapping: str | None = None
    # the paper's numbers (CSV or JSON, see segresearch.eval.paper_table), shown beside ours
    paper_table: str | None = None
    # how a tag output's <answer> is read (postseg.ANSWER_RULES): "objects" segments a list
    # of two or more objects per object; "published" reads it as the published script does
    # (no prompt). Not pinned: a query whose masks the other rule made is segmented again.
    answer_rule: str = "objects"

    @property
    def out_dir(self) -> Path:
        return Path(self.out).expanduser()

    def make_segmenter(self) -> Segmenter:
        try:
            seg = get_segmenter(self.segmenter, sam2_checkpoint=self.sam2_checkpoint,
                                sam2_config=self.sam2_config, sam2_image_size=self.sam2_image_size,
                                device=self.device, frame_cache_mb=self.frame_cache_mb,
                                prefetch_threads=self.prefetch_threads)
        except ValueError as e:
            raise EvalError(str(e)) from None
        if seg is None:
            raise EvalError("evaluation needs a segmenter (sam2, grabcut or auto), not 'none'")
        return seg

    @property
    def coords(self) -> CoordFrame:
        """The grid saved outputs answer on (Qwen2.5-VL style answers are in pixels of the
        keyframe image the model was shown: the published answer follows a keyframe)."""
        return CoordFrame.of(spec_coord_style(self), self.context.keyframe_size)


# The conventions a saved tags answer can be read in (the published post-segmentation).
TAG_STYLES = ("qwen3", "qwen25")


def spec_coord_style(spec: EvalSpec) -> str:
    """The convention the evaluation's models answer in: the setting, or for ``auto`` the
    one their family uses (``agents.coord_style``). One evaluation is one convention, so
    its folder records it and its saved answers are read on one grid; models of families
    that answer differently are refused (``EvalError``) unless the setting names one."""
    c = spec.context
    models = list(spec.models) or [c.model]  # re-scoring a file: the runs' model setting
    protocol = c.protocol
    styles = sorted({coord_style_for(m, protocol, c.coord_style) for m in models})
    if len(styles) > 1:
        raise EvalError(f"the models answer in different coordinate conventions ({', '.join(styles)}); "
                        "evaluate them separately or name one with --coord-style")
    if protocol == "tags" and styles[0] not in TAG_STYLES:
        # a tags row is segmented from its saved text, which is read x-first on the published
        # grids; a y-first or 0-1 answer would be placed wrongly without a word
        raise EvalError(f"--coord-style {styles[0]} needs --protocol tools: answers written as tags are "
                        f"read in the published conventions ({', '.join(TAG_STYLES)})")
    return styles[0]


# Context fields an evaluation never takes from its options: the ones it decides for every
# query (the model of the round-robin, no segmentation inside the run, the query's run
# folder) and the ones its spec holds itself (the segmenter, run after the predictions).
_DECIDED_BY_EVAL = frozenset(PER_QUERY_FIELDS) | {f.name for f in fields(EvalSpec)}


def eval_context(options: Mapping[str, Any]) -> Context:
    """The Context shared by an evaluation's runs from its options (``vars(args)`` of the
    ``eval`` command): every Context field the options give a value for, except those the
    evaluation decides itself; the rest keep the Context's defaults (``SEGRESEARCH_*``)."""
    given = {f.name: options[f.name] for f in fields(Context)
             if f.name not in _DECIDED_BY_EVAL and options.get(f.name) is not None}
    return Context(**{"run_segmentation": False, **given})


# The Context's file settings an evaluation uses ("off" switches the search cache off).
_CONTEXT_PATHS = ("kb", "system_prompt_file", "search_cache")


def resolve_spec(spec: EvalSpec) -> EvalSpec:
    """``spec`` with every file setting in its resolved form (:func:`resolved_path`), so
    what ``eval_config.json`` records, what a resume is compared with and what is opened
    are one value."""
    c = spec.context
    ctx_paths = {k: resolved_path(getattr(c, k)) for k in _CONTEXT_PATHS
                 if isinstance(getattr(c, k), str) and getattr(c, k).strip()
                 and not (k == "search_cache" and getattr(c, k).strip().lower() == "off")}
    return replace(
        spec, root=resolved_path(spec.root),
        predictions=resolved_path(spec.predictions) or None,
        meta_mapping=resolved_path(spec.meta_mapping) or None,
        sam2_checkpoint=resolved_path(spec.sam2_checkpoint),
        models=[resolved_model(m) for m in spec.models],
        # "auto" recorded and run as the convention it stands for, so a folder made before
        # the setting existed ("qwen3") is resumed by the same models
        context=replace(c, **ctx_paths, coord_style=spec_coord_style(spec)),
    )


# The Context fields that change what a prediction is, in the order eval_config.json lists
# them. Not derivable from the fields alone (search_image_size, max_new_tokens and
# feedback_retries change predictions too but were never recorded; pinning them now would
# refuse every existing folder), so this is the one list: settings() and the comparison
# both read it, and an unknown name fails at import.
PINNED_CONTEXT = ("search", "kb", "retriever_url", "num_frames", "max_turns", "frame_size",
                  "keyframe_size", "coord_style", "protocol", "prompt_variant", "system_prompt_file",
                  "temperature", "text_topk", "image_topk")
_unknown = set(PINNED_CONTEXT) - {f.name for f in fields(Context)}
if _unknown:
    raise ImportError(f"PINNED_CONTEXT names no Context field: {sorted(_unknown)}")
# Settings that change what a prediction or a mask is: a folder is never resumed with others.
# The ask_user reply is recorded (and pinned) only by runs that offer the tool, so folders
# made without it, before or after the setting existed, resume unchanged.
_PINNED = ("dataset", "root", "split", "models", *PINNED_CONTEXT, "segmenter", "predictions",
           "ask_user", "ask_user_reply")
# Settings recorded as file paths, and how a recorded value is brought to the resolved
# form (eval_config.json of older versions kept paths as they were typed).
_PATH_SETTINGS = ("root", "predictions", "meta_mapping",
                  *(k for k in PINNED_CONTEXT if k in _CONTEXT_PATHS))
# What a setting recorded by no older eval_config.json stood for then: a folder made before
# the setting existed resumes under that value (and only that one).
_BEFORE_RECORDED = {"protocol": "tags"}


def _context_setting(c: Context, name: str) -> Any:
    if name == "search":
        return c.search_name  # a backend object from Python is recorded as "custom"
    if name in _CONTEXT_PATHS:
        return resolved_path(getattr(c, name))
    return getattr(c, name)


def _comparable(key: str, value: Any) -> Any:
    if key in _PATH_SETTINGS and isinstance(value, str) and value:
        return resolved_path(value)
    if key == "models" and isinstance(value, list):
        return [resolved_model(m) if isinstance(m, str) else m for m in value]
    return value


def settings(spec: EvalSpec, segmenter: Segmenter) -> dict[str, Any]:
    """What ``eval_config.json`` records and ``results.json`` shows as the run's settings."""
    return {
        "dataset": spec.dataset, "root": resolved_path(spec.root),
        "split": spec.split,
        "models": [model_label(resolved_model(m)) for m in spec.models] if spec.models else None,
        "predictions": resolved_path(spec.predictions) or None,
        **{k: _context_setting(spec.context, k) for k in PINNED_CONTEXT},
        "segmenter": segmenter.describe(), "concurrency": spec.concurrency,
        "workers": spec.workers if spec.ray else 1, "limit": spec.limit,
        "meta_mapping": resolved_path(spec.meta_mapping) or None,
        "answer_rule": spec.answer_rule,
        **({"ask_user": True, "ask_user_reply": eval_reply(spec.context)} if spec.context.ask_user else {}),
    }


def check_config(out: Path, current: dict[str, Any], force: bool) -> None:
    """Refuse to resume a folder made with other settings (unless forced): its predictions
    and masks would be mixed with new ones in one table."""
    path = out / CONFIG
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise EvalError(f"{path} is unreadable ({e}); remove it or use another --out") from None
        old = {**_BEFORE_RECORDED, **old} if isinstance(old, dict) else {}
        diff = [k for k in _PINNED if _comparable(k, old.get(k)) != _comparable(k, current.get(k))]
        if diff and not force:
            shown = "; ".join(f"{k}: {old.get(k)!r} → {current.get(k)!r}" for k in diff[:4])
            raise EvalError(
                f"{out} holds an evaluation made with other settings ({shown}); use another "
                "--out, or --force to continue anyway"
            )
    write_atomic(path, json.dumps(current, indent=1, default=str).encode())
