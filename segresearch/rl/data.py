"""OK-VOS (and any dataset in its layout), MeViS and ReVOS → the parquet that verl's
``RLHFDataset`` reads.

The frames a sample is trained on are fixed here, once, rather than by the rollout: the
reward's ground truth exists only for the frames the policy is shown, so both have to come
from the same choice. The agent loop passes ``extra_info["frames"]`` to the graph as a list
of frame paths; the graph labels them with :func:`segresearch.core.media.frame_ids_for`,
which is what keys the ground truth here, so a ``<keyframe>`` the model names is a key the
reward finds.

The prompt stays text-only (no ``<image>`` placeholders, no ``images`` column): the graph
renders the system prompt and the frames itself, and verl's dataset would otherwise decode
every frame just to hand it to a loop that does not use it.

A conversion is deterministic for a given seed: the training swap draws from a generator
seeded by ``(seed, source row index)``, so ``limit`` and skipped rows do not shift the
frames any other row gets.

With ``presize_frames`` the shown frames are also made here, once per video frame, exactly as
the rollout shows them (decoded by ``open_media`` and squashed to ``frame_size``² with
``FRAME_RESIZE``'s filter) and stored losslessly, uncompressed (BMP: a JPEG, even at the exact
size and quality 95, decodes to other pixels, and a 448-px PNG takes about as long to
decode as the source JPEG takes to decode and resize): ``extra_info["shown_frames"]``,
aligned with ``frames``. The agent loop hands them to the graph, which then reads them instead of decoding
and resizing the sources; the keyframe is still made from the source frame, at its own size.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.utils.function_calling import convert_to_openai_tool
from PIL import Image
from tqdm import tqdm

from segresearch.agents.context import Context
from segresearch.compat.transformers import install_video_processor_stub
from segresearch.compat.verl import chat_template_kwargs, with_chat_template_kwargs
from segresearch.core.coords import COORD_STYLES, describe_convention
from segresearch.core.media import (
    FRAME_RESIZE,
    IMAGE_EXTS,
    frame_ids_for,
    open_media,
    sample_frame_ids,
)
from segresearch.core.media_recipes import _atomic_write
from segresearch.core.prompts import frame_label, system_prompt, tools_system_prompt
from segresearch.core.rle import RLEError, decode, runs_from_string
from segresearch.core.shared_cache import LoadOnce
from segresearch.core.tool_protocol import tool_definitions
from segresearch.eval.datasets import DatasetError, read_okvos_parquet
from segresearch.eval.rvos import REVOS_TYPES, RVOS_DATASETS, load_rvos, mask_dict
from segresearch.eval.rvos import _load as _load_rvos_meta
from segresearch.rl.ground_truth import build_ground_truth
from segresearch.rl.placeholders import GeometryProcessor
from segresearch.rl.tools_template import tools_template_kwargs

log = logging.getLogger(__name__)

AGENT_NAME = "seg_research_agent"
PROTOCOLS: tuple[str, ...] = ("tags", "tools")  # Context.protocol's values
DATA_SOURCE_PREFIX = "Search_RVOS_"
FRAME_EXT = ".jpg"
MASK_EXT = ".png"
# Lossless (the rollout must see the pixels it would have made) and uncompressed (reading
# one is a copy: about 0.2 ms for 448 px, against 4 ms for a PNG).
PRESIZED_EXT = ".bmp"
PRESIZED_FORMAT = "BMP"
METADATA_KEY = b"segresearch"
# the split a MeViS / ReVOS conversion reads when none is named (the sets the evaluation reads)
RVOS_SPLITS = {"mevis": "valid_u", "revos": "valid"}


def data_source_for(ability: str) -> str:
    """The ``data_source`` a row is reported under; verl groups validation metrics by it,
    so each ability gets its own curve."""
    return f"{DATA_SOURCE_PREFIX}{ability}"


def _schema() -> Any:
    """An explicit schema, so that a column which happens to be all null in one split
    (``id``, ``steps``) still has the type the other split has, and the files concatenate."""
    import pyarrow as pa  # heavy, optional: the [rl] extra

    return pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        ("agent_name", pa.string()),
        ("extra_info", pa.struct([
            ("index", pa.int64()),
            ("split", pa.string()),
            ("id", pa.string()),
            ("video", pa.string()),
            ("oid", pa.string()),
            ("question", pa.string()),
            ("steps", pa.list_(pa.string())),
            ("frames", pa.list_(pa.string())),
            ("frame_ids", pa.list_(pa.int64())),
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("coord_style", pa.string()),
            ("frame_size", pa.int64()),
            ("shown_frames", pa.list_(pa.string())),
            ("frame_resize", pa.string()),
        ])),
    ])


@dataclass
class _Stats:
    source_rows: int = 0
    rows: int = 0
    skipped_no_target: list[int] = field(default_factory=list)
    kept_no_target: int = 0
    swapped: int = 0
    skipped_expressions: list[str] = field(default_factory=list)  # MeViS / ReVOS: no target at all


def _missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(np.isnan(v))
    except (TypeError, ValueError):
        return False


def _frame_stem(name: str) -> str:
    """Frame names come with or without their extension; masks are named by the stem."""
    p = Path(name)
    return p.stem if p.suffix.lower() in IMAGE_EXTS else name


def _frame_file(name: str) -> str:
    return name if Path(name).suffix.lower() in IMAGE_EXTS else name + FRAME_EXT


def _target(path: Path) -> np.ndarray:
    """Boolean target mask: pixels equal to 255 (all colour channels, for RGB masks)."""
    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim == 3:
        return (arr[..., :3] == 255).all(axis=-1)
    return arr == 255


def presized_folder(out: Path, frame_size: int) -> Path:
    """Where a conversion writing ``out`` keeps its pre-sized frames (one folder per size
    and filter, beside the parquet)."""
    return out.parent / f"frames_{int(frame_size)}_{FRAME_RESIZE.method}"


def presize_frames(paths: Sequence[Path], frame_size: int, folder: Path, done: set[Path] | None = None) -> list[Path]:
    """The frames of ``paths`` as the rollout shows them, written once each to
    ``folder/<video>/<stem>.bmp`` (a file newer than its source is kept). ``paths`` is one
    row's frame list, opened as the rollout opens it, so decoding and resizing are the
    graph's own."""
    media = open_media([str(p) for p in paths])
    out = []
    for fid, src in zip(media.frame_ids, paths, strict=True):
        dest = folder / src.parent.name / f"{src.stem}{PRESIZED_EXT}"
        out.append(dest)
        if done is not None and dest in done:
            continue
        try:
            fresh = dest.stat().st_mtime_ns >= src.stat().st_mtime_ns
        except FileNotFoundError:
            fresh = False
        if not fresh:
            img = FRAME_RESIZE(media.frame(fid), frame_size)
            dest.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(dest, lambda f, img=img: img.save(f, format=PRESIZED_FORMAT))
        if done is not None:
            done.add(dest)
    return out


