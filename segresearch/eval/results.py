"""An evaluation's results as files: results.json, results.md and plots.

results.json holds every query (its score, stop reason, searches, the prompt segmentation
used and why a query had none) and the aggregates the paper reports, so a table can be
rebuilt or a query looked up without rerunning anything. It is deterministic for the same
inputs apart from ``created``, so two runs (single process or sharded) can be compared.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segresearch.graphs.outputs import write_atomic

PLOTS = "plots"


def write_results_json(out_dir: Path, results: dict[str, Any]) -> Path:
    path = out_dir / "results.json"
    write_atomic(path, json.dumps(results, indent=1, ensure_ascii=False, default=str).encode())
    return path


def counts(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    stops = Counter(str(e.get("stop_reason")) for e in entries if not e.get("missing_prediction"))
    return {
        "queries": len(entries),
        "predicted": sum(1 for e in entries if not e.get("missing_prediction")),
        "missing_predictions": sum(1 for e in entries if e.get("missing_prediction")),
        "missing_masks": sum(1 for e in entries if e.get("missing_masks")),
        "missing_frames": sum(int(e.get("missing_frames") or 0) for e in entries
                              if not e.get("missing_masks")),
        "stop_reasons": dict(sorted(stops.items())),
        "no_usable_answer": sum(1 for e in entries
                                if e.get("prompt") is None and not e.get("missing_prediction")),
        "rule_differs": sum(1 for e in entries if e.get("rule_differs")),
        # answers with NaN/inf coordinates: prompted with their finite part here, with the
        # NaN itself by the published script (a difference from its rule, so counted)
        "nonfinite_coordinates": sum(1 for e in entries if e.get("nonfinite")),
        "score_errors": sum(1 for e in entries if e.get("score_error")),
    }


def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def results_markdown(results: dict[str, Any]) -> str:
    """The tables a paper reports (percent, one decimal, as OK-VOS tables are printed),
    then what went wrong how often."""
    ds = results["dataset"]
    st = results["settings"]
    video = results["metric"] == "J&F"
    keys = ("J&F", "J", "F") if video else ("gIoU", "cIoU")
    out = [f"# {ds['name']} {ds.get('split') or ''} — {results['metric']}".rstrip(), "",
           f"- queries: {ds['queries']}; model(s): {', '.join(map(str, st.get('models') or ['(predictions file)']))}",
           f"- search: {st.get('search')}, kb: {st.get('kb') or '—'}, frames: {st.get('num_frames')}, "
           f"max turns: {st.get('max_turns')}, segmenter: {(st.get('segmenter') or {}).get('name')}",
           f"- created: {results['created']}", "",
           "| group | n | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    rows = [*results["by_ability"].items(), ("**overall**", results["overall"])]
    for name, g in rows:
        if g is None:
            continue
        out.append(f"| {name} | {g['n']} | " + " | ".join(_pct(g[k]) for k in keys) + " |")
    out += ["", f"Scores in percent. {_explain(video)}", "", "## By number of searches", "",
            "| searches | n | " + keys[0] + " |", "|---:|---:|---:|"]
    for k, g in results.get("by_searches", {}).items():
        out.append(f"| {k} | {g['n']} | {_pct(g[keys[0]])} |")
    c = results["counts"]
    out += ["", "## Counts", "",
            f"- predictions: {c['predicted']} of {c['queries']} queries "
            f"({c['missing_predictions']} missing, scored as empty masks)",
            f"- mask folders missing: {c['missing_masks']}; missing mask frames: {c['missing_frames']}",
            f"- no usable answer (empty masks): {c['no_usable_answer']}",
            f"- first-keyframe rule differs from the graph's answer: {c['rule_differs']}",
            f"- answers with NaN/inf coordinates (prompted with their finite part; the "
            f"published script would pass the NaN to SAM 2): {c.get('nonfinite_coordinates', 0)}",
            "- stop reasons: " + (", ".join(f"{k} {v}" for k, v in c["stop_reasons"].items()) or "—")]
    if c.get("score_errors"):
        out.append(f"- queries that could not be scored: {c['score_errors']} (see results.json)")
    plots = results.get("plots") or []
    if plots:
        out += [""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(out) + "\n"


def _explain(video: bool) -> str:
    if video:
        return ("J: mask IoU per annotated frame; F: boundary F-measure (DAVIS); both averaged "
                "over a query's frames, then over queries; J&F = (J + F) / 2.")
    return "gIoU: mean of per-query IoU; cIoU: total intersection / total union."


def write_plots(out_dir: Path, results: dict[str, Any]) -> list[str]:
    """Per-category bars and the score against the number of searches, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    video = results["metric"] == "J&F"
    keys = ("J", "F", "J&F") if video else ("gIoU", "cIoU")
    head = keys[-1] if video else "gIoU"
    d = out_dir / PLOTS
    d.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    groups = [(a, g) for a, g in results["by_ability"].items() if g]
    if results.get("overall"):
        groups.append(("overall", results["overall"]))
    if groups:
        fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(groups) + 2), 3.6), dpi=110)
        x = np.arange(len(groups))
        width = 0.8 / len(keys)
        for i, k in enumerate(keys):
            vals = [100 * g[k] for _, g in groups]
            bars = ax.bar(x + (i - (len(keys) - 1) / 2) * width, vals, width, label=k)
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
        ax.set_xticks(x, [f"{a}\n(n={g['n']})" for a, g in groups], fontsize=8)
        ax.set_ylim(0, 118)
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("score (%)")
        ax.set_title(f"{results['dataset']['name']} {results['dataset'].get('split') or ''} by category")
        ax.legend(fontsize=8, ncols=len(keys), loc="upper center", frameon=False)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        p = d / "by_category.png"
        _save(fig, p)
        written.append(f"{PLOTS}/by_category.png")
    per = [q for q in results["queries"] if q.get(head if video else "IoU") is not None]
    if per:
        fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
        rng = np.random.default_rng(0)
        ns = np.array([int(q.get("num_search") or 0) for q in per])
        ys = np.array([100 * q[head if video else "IoU"] for q in per])
        ax.scatter(ns + rng.uniform(-0.15, 0.15, len(ns)), ys, s=10, alpha=0.35, color="grey",
                   label="query")
        ks = sorted(results.get("by_searches", {}), key=int)
        if ks:
            means = [100 * results["by_searches"][k][head] for k in ks]
            ax.plot([int(k) for k in ks], means, "o-", color="C3", label=f"mean {head}")
            for k, m in zip(ks, means, strict=True):
                ax.annotate(f"n={results['by_searches'][k]['n']}", (int(k), m), fontsize=7,
                            textcoords="offset points", xytext=(4, 6))
        ax.set_xlabel("searches in the run")
        ax.set_ylabel(f"{head if video else 'IoU'} (%)")
        ax.set_ylim(-3, 103)
        ax.set_xticks(sorted(set(ns.tolist())))
        ax.set_title(f"{head} against the number of searches")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        _save(fig, d / "score_vs_searches.png")
        written.append(f"{PLOTS}/score_vs_searches.png")
    return written


def _save(fig: Any, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
