"""Training records: the dataset format of SPEC section 5 read from JSONL files or folders of JSONL shards.

A record is a chat whose user turns carry `<start_audio><|AUDIO|><end_audio>` with `audios=[{"audio": path,
"text": transcript}]` (or no audio at all: a text-only chat) and whose assistant turns are the targets. The same
files load with `datasets.load_dataset("json", data_files=...)`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from desta_audio.processing import ConversationError, audio_refs

log = logging.getLogger(__name__)

QUARANTINE_DIR = "quarantine"  # rejected records of a `desta data` folder: never trained on


class RecordError(ValueError):
    """A training record that cannot be used, with its file and line."""


@dataclass
class AudioItem:
    path: str  # absolute path of the audio file
    text: str | None  # transcript from the record (None: transcribe, or blank without ASR)
    where: str = ""  # the record holding it (file:line), for error messages


@dataclass
class TrainRecord:
    key: str
    messages: list[dict[str, Any]]  # with each audio's "audio" resolved to an absolute path
    audios: list[AudioItem]  # empty for a text-only chat
    where: str = "record"  # file:line

    @property
    def target(self) -> str:
        return self.messages[-1]["content"]

    def prompt_messages(self) -> list[dict[str, Any]]:
        """The chat without its final assistant turn (what generation answers)."""
        return self.messages[:-1]


def jsonl_files(source: str | Path) -> list[Path]:
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise RecordError(f"{source}: no such file or folder of JSONL records")
    files = sorted(p for p in source.rglob("*.jsonl") if QUARANTINE_DIR not in p.relative_to(source).parts)
    if not files:
        raise RecordError(f"{source}: contains no .jsonl files")
    return files


def read_records(source: str | Path, *, audio_root: str | Path | None = None,
                 max_records: int | None = None) -> list[TrainRecord]:
    records: list[TrainRecord] = []
    seen: set[str] = set()
    for file in jsonl_files(source):
        root = Path(audio_root) if audio_root else file.parent
        with open(file, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                where = f"{file}:{line_number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise RecordError(f"{where}: not valid JSON ({error.msg})") from None
                record = parse_record(row, root, where)
                if record.key in seen:
                    raise RecordError(f"{where}: duplicate record key {record.key!r}; keys must be unique")
                seen.add(record.key)
                records.append(record)
                if max_records is not None and len(records) >= max_records:
                    return records
    return records


def parse_record(row: Any, audio_root: Path, where: str = "record") -> TrainRecord:
    """One JSONL row -> TrainRecord, with every field's type checked here, so a bad record fails at load time."""
    if not isinstance(row, dict):
        raise RecordError(f"{where}: expected a JSON object with a 'messages' list, got {_kind(row)}")
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RecordError(f"{where}: needs a non-empty 'messages' list (the training chat)")
    for index, message in enumerate(messages, 1):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RecordError(f"{where}: message {index} must be an object with a 'role' and a 'content', "
                              f"got {_kind(message)}")
        if not isinstance(message.get("content"), str):
            raise RecordError(f"{where}: message {index} ({message['role']}): 'content' must be text, "
                              f"got {_kind(message.get('content'))}")
    if messages[-1]["role"] != "assistant":
        raise RecordError(f"{where}: the last message must be the assistant's target, got role "
                          f"{messages[-1]['role']!r}")
    resolved: list[dict[str, Any]] = []
    audios: list[AudioItem] = []
    for index, message in enumerate(messages, 1):
        message = dict(message)
        if message.get("audios"):
            items = [_audio_item(audio, audio_root, f"{where}: message {index}") for audio in _audio_list(
                message["audios"], f"{where}: message {index}")]
            message["audios"] = [{"audio": item.path, "text": item.text} for item in items]
            audios += [AudioItem(item.path, item.text, where) for item in items]
        resolved.append(message)
    try:
        audio_refs(resolved)  # locator counts
    except ConversationError as error:
        raise RecordError(f"{where}: {error}") from None
    key = row.get("key") or row.get("id")
    if not key:
        key = hashlib.sha1(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]
    return TrainRecord(str(key), resolved, audios, where)


def _audio_list(audios: Any, where: str) -> list[Any]:
    if not isinstance(audios, list):
        raise RecordError(f"{where}: 'audios' must be a list of {{'audio': path, 'text': transcript}}, "
                          f"got {_kind(audios)}")
    return audios


def _audio_item(audio: Any, audio_root: Path, where: str) -> AudioItem:
    if not isinstance(audio, dict) or not isinstance(audio.get("audio"), str):
        raise RecordError(f"{where}: each audio must be {{'audio': path, 'text': transcript}}")
    text = audio.get("text")
    if text is not None and not isinstance(text, str):
        raise RecordError(f"{where}: audio {audio['audio']!r}: 'text' must be the transcript as a string, or null, "
                          f"got {_kind(text)}")
    path = Path(audio["audio"]).expanduser()
    path = path if path.is_absolute() else audio_root / path
    if not path.is_file():
        raise RecordError(f"{where}: audio {audio['audio']!r} not found (looked for {path}); fix the "
                          "path, pass data.audio_root, or drop the record")
    return AudioItem(str(path), text)


def _kind(value: Any) -> str:
    """A short description of a JSON value for error messages: 'a list', 'the string 'hi''."""
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


def held_out(key: str, fraction: float) -> bool:
    """Deterministic split by key, stable when records are added or reordered."""
    if fraction <= 0:
        return False
    bucket = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < fraction


def audio_seconds(path: str) -> float:
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception as error:
        raise RecordError(f"{path}: cannot read audio header ({error}); check the record's audio path") from None
    return info.frames / info.samplerate
