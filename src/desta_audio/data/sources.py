"""Corpus adapters: turn a manifest (JSONL/CSV) or a Hugging Face `datasets` folder/parquet into `SourceItem`s.

Audio is always referenced by path, never copied. Which metadata field becomes which description attribute is a
per-source mapping (`SourceMapping`, loadable from YAML), so one corpus' `gender` column and another's `sex`
column both end up as `Gender: ...` in the seed description.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from desta_audio.data.store import atomic_writer
from desta_audio.messages import yaml_problem

logger = logging.getLogger(__name__)

AudioKind = Literal["speech", "sound", "music"]

# Metadata columns that become attributes when a source has no explicit mapping (column -> attribute name).
DEFAULT_ATTRIBUTES: dict[str, str] = {
    "gender": "Gender",
    "emotion": "Emotion",
    "emotion_intensity": "Emotion intensity",
    "sentiment": "Sentiment",
    "pitch": "Pitch",
    "volume": "Volume",
    "speaking_speed": "Speaking speed",
    "age": "Age",
    "accent": "Accent",
    "dialect": "Dialect",
    "speaking_style": "Speaking style",
    "language": "Language",
    "noise_level": "Noise level",
    "reverberation": "Reverberation",
    "activation": "Activation",
    "valence": "Valence",
    "dominance": "Dominance",
    "speaker": "Speaker",
    "command": "Command",
    "num_speakers": "Number of speakers",
    "audio_category": "Audio category",
    "label": "Audio category",
    "genre": "Genre",
    "instrument": "Instrument",
    "family": "Family",
    "source": "Source",
    "midi_note": "MIDI Note",
}


class SourceMapping(BaseModel):
    """How one corpus' metadata maps onto the description format (usually a small YAML file per source)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str | None = None
    kind: AudioKind = "speech"
    audio_column: str = "audio"
    id_column: str | None = "id"  # when the row has no such column, the id is the audio path as written
    audio_root: str | None = None
    transcript_column: str | None = "text"
    caption_column: str | None = "caption"
    duration_column: str | None = "duration"
    segments_column: str | None = "segments"
    kind_column: str | None = "kind"
    # HF datasets often embed the audio bytes; they are written out here once (the only case audio is copied).
    extract_audio_to: str | None = None
    attributes: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ATTRIBUTES))

    @classmethod
    def from_yaml(cls, path: str | Path) -> SourceMapping:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
            return cls.model_validate(raw)
        except (OSError, yaml.YAMLError, ValueError) as err:
            raise ValueError(f"source mapping {path}: {_one_line_reason(err)}. See README 'Data' for the mapping "
                             "keys.") from err  # fmt: skip


def _one_line_reason(error: Exception) -> str:
    """pydantic and YAML explain over several lines (with a docs link); the command's error must stay one line."""
    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'mapping'}: {e['msg']}" for e in error.errors())
    if isinstance(error, yaml.YAMLError):
        return f"not valid YAML ({yaml_problem(error)})"
    return " ".join(str(error).split())


@dataclass
class Segment:
    """A timestamped part of a clip (one speaker turn, one sound event)."""

    start: float
    end: float
    text: str | None = None
    speaker: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class SourceItem:
    """One clip with everything `describe` needs."""

    id: str  # relative audio path (the released schema's `id`)
    dataset: str
    audio: str  # path to read the audio from
    kind: AudioKind = "speech"
    duration: float | None = None
    transcript: str | None = None
    caption: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list)
    seed_description: str | None = None  # precomputed (e.g. by `desta data describe`); wins over the metadata

    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "dataset": self.dataset,
            "audio": self.audio,
            "kind": self.kind,
            "duration": self.duration,
            "transcript": self.transcript,
            "caption": self.caption,
            "attributes": self.attributes,
            "segments": [vars(s) for s in self.segments],
            "seed_description": self.seed_description,
        }