class _Layout:
    """Directory listings of one split, each read once: a real split has tens of
    thousands of frames, and a stat per frame per row would dominate the conversion."""

    def __init__(self, root: Path, split: str) -> None:
        self.frames_dir = root / split / "JPEGImages"
        self.masks_dir = root / split / "Annotations"
        self._frames: dict[str, set[str]] = {}
        self._masks: dict[tuple[str, str], set[str]] = {}
        self._targets: dict[tuple[str, str], list[str]] = {}

    def frame_files(self, video: str) -> set[str]:
        if video not in self._frames:
            d = self.frames_dir / video
            if not d.is_dir():
                raise ValueError(f"video folder not found: {d} (video {video!r})")
            self._frames[video] = {p.name for p in d.iterdir()}
        return self._frames[video]

    def mask_stems(self, video: str, oid: str) -> set[str]:
        key = (video, oid)
        if key not in self._masks:
            d = self.masks_dir / video / oid
            self._masks[key] = (
                {p.stem for p in d.iterdir() if p.suffix == MASK_EXT} if d.is_dir() else set()
            )
        return self._masks[key]

    def mask_path(self, video: str, oid: str, stem: str) -> Path:
        return self.masks_dir / video / oid / f"{stem}{MASK_EXT}"

    def target_stems(self, video: str, oid: str) -> list[str]:
        """Stems whose mask shows the target: a frame with an empty mask file (target out
        of view) would not give the training sample anything to find."""
        key = (video, oid)
        if key not in self._targets:
            stems = self.mask_stems(video, oid)
            self._targets[key] = [
                s for s in sorted(stems) if _target(self.mask_path(video, oid, s)).any()
            ]
        return self._targets[key]


