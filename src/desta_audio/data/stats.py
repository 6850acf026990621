"""Summary of a generated dataset: mix by dataset, category and attribute, response lengths, PNG histogram."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from desta_audio.data.describe import parse_attributes
from desta_audio.data.store import ShardStore, atomic_writer

TOP_VALUES = 5


@dataclass
class DatasetStats:
    records: int = 0
    quarantined: int = 0
    by_dataset: Counter = field(default_factory=Counter)
    by_category: Counter = field(default_factory=Counter)
    by_generator: Counter = field(default_factory=Counter)
    quarantine_reasons: Counter = field(default_factory=Counter)
    attribute_values: dict[str, Counter] = field(default_factory=dict)
    response_words: list[int] = field(default_factory=list)

    def length_percentiles(self) -> dict[str, float]:
        if not self.response_words:
            return {}
        values = np.percentile(self.response_words, [0, 25, 50, 75, 95, 100])
        return dict(zip(["min", "p25", "median", "p75", "p95", "max"], (float(v) for v in values)))


def collect(out_dir: str | Path) -> DatasetStats:
    store = ShardStore(out_dir)
    stats = DatasetStats()
    for row in store.iter_rows():
        stats.records += 1
        stats.by_dataset[row["dataset"]] += 1
        provenance: dict[str, Any] = row.get("provenance") or {}
        stats.by_category[provenance.get("prompt_category", "?")] += 1
        stats.by_generator[f"{provenance.get('target_source', '?')}: {provenance.get('generator', '?')}"] += 1
        for name, values in parse_attributes(row["seed_description"]).items():
            stats.attribute_values.setdefault(name, Counter()).update(values)
        stats.response_words.append(len(row["response"].split()))
    for row in store.iter_rows(quarantine=True):
        stats.quarantined += 1
        stats.quarantine_reasons[(row.get("quarantine_reason") or "?").split(":")[0]] += 1
    return stats


def render(stats: DatasetStats, console: Any = None) -> None:
    """Rich tables on the console."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    total = stats.records + stats.quarantined
    console.print(f"[bold]{stats.records}[/] records kept, {stats.quarantined} quarantined ({total} generated)")
    for title, counter in [("dataset", stats.by_dataset), ("prompt category", stats.by_category),
                           ("generator", stats.by_generator), ("quarantine reason", stats.quarantine_reasons)]:  # fmt: skip
        if not counter:
            continue
        table = Table(title=f"by {title}")
        table.add_column(title)
        table.add_column("records", justify="right")
        table.add_column("share", justify="right")
        for name, count in counter.most_common():
            table.add_row(str(name), str(count), f"{count / max(1, sum(counter.values())):.1%}")
        console.print(table)
    if stats.attribute_values:
        table = Table(title="by attribute (from seed descriptions)")
        for column in ("attribute", "records", f"top {TOP_VALUES} values"):
            table.add_column(column)
        for name, values in sorted(stats.attribute_values.items(), key=lambda kv: -sum(kv[1].values())):
            top = ", ".join(f"{value} ({count})" for value, count in values.most_common(TOP_VALUES))
            table.add_row(name, str(sum(values.values())), top)
        console.print(table)
    percentiles = stats.length_percentiles()
    if percentiles:
        table = Table(title="response length (words)")
        for name in percentiles:
            table.add_column(name, justify="right")
        table.add_row(*(f"{v:.0f}" for v in percentiles.values()))
        console.print(table)


def write_histogram(stats: DatasetStats, path: str | Path) -> Path:
    """PNG histogram of response lengths in words."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    path = Path(path)
    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    if stats.response_words:
        bins = min(50, max(5, len(set(stats.response_words))))
        axis.hist(stats.response_words, bins=bins, color="#3b6ea5", edgecolor="white")
        median = float(np.median(stats.response_words))
        axis.axvline(median, color="#c0392b", linestyle="--", label=f"median {median:.0f}")
        axis.legend()
    axis.set_xlabel("response length (words)")
    axis.set_ylabel("records")
    axis.set_title(f"Response lengths, {stats.records} records")
    figure.tight_layout()
    with atomic_writer(path, binary=True) as handle:  # an existing picture stays whole if saving fails
        figure.savefig(handle, format=path.suffix.lstrip(".") or "png")
    plt.close(figure)
    return path