def read_source(path: str | Path, mapping: SourceMapping | None = None) -> Iterator[SourceItem]:
    """Items of a manifest (.jsonl/.json/.csv/.tsv), a parquet file, or a `datasets` folder, in file order.

    Columns that an explicit mapping names must occur in some row: once the last row is read, a name that matched
    nothing (a typo, another corpus' column) is an error rather than an attribute silently left out.
    """
    path = Path(path)
    mapping = mapping or SourceMapping()
    if not path.exists():
        raise FileNotFoundError(f"source {path} does not exist")
    dataset = mapping.dataset or (path.stem if path.is_file() else path.name)
    root = Path(mapping.audio_root) if mapping.audio_root else (path.parent if path.is_file() else path)
    unmatched = _mapped_columns(mapping)
    seen_columns: set[str] = set()
    for index, row in enumerate(_rows(path)):
        try:
            item = _item_from_row(row, mapping, dataset, root)
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{path}, row {index}: {err}") from err
        if unmatched:
            seen_columns.update(row)
            _drop_matched(unmatched, row, item)
        yield item
    if unmatched and seen_columns:  # (an empty source has nothing to describe wrongly)
        raise ValueError(f"{path}: no row has the column(s) the mapping names: {_describe_unmatched(unmatched)}; "
                         f"the rows have {sorted(seen_columns)[:40]}")  # fmt: skip


@dataclass(frozen=True)
class _MappedColumn:
    role: str  # the mapping key that names it
    attribute: str | None = None  # the description attribute it becomes


def _mapped_columns(mapping: SourceMapping) -> dict[str, _MappedColumn]:
    """Columns the mapping names explicitly; the defaults are only tried, never required."""
    roles = ("id_column", "transcript_column", "caption_column", "duration_column", "segments_column", "kind_column")
    given = [role for role in roles if role in mapping.model_fields_set and getattr(mapping, role)]
    named = {getattr(mapping, role): _MappedColumn(role) for role in given}
    if "attributes" in mapping.model_fields_set:
        named.update({column: _MappedColumn("attributes", name) for column, name in mapping.attributes.items()})
    return named


def _drop_matched(unmatched: dict[str, _MappedColumn], row: dict[str, Any], item: SourceItem) -> None:
    # An attribute also counts when it arrived by name: in a segment, or in the `attributes` of a row that
    # `describe` or `annotate` wrote with this same mapping (which also writes the transcript as `transcript`).
    names = set(item.attributes).union(*(s.attributes for s in item.segments))
    for column, mapped in list(unmatched.items()):
        if (column in row or mapped.attribute in names
                or (mapped.role == "transcript_column" and "transcript" in row)):  # fmt: skip
            del unmatched[column]


def _describe_unmatched(unmatched: dict[str, _MappedColumn]) -> str:
    return ", ".join(f"{column!r} ({m.role}: {m.attribute})" if m.attribute else f"{column!r} ({m.role})"
                     for column, m in unmatched.items())  # fmt: skip


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    suffix = path.suffix.lower()
    if path.is_dir() or suffix == ".parquet":
        yield from _hf_rows(path)
    elif suffix in {".jsonl", ".ndjson"}:
        for line_number, line in _text_lines(path):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{line_number} is not valid JSON: {err}") from err
    elif suffix == ".json":
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise _not_utf8(path, raw.count(b"\n", 0, err.start) + 1, err) from None
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a JSON list of rows")
        yield from data
    elif suffix in {".csv", ".tsv"}:
        # TSV is read without quoting, as Common Voice writes it: a quote in a cell is text, not a field delimiter.
        tsv = suffix == ".tsv"
        lines = (line for _, line in _text_lines(path))
        quoting = csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
        yield from csv.DictReader(lines, delimiter="\t" if tsv else ",", quoting=quoting)
    else:
        raise ValueError(f"source {path}: unknown format; use .jsonl, .json, .csv, .tsv, .parquet or a datasets folder")


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, a leading byte-order mark dropped; decoded line by line so that a
    stray byte of another encoding is reported with its line."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(path, number, err) from None


def _not_utf8(path: Path, line: int, err: UnicodeDecodeError) -> ValueError:
    return ValueError(f"{path}:{line} is not UTF-8 (byte 0x{err.object[err.start]:02x}); "
                      "save the manifest as UTF-8, e.g. `iconv -f latin1 -t utf-8`")  # fmt: skip


