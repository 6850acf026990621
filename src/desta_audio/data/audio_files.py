"""Cheap checks of the audio a record points at: the file exists and its header reads (nothing is decoded)."""

from __future__ import annotations

from pathlib import Path


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
    return info.duration
