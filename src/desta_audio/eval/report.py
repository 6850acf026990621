"""Reports: Markdown and JSON tables per benchmark beside the published numbers of EVAL.md, and a PNG chart.

Input: a run folder with `<benchmark>[.<subset>].scores.json` files (written by `desta eval score`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from desta_audio.eval.benchmarks import get_benchmark

logger = logging.getLogger(__name__)

# The number each benchmark is summarised by, and how published entries name it.
MAIN_METRIC = {"mmau": "total", "dynamic_superb": "overall", "sakura": "multi", "speech_ifeval": "ifrate",
               "voicebench": "overall"}


def load_scores(run_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    scores: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(Path(run_dir).glob("*.scores.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        scores.setdefault(result["benchmark"], []).append(result)
    if not scores:
        raise FileNotFoundError(f"{run_dir}: no *.scores.json; run `desta eval score` on the predictions first")
    return scores


def summarize(scores: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float | None]]:
    """{benchmark: {metric: value}}; VoiceBench subsets are merged and given their overall mean."""
    summary: dict[str, dict[str, float | None]] = {}
    for name, results in scores.items():
        module = get_benchmark(name)
        merged: dict[str, float | None] = {}
        for result in results:
            merged.update(module.headline(result))
        if name == "voicebench":
            merged["overall"] = module.overall(merged)
        summary[name] = merged
    return summary


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}" if isinstance(value, (int, float)) else str(value)


def markdown(summary: dict[str, dict[str, float | None]], label: str,
             scores: dict[str, list[dict[str, Any]]]) -> str:
    lines = [f"# Evaluation report: {label}", ""]
    for name, metrics in summary.items():
        module = get_benchmark(name)
        lines += [f"## {name}", "", "| metric | " + label + " |", "|---|---|"]
        lines += [f"| {metric} | {_fmt(value)} |" for metric, value in metrics.items()]
        notes = []
        for result in scores[name]:
            for key in ("scored_text", "matcher", "judge", "judge_parse_failures", "missing_predictions",
                        "missing_outputs", "fail_rate", "note", "paragraph_split"):
                if result.get(key) not in (None, ""):
                    notes.append(f"{key}: {result[key]}")
            prompts = result.get("judge_prompts")
            if isinstance(prompts, dict) and prompts.get("origin"):
                notes.append(f"judge prompts: {prompts['origin']}")
        if notes:
            lines += ["", "Scoring: " + "; ".join(dict.fromkeys(notes))]
        published = getattr(module, "PUBLISHED", {})
        if published:
            keys = sorted({k for entry in published.values() for k in entry})
            lines += ["", "Published numbers:", "", "| system | " + " | ".join(keys) + " |",
                      "|---|" + "---|" * len(keys)]
            own = "| **" + label + "** | " + " | ".join(_fmt(metrics.get(k)) for k in keys) + " |"
            lines += [own] + ["| " + system + " | " + " | ".join(_fmt(entry.get(k)) for k in keys) + " |"
                              for system, entry in published.items()]
        lines.append("")
    return "\n".join(lines)


def chart(summary: dict[str, dict[str, float | None]], label: str, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display
    import matplotlib.pyplot as plt

    panels = [(name, MAIN_METRIC[name]) for name in summary if summary[name].get(MAIN_METRIC[name]) is not None]
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for axis, (name, metric) in zip(axes[0], panels):
        published = {s: e[metric] for s, e in getattr(get_benchmark(name), "PUBLISHED", {}).items() if metric in e}
        names = [label] + list(published)
        values = [summary[name][metric]] + list(published.values())
        axis.barh(names[::-1], values[::-1], color=["#999999"] * len(published) + ["#d62728"])
        axis.set_title(f"{name}: {metric}")
        axis.set_xlim(0, 100)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(run_dir: str | Path, label: str = "this run") -> dict[str, Path]:
    run_dir = Path(run_dir)
    scores = load_scores(run_dir)
    summary = summarize(scores)
    outputs = {"markdown": run_dir / "report.md", "json": run_dir / "report.json"}
    outputs["markdown"].write_text(markdown(summary, label, scores), encoding="utf-8")
    published = {name: getattr(get_benchmark(name), "PUBLISHED", {}) for name in summary}
    outputs["json"].write_text(json.dumps({"label": label, "summary": summary, "published": published},
                                          indent=2), encoding="utf-8")
    png = chart(summary, label, run_dir / "report.png")
    if png is not None:
        outputs["png"] = png
    return outputs
