"""An evaluation's results as files: results.json, results.md and plots.

results.json holds every query (its score, stop reason, searches, the prompt segmentation
used and why a query had none) and the aggregates the paper reports, so a table can be
rebuilt or a query looked up without rerunning anything. It is deterministic for the same
inputs apart from ``created``, so two runs (single process or sharded) can be compared.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segresearch.core.files import write_atomic
from segresearch.eval.paper_table import layout

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
        # ask_user (Context.ask_user): how often the model asked
        "asked": sum(1 for e in entries if e.get("questions")),
        "questions": sum(len(e.get("questions") or []) for e in entries),
    }


def pct_value(v: Any) -> float | None:
    """A score (a fraction) as the percent we print, one decimal; None when there is none.

    Differences to the paper are taken between these printed values, so a table's
    columns always add up as the reader sees them."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return float(f"{100 * f:.1f}") if math.isfinite(f) else None


def pct(v: Any) -> str:
    """A score (a fraction) as percent with one decimal, the one unit of every table,
    plot and page; "—" where there is no number."""
    p = pct_value(v)
    return "—" if p is None else f"{p:.1f}"


def pct_diff(ours: Any, paper: Any, minus: str = "-") -> str:
    """Ours minus the paper's, in percentage points with a sign ("—" when either is
    missing); ``minus`` lets a page use the typographic minus sign."""
    a, b = pct_value(ours), pct_value(paper)
    if a is None or b is None:
        return "—"
    d = round(a - b, 1)
    if d == 0:
        return "±0.0"
    return f"+{d:.1f}" if d > 0 else f"{minus}{abs(d):.1f}"



def metric_keys(results: dict[str, Any]) -> tuple[str, ...]:
    return ("J&F", "J", "F") if results.get("metric") == "J&F" else ("gIoU", "cIoU")


def table_keys(results: dict[str, Any]) -> tuple[str, ...]:
    """The columns of the main table: the metric's, then ReVOS' robustness R (ReVOS only;
    no other benchmark defines it)."""
    keys = metric_keys(results)
    if (results.get("dataset") or {}).get("name") == "revos" and results.get("metric") == "J&F":
        keys += ("R",)
    return keys


R_CAPTION = ("R: ReVOS' robustness, per frame max(1 − |mask outside the expression's objects| / "
             "|the video's annotated foreground|, 0), averaged like J.")
REVOS_OVERALL = ("overall = the mean of the referring and reasoning rows, as ReVOS' official "
                 "script computes it; expressions without a target (type 2) count in neither.")


def predictions_source(results: dict[str, Any]) -> str:
    """Where the predictions came from, in a sentence: a model (and how it searched), or a
    saved file (then nothing was searched by this run, and no backend is named)."""
    st = results.get("settings") or {}
    if st.get("predictions"):
        return (f"predictions read from {st['predictions']} (no model was run and nothing "
                "was searched by this evaluation)")
    models = ", ".join(map(str, st.get("models") or [])) or "an unnamed model"
    search = st.get("search")
    if search in (None, "", "none"):
        how = "without search"
    else:
        how = f"searching with {search}"
        if st.get("kb"):
            how += f" (knowledge base {st['kb']})"
        if st.get("retriever_url"):
            how += f" (retriever {st['retriever_url']})"
    return f"predictions made by {models}, {how}"


def paper_groups(results: dict[str, Any]) -> list[str]:
    """Rows of the comparison: ours in order, then groups only the paper reports."""
    paper = (results.get("paper") or {}).get("rows") or {}
    ours = [*(results.get("by_ability") or {}), "overall"]
    return [g for g in ours if g in paper] + [g for g in paper if g not in ours]


def paper_metrics(results: dict[str, Any]) -> list[str]:
    rows = (results.get("paper") or {}).get("rows") or {}
    return [k for k in metric_keys(results) if any(k in r for r in rows.values())]


def our_group(results: dict[str, Any], group: str) -> dict[str, Any]:
    if group == "overall":
        return results.get("overall") or {}
    return (results.get("by_ability") or {}).get(group) or {}


def _paper_markdown(results: dict[str, Any]) -> list[str]:
    paper = results.get("paper") or {}
    metrics = paper_metrics(results)
    if not metrics:
        return []
    head = " | ".join(f"{k} | paper | Δ" for k in metrics)
    out = ["", "## Against the paper", "",
           f"Paper numbers from `{paper.get('file')}`; Δ = ours − paper, in percentage points.",
           "", f"| group | {head} |", "|---|" + "---:|---:|---:|" * len(metrics)]
    for g in paper_groups(results):
        ours, theirs = our_group(results, g), paper["rows"].get(g) or {}
        cells = " | ".join(f"{pct(ours.get(k))} | {pct(theirs.get(k))} | "
                           f"{pct_diff(ours.get(k), theirs.get(k))}" for k in metrics)
        out.append(f"| {g} | {cells} |")
    return out


