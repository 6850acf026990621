"""Resuming `desta recipe mini`: a working folder only continues the run it was started for.

Every step skips what is already there (corpus, subset, targets, adapters), so a rerun with other settings would
silently reuse the old outputs under the new names. OUT/recipe.json records the settings of the first run and the
number of records each adapter trains on; a rerun that differs is refused, with the differences listed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from desta_audio.data.store import atomic_write_text

MARKER = "recipe.json"
OPTIONS = {"corpus_size": "--corpus-size", "clips": "--clips", "records": "--records", "seed": "--seed"}
START_OVER = "start over in a new OUT_DIR"


def check_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    """Record the run's settings in a new folder; refuse ones that differ from those recorded."""
    marker = _read(out_dir)
    earlier = marker.get("settings")
    if earlier is None:
        _write(out_dir, {**marker, "settings": settings})
        return
    changed = [key for key in {**earlier, **settings} if earlier.get(key) != settings.get(key)]
    if not changed:
        return
    listed = "; ".join(f"{OPTIONS.get(key, key)}: {earlier.get(key)!r} -> {settings.get(key)!r}" for key in changed)
    earlier_options = " ".join(f"{OPTIONS[key]} {earlier[key]}" for key in changed if key in OPTIONS and key in earlier)
    resume = f"rerun with {earlier_options}" if earlier_options else f"rerun with the settings in {out_dir / MARKER}"
    raise ValueError(f"{out_dir} holds a recipe run with other settings ({listed}); {resume} to resume it, "
                     f"or {START_OVER}")  # fmt: skip


def recorded_settings(out_dir: Path) -> dict[str, Any] | None:
    return _read(out_dir).get("settings")


def check_budget(out_dir: Path, budget: int, kept: dict[str, int]) -> None:
    """Every adapter of one folder trains on the same number of records; record it, or refuse another."""
    marker = _read(out_dir)
    earlier = marker.get("records_per_adapter")
    if earlier is None:
        _write(out_dir, {**marker, "records_per_adapter": budget})
    elif earlier != budget:
        raise ValueError(f"the adapters of {out_dir} train on {earlier} records each, but the sources of this run "
                         f"kept {kept}, which gives {budget}; rerun with the earlier --source list to resume, or "
                         f"{START_OVER}")  # fmt: skip


def _read(out_dir: Path) -> dict[str, Any]:
    path = out_dir / MARKER
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _write(out_dir: Path, marker: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / MARKER, json.dumps(marker, indent=2) + "\n")
