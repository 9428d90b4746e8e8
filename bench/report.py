"""Outputs of a scenario: JSON (everything), Markdown (the table a reader wants), PNG (the curve)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def fmt(v, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{nd}f}"
    return str(v)


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Markdown table; `columns` is [(key, header)]."""
    out = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "|".join("---:" for _ in columns) + "|"]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |")
    return "\n".join(out)


def targets_table(targets: list[dict]) -> str:
    if not targets:
        return "_No targets for this scenario._"
    rows = [
        {
            "target": t["name"],
            "measured": t["measured"],
            "threshold": t["threshold"],
            "met": t["met"] if t.get("met") is not None else None,
        }
        for t in targets
    ]
    out = ["| target | measured | threshold | met |", "|---|---:|---:|---:|"]
    for r in rows:
        met = "n/a" if r["met"] is None else ("yes" if r["met"] else "**NO**")
        out.append(f"| {r['target']} | {r['measured']} | {r['threshold']} | {met} |")
    return "\n".join(out)


def plot_latency_throughput(
    series: dict[str, list[dict]], path: Path, title: str, *, x: str = "rps", xlabel: str = "requests/s"
) -> None:
    """Throughput (x) vs p50 (solid) and p99 (dashed) latency (y, log), one colour per series, points labelled
    with their concurrency."""
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for i, (name, pts) in enumerate(series.items()):
        pts = [p for p in pts if p.get(x) is not None and p.get("p50_ms") is not None]
        if not pts:
            continue
        color = f"C{i}"
        xs = [p[x] for p in pts]
        ax.plot(xs, [p["p50_ms"] for p in pts], "o-", color=color, label=f"{name} p50")
        ax.plot(xs, [p["p99_ms"] for p in pts], "s--", color=color, alpha=0.7, label=f"{name} p99")
        for p in pts:
            ax.annotate(
                str(p.get("concurrency", "")),
                (p[x], p["p50_ms"]),
                textcoords="offset points",
                xytext=(3, 3),
                fontsize=7,
                color=color,
            )
    ax.set_yscale("log")
    ax.set_xlabel(xlabel + " (labels: concurrency)")
    ax.set_ylabel("latency, ms (log)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_xy(series: dict[str, tuple[list, list]], path: Path, title: str, xlabel: str, ylabel: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for i, (name, (xs, ys)) in enumerate(series.items()):
        ax.plot(xs, ys, "o-", color=f"C{i}", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(out_dir: Path, stem: str, result: dict, markdown: str) -> dict:
    """Write STEM.json and STEM.md; returns the paths written (the PNG is written by the scenario)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2, default=_default) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown.rstrip() + "\n")
    return {"json": f"{stem}.json", "md": f"{stem}.md", "png": f"{stem}.png"}


def _default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
