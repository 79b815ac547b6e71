"""Sharding an evaluation over Ray: one worker process per shard, one segmenter each.

Work is dealt out by video, so a video's queries run and are segmented in one worker and
its frames are prepared once there. Workers compute; the driver alone writes the
predictions and segmentation logs (appends from many processes to one file are not safe
on every file system), and ``evaluate`` removes what killed runs left half written before
any worker starts; mask folders, each written by one worker and renamed into place, go
straight to the shared output folder. With the same settings a sharded run writes the
same predictions, masks and scores as a single process: queries are seeded by their ids,
not by the order a worker meets them in.

``ray.init`` starts a local cluster of ``workers`` CPUs (offline), or joins one at
``ray_address`` (then the output folder must be on storage every node sees).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from segresearch.eval.datasets import Query
from segresearch.eval.postseg import (
    SEGMENT_LOG,
    SegJob,
    pending_jobs,
    segment_jobs,
    segmenter_key,
)
from segresearch.eval.predict import predict_queries
from segresearch.eval.predictions import PredictionLog
from segresearch.eval.spec import OVERLAYS, RUNS, SEG, EvalSpec


class _Collect:
    """Stands in for the predictions file inside a worker: rows go back to the driver."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)


class EvalWorker:
    """The body of one Ray actor."""

    def __init__(self, spec: EvalSpec) -> None:
        self.spec = spec
        self._segmenter = None

    def ready(self) -> bool:
        return True

    def predict(self, queries: list[Query], offset: int) -> list[dict[str, Any]]:
        spec = self.spec
        sink = _Collect()
        runs = spec.out_dir / RUNS if spec.trajectories else None
        asyncio.run(predict_queries(queries, spec.context, list(spec.models), sink,  # type: ignore[arg-type]
                                    concurrency=spec.concurrency, runs_dir=runs, offset=offset))
        return sink.rows

    def segment(self, jobs: list[SegJob], redo: list[str]) -> list[dict[str, Any]]:
        spec = self.spec
        if self._segmenter is None:
            self._segmenter = spec.make_segmenter()
        done: list[dict[str, Any]] = []
        segment_jobs(jobs, spec.out_dir / SEG, self._segmenter, coords=spec.coords,
                     overlays_dir=spec.out_dir / OVERLAYS if spec.overlays else None,
                     progress=False, write_log=False, redo=redo, clean=False,
                     on_query=done.append)
        return done


def _by_video(items: Sequence[Any], key: Any) -> list[list[Any]]:
    """Groups of items sharing a video, largest first (the longest shards start first)."""
    groups: dict[str, list[Any]] = {}
    for it in items:
        groups.setdefault(key(it), []).append(it)
    return sorted(groups.values(), key=len, reverse=True)


class RayShards:
    """A pool of EvalWorker actors for one evaluation."""

    def __init__(self, spec: EvalSpec) -> None:
        try:
            import ray  # heavy, optional: the [rl] extra, needed only with --ray
        except ImportError:
            raise RuntimeError("--ray needs Ray: pip install 'segresearch[rl]' or pip install ray") from None
        self.ray = ray
        self.spec = spec
        self.started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "logging_level": "warning"}
            if spec.ray_address:
                kwargs["address"] = spec.ray_address
            else:
                kwargs["num_cpus"] = max(1, spec.workers)
            ray.init(**kwargs)
            self.started = True
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        per = min(1.0, gpus / max(1, spec.workers)) if gpus else 0.0
        actor = ray.remote(num_cpus=1, num_gpus=per)(EvalWorker)
        self.actors = [actor.remote(spec) for _ in range(max(1, spec.workers))]
        ray.get([a.ready.remote() for a in self.actors])

    def _run(self, method: str, shards: list[tuple[Any, ...]], on_result: Any) -> None:
        from ray.util import ActorPool  # heavy, optional: the [rl] extra, as above

        pool = ActorPool(self.actors)
        for result in pool.map_unordered(lambda a, args: getattr(a, method).remote(*args), shards):
            on_result(result)

    def predict(self, queries: Sequence[Query], log_file: PredictionLog,
                progress: bool) -> dict[str, dict[str, Any]]:
        index = {q.id: i for i, q in enumerate(queries)}
        groups = _by_video(list(queries), lambda q: q.video)
        rows: dict[str, dict[str, Any]] = {}
        with tqdm(total=len(queries), desc=f"predict ({len(self.actors)} workers)", unit="query",
                  disable=not progress, dynamic_ncols=True) as bar:

            def got(result: list[dict[str, Any]]) -> None:
                for row in result:
                    log_file.append(row)
                    rows[row["id"]] = row
                bar.update(len(result))

            self._run("predict", [(g, index[g[0].id]) for g in groups], got)
        return rows

    def segment(self, jobs: Sequence[SegJob], segmenter: Any, progress: bool) -> None:
        """Segment the jobs that are not done (the driver decides, workers do them all)."""
        seg_root = Path(self.spec.out_dir) / SEG
        seg_root.mkdir(parents=True, exist_ok=True)
        jobs = pending_jobs(jobs, seg_root, segmenter_key(segmenter))
        seg_log = PredictionLog(seg_root / SEGMENT_LOG)
        groups = _by_video(list(jobs), lambda j: j.media)
        with tqdm(total=len(jobs), desc=f"segment ({len(self.actors)} workers)", unit="query",
                  disable=not progress, dynamic_ncols=True) as bar:

            def got(result: list[dict[str, Any]]) -> None:
                for rec in result:
                    seg_log.append(rec)
                bar.update(len(result))

            self._run("segment", [(g, sorted({j.id for j in g})) for g in groups], got)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
        if self.started:
            self.ray.shutdown()
