"""Evaluation sets as lists of queries: OK-VOS (video) and ReasonSeg-style image sets.

A query knows what the model is shown (``media``: the sampled frame list of a video, or an
image), what is segmented (``segment_media``: every frame of the video), and where the
ground truth is. Ids are the published ones (the parquet's ``id``, else the row index as a
string), so dumps of the published pipeline, its ``meta_mapping.json`` and our files agree.

Accepted image layouts (``load_image_set``):
1. a manifest ``queries.jsonl`` (or ``queries.json``, a list) in the root, one object per
   query: ``image`` and ``mask`` (paths relative to the root), ``question`` (or ``text`` /
   ``query``), optional ``id`` (default: line number) and ``ignore`` (a mask of pixels left
   out of the score). Mask pixels > 0 are the target.
2. the ReasonSeg release (one folder per split, ``train/``, ``val/``, ``test/``: pass the
   split's folder as the root): ``<name>.jpg`` with ``<name>.json`` beside it holding
   ``text`` (a list of phrasings of the question), ``is_sentence`` (long query or short
   phrase) and ``shapes`` (LabelMe polygons). Read as the released evaluation (LISA's
   ``ValDataset`` with ``get_mask_from_json``) reads it: one query per image, its first
   text (id ``<name>#0``; ``all_texts=True`` makes each text a query, ``<name>#<k>``), in
   the group ``long`` or ``short`` by ``is_sentence`` (the test split's table reports both);
   a polygon labelled ``flag`` is left out, one whose label contains ``ignore`` marks pixels
   left out of the score, every other polygon is target (several are unioned); polygons are
   drawn largest first (by their drawn area) so smaller ones on top of them win, outline
   included, at integer vertices truncated toward zero as ``np.int32`` casts them.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from segresearch.core.files import write_atomic
from segresearch.core.jsonl import iter_jsonl
from segresearch.core.media import IMAGE_EXTS, MediaError, open_media

ABILITIES = ("one-hop", "multi-hop", "relational", "in-video")
_SAFE_RE = re.compile(r"[A-Za-z0-9._#+-]+")


class DatasetError(ValueError):
    """A data set that cannot be read; the message names the file and the problem."""


@dataclass
class Query:
    id: str
    question: str
    ability: str
    media: str | list[str]  # what the model is shown (frame paths or one image)
    segment_media: str  # what masks are made for: the video's frame folder, or the image
    gt: str  # OK-VOS: the object's mask folder; images: the mask file ("" for polygons)
    kind: str = "video"  # "video" | "image"
    video: str = ""  # groups queries that share a video (segmented together)
    ignore: str = ""  # images: a mask of pixels left out of the score
    polygons: str = ""  # images: the ReasonSeg json the target is drawn from
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def data_source(self) -> str:
        return f"Search_RVOS_{self.ability}" if self.kind == "video" else f"ImageSeg_{self.ability}"


def safe_name(qid: str) -> str:
    """A query id as a folder name: the id itself when it is a plain name (as in the
    published layout ``seg/<id>/``), else a reversible percent-encoding."""
    if _SAFE_RE.fullmatch(qid) and qid not in (".", ".."):
        return qid
    return quote(qid, safe="")


def _missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(isinstance(v, float) and math.isnan(v))
    except TypeError:
        return False


def _frame_file(folder: Path, name: str) -> Path:
    p = folder / name
    if p.suffix.lower() in IMAGE_EXTS:
        return p
    return folder / f"{name}.jpg"


OKVOS_COLUMNS = ("question", "images", "video", "oid", "ability")


def read_okvos_parquet(root: str | os.PathLike[str], split: str) -> tuple[Path, Any]:
    """``ROOT/{split}.parquet`` as a DataFrame (and its path), with the OK-VOS columns
    checked; shared by evaluation and the RL data conversion."""
    import pandas as pd  # heavy, optional: the [rl] extra (an OK-VOS parquet needs it)

    src = Path(root).expanduser() / f"{split}.parquet"
    if not src.is_file():
        raise DatasetError(f"OK-VOS parquet not found: {src}")
    try:
        df = pd.read_parquet(src)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise DatasetError(f"cannot read {src}: {e}") from None
    missing = [c for c in OKVOS_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"{src} lacks column(s) {', '.join(missing)}")
    return src, df


def load_okvos(root: str | os.PathLike[str], split: str, limit: int | None = None) -> list[Query]:
    """The queries of ``ROOT/{split}.parquet`` in file order; frames and masks under
    ``ROOT/{split}/JPEGImages/<video>/`` and ``ROOT/{split}/Annotations/<video>/<oid>/``."""
    root = Path(root).expanduser()
    src, df = read_okvos_parquet(root, split)
    frames_root = root / split / "JPEGImages"
    masks_root = root / split / "Annotations"
    out: list[Query] = []
    seen: set[str] = set()
    for idx, rec in enumerate(df.to_dict("records")):
        if limit is not None and len(out) >= limit:
            break
        qid = str(idx) if "id" not in df.columns or _missing(rec["id"]) else str(rec["id"])
        if qid in seen:
            raise DatasetError(f"{src}: id {qid!r} appears twice")
        seen.add(qid)
        images = rec["images"]
        if isinstance(images, (str, bytes)) or images is None or len(images) == 0:
            raise DatasetError(f"{src} row {idx}: images must be a non-empty list of frame names")
        video = str(rec["video"])
        folder = frames_root / video
        names = sorted(str(n) for n in images)  # the published preprocessing sorts them
        steps = rec.get("steps")
        out.append(Query(
            id=qid,
            question=str(rec["question"]),
            ability=str(rec["ability"]),
            media=[str(_frame_file(folder, n)) for n in names],
            segment_media=str(folder),
            gt=str(masks_root / video / str(rec["oid"])),
            kind="video",
            video=str(folder),
            extra={"oid": str(rec["oid"]), "video_name": video,
                   "steps": None if _missing(steps) else [str(s) for s in steps]},
        ))
    return out


def meta_mapping(queries: Sequence[Query]) -> list[list[str]]:
    """The published evaluator's ``meta_mapping.json``: ``[id, mask folder, ability]``.

    Mask folders are absolute: ``eval_okvos.py`` lists them as given, i.e. relative to
    wherever it is started, so a relative path works only from the folder it was written
    in (elsewhere every query is "not found", the means are of nothing, it prints ``nan``
    and exits 0)."""
    return [[q.id, str(Path(q.gt).expanduser().resolve()), q.ability]
            for q in queries if q.kind == "video"]


def meta_mapping_path(root: str | os.PathLike[str], split: str) -> Path:
    """Where ``segresearch data okvos`` writes the mapping: in the data set's root, as the
    published preprocessing does and its evaluator's ``--meta_path`` expects
    (``ROOT/meta_mapping.json`` for the test split, ``ROOT/meta_mapping_<split>.json`` for
    others)."""
    name = "meta_mapping.json" if split == "test" else f"meta_mapping_{split}.json"
    return Path(root).expanduser() / name


def write_meta_mapping(queries: Sequence[Query], path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    write_atomic(path, json.dumps(meta_mapping(queries)).encode())
    return path


def read_meta_mapping(path: str | os.PathLike[str]) -> dict[str, tuple[str, str]]:
    """``{id: (mask folder, ability)}`` from a ``meta_mapping.json`` (ours or the published
    preprocessing's); folders as written, so relative ones resolve from the current folder
    exactly as the published evaluator resolves them."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DatasetError(f"cannot read meta mapping {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a list of [id, mask folder, ability]")
    out: dict[str, tuple[str, str]] = {}
    for n, item in enumerate(data):
        if not (isinstance(item, list) and len(item) == 3 and all(isinstance(v, str) for v in item)):
            raise DatasetError(f"{path} item {n}: expected [id, mask folder, ability] strings")
        out[item[0]] = (item[1], item[2])
    return out


def apply_meta_mapping(queries: Sequence[Query], mapping: dict[str, tuple[str, str]],
                       source: str = "meta mapping") -> list[Query]:
    """The queries with ground-truth folder and ability taken from ``mapping``, which must
    name every video query."""
    missing = [q.id for q in queries if q.kind == "video" and q.id not in mapping]
    if missing:
        raise DatasetError(f"{source} lacks {len(missing)} of the split's queries (e.g. {missing[0]!r})")
    return [replace(q, gt=mapping[q.id][0], ability=mapping[q.id][1]) if q.kind == "video" else q
            for q in queries]


# ---------------------------------------------------------------------- images


def _manifest(root: Path) -> Iterator[dict[str, Any]]:
    jsonl, js = root / "queries.jsonl", root / "queries.json"
    if jsonl.is_file():
        for n, rec in iter_jsonl(jsonl, DatasetError):
            rec.setdefault("_line", n)
            yield rec
        return
    try:
        data = json.loads(js.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{js}: not JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{js}: expected a list of query objects")
    for n, rec in enumerate(data, 1):
        if not isinstance(rec, dict):
            raise DatasetError(f"{js} item {n}: expected an object")
        rec.setdefault("_line", n)
        yield rec


def _read_json_any(path: Path) -> Any:
    """ReasonSeg's files are mostly UTF-8, a few cp1252."""
    raw = path.read_bytes()
    for enc in ("utf-8", "cp1252"):
        try:
            return json.loads(raw.decode(enc))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
    raise DatasetError(f"{path}: not JSON")


def _reasonseg_group(anno: dict[str, Any]) -> str:
    """ReasonSeg's query group: ``long`` (a sentence) or ``short`` (a phrase) by
    ``is_sentence``; ``reason`` for annotations without it."""
    flag = anno.get("is_sentence")
    if isinstance(flag, bool):
        return "long" if flag else "short"
    return "reason"


def load_image_set(root: str | os.PathLike[str], limit: int | None = None, *,
                   all_texts: bool = False) -> list[Query]:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"image set folder not found: {root}")
    out: list[Query] = []
    if (root / "queries.jsonl").is_file() or (root / "queries.json").is_file():
        for rec in _manifest(root):
            n = rec.pop("_line")
            question = rec.get("question") or rec.get("text") or rec.get("query")
            if not isinstance(question, str) or not question.strip():
                raise DatasetError(f"{root} query {n}: no question (question/text/query)")
            for key in ("image", "mask"):
                if not isinstance(rec.get(key), str):
                    raise DatasetError(f"{root} query {n}: {key!r} must be a path")
            image, mask = root / rec["image"], root / rec["mask"]
            for what, path in (("image", image), ("mask", mask)):
                if not path.exists():
                    raise DatasetError(f"{root} query {n}: {what} not found: {path}")
                if not path.is_file():
                    raise DatasetError(f"{root} query {n}: {what} {path} is not a regular file")
            ignore = str(root / rec["ignore"]) if isinstance(rec.get("ignore"), str) else ""
            out.append(Query(
                id=str(rec.get("id", n - 1)), question=question.strip(),
                ability=str(rec.get("ability", "image")), media=str(image),
                segment_media=str(image), gt=str(mask), kind="image", video=str(image),
                ignore=ignore, extra={k: v for k, v in rec.items() if k not in ("image", "mask")},
            ))
    else:
        images = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTS
                        and p.with_suffix(".json").is_file())
        if not images:
            splits = [d.name for d in sorted(root.iterdir()) if d.is_dir() and d.name in ("train", "val", "test")]
            if splits:
                raise DatasetError(f"{root} holds the ReasonSeg splits {', '.join(splits)}: pass one "
                                   f"of them as the root (e.g. {root / splits[-1]})")
            raise DatasetError(
                f"{root}: no queries.jsonl and no <image>.jpg + <image>.json pairs (ReasonSeg layout)"
            )
        for img in images:
            anno = _read_json_any(img.with_suffix(".json"))
            texts = anno.get("text") if isinstance(anno, dict) else None
            if isinstance(texts, str):
                texts = [texts]
            if not isinstance(texts, list) or not texts:
                raise DatasetError(f"{img.with_suffix('.json')}: no 'text' questions")
            for k, text in enumerate(texts if all_texts else texts[:1]):
                out.append(Query(
                    id=f"{img.stem}#{k}", question=str(text).strip(), ability=_reasonseg_group(anno),
                    media=str(img), segment_media=str(img), gt="", kind="image", video=str(img),
                    polygons=str(img.with_suffix(".json")),
                ))
    ids = [q.id for q in out]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DatasetError(f"{root}: id {dup!r} appears twice")
    return out[:limit] if limit is not None else out


def _draw_polygon(canvas: np.ndarray, points: np.ndarray, value: int) -> None:
    """A polygon filled and outlined (one pixel), as ReasonSeg's masks are drawn."""
    cv2.polylines(canvas, [points], True, value, 1)
    cv2.fillPoly(canvas, [points], value)


def polygon_masks(json_path: str | os.PathLike[str], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(target, ignore) boolean masks from a ReasonSeg annotation, drawn as the released
    evaluation draws them (see the module docstring): ``flag`` polygons left out, labels
    containing ``ignore`` ignored, every other polygon target; largest drawn area first;
    vertices truncated to integers; the outline drawn with the fill."""
    anno = _read_json_any(Path(json_path))
    polys: list[tuple[int, bool, np.ndarray]] = []  # (drawn area, ignore, vertices)
    for s in anno.get("shapes", []) if isinstance(anno, dict) else []:
        label = str(s.get("label", ""))
        pts = np.asarray(s.get("points") or [], np.float64)
        if label.lower() == "flag" or pts.ndim != 2 or pts.shape[1] != 2 or not len(pts):
            continue
        pts = pts.astype(np.int32)  # truncation toward zero, as the release's np.int32 cast
        probe = np.zeros((height, width), np.uint8)
        _draw_polygon(probe, pts, 1)
        polys.append((int(probe.sum()), "ignore" in label.lower(), pts))
    # largest first; of equal areas the later polygon first (a reversed ascending sort)
    order = sorted(range(len(polys)), key=lambda i: (polys[i][0], i), reverse=True)
    canvas = np.zeros((height, width), np.uint8)
    for i in order:
        _, ignore, pts = polys[i]
        _draw_polygon(canvas, pts, 255 if ignore else 1)
    return canvas == 1, canvas == 255


def _read_mask(path: str, what: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise DatasetError(f"{what} not found: {path}" if not os.path.exists(path)
                           else f"{what} {path} is not a regular file")
    m = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise DatasetError(f"{what} {path} cannot be read as an image (empty, damaged or not "
                           "an image file)")
    return m


def image_ground_truth(q: Query, height: int, width: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(target, ignore or None) for an image query at the image's size."""
    if q.polygons:
        target, ignore = polygon_masks(q.polygons, height, width)
        return target, ignore if ignore.any() else None
    gt = _read_mask(q.gt, "ground-truth mask")
    if gt.shape != (height, width):
        raise DatasetError(f"ground-truth mask {q.gt} is {gt.shape[1]}x{gt.shape[0]} but its image "
                           f"{q.segment_media} is {width}x{height}; a mask must have its image's size")
    ignore = None
    if q.ignore:
        ig = _read_mask(q.ignore, "ignore mask")
        if ig.shape != gt.shape:
            raise DatasetError(f"ignore mask {q.ignore} is {ig.shape[1]}x{ig.shape[0]} but its image "
                               f"{q.segment_media} is {width}x{height}; a mask must have its image's size")
        ignore = ig > 0
    return gt > 0, ignore


def _ground_truth_problem(q: Query) -> str | None:
    """Why a query's ground truth cannot be scored (None when it can)."""
    if q.kind == "video" and "anno_ids" in q.extra:
        return None  # MeViS / ReVOS annotations: checked as they are read (eval.rvos)
    if q.kind == "video":
        folder = Path(q.gt)
        if not folder.is_dir():
            return f"ground-truth folder not found: {folder}"
        masks = sorted(folder.glob("*.png"))
        if not masks:
            return f"no ground-truth masks (*.png) in {folder}"
        for p in masks:  # the header only: enough to find an empty, damaged or foreign file
            try:
                with Image.open(p) as im:
                    im.size  # noqa: B018 - reading the header is the check
            except (OSError, UnidentifiedImageError, ValueError):
                return (f"ground-truth mask {p} cannot be read as an image (empty, damaged or "
                        "not an image file)")
        return None
    try:
        media = open_media(q.segment_media)
        image_ground_truth(q, media.height, media.width)
    except (DatasetError, MediaError) as e:
        return str(e)
    except (OSError, ValueError, cv2.error) as e:  # a damaged annotation file
        return f"{q.polygons or q.gt}: {e}"
    return None


def check_ground_truth(queries: Sequence[Query], workers: int | None = None) -> None:
    """Refuse (``DatasetError``, one line naming the first bad file) a set whose ground
    truth cannot all be read: scoring would leave those queries out and report the means
    of the rest as the set's score. Video queries: the mask folder exists and every PNG in
    it opens as an image (its header; the pixels are decoded when scored); image queries:
    the masks are decoded and sized against their image, as scoring will."""
    def key(q: Query) -> tuple[str, ...]:
        return (q.kind, q.gt, q.polygons, q.ignore, q.segment_media)

    distinct: dict[tuple[str, ...], Query] = {}
    for q in queries:  # the queries of one object share its ground truth: look once
        distinct.setdefault(key(q), q)
    n = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max(1, n)) as pool:
        problems = dict(zip(distinct, pool.map(_ground_truth_problem, distinct.values()), strict=True))
    bad = [q for q in queries if problems[key(q)]]
    if not bad:
        return
    more = (f" ({len(bad)} of the {len(queries)} queries have ground truth that cannot be used)"
            if len(bad) > 1 else "")
    raise DatasetError(f"query {bad[0].id}: {problems[key(bad[0])]}{more}; fix the ground truth "
                       "or leave the query out")