def _sample_positions(
    names: Sequence[str], num_frames: int, annotated: set[str] | None, rng: np.random.Generator
) -> tuple[list[int], bool]:
    """``floor(linspace)`` positions; with ``annotated`` (training), one drawn annotated
    frame replaces the sampled frame nearest to it in time, so the target is in view in at
    least one frame the policy sees. Returns the positions and whether a swap happened."""
    positions = sample_frame_ids(list(range(len(names))), num_frames)
    if not annotated:
        return positions, False
    candidates = [i for i, n in enumerate(names) if _frame_stem(n) in annotated]
    if not candidates:
        return positions, False
    anchor = candidates[int(rng.integers(len(candidates)))]
    if anchor in positions:
        return positions, False
    nearest = int(np.argmin([abs(p - anchor) for p in positions]))  # ties → the earlier frame
    positions[nearest] = anchor
    return sorted(positions), True


def _row(*, index: int, split: str, source: str, ability: str, question: str, gt: dict[str, Any],
         query_id: str | None, video: str, oid: str, steps: list[str] | None, paths: Sequence[Path],
         fids: Sequence[int], size: tuple[int, int], coord_style: str, frame_size: int,
         shown: list[str] | None) -> dict[str, Any]:
    """One verl row (``_schema``), whichever benchmark it comes from: the agent loop and the
    reward read every row the same way."""
    return {
        "data_source": source,
        "prompt": [{"role": "user", "content": question}],
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": json.dumps(gt)},
        "agent_name": AGENT_NAME,
        "extra_info": {
            "index": index,
            "split": split,
            "id": query_id,
            "video": video,
            "oid": oid,
            "question": question,
            "steps": steps,
            "frames": [str(p) for p in paths],
            "frame_ids": [int(f) for f in fids],
            "width": int(size[0]),
            "height": int(size[1]),
            "coord_style": coord_style,
            "frame_size": int(frame_size),
            "shown_frames": shown,
            "frame_resize": None if shown is None else FRAME_RESIZE.method,
        },
    }


def _counts(stats: _Stats, presized: Path | None) -> dict[str, Any]:
    """What a conversion did, for its file's metadata (``conversion_info``)."""
    return {
        "source_rows": stats.source_rows,
        "rows": stats.rows,
        "skipped_no_target": len(stats.skipped_no_target),
        "kept_no_target": stats.kept_no_target,
        "swapped": stats.swapped,
        "presized_frames": None if presized is None else str(presized),
        "frame_resize": FRAME_RESIZE.method,
    }


def _check_settings(coord_style: str, num_frames: int, frame_size: int, limit: int | None) -> None:
    if coord_style not in COORD_STYLES:
        raise ValueError(f"coord_style must be one of {', '.join(COORD_STYLES)}; got {coord_style!r}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1; got {num_frames}")
    if frame_size < 1:
        raise ValueError(f"frame_size must be at least 1; got {frame_size}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must not be negative; got {limit}")


