"""Read a benchmark's local copy: HF `save_to_disk` folders, parquet, JSON/JSONL or CSV.

Audio columns stay undecoded (`AudioRef`): HF audio features are read with `decode=False`, so no audio backend
beyond soundfile is needed and nothing is decoded before inference asks for it.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from desta_audio.eval.records import AudioRef, read_jsonl

logger = logging.getLogger(__name__)

TABLE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


def is_hf_disk_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in ("dataset_info.json", "state.json", "dataset_dict.json"))


def load_rows(path: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """Rows of a table in any supported local format; audio cells become `AudioRef`s."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; pass the benchmark's local copy with --data")
    if is_hf_disk_folder(path):
        return _load_hf_disk(path, split)
    if path.is_dir():
        parquet = sorted(path.rglob("*.parquet"))
        if parquet:
            if split:
                parquet = [p for p in parquet if split in p.name or split in p.parent.name] or parquet
            return [row for file in parquet for row in _load_parquet(file)]
        raise ValueError(f"{path}: a folder with neither an HF save_to_disk dataset nor parquet files")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _load_parquet(path)
    if suffix == ".jsonl":
        return _only_objects(path, read_jsonl(path))
    if suffix == ".json":
        with open(path, encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        if isinstance(data, dict) and all(isinstance(value, dict) for value in data.values()):
            # some releases key items by id
            data = [dict(value, **({"id": key} if "id" not in value else {})) for key, value in data.items()]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of records (or records keyed by id), got {type(data).__name__}")
        return _only_objects(path, data)
    if suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    raise ValueError(f"{path}: unsupported format {suffix!r}; expected one of {', '.join(TABLE_SUFFIXES)} or a folder")


def _only_objects(path: Path, rows: list[Any]) -> list[dict[str, Any]]:
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: record {number} is not an object with the benchmark's fields "
                             f"(got {type(row).__name__})")
    return rows


def _load_hf_disk(path: Path, split: str | None) -> list[dict[str, Any]]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded.keys())
        chosen = split if split in loaded else ("test" if "test" in loaded else names[0])
        if split and split not in loaded:
            logger.warning("%s: no split %r (has %s); using %r", path, split, names, chosen)
        loaded = loaded[chosen]
    for name, feature in loaded.features.items():
        if isinstance(feature, datasets.Audio):
            loaded = loaded.cast_column(name, datasets.Audio(decode=False))
    return [_wrap_audio_cells(row) for row in loaded]


def _load_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return [_wrap_audio_cells(row) for row in pq.read_table(path).to_pylist()]


def _wrap_audio_cells(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        out[key] = to_audio_ref(value) if _looks_like_audio(value) else value
    return out


def _looks_like_audio(value: Any) -> bool:
    return isinstance(value, dict) and (
        ("bytes" in value and "path" in value) or ("array" in value and "sampling_rate" in value)
    )


def to_audio_ref(value: Any, audio_dir: Path | None = None) -> AudioRef:
    """An AudioRef from an HF audio cell, an AudioRef, or a file path (relative to `audio_dir`)."""
    if isinstance(value, AudioRef):
        return value
    if isinstance(value, dict):
        if value.get("array") is not None:
            import numpy as np

            return AudioRef(array=np.asarray(value["array"], dtype="float32"), sample_rate=int(value["sampling_rate"]),
                            path=value.get("path"))
        if value.get("bytes"):
            return AudioRef(data=value["bytes"], path=value.get("path"))
        value = value.get("path")
    if not value:
        raise ValueError("an item has no audio (empty audio cell)")
    candidate = Path(str(value))
    if audio_dir is not None and not candidate.is_absolute():
        candidate = audio_dir / candidate
    return AudioRef(path=str(candidate))
