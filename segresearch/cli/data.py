"""``segresearch data``: OK-VOS, MeViS and ReVOS conversion to verl parquet, the synthetic sets, and MeViS / ReVOS checks."""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

from segresearch.cli.common import EXIT_OK, die
from segresearch.eval.datasets import (
    DatasetError,
    load_okvos,
    meta_mapping_path,
    write_meta_mapping,
)
from segresearch.eval.rvos import RVOS_DATASETS
from segresearch.rl.data import conversion_info, convert_okvos, convert_rvos, rvos_queries
from segresearch.testing.okvos import (
    MAX_SYNTHETIC_VIDEOS,
    SYNTHETIC_SPLITS,
    make_synthetic_okvos,
    split_seed,
    write_oracle_predictions,
)
from segresearch.testing.rvos import (
    make_synthetic_mevis,
    make_synthetic_revos,
    write_rvos_oracle_predictions,
)


def cmd_data(args: argparse.Namespace) -> int:
    """Dataset preparation; every data problem is one ``error:`` line, since a traceback
    from deep inside a conversion hides which file or video is at fault."""
    if args.data_command == "synthetic":
        return _synthetic(args)
    if args.data_command in RVOS_DATASETS:
        return _rvos(args)
    try:
        path = convert_okvos(args.root, args.split, args.out, num_frames=args.num_frames,
                             coord_style=args.coord_style, frame_size=args.frame_size,
                             seed=args.seed, limit=args.limit, progress=sys.stderr.isatty(),
                             presize=args.presize_frames)
    except (ValueError, OSError) as e:
        return die(str(e))
    info = conversion_info(path)
    print(f"wrote {path} ({info['rows']} rows from {info['source_rows']}; "
          f"{info['skipped_no_target']} skipped without a target in the sampled frames)")
    if info.get("presized_frames"):
        print(f"pre-sized frames in {info['presized_frames']}")
    try:
        queries = load_okvos(args.root, args.split, args.limit)
        meta = write_meta_mapping(queries, meta_mapping_path(args.root, args.split))
    except (DatasetError, OSError) as e:
        return die(str(e))
    print(f"wrote {meta} ({len(queries)} [id, mask folder, ability] entries, absolute paths, "
          "for the published evaluator's --meta_path)")
    return EXIT_OK


def _synthetic(args: argparse.Namespace) -> int:
    import pandas as pd  # heavy, optional ([rl] extra): only to count the rows written

    if not 1 <= args.videos <= MAX_SYNTHETIC_VIDEOS:
        return die(f"--videos must be between 1 and {MAX_SYNTHETIC_VIDEOS} (videos per split); "
                   f"got {args.videos}")
    splits = list(dict.fromkeys(args.split or SYNTHETIC_SPLITS))
    bad = [s for s in splits if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", s)]
    if bad:
        return die(f"--split {bad[0]!r}: a split name is letters, digits, '_' and '-' "
                   "(e.g. train, test)")
    for split in splits:
        try:
            path = make_synthetic_okvos(args.out, split=split, n_videos=args.videos,
                                        seed=split_seed(split), progress=True)
            oracle = write_oracle_predictions(args.out, split)
        except OSError as e:
            return die(str(e))
        print(f"wrote {path} ({len(pd.read_parquet(path))} rows) and {oracle} "
              "(answers from the ground truth, for eval --predictions and segment)")
    return EXIT_OK


def _rvos(args: argparse.Namespace) -> int:
    """``data mevis|revos``: optionally write a synthetic set, then read and summarise it,
    and with ``--rl-out`` write its verl parquet."""
    split = getattr(args, "split", None)
    mevis = args.data_command == "mevis"
    if split is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", split):
        return die(f"--split {split!r}: a split name is letters, digits, '_' and '-' (e.g. valid_u)")
    if args.per_object and not args.synthetic:
        return die("--per-object shapes the oracle predictions of a synthetic set; add --synthetic")
    if args.synthetic:
        if not 1 <= args.videos <= MAX_SYNTHETIC_VIDEOS:
            return die(f"--videos must be between 1 and {MAX_SYNTHETIC_VIDEOS}; got {args.videos}")
        if not mevis and split != "valid":
            return die(f"--split {split!r}: a synthetic revos set has the valid split only")
        try:
            if mevis:
                make_synthetic_mevis(args.root, split, n_videos=args.videos)
                base = Path(args.root) / split
            else:
                base = make_synthetic_revos(args.root, n_videos=args.videos)
            oracle = write_rvos_oracle_predictions(base, Path(args.root) / "oracle_predictions.jsonl",
                                                   per_object=args.per_object)
        except OSError as e:
            return die(str(e))
        print(f"wrote a synthetic {args.data_command} set in {args.root} and {oracle} "
              "(answers from the ground truth, for eval --predictions"
              f"{'; each object of an expression answered in a list' if args.per_object else ''})")
    try:
        queries = rvos_queries(args.data_command, args.root, split)
    except DatasetError as e:
        return die(str(e))
    videos = {q.extra["video_name"] for q in queries}
    several = sum(1 for q in queries if len(q.extra["anno_ids"]) > 1)
    groups = ", ".join(f"{g} {n}" for g, n in Counter(q.ability for q in queries).items())
    where = f"{args.root}/{split}" if mevis else f"{args.root} ({split})"
    print(f"{args.data_command} {where}: {len(videos)} videos, "
          f"{len(queries)} expressions ({groups}); {several} refer to several objects "
          "(scored on the union of their masks)")
    if args.rl_out is None:
        return EXIT_OK
    try:
        path = convert_rvos(args.data_command, args.root, split, args.rl_out, num_frames=args.num_frames,
                            coord_style=args.coord_style, frame_size=args.frame_size, seed=args.seed,
                            limit=args.limit, progress=sys.stderr.isatty(), presize=args.presize_frames)
    except (ValueError, OSError) as e:
        return die(str(e))
    info = conversion_info(path)
    skipped = info["skipped_no_target_expressions"] + info["skipped_no_target"]
    print(f"wrote {path} ({info['rows']} rows from {info['source_rows']} expressions; {skipped} "
          "skipped without a target; the ground truth lists each object per frame)")
    if info.get("presized_frames"):
        print(f"pre-sized frames in {info['presized_frames']}")
    return EXIT_OK