def _rows(
    df: Any,
    root: Path,
    split: str,
    *,
    num_frames: int,
    coord_style: str,
    frame_size: int,
    seed: int,
    stats: _Stats,
    progress: bool,
    presized: Path | None = None,
) -> Iterator[dict[str, Any]]:
    layout = _Layout(root, split)
    made: set[Path] = set()
    train = split == "train"
    has_id = "id" in df.columns
    has_steps = "steps" in df.columns
    records = df.to_dict("records")
    for i, rec in enumerate(tqdm(records, desc=f"okvos {split}", unit="row", disable=not progress)):
        stats.source_rows += 1
        video, oid = str(rec["video"]), str(rec["oid"])
        images = rec["images"]
        if isinstance(images, (str, bytes)):  # iterating it would give characters, not frames
            raise ValueError(f"{split}.parquet row {i}: images must be a list of frame names, "
                             f"got a string (video {video!r})")
        names = [] if _missing_list(images) else [str(n) for n in images]
        if not names:
            raise ValueError(f"{split}.parquet row {i}: empty images list (video {video!r})")
        on_disk = layout.frame_files(video)
        for n in names:
            if _frame_file(n) not in on_disk:
                raise ValueError(
                    f"{split}.parquet row {i}: frame {n!r} of video {video!r} is listed in "
                    f"images but not on disk ({layout.frames_dir / video / _frame_file(n)})"
                )
        rng = np.random.default_rng((seed, i))
        annotated = set(layout.target_stems(video, oid)) if train else None
        positions, swapped = _sample_positions(names, num_frames, annotated, rng)
        stats.swapped += swapped
        picked = [names[p] for p in positions]
        paths = [(layout.frames_dir / video / _frame_file(n)).resolve() for n in picked]
        fids = frame_ids_for(paths)
        sizes = []
        for p in paths:
            with Image.open(p) as im:
                sizes.append(im.size)
        masks: dict[str, np.ndarray] = {}
        mask_stems = layout.mask_stems(video, oid)
        for n, fid, (w, h) in zip(picked, fids, sizes, strict=True):
            stem = _frame_stem(n)
            if stem not in mask_stems:
                continue
            mpath = layout.mask_path(video, oid, stem)
            m = _target(mpath)
            if m.shape != (h, w):
                raise ValueError(
                    f"mask {mpath} is {m.shape[1]}x{m.shape[0]} but its frame is {w}x{h} "
                    f"(video {video!r})"
                )
            masks[str(fid)] = m
        gt = build_ground_truth(masks, coord_style=coord_style, frame_size=frame_size)
        if not gt:
            if train:
                stats.skipped_no_target.append(i)
                continue
            stats.kept_no_target += 1
        raw_steps = rec["steps"] if has_steps else None
        steps = None if _missing_list(raw_steps) else [str(s) for s in raw_steps if not _missing(s)]
        ability = str(rec["ability"])
        question = str(rec["question"])
        shown = None if presized is None else [str(p) for p in presize_frames(paths, frame_size, presized, made)]
        stats.rows += 1
        yield _row(index=i, split=split, source=data_source_for(ability), ability=ability, question=question,
                   gt=gt, query_id=None if not has_id or _missing(rec["id"]) else str(rec["id"]), video=video,
                   oid=oid, steps=steps or None, paths=paths, fids=fids, size=sizes[0],
                   coord_style=coord_style, frame_size=frame_size, shown=shown)


def _missing_list(v: Any) -> bool:
    """Parquet gives list cells back as numpy arrays and absent ones as None (or NaN)."""
    if v is None:
        return True
    if isinstance(v, (list, tuple, np.ndarray)):
        return False
    return _missing(v)


def _write_atomic(table: Any, out: Path) -> None:
    """A crash or Ctrl-C mid-write must not leave a truncated parquet that a later
    training run would read as a (smaller) dataset."""
    import pyarrow.parquet as pq  # heavy, optional: the [rl] extra

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def convert_okvos(
    root: str | os.PathLike[str],
    split: str,
    out: str | os.PathLike[str] | None = None,
    *,
    num_frames: int = 6,
    coord_style: str = "qwen3",
    frame_size: int = 448,
    seed: int = 0,
    limit: int | None = None,
    progress: bool = True,
    presize: bool = False,
) -> Path:
    """Write the verl parquet for ``{root}/{split}.parquet`` (default
    ``{root}/verl/{split}.parquet``) and return its path.

    Training rows whose sampled frames show no target are dropped (the outcome reward
    would be 0 for every rollout, a group with no signal); test rows are all kept, since
    evaluation must cover the whole split. The counts are logged and stored in the file's
    metadata (:func:`conversion_info`). With ``presize`` the shown frames are also written,
    resized as the rollout shows them, to :func:`presized_folder` (see the module docstring)."""
    import pyarrow as pa  # heavy, optional: the [rl] extra

    root = Path(root).expanduser()
    _check_settings(coord_style, num_frames, frame_size, limit)
    src, df = read_okvos_parquet(root, split)
    if limit is not None:
        df = df.iloc[:limit]

    dest = Path(out).expanduser() if out is not None else root / "verl" / f"{split}.parquet"
    presized = presized_folder(dest.resolve(), frame_size) if presize else None
    stats = _Stats()
    rows = list(_rows(df, root, split, num_frames=num_frames, coord_style=coord_style,
                      frame_size=frame_size, seed=seed, stats=stats, progress=progress,
                      presized=presized))
    info = {
        "source": str(src.resolve()),
        "split": split,
        "num_frames": num_frames,
        "coord_style": coord_style,
        "frame_size": frame_size,
        "seed": seed,
        "limit": limit,
        **_counts(stats, presized),
    }
    schema = _schema().with_metadata({METADATA_KEY: json.dumps(info).encode()})
    table = pa.Table.from_pylist(rows, schema=schema)
    _write_atomic(table, dest)
    if stats.skipped_no_target:
        shown = ", ".join(map(str, stats.skipped_no_target[:10]))
        more = "…" if len(stats.skipped_no_target) > 10 else ""
        log.warning("%s: skipped %d row(s) whose sampled frames show no target (rows %s%s)",
                    src, len(stats.skipped_no_target), shown, more)
    log.info("wrote %s: %d rows from %d (%d swapped, %d skipped, %d kept without target)",
             dest, stats.rows, stats.source_rows, stats.swapped,
             len(stats.skipped_no_target), stats.kept_no_target)
    return dest


