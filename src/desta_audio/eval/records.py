"""What flows through the harness: evaluation items (prompt + audio + reference) and prediction rows (JSONL)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

AUDIO_TAG = "<|AUDIO|>"


@dataclass
class AudioRef:
    """An audio input kept undecoded until inference needs it (benchmarks hold thousands of clips)."""

    path: str | None = None
    data: bytes | None = None
    array: np.ndarray | None = None
    sample_rate: int | None = None

    def load(self) -> np.ndarray | str:
        """A path, or a float32 16 kHz mono array, for `DeSTAModel.chat`."""
        from desta_audio.audio import load_audio

        if self.array is not None:
            return load_audio(np.asarray(self.array, dtype=np.float32), sample_rate=self.sample_rate)
        if self.data is not None:
            import soundfile as sf

            from desta_audio.audio import AudioError

            try:
                samples, rate = sf.read(io.BytesIO(self.data), dtype="float32", always_2d=False)
            except Exception as error:  # libsndfile's own error types: report it as the item's unusable audio
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise AudioError(f"{self.describe()}: cannot decode the audio bytes ({reason})") from None
            return load_audio(samples, sample_rate=rate, name=self.describe())
        if self.path is not None:
            return self.path
        raise ValueError("AudioRef has neither a path, bytes nor an array")

    def describe(self) -> str:
        return self.path or ("<bytes>" if self.data is not None else "<array>")


@dataclass
class EvalItem:
    """One prompt of a benchmark.

    `conversation` follows the model API (messages with `audios` lists of AudioRef); `text_conversation` is the
    same request with the audio given as text, for a text-only backbone, where the benchmark defines one.
    `reference` holds every field the scorer needs, copied into the prediction row.
    """

    id: str
    conversation: list[dict[str, Any]]
    reference: dict[str, Any] = field(default_factory=dict)
    text_conversation: list[dict[str, Any]] | None = None


def audio_message(system: str, user: str, audios: list[AudioRef]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user, "audios": [{"audio": a, "text": None} for a in audios]})
    return messages


def text_message(system: str, user: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user})
    return messages


def conversation_for_record(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON-safe copy of a conversation (audio shown by path) for manifests and prediction rows."""
    out = []
    for message in conversation:
        entry = {"role": message["role"], "content": message["content"]}
        if message.get("audios"):
            entry["audios"] = [
                {"audio": a["audio"].describe() if isinstance(a["audio"], AudioRef) else str(a["audio"]),
                 "text": a.get("text")}
                for a in message["audios"]
            ]
        out.append(entry)
    return out


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg}); fix or delete that line") from error
    return rows


def iter_jsonl_tolerant(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a predictions file that may end in a half-written line (an interrupted run): that line is skipped."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
