"""Annotators for audio without labels: each small, pluggable, versioned, and cached per file.

| annotator | writes | how |
|---|---|---|
| duration | duration (s) | sample count |
| vad      | speech_segments [[start, end], ...], speech_seconds | Silero VAD (packaged, offline) |
| asr      | text, language | Whisper (the packaged base model by default), greedy |
| loudness | volume_dbfs, volume | RMS level of the speech parts (dBFS) |
| pitch    | f0_median_hz, pitch | YIN F0 over voiced frames of the speech parts, median |
| rate     | speech_rate_wps, speaking_speed | words of the transcript / seconds of speech |
| snr      | snr_db, noise_level | power of speech parts vs the non-speech parts (VAD), else frame percentiles |

Where VAD hears no speech and the source gives no transcript (a sound, music), the speaker's attributes (pitch,
volume, speaking speed) are left out of `attributes`; their measurements stay as columns.

Category thresholds (`VOLUME_BANDS`...) were calibrated with `python -m desta_audio.data.calibrate` on espeak-ng
speech rendered at known amplitude, pitch, speed and mixed with noise at known SNR; see README "Data".
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from desta_audio.audio import SAMPLE_RATE, load_audio
from desta_audio.data.sources import DEFAULT_ATTRIBUTES, SourceItem

logger = logging.getLogger(__name__)

# (upper bound, label): the first band whose bound exceeds the value wins.
VOLUME_BANDS = [(-36.0, "Very low"), (-28.0, "Low"), (-18.0, "Normal"), (-15.0, "High"), (float("inf"), "Very high")]
PITCH_BANDS = [(100.0, "Very low"), (140.0, "Low"), (200.0, "Normal"), (270.0, "High"), (float("inf"), "Very high")]
SPEED_BANDS = [(2.0, "Very slow"), (2.8, "Slow"), (3.9, "Normal"), (4.8, "Fast"), (float("inf"), "Very fast")]
NOISE_BANDS = [(5.0, "Very high"), (12.0, "High"), (20.0, "Medium"), (30.0, "Low"), (float("inf"), "Very low")]

F0_MIN, F0_MAX = 60.0, 500.0
_FRAME = 1024  # 64 ms at 16 kHz: room for two periods of the lowest F0
_HOP = 160  # 10 ms
_SNR_CAP_DB = 60.0  # digital silence would give infinity


def band(value: float, bands: Sequence[tuple[float, str]]) -> str:
    return next(label for bound, label in bands if value < bound)


# --- signal measures (pure functions, tested directly) -------------------------------------------------------


def dbfs(samples: np.ndarray) -> float:
    """RMS level in dB relative to a full-scale square wave."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
    return 20 * np.log10(max(rms, 1e-10))


def yin_f0(audio: np.ndarray, rate: int = SAMPLE_RATE, threshold: float = 0.15) -> np.ndarray:
    """F0 (Hz) of each voiced 64 ms frame (YIN: cumulative-mean-normalised difference); unvoiced frames dropped."""
    tau_min, tau_max = int(rate / F0_MAX), int(rate / F0_MIN)
    window = _FRAME - tau_max
    if audio.size < _FRAME:
        return np.zeros(0)
    starts = np.arange(0, audio.size - _FRAME + 1, _HOP)
    frames = np.stack([audio[s : s + _FRAME] for s in starts]).astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    loud = max(dbfs(audio) - 30, -70.0)  # frames far below the clip's level (or near silence) are not voice
    frames = frames[[dbfs(f) > loud for f in frames]]
    if not len(frames):
        return np.zeros(0)
    size = 1 << int(np.ceil(np.log2(2 * _FRAME)))
    spectrum = np.fft.rfft(frames, size)
    head = np.fft.rfft(frames[:, :window], size)
    correlation = np.fft.irfft(np.conj(head) * spectrum, size)[:, : tau_max + 1]  # r(tau) = sum x_j x_{j+tau}
    energy = np.cumsum(np.square(frames), axis=1)
    energy = np.concatenate([np.zeros((len(frames), 1)), energy], axis=1)
    taus = np.arange(tau_max + 1)
    shifted_energy = energy[:, taus + window] - energy[:, taus]
    difference = energy[:, [window]] + shifted_energy - 2 * correlation
    cumulative = np.cumsum(difference[:, 1:], axis=1) / np.arange(1, tau_max + 1)
    normalised = np.ones_like(difference)
    normalised[:, 1:] = difference[:, 1:] / np.maximum(cumulative, 1e-12)
    f0 = []
    for row in normalised:
        below = np.nonzero(row[tau_min:] < threshold)[0]
        if not below.size:
            continue
        tau = tau_min + below[0]
        while tau + 1 < row.size and row[tau + 1] < row[tau]:  # walk down to the local minimum
            tau += 1
        if 0 < tau < row.size - 1:  # parabolic interpolation for sub-sample precision
            a, b, c = row[tau - 1], row[tau], row[tau + 1]
            tau = tau + 0.5 * (a - c) / max(a - 2 * b + c, 1e-12)
        f0.append(rate / tau)
    return np.array([f for f in f0 if F0_MIN <= f <= F0_MAX])


