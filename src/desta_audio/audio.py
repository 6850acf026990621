"""Audio input: decode, check, mix to mono, resample to 16 kHz, cut into encoder windows.

Every geometry constant is named once here and derived from the others.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Union

import numpy as np

SAMPLE_RATE = 16_000  # Whisper's input rate
WINDOW_SECONDS = 30  # Whisper's receptive field: one encoder pass
WINDOW_SAMPLES = SAMPLE_RATE * WINDOW_SECONDS
DEFAULT_MAX_SECONDS = 20 * 60.0  # refuse longer input unless the caller raises the limit

AudioSource = Union[str, Path, np.ndarray]


class AudioError(ValueError):
    """Audio that cannot be used, with the reason and what to do about it."""


def load_audio(
    source: AudioSource,
    sample_rate: int | None = None,
    *,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    name: str | None = None,
) -> np.ndarray:
    """Return float32 mono audio at 16 kHz.

    `source` is a file path (wav, flac, ogg, mp3: whatever libsndfile decodes) or a numpy array of shape
    (samples,) or (samples, channels). An array is taken to be at `sample_rate` (default 16 kHz).
    """
    label = name or (str(source) if not isinstance(source, np.ndarray) else "audio array")
    if isinstance(source, np.ndarray):
        rate = sample_rate or SAMPLE_RATE
        data = source
    else:
        data, rate = _read_file(Path(source), max_seconds)
    return _normalise(data, rate, label, max_seconds)


def _read_file(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if not path.exists():
        raise AudioError(f"{path}: no such audio file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: the file is empty (0 bytes)")
    try:
        info = sf.info(str(path))
    except Exception as error:  # libsndfile's messages are terse; say what we tried
        reason = _first_line(error)
        if "does not exist" in reason:  # libsndfile's words for a file it could not parse (e.g. text named .mp3)
            reason = "not a recognised audio format, or corrupt"
        raise AudioError(
            f"{path}: cannot decode as audio ({reason}); "
            "supported: wav, flac, ogg/vorbis/opus, mp3; convert other formats with ffmpeg or sox"
        ) from None
    if info.samplerate <= 0 or info.frames <= 0:
        raise AudioError(f"{path}: contains no audio samples")
    _check_duration(info.frames / info.samplerate, str(path), max_seconds)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:
        raise AudioError(f"{path}: the file is corrupt or truncated ({_first_line(error)})") from None
    return data, rate


def _normalise(data: np.ndarray, rate: int, label: str, max_seconds: float | None) -> np.ndarray:
    if rate <= 0:
        raise AudioError(f"{label}: sample rate must be positive, got {rate}")
    data = np.asarray(data)
    if data.dtype.kind not in "fiu":
        raise AudioError(f"{label}: expected numeric samples, got dtype {data.dtype}")
    if data.ndim == 2:
        data = data.astype(np.float32).mean(axis=1)  # (samples, channels) -> mono
    elif data.ndim != 1:
        raise AudioError(f"{label}: expected shape (samples,) or (samples, channels), got {data.shape}")
    if data.dtype.kind in "iu":
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    data = data.astype(np.float32, copy=False)
    if data.size == 0:
        raise AudioError(f"{label}: contains no audio samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{label}: contains NaN or infinite samples; the decoder or upstream processing is broken")
    _check_duration(data.size / rate, label, max_seconds)
    if rate != SAMPLE_RATE:
        import soxr

        data = soxr.resample(data, rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
    return data


def _check_duration(seconds: float, label: str, max_seconds: float | None) -> None:
    if max_seconds is not None and seconds > max_seconds:
        raise AudioError(
            f"{label}: {seconds:.1f} s is longer than the {max_seconds:.0f} s limit; "
            "cut it, or raise the limit (max_seconds / --max-audio-seconds)"
        )


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def duration_seconds(audio: np.ndarray) -> float:
    return audio.size / SAMPLE_RATE


def num_windows(audio: np.ndarray) -> int:
    """How many 30 s encoder windows the clip needs (at least one)."""
    return max(1, math.ceil(audio.size / WINDOW_SAMPLES))


def split_windows(audio: np.ndarray) -> list[np.ndarray]:
    """Cut a clip into consecutive 30 s windows; the last one is shorter (the feature extractor pads it)."""
    return [audio[start : start + WINDOW_SAMPLES] for start in range(0, max(audio.size, 1), WINDOW_SAMPLES)]
