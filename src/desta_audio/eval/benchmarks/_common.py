"""Small helpers shared by the benchmark modules."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any


def percent(correct: float, total: int) -> float | None:
    return None if total == 0 else 100.0 * correct / total


def grouped_accuracy(pairs: Iterable[tuple[str, bool]]) -> dict[str, dict[str, Any]]:
    """{group: {"accuracy": %, "correct": n, "total": n}} for (group, is_correct) pairs, groups sorted."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for group, ok in pairs:
        counts[group][0] += int(ok)
        counts[group][1] += 1
    return {g: {"accuracy": percent(c, t), "correct": c, "total": t} for g, (c, t) in sorted(counts.items())}


def response_of(row: dict[str, Any]) -> str | None:
    """The model output of a prediction row; None when the row has none (counted as wrong, and reported)."""
    value = row.get("response")
    return value if isinstance(value, str) else None
