"""Cheap checks of the audio a record points at: the file exists and its header reads (nothing is decoded)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from desta_audio.data.sources import SourceItem


class UnusableAudio(ValueError):
    """A clip's audio file is missing or not readable as audio; the message names the file and the reason."""


def audio_duration(path: str | Path) -> float:
    """Seconds of audio, from the file's header; UnusableAudio when it is missing, empty or not audio."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise UnusableAudio(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    if path.stat().st_size == 0:
        raise UnusableAudio(f"{path}: empty file")
    try:
        info = sf.info(str(path))
    except Exception as error:  # libsndfile's error types differ across versions; any failure means unreadable
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnusableAudio(f"{path}: not readable as audio ({reason})") from None
    if info.frames == 0:  # a valid header over no samples: nothing to hear or train on
        raise UnusableAudio(f"{path}: holds no audio samples")
    return info.duration


def unusable_audio_summary(items: Iterable[SourceItem], shown: int = 5) -> str | None:
    """One line naming the clips whose audio is missing or unreadable (None when all read), so a command can stop
    before any work instead of failing at the first bad clip."""
    checked: set[str] = set()
    unusable = []
    for item in items:
        if item.audio in checked:
            continue
        checked.add(item.audio)
        try:
            audio_duration(item.audio)
        except UnusableAudio as error:
            unusable.append(f"{item.dataset}/{item.id}: {error}")
    if not unusable:
        return None
    more = f" (and {len(unusable) - shown} more)" if len(unusable) > shown else ""
    return f"{len(unusable)} clip(s) have missing or unreadable audio: {'; '.join(unusable[:shown])}{more}"