def conversion_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """How a converted file was made (settings and row counts), read from its parquet
    metadata without loading the rows."""
    import pyarrow.parquet as pq  # heavy, optional: the [rl] extra

    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{path} was not written by convert_okvos (no {METADATA_KEY.decode()} metadata)")
    return json.loads(raw)


# ----------------------------------------------------------------------------- MeViS / ReVOS
#
# One row per expression of a MeViS or ReVOS split, in the OK-VOS rows' schema and conventions
# (the agent loop and the reward read them unchanged). An expression may name several objects:
# its ground truth is built from the union of their masks (what the benchmarks score) and
# lists, on every frame where the union shows, each object present there ("objects"), so the
# reward also reads answers that name the objects one by one (rl/reward.py). Every entry
# carries "objects", one-object expressions too, so a batch never mixes reward key sets.


def _rle_present(rle: Any) -> bool:
    """Whether one frame's RLE shows any pixel, read from its runs (nothing decoded)."""
    if rle is None:
        return False
    counts = rle.get("counts") if isinstance(rle, dict) else None
    if counts is None:
        raise RLEError("an RLE must be a dict with 'counts'")
    runs = counts if isinstance(counts, list) else runs_from_string(counts)
    return any(int(r) > 0 for r in runs[1::2])


def rvos_queries(kind: str, root: str | os.PathLike[str], split: str | None = None,
                 limit: int | None = None) -> list[Any]:
    """The expressions of a MeViS split (``ROOT/<split>/``, default ``valid_u``) or a ReVOS
    expressions file (``ROOT/meta_expressions_<split>_.json``, default ``valid``; the
    release also has ``train``), as the evaluation reads them (``eval.rvos``)."""
    if kind not in RVOS_DATASETS:
        raise DatasetError(f"unknown data set {kind!r} ({', '.join(RVOS_DATASETS)})")
    if kind == "revos" and split not in (None, RVOS_SPLITS["revos"]):
        base = Path(root).expanduser()
        return _load_rvos_meta(base / f"meta_expressions_{split}_.json", base, "revos", limit)
    return load_rvos(kind, root, split, limit)