def speech_mask(size: int, segments: Sequence[Sequence[float]], rate: int = SAMPLE_RATE) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    for start, end in segments:
        mask[int(start * rate) : int(end * rate)] = True
    return mask


def estimate_snr(audio: np.ndarray, segments: Sequence[Sequence[float]] | None, rate: int = SAMPLE_RATE) -> float:
    """SNR in dB: speech-part power over non-speech power (VAD), or loud vs quiet frames without enough pauses."""
    mask = speech_mask(audio.size, segments or [], rate)
    power = np.square(audio.astype(np.float64))
    if mask.any() and (~mask).sum() >= 0.2 * rate:
        # Median frame power of the pauses: VAD margins often hold speech onsets, which a mean would count as noise.
        pauses = power[~mask]
        pauses = pauses[: pauses.size // _HOP * _HOP].reshape(-1, _HOP).mean(axis=1)
        signal_and_noise, noise = power[mask].mean(), float(np.median(pauses))
    else:
        frames = power[: power.size // _HOP * _HOP].reshape(-1, _HOP).mean(axis=1)
        if frames.size < 10:
            return _SNR_CAP_DB
        noise, signal_and_noise = np.percentile(frames, 10), np.percentile(frames, 90)
    if noise <= 1e-12:
        return _SNR_CAP_DB
    return float(min(_SNR_CAP_DB, 10 * np.log10(max(signal_and_noise - noise, 1e-12) / noise)))


# --- annotators ----------------------------------------------------------------------------------------------


@dataclass
class Clip:
    """What annotators see: the audio and the annotations made so far (source metadata included)."""

    audio: np.ndarray
    fields: dict[str, Any]

    def speech(self) -> np.ndarray:
        segments = self.fields.get("speech_segments")
        if not segments:
            return self.audio
        return self.audio[speech_mask(self.audio.size, segments)]


class Annotator:
    name = "annotator"
    version = "1"
    needs: tuple[str, ...] = ()  # annotators that must run first

    def __call__(self, clip: Clip) -> dict[str, Any]:
        raise NotImplementedError


class DurationAnnotator(Annotator):
    name = "duration"

    def __call__(self, clip: Clip) -> dict[str, Any]:
        return {"duration": round(clip.audio.size / SAMPLE_RATE, 3)}


class VadAnnotator(Annotator):
    name = "vad"

    def __init__(self) -> None:
        self._model = None

    def __call__(self, clip: Clip) -> dict[str, Any]:
        from desta_audio.vad import load_vad, speech_timestamps

        if self._model is None:
            self._model = load_vad()
        stamps = speech_timestamps(clip.audio, self._model, seconds=True)
        segments = [[round(float(s["start"]), 2), round(float(s["end"]), 2)] for s in stamps]
        return {"speech_segments": segments, "speech_seconds": round(sum(e - s for s, e in segments), 2)}


class LoudnessAnnotator(Annotator):
    name = "loudness"
    needs = ("vad",)

    def __call__(self, clip: Clip) -> dict[str, Any]:
        level = dbfs(clip.speech())
        return {"volume_dbfs": round(float(level), 1), "volume": band(level, VOLUME_BANDS)}


class PitchAnnotator(Annotator):
    name = "pitch"
    needs = ("vad",)

    def __call__(self, clip: Clip) -> dict[str, Any]:
        f0 = yin_f0(clip.speech())
        if f0.size < 5:  # too few voiced frames to say anything
            return {"f0_median_hz": None}
        median = float(np.median(f0))
        return {"f0_median_hz": round(median, 1), "pitch": band(median, PITCH_BANDS)}


class SnrAnnotator(Annotator):
    name = "snr"
    needs = ("vad",)

    def __call__(self, clip: Clip) -> dict[str, Any]:
        snr = estimate_snr(clip.audio, clip.fields.get("speech_segments"))
        return {"snr_db": round(snr, 1), "noise_level": band(snr, NOISE_BANDS)}


class RateAnnotator(Annotator):
    """Words per second of speech; needs a transcript (from the source or `asr`) and VAD speech time."""

    name = "rate"
    needs = ("vad",)

    def __call__(self, clip: Clip) -> dict[str, Any]:
        text = clip.fields.get("text") or ""
        seconds = clip.fields.get("speech_seconds") or 0.0
        words = len(text.split())
        if words < 2 or seconds < 0.5:
            return {"speech_rate_wps": None}
        rate = words / seconds
        return {"speech_rate_wps": round(rate, 2), "speaking_speed": band(rate, SPEED_BANDS)}


class AsrAnnotator(Annotator):
    """Whisper transcript and detected language (greedy, no timestamps); skipped when VAD finds no speech."""

    name = "asr"
    needs = ("vad",)

    def __init__(self, whisper: str | None = None) -> None:
        self.whisper = whisper
        self._model = None
        self._processor = None
        self.version = f"1:{Path(whisper).name if whisper else 'whisper-base'}"

    def _load(self) -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        from desta_audio.few_rows_linear import use_few_rows_linear

        folder = self.whisper
        if folder is None:
            from desta_audio import zoo

            folder = str(zoo.prepare_whisper("whisper-base"))
        self._processor = WhisperProcessor.from_pretrained(folder)
        self._model = use_few_rows_linear(WhisperForConditionalGeneration.from_pretrained(folder).eval())

    def __call__(self, clip: Clip) -> dict[str, Any]:
        from desta_audio.whisper_asr import transcribe_encoded, whisper_encode

        if clip.fields.get("speech_segments") == []:
            return {"text": "", "language": None}
        if self._model is None:
            self._load()
        features = self._processor(clip.audio[: 30 * SAMPLE_RATE], sampling_rate=SAMPLE_RATE, return_tensors="pt")
        heard = transcribe_encoded(self._model, self._processor.tokenizer,
                                   whisper_encode(self._model, features.input_features), max_new_tokens=128)[0]
        language = heard.language
        return {"text": heard.text, "language": LANGUAGE_NAMES.get(language, language) if language else None}


LANGUAGE_NAMES = {
    "en": "English", "fr": "French", "es": "Spanish", "de": "German", "it": "Italian", "pt": "Portuguese",
    "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "ru": "Russian", "ar": "Arabic", "hi": "Hindi",
    "nl": "Dutch", "tr": "Turkish", "vi": "Vietnamese", "id": "Indonesian", "pl": "Polish", "sv": "Swedish",
}  # fmt: skip

ANNOTATORS: dict[str, type[Annotator]] = {
    cls.name: cls
    for cls in (DurationAnnotator, VadAnnotator, AsrAnnotator, LoudnessAnnotator, PitchAnnotator, RateAnnotator,
                SnrAnnotator)  # fmt: skip
}


def build_annotators(names: Sequence[str], whisper: str | None = None) -> list[Annotator]:
    """Instances in dependency order (VAD before what needs speech segments, ASR before rate)."""
    unknown = [n for n in names if n not in ANNOTATORS]
    if unknown:
        raise ValueError(f"unknown annotators {unknown}; choose from {', '.join(ANNOTATORS)}")
    wanted = set(names)
    for name in list(wanted):
        wanted.update(ANNOTATORS[name].needs)
    order = [n for n in ANNOTATORS if n in wanted]  # ANNOTATORS is already in dependency order
    return [AsrAnnotator(whisper) if n == "asr" else ANNOTATORS[n]() for n in order]


class AnnotationCache:
    """sqlite cache: (path, size, mtime, annotator, version) -> JSON result. Changing the file invalidates it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS annotations (path TEXT, size INTEGER, mtime_ns INTEGER, annotator TEXT, "
            "version TEXT, result TEXT, PRIMARY KEY (path, size, mtime_ns, annotator, version))"
        )
        self.hits = 0

    def __enter__(self) -> AnnotationCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self._db.commit()
        self._db.close()

    @staticmethod
    def _file_key(audio: str) -> tuple[str, int, int]:
        stat = Path(audio).stat()
        return str(Path(audio).resolve()), stat.st_size, stat.st_mtime_ns

    def get(self, audio: str, annotator: Annotator) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT result FROM annotations WHERE path=? AND size=? AND mtime_ns=? AND annotator=? AND version=?",
            (*self._file_key(audio), annotator.name, annotator.version),
        ).fetchone()
        if row:
            self.hits += 1
        return json.loads(row[0]) if row else None

    def put(self, audio: str, annotator: Annotator, result: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO annotations VALUES (?, ?, ?, ?, ?, ?)",
            (*self._file_key(audio), annotator.name, annotator.version, json.dumps(result)),
        )
        self._db.commit()


# Annotation fields that are description attributes, named as the default mapping names them (in its order).
_ATTRIBUTE_FIELDS = {column: name for column, name in DEFAULT_ATTRIBUTES.items()
                     if column in ("pitch", "volume", "speaking_speed", "language", "noise_level")}  # fmt: skip
# Annotation fields with a place of their own in a `describe`-shaped row.
_ROW_FIELDS = {"text": "transcript", "duration": "duration"}
# A speaker's attributes: not given to a clip where VAD heard no speech and the source has no transcript (a beep's
# YIN pitch or a song's level is not a speaker's). Their measurements stay as columns.
_SPEAKER_FIELDS = ("pitch", "volume", "speaking_speed")


def annotate_item(
    item: SourceItem, annotators: Sequence[Annotator], cache: AnnotationCache | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """A manifest row for the clip in the shape `describe` writes, so every attribute survives by name whatever
    mapping reads it next: the source's attributes plus those annotated (source metadata wins unless overwrite)
    in `attributes`, and each annotator's measurements (`volume_dbfs`, `speech_segments`...) as columns."""
    row = item.to_row()
    attributes: dict[str, str] = row["attributes"]
    annotated: dict[str, Any] = {}
    audio: np.ndarray | None = None
    fields: dict[str, Any] = {"text": item.transcript, "duration": item.duration}  # what later annotators read
    for annotator in annotators:
        result = cache.get(item.audio, annotator) if cache else None
        if result is None:
            if audio is None:
                audio = load_audio(item.audio)
            result = annotator(Clip(audio, fields))
            if cache:
                cache.put(item.audio, annotator, result)
        annotated.update(result)
        fields.update({k: v for k, v in result.items() if overwrite or fields.get(k) in (None, "")})
    for key, value in annotated.items():
        if key in _ROW_FIELDS:
            if overwrite or row[_ROW_FIELDS[key]] in (None, ""):
                row[_ROW_FIELDS[key]] = value
        elif key not in _ATTRIBUTE_FIELDS:
            row[key] = value
    no_speaker = annotated.get("speech_segments") == [] and not (item.transcript or "").strip()
    for key, name in _ATTRIBUTE_FIELDS.items():
        if no_speaker and key in _SPEAKER_FIELDS:
            continue
        if annotated.get(key) is not None and (overwrite or name not in attributes):
            attributes[name] = annotated[key]
    return row