def results_markdown(results: dict[str, Any]) -> str:
    """The tables a paper reports (percent, one decimal, as OK-VOS tables are printed),
    then what went wrong how often."""
    ds = results["dataset"]
    st = results["settings"]
    video = results["metric"] == "J&F"
    keys = table_keys(results)
    seg = (st.get("segmenter") or {}).get("name")
    if st.get("predictions"):
        run = (f"- coordinates: {st.get('coord_style')} (keyframe size {st.get('keyframe_size')}), "
               f"segmenter: {seg}")
    else:
        run = (f"- search: {st.get('search')}, kb: {st.get('kb') or '—'}, frames: "
               f"{st.get('num_frames')}, max turns: {st.get('max_turns')}, segmenter: {seg}")
    name = " ".join(str(x) for x in (ds.get("name"), ds.get("split")) if x)
    out = [f"# {name} — {results['metric']}", "",
           f"- queries: {ds['queries']}; {predictions_source(results)}", run,
           f"- created: {results['created']}", "",
           "| group | n | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    rows = [*results["by_ability"].items(), ("**overall**", results["overall"])]
    for name, g in rows:
        if g is None:
            continue
        out.append(f"| {name} | {g['n']} | " + " | ".join(pct(g.get(k)) for k in keys) + " |")
    out += ["", f"Scores in percent. {_explain(video)}"]
    if "R" in keys:
        out[-1] += f" {R_CAPTION} {REVOS_OVERALL[:1].upper()}{REVOS_OVERALL[1:]}"
    layout_md = paper_layout_markdown(results)
    if layout_md:
        out += ["", *layout_md.rstrip("\n").split("\n")]
    out += _paper_markdown(results)
    out += objects_markdown(results)
    out += ["", "## By number of searches", "",
            "| searches | n | " + keys[0] + " |", "|---:|---:|---:|"]
    for k, g in results.get("by_searches", {}).items():
        out.append(f"| {k} | {g['n']} | {pct(g[keys[0]])} |")
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
    if st.get("ask_user"):
        out.append(f"- questions to the user (answered {st.get('ask_user_reply')!r}): "
                   f"{c.get('questions', 0)} in {c.get('asked', 0)} of {c['predicted']} queries")
    if c.get("score_errors"):
        out.append(f"- queries that could not be scored: {c['score_errors']} (see results.json)")
    plots = results.get("plots") or []
    if plots:
        out += [""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(out) + "\n"


def objects_markdown(results: dict[str, Any]) -> list[str]:
    """Per-object matching (MeViS / ReVOS; ``scoring.object_groups``) as a table: the mean
    object J and how many queries named as many objects as the expression has. Empty where
    the ground truth lists no objects (OK-VOS, images)."""
    objs = results.get("objects")
    if not objs:
        return []
    out = ["", "## Per object", "",
           "| group | n | object J | right number of objects | expressions with 2+ objects |",
           "|---|---:|---:|---:|---:|"]
    rows = [*(objs.get("by_ability") or {}).items(), ("**overall**", objs.get("overall"))]
    for name, g in rows:
        if g:
            out.append(f"| {name} | {g['n']} | {pct(g['object_J'])} | {g['right_count']} of {g['n']} | "
                       f"{g['several_gt']} |")
    several = sum(1 for q in results.get("queries") or [] if (q.get("objects_pred") or 0) > 1)
    out += ["", "Object J: every object the answer named is paired one to one with an object of the "
            "expression (Hungarian on video-level J: per-frame mask IoU averaged over the video), "
            "the paired J summed and divided by the larger of the two counts, so a missing or an "
            f"extra object costs a full zero; the union scores above are unchanged. {objects_overall_rule(objs)} "
            f"{several} answers named several objects (segmented per object; answer rule "
            f"{(results.get('settings') or {}).get('answer_rule', 'objects')!r})."]
    return out


def objects_overall_rule(objs: dict[str, Any]) -> str:
    """How the per-object overall row was averaged, as a sentence for a table's caption."""
    groups = objs.get("overall_of")
    if groups:
        return (f"Overall: the mean of the {' and '.join(map(str, groups))} rows (counts: their "
                "sums), as the J&F overall.")
    return "Overall: the mean over every expression."


LAYOUT_HEADING = "## As the paper prints it"


def paper_layout_markdown(results: dict[str, Any]) -> str:
    """The benchmark's results table in its paper's column order (``paper_table.layout``):
    our row, and when ``--paper-table`` gave them the paper's row and the difference.
    Empty for OK-VOS, whose paper's layout is the main table."""
    cols = layout(results)
    if not cols:
        return ""
    paper = (results.get("paper") or {}).get("rows") or {}
    out = [LAYOUT_HEADING, "", "| | " + " | ".join(h for h, _, _ in cols) + " |",
           "|---|" + "---:|" * len(cols),
           "| ours | " + " | ".join(pct(our_group(results, g).get(k)) for _, g, k in cols) + " |"]
    if any(k in (paper.get(g) or {}) for _, g, k in cols):
        out.append("| paper | " + " | ".join(pct((paper.get(g) or {}).get(k)) for _, g, k in cols) + " |")
        out.append("| Δ | " + " | ".join(pct_diff(our_group(results, g).get(k), (paper.get(g) or {}).get(k))
                                         for _, g, k in cols) + " |")
    name = (results.get("dataset") or {}).get("name")
    if name == "revos":
        out += ["", f"{REVOS_OVERALL} {R_CAPTION}"]
    elif name == "images":
        out += ["", "gIoU: mean of per-query IoU; cIoU: total intersection / total union "
                "(ignore polygons left out); one query per image, its first text, as LISA's "
                "validation scores ReasonSeg."]
    return "\n".join(out) + "\n"


def _explain(video: bool) -> str:
    if video:
        return ("J: mask IoU per annotated frame; F: boundary F-measure (DAVIS); both averaged "
                "over a query's frames, then over queries; J&F = (J + F) / 2.")
    return "gIoU: mean of per-query IoU; cIoU: total intersection / total union."


def write_plots(out_dir: Path, results: dict[str, Any]) -> list[str]:
    """Per-category bars and the score against the number of searches, as PNG.

    Legends sit below the axes and the top keeps headroom for the bar labels alone, so
    nothing is printed over a bar near 100%; the paper's numbers, when given, are black
    ticks across the bars they compare with."""
    import matplotlib  # heavy: about 0.5 s, and only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: as above, after the Agg backend is chosen

    video = results["metric"] == "J&F"
    keys = ("J", "F", "J&F") if video else ("gIoU", "cIoU")
    head = keys[-1] if video else "gIoU"
    paper = (results.get("paper") or {}).get("rows") or {}
    d = out_dir / PLOTS
    d.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    groups = [(a, g) for a, g in results["by_ability"].items() if g]
    if results.get("overall"):
        groups.append(("overall", results["overall"]))
    if groups:
        fig, ax = plt.subplots(figsize=(max(5.5, 1.25 * len(groups) + 1.5), 3.9), dpi=110,
                               layout="constrained")
        x = np.arange(len(groups))
        width = 0.8 / len(keys)
        marked = False
        for i, k in enumerate(keys):
            xs = x + (i - (len(keys) - 1) / 2) * width
            vals = [100 * g[k] for _, g in groups]
            ax.bar(xs, vals, width, label=k)
            for xc, v, (a, g) in zip(xs, vals, groups, strict=True):
                ref = (paper.get(a) or {}).get(k)
                top = v
                if ref is not None:
                    ax.hlines(100 * ref, xc - width / 2, xc + width / 2, colors="black",
                              linewidth=1.6, label=None if marked else "paper")
                    marked = True
                    if 100 * ref > v - 5:  # the label goes above the paper's tick, not on it
                        top = max(v, 100 * ref)
                ax.annotate(pct(g[k]), (xc, top), xytext=(0, 2), textcoords="offset points",
                            ha="center", va="bottom", fontsize=7.5)
        ax.set_xticks(x, [f"{a}\n(n={g['n']})" for a, g in groups], fontsize=8)
        ax.set_ylim(0, 110)  # room for the labels of bars at 100, nothing else up there
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("score (%)")
        ax.set_title(f"{results['dataset']['name']} {results['dataset'].get('split') or ''} "
                     "by category", fontsize=10)
        fig.legend(fontsize=8, ncols=len(keys) + marked, loc="outside lower center",
                   frameon=False)
        ax.grid(axis="y", alpha=0.3)
        p = d / "by_category.png"
        _save(fig, p)
        written.append(f"{PLOTS}/by_category.png")
    per = [q for q in results["queries"] if q.get(head if video else "IoU") is not None]
    if per:
        fig, ax = plt.subplots(figsize=(5.5, 3.9), dpi=110, layout="constrained")
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
                # below the point near the top, so the label never meets the frame or title
                ax.annotate(f"n={results['by_searches'][k]['n']}", (int(k), m), fontsize=7,
                            textcoords="offset points", xytext=(5, -11 if m > 80 else 6))
        ax.set_xlabel("searches in the run")
        ax.set_ylabel(f"{head if video else 'IoU'} (%)")
        ax.set_ylim(-3, 103)
        ax.set_xticks(sorted(set(ns.tolist())))
        ax.set_title(f"{head} against the number of searches", fontsize=10)
        fig.legend(fontsize=8, ncols=2, loc="outside lower center", frameon=False)
        ax.grid(alpha=0.3)
        _save(fig, d / "score_vs_searches.png")
        written.append(f"{PLOTS}/score_vs_searches.png")
    return written


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt  # heavy: as in write_plots

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