def _rvos_rows(
    queries: Sequence[Any],
    kind: str,
    split: str,
    *,
    train: bool,
    num_frames: int,
    coord_style: str,
    frame_size: int,
    seed: int,
    stats: _Stats,
    progress: bool,
    presized: Path | None = None,
) -> Iterator[dict[str, Any]]:
    """Rows of :func:`convert_rvos`. Per-video state only (frame listing, which frames each
    annotation shows): memory does not grow with the number of expressions, and masks are
    decoded for the sampled frames of one expression at a time."""
    made: set[Path] = set()
    video: str | None = None
    on_disk: set[str] = set()
    shown_by_anno: dict[int, set[int]] = {}
    for i, q in enumerate(tqdm(queries, desc=f"{kind} {split}", unit="expression", disable=not progress)):
        stats.source_rows += 1
        anno_ids = [int(a) for a in q.extra["anno_ids"]]
        if q.ability == REVOS_TYPES[2] or not anno_ids:  # an expression without a target
            stats.skipped_expressions.append(q.id)
            continue
        names = [str(n) for n in q.extra["frames"]]
        folder = Path(q.segment_media)
        if q.extra["video_name"] != video:
            video, shown_by_anno = q.extra["video_name"], {}
            on_disk = {p.name for p in folder.iterdir()}
        masks_by_anno = mask_dict(q.gt)
        for a in anno_ids:
            if a not in shown_by_anno:
                try:
                    shown_by_anno[a] = {k for k, r in enumerate(masks_by_anno[str(a)]) if _rle_present(r)}
                except RLEError as e:
                    raise DatasetError(f"{q.gt}: annotation {a}: {e}") from None
        rng = np.random.default_rng((seed, i))
        annotated = ({_frame_stem(names[k]) for a in anno_ids for k in shown_by_anno[a]}
                     if train else None)
        positions, swapped = _sample_positions(names, num_frames, annotated, rng)
        stats.swapped += swapped
        paths = [Path(q.media[p]) for p in positions]
        for p in paths:
            if p.name not in on_disk:
                raise ValueError(f"expression {q.id}: frame {p.stem!r} of video {video!r} is listed "
                                 f"in its expressions file but not on disk ({p})")
        paths = [p.resolve() for p in paths]
        fids = frame_ids_for(paths)
        sizes = []
        for p in paths:
            with Image.open(p) as im:
                sizes.append(im.size)
        union: dict[str, np.ndarray] = {}
        objects: dict[str, list[np.ndarray]] = {}
        for pos, path, fid, (w, h) in zip(positions, paths, fids, sizes, strict=True):
            per_object = []
            for a in anno_ids:
                if pos not in shown_by_anno[a]:
                    continue
                try:
                    m = decode(masks_by_anno[str(a)][pos])
                except RLEError as e:
                    raise DatasetError(f"{q.gt}: annotation {a} frame {pos}: {e}") from None
                if m.shape != (h, w):
                    raise ValueError(f"{q.gt}: annotation {a} frame {pos} is {m.shape[1]}x{m.shape[0]} "
                                     f"but its frame {path} is {w}x{h} (video {video!r})")
                per_object.append(m)
            if per_object:
                union[str(fid)] = np.logical_or.reduce(per_object)
                objects[str(fid)] = per_object
        gt = build_ground_truth(union, coord_style=coord_style, frame_size=frame_size, object_masks=objects)
        if not gt:
            if train:
                stats.skipped_no_target.append(i)
                continue
            stats.kept_no_target += 1
        shown = None if presized is None else [str(p) for p in presize_frames(paths, frame_size, presized, made)]
        stats.rows += 1
        yield _row(index=i, split=split, source=data_source_for(f"{kind}_{q.ability}"), ability=q.ability,
                   question=q.question, gt=gt, query_id=q.id, video=video,
                   oid=",".join(str(o) for o in q.extra["obj_ids"]), steps=None, paths=paths, fids=fids,
                   size=sizes[0], coord_style=coord_style, frame_size=frame_size, shown=shown)


def convert_rvos(
    kind: str,
    root: str | os.PathLike[str],
    split: str | None = None,
    out: str | os.PathLike[str] | None = None,
    *,
    num_frames: int = 6,
    coord_style: str = "qwen3",
    frame_size: int = 448,
    seed: int = 0,
    limit: int | None = None,
    progress: bool = True,
    presize: bool = False,
) -> Path:
    """Write the verl parquet of a MeViS (``kind`` ``"mevis"``, default split ``valid_u``)
    or ReVOS (``"revos"``, default split ``valid``) split, one row per expression, and
    return its path (default ``ROOT/verl/<kind>_<split>.parquet``).

    Rows follow :func:`convert_okvos`'s (same schema, sampler, training swap towards a frame
    where one of the expression's objects shows, ``presize``); ``data_source`` is
    ``Search_RVOS_<kind>_<group>``, ``extra_info.oid`` the expression's object ids joined
    by commas, and the ground truth lists the objects on every frame (see the section
    comment). ReVOS expressions without a target (type 2) are skipped and counted; training
    rows (split ``train``) whose sampled frames show none of the objects are dropped, other
    splits keep them, as for OK-VOS."""
    import pyarrow as pa  # heavy, optional: the [rl] extra

    if kind not in RVOS_DATASETS:
        raise ValueError(f"kind must be one of {', '.join(RVOS_DATASETS)}; got {kind!r}")
    _check_settings(coord_style, num_frames, frame_size, limit)
    split = split or RVOS_SPLITS[kind]
    root = Path(root).expanduser()
    queries = rvos_queries(kind, root, split, limit)
    dest = Path(out).expanduser() if out is not None else root / "verl" / f"{kind}_{split}.parquet"
    presized = presized_folder(dest.resolve(), frame_size) if presize else None
    stats = _Stats()
    rows = list(_rvos_rows(queries, kind, split, train=split == "train", num_frames=num_frames,
                           coord_style=coord_style, frame_size=frame_size, seed=seed, stats=stats,
                           progress=progress, presized=presized))
    source = queries[0].gt if queries else str(root)
    info = {
        "dataset": kind,
        "source": str(Path(source).resolve()),
        "split": split,
        "num_frames": num_frames,
        "coord_style": coord_style,
        "frame_size": frame_size,
        "seed": seed,
        "limit": limit,
        **_counts(stats, presized),
        "skipped_no_target_expressions": len(stats.skipped_expressions),
    }
    schema = _schema().with_metadata({METADATA_KEY: json.dumps(info).encode()})
    _write_atomic(pa.Table.from_pylist(rows, schema=schema), dest)
    if stats.skipped_expressions:
        log.info("%s %s: skipped %d expression(s) without a target", kind, split, len(stats.skipped_expressions))
    if stats.skipped_no_target:
        log.warning("%s %s: skipped %d expression(s) whose sampled frames show none of their objects",
                    kind, split, len(stats.skipped_no_target))
    log.info("wrote %s: %d rows from %d expressions (%d swapped, %d without a target skipped, "
             "%d kept without target in the sampled frames)", dest, stats.rows, stats.source_rows,
             stats.swapped, len(stats.skipped_expressions) + len(stats.skipped_no_target),
             stats.kept_no_target)
    return dest