def _hf_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a `save_to_disk` folder, a folder of parquet files, or one parquet file; audio left undecoded."""
    import datasets

    if path.is_dir() and any((path / n).exists() for n in ("dataset_info.json", "state.json", "dataset_dict.json")):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[next(iter(ds))]
    else:
        files = [str(path)] if path.is_file() else sorted(str(p) for p in path.rglob("*.parquet"))
        if not files:
            raise ValueError(f"{path}: no parquet files and not a `save_to_disk` folder")
        ds = datasets.load_dataset("parquet", data_files=files, split="train")
    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Audio):
            ds = ds.cast_column(name, datasets.Audio(decode=False))
    yield from ds


def _audio_path(value: Any, root: Path, mapping: SourceMapping, dataset: str) -> tuple[str, str]:
    """(id, absolute path) of a row's audio: a path string, or datasets' Audio dict {"path", "bytes"}."""
    embedded = None
    if isinstance(value, dict):
        embedded, value = value.get("bytes"), value.get("path")
    if not value:
        raise ValueError("the audio has no path; give each clip a file name")
    relative = str(value)
    path = Path(relative) if Path(relative).is_absolute() else (root / relative).absolute()
    if embedded and not path.exists():
        if not mapping.extract_audio_to:
            raise ValueError(f"audio {relative!r} is embedded in the dataset; set extract_audio_to in the mapping")
        path = _extract(embedded, relative, Path(mapping.extract_audio_to).absolute() / dataset)
    return relative, str(path)


def _extract(embedded: bytes, relative: str, folder: Path) -> Path:
    """Write embedded audio under `folder` at its own relative path (so spk1/001.wav and spk2/001.wav stay apart)
    and return where it is. A name already holding other bytes gets their hash added: clips never share a file,
    and the same clip maps to the same file on every run."""
    name = Path(relative)
    if name.is_absolute() or ".." in name.parts:
        name = Path(name.name)
    path = folder / name
    if path.exists() and path.read_bytes() != embedded:
        path = path.with_name(f"{path.stem}.{hashlib.sha256(embedded).hexdigest()[:16]}{path.suffix}")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path, binary=True) as handle:
            handle.write(embedded)
    return path


def _item_from_row(row: dict[str, Any], mapping: SourceMapping, dataset: str, root: Path) -> SourceItem:
    if mapping.audio_column not in row:
        raise KeyError(f"no audio column {mapping.audio_column!r} (columns: {sorted(row)}); set audio_column")
    relative, audio = _audio_path(row[mapping.audio_column], root, mapping, dataset)
    attributes = {
        name: _format_value(row[column])
        for column, name in mapping.attributes.items()
        if column in row and _present(row[column])
    }
    if isinstance(row.get("attributes"), dict):  # rows written by `desta data describe` carry named attributes
        attributes = {str(k): _format_value(v) for k, v in row["attributes"].items() if _present(v)} | attributes
    kind = row.get(mapping.kind_column) if mapping.kind_column else None
    return SourceItem(
        id=str(row[mapping.id_column]) if mapping.id_column and _present(row.get(mapping.id_column)) else relative,
        dataset=str(row.get("dataset") or dataset),
        audio=audio,
        kind=kind if kind in ("speech", "sound", "music") else mapping.kind,
        duration=_float_or_none(row.get(mapping.duration_column)) if mapping.duration_column else None,
        transcript=_text_or_none(row.get(mapping.transcript_column) if mapping.transcript_column else None)
        or _text_or_none(row.get("transcript")),  # the column `desta data describe` writes
        caption=_text_or_none(row.get(mapping.caption_column)) if mapping.caption_column else None,
        attributes=attributes,
        segments=_segments(row.get(mapping.segments_column), mapping) if mapping.segments_column else [],
        seed_description=_text_or_none(row.get("seed_description")),
    )


def _segments(value: Any, mapping: SourceMapping) -> list[Segment]:
    if not _present(value):
        return []
    if isinstance(value, str):  # CSV cells carry segments as a JSON string
        value = json.loads(value)
    segments = []
    for raw in value:
        attributes = {
            name: _format_value(raw[column])
            for column, name in mapping.attributes.items()
            if column in raw and column != "speaker" and _present(raw[column])
        }
        attributes.update({str(k): _format_value(v) for k, v in (raw.get("attributes") or {}).items()})
        segments.append(
            Segment(
                start=float(raw["start"]),
                end=float(raw["end"]),
                text=_text_or_none(raw.get("text")),
                speaker=_text_or_none(raw.get("speaker")),
                attributes=attributes,
            )
        )
    return sorted(segments, key=lambda s: (s.start, s.end))


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and value != value:  # NaN from pandas/CSV
        return False
    return not (isinstance(value, (str, list, dict)) and len(value) == 0)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).strip()


def _text_or_none(value: Any) -> str | None:
    return str(value).strip() if _present(value) and str(value).strip() else None


def _float_or_none(value: Any) -> float | None:
    return float(value) if _present(value) and str(value).strip() else None
