"""Small helpers shared by the benchmark modules."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any


class RecordError(ValueError):
    """A benchmark record that lacks a field the harness needs, or holds one of the wrong type."""


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


@contextmanager
def reading_record(source: Any, number: int, row: Any) -> Iterator[None]:
    """Turns a missing or malformed field met while reading one record into an error that names the record, so a
    bad line of a benchmark file is found before any model work."""
    try:
        yield
    except RecordError:
        raise
    except KeyError as error:
        raise RecordError(f"{_where(source, number, row)} has no {error} field") from None
    except (TypeError, ValueError) as error:
        raise RecordError(f"{_where(source, number, row)}: {error}") from None


def _where(source: Any, number: int, row: Any) -> str:
    ident = (row.get("id") if row.get("id") is not None else row.get("key")) if isinstance(row, dict) else None
    return f"{source}: record {number}" + (f" (id {ident!r})" if ident is not None else "")


def need(row: dict[str, Any], name: str, kind: type | tuple[type, ...] = str, what: str = "a string") -> Any:
    """row[name], which must be of `kind` (KeyError when absent, TypeError when of another type)."""
    value = row[name]
    if not isinstance(value, kind):
        raise TypeError(f"{name!r} must be {what}, got {shown(value)}")
    return value


def shown(value: Any) -> str:
    """A value as the JSON the user wrote, cut short."""
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def judge_record(judge: Any, params: dict[str, Any], prompts: dict[str, Any], failures: int,
                 **extra: Any) -> dict[str, Any]:
    """What every judged score file records: who judged, with which settings and prompts, and how many verdicts
    could not be read."""
    return {"judge": getattr(judge, "name", None), "judge_params": dict(params), **extra, "judge_prompts": prompts,
            "judge_parse_failures": failures}


def installed_version(distribution: str) -> str | None:
    """The installed version of a package, or None when it is not installed."""
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