# ----------------------------------------------------------------------------- prompt lengths
#
# The rows are text-only, so verl's data.filter_overlong_prompts counts the question alone and
# never drops a row whose real prompt (system prompt, frames and question) is longer than
# data.max_prompt_length; the rollout then fails on such a row every time it is drawn, as a
# masked zero-reward sample. `segresearch train` counts every row's real prompt before
# training starts and refuses to start when one does not fit (rl/train.py).


@dataclass(frozen=True)
class Overrun:
    """One row whose prompt does not fit."""

    row: int  # position in the file
    id: str | None
    tokens: int


@dataclass
class PromptLengths:
    """A file's prompt lengths against a limit."""

    path: str
    rows: int
    limit: int
    longest: int
    over: list[Overrun]


class PromptCounter:
    """Prompt tokens of dataset rows exactly as the rollout renders them: the graph's first
    two messages (the system prompt; then ``frame {id} `` and the frame for every sampled
    frame, and the question) through verl's continuous-token builder with the model's own
    tokenizer and chat template. Frames are always shown at ``frame_size``², so each is
    counted from that geometry by the processor's own rule (``rl/placeholders.py``) and no
    pixel is decoded. tests/test_rl_prompt_lengths.py compares counts with the rollout's
    prompt ids, token for token.

    ``protocol`` ``"tools"`` (the agent loop's ``protocol``; a row's ``extra_info["protocol"]``
    wins) counts the tool-calling prompt instead: our tools system prompt, whose coordinate
    sentence is about the keyframe (``keyframe_size``, the loop's setting), and the tool
    definitions in the system turn as the chat template renders them, with the template the
    rollout picks for them (rl/tools_template.py: ours for Qwen2.5-VL)."""

    def __init__(self, tokenizer: Any, processor: Any, hf_model_type: str | None, *,
                 use_search: bool = True, system_prompt_file: str = "",
                 chat_template_kwargs: dict[str, Any] | None = None,
                 mm_processor_kwargs: dict[str, Any] | None = None,
                 protocol: str = "tags", keyframe_size: int | None = None,
                 ask_user: bool = False) -> None:
        from verl.utils.tokenizer.continuous_token_wiring import (  # heavy, optional: verl ([rl])
            create_continuous_token_builder,
        )

        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
        geometry = GeometryProcessor(processor)
        if not geometry.supported:
            raise ValueError(f"cannot count image tokens by geometry for {type(processor).__name__}")
        self.builder = create_continuous_token_builder(
            tokenizer, hf_model_type=hf_model_type, chat_template_kwargs=chat_template_kwargs or {},
            mm_processor_kwargs=mm_processor_kwargs or {}, processor=geometry)
        self.use_search = use_search
        self.system_prompt_file = system_prompt_file
        self.protocol = protocol
        self.keyframe_size = int(keyframe_size) if keyframe_size is not None else Context().keyframe_size
        self.ask_user = bool(ask_user)  # the ask_user tool is in the tools-mode prompt too
        self._processor = processor
        self._tools_builder: Any = None

    @classmethod
    def from_pretrained(cls, model: str, *, trust_remote_code: bool = False, **kwargs: Any) -> PromptCounter:
        """The counter for a model folder or hub id, loaded the way verl's workers load it."""
        from verl.utils import hf_processor, hf_tokenizer  # heavy, optional: verl (the [rl] extra)

        install_video_processor_stub()  # image-only Qwen-VL processors load without torchvision
        tokenizer = hf_tokenizer(model, trust_remote_code=trust_remote_code)
        processor = hf_processor(model, trust_remote_code=trust_remote_code)
        if processor is None:
            raise ValueError(f"{model} has no multimodal processor")
        model_type = getattr(getattr(processor, "config", None), "model_type", None)
        return cls(tokenizer, processor, model_type, **kwargs)

    def count(self, question: str, frame_ids: Sequence[int], frame_size: int, coord_style: str,
              protocol: str | None = None) -> int:
        """Prompt tokens of one row (``protocol``: the row's own, else the counter's)."""
        protocol = protocol or self.protocol
        frame = _blank_frame(int(frame_size))
        content: list[dict[str, Any]] = []
        for i, fid in enumerate(frame_ids):  # laid out as graphs/nodes.py load_media lays it out
            content.append({"type": "text", "text": ("\n" if i else "") + frame_label(int(fid))})
            content.append({"type": "image", "image": frame})
        content.append({"type": "text", "text": "\n\n" + question.strip()})
        builder, tools = self.builder, None
        if protocol == "tools":  # as graphs/nodes.py load_media and _with_tools write them
            system = tools_system_prompt(
                self.use_search, describe_convention(coord_style, self.keyframe_size, int(frame_size)),
                self.system_prompt_file)
            # bind_tools hands verl OpenAI tool dicts
            tools = [convert_to_openai_tool(t) for t in tool_definitions(
                coord_style, self.keyframe_size, self.use_search, int(frame_size), ask_user=self.ask_user)]
            builder = self._tools()
        elif protocol == "tags":
            system = system_prompt(self.use_search, coord_style, self.system_prompt_file)
        else:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
        messages = [{"role": "system", "content": system}, {"role": "user", "content": content}]
        return len(builder.build_initial_tokens(messages, tools=tools, images=[frame] * len(frame_ids)))

    def _tools(self) -> Any:
        """The builder a tools-mode rollout renders with: the chat template that renders the
        tools (rl/tools_template.py), decided once."""
        if self._tools_builder is None:
            kwargs = chat_template_kwargs(self.builder)
            chosen = tools_template_kwargs(self._processor, kwargs)
            self._tools_builder = self.builder if chosen == kwargs else with_chat_template_kwargs(self.builder, chosen)
        return self._tools_builder


def _blank_frame(side: int) -> Image.Image:
    """A stand-in frame: only its size matters to a geometry count."""
    return _BLANK_FRAMES.get(side, lambda: Image.new("RGB", (side, side)))


_BLANK_FRAMES: LoadOnce[Image.Image] = LoadOnce(maxsize=8, name="rl.blank_frames")


def prompt_lengths(path: str | os.PathLike[str], counter: PromptCounter, limit: int) -> PromptLengths:
    """Every row's prompt tokens in a file written by :func:`convert_okvos`, against
    ``limit`` (data.max_prompt_length). Raises ``ValueError`` for a file in another layout."""
    import pyarrow.parquet as pq  # heavy, optional: the [rl] extra

    table = pq.read_table(path, columns=["extra_info"])
    infos = table.column("extra_info").to_pylist()
    needed = ("question", "frame_ids", "frame_size", "coord_style")
    over: list[Overrun] = []
    longest = 0
    for row, info in enumerate(infos):
        if not isinstance(info, dict) or any(info.get(k) is None for k in needed):
            raise ValueError(f"{path} row {row}: extra_info lacks {', '.join(needed)} "
                             "(not written by `segresearch data okvos`)")
        tokens = counter.count(str(info["question"]), info["frame_ids"], int(info["frame_size"]),
                               str(info["coord_style"]), info.get("protocol"))
        longest = max(longest, tokens)
        if tokens > limit:
            over.append(Overrun(row, info.get("id"), tokens))
    return PromptLengths(str(path), len(infos), int(limit), longest, over)
