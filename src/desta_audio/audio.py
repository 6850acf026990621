"""Audio input: decode, check, mix to mono, resample to 16 kHz, cut into encoder windows.

Every geometry constant is named once here and derived from the others.
"""

from __future__ import annotations

import io
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

SAMPLE_RATE = 16_000  # Whisper's input rate
WINDOW_SECONDS = 30  # Whisper's receptive field: one encoder pass
WINDOW_SAMPLES = SAMPLE_RATE * WINDOW_SECONDS
DEFAULT_MAX_SECONDS = 20 * 60.0  # refuse longer input unless the caller raises the limit
MAX_CHANNELS = 64  # more is a mistaken layout, not a recording
# Floats a little over full scale are ordinary hot mixes; far beyond it they are mis-scaled integers or garbage, which
# Whisper's log-mel normalisation turns into nonsense (and past ~1e16 into inf in float32 spectra).
MAX_FLOAT_PEAK = 1000.0
DECODED_SHORTFALL = 0.01  # a file decoding to this fraction fewer frames than it declares is taken as cut
UNKNOWN_FRAMES = 2**62  # libsndfile's frame count for a stream whose length is not stored (its largest count)
DECODE_BLOCK_FRAMES = 2**20  # read unit for files of unknown length (4 MB per channel)

AudioSource = Union[str, Path, np.ndarray]
# What to do with the array-like types people hand in most often.
_ARRAY_HINTS = {"Tensor": " (use tensor.numpy())", "list": " (use np.asarray(samples, dtype=np.float32))",
                "tuple": " (use np.asarray(samples, dtype=np.float32))"}


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

    `source` is a file path (wav, flac, ogg, mp3: whatever libsndfile decodes) or a numpy array at `sample_rate`
    (a positive integer; default 16 kHz; a file carries its own rate, so giving one with a path is an error).
    An array is (samples,) or (samples, channels), soundfile's layout. A 2-D array whose second dimension is the
    longer one is taken as (channels, samples), the layout of librosa and torchaudio, since real audio has more
    samples than channels; more than MAX_CHANNELS channels is refused. Integer samples are scaled to [-1, 1] by
    their type's range, then the channels are averaged.

    Unusable input (missing, corrupt or truncated file, NaN samples, longer than `max_seconds` (None: no limit))
    raises AudioError, whose message starts with `name` (default: the path, or "audio array").
    """
    if not isinstance(source, (str, os.PathLike, np.ndarray)):
        raise AudioError(f"{name or 'audio'}: expected a file path or a numpy array, got {type(source).__name__}"
                         f"{_ARRAY_HINTS.get(type(source).__name__, '')}")
    if isinstance(source, str) and not source.strip():  # Path("") is the current folder
        raise AudioError(f"{name or 'audio'}: the file path is empty")
    label = name or (str(source) if not isinstance(source, np.ndarray) else "audio array")
    if isinstance(source, np.ndarray):
        rate = SAMPLE_RATE if sample_rate is None else _checked_rate(sample_rate, label)
        data = source
    else:
        if sample_rate is not None:
            raise AudioError(f"{label}: a sample rate ({sample_rate}) applies to arrays only; a file carries its own")
        data, rate = _read_file(Path(source), max_seconds)
    return _normalise(data, rate, label, max_seconds)


def _checked_rate(rate: object, label: str) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise AudioError(f"{label}: sample rate must be a positive integer (Hz), got {rate!r}")
    return int(rate)


def _read_file(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if not path.exists():
        hint = "; audio is read from files only, not from standard input" if str(path) == "-" else ""
        raise AudioError(f"{path}: no such audio file{hint}")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    if not path.is_file():  # its size would read as 0, and a stream cannot be measured before it is decoded
        raise AudioError(f"{path}: not a regular file (a pipe or a device); save the audio to a file and give that")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: the file is empty (0 bytes)")
    try:  # libsndfile reports a file it may not read as "System error", which reads as a format problem
        with open(path, "rb"):
            pass
    except OSError as error:
        raise AudioError(f"{path}: cannot read the file ({error.strerror or error}); check its permissions") from None
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
    data_chunk = _riff_data_chunk(path) if info.format in ("WAV", "WAVEX") else None
    if data_chunk is not None:  # libsndfile counts a WAV's frames from the file size, so a cut file looks whole
        _check_riff_complete(path, data_chunk)
    if data_chunk is not None and data_chunk.declared == 0 and info.frames == 0:
        return _read_unsized_wav(path, data_chunk, info, max_seconds)
    if info.samplerate <= 0 or info.frames <= 0:
        raise AudioError(f"{path}: contains no audio samples")
    if not _length_is_declared(path, info):
        return _read_undeclared_length(path, max_seconds)
    _check_duration(info.frames / info.samplerate, str(path), max_seconds)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:
        raise AudioError(f"{path}: the file is corrupt or truncated ({_first_line(error)})") from None
    # Compressed formats (mp3 with a length header, for one) declare more frames than a cut file decodes to. The
    # slack allows for decoders whose declared length is an estimate.
    if len(data) < info.frames * (1 - DECODED_SHORTFALL):
        raise _truncated(path, info.frames / rate, len(data) / rate)
    return data, rate


def _length_is_declared(path: Path, info: Any) -> bool:
    """Whether libsndfile's frame count comes from the file rather than a guess. A FLAC written to a pipe leaves
    its total unset (libsndfile then reports the largest count it has), and an mp3 without a Xing/Info/VBRI header
    gets a length estimated from its size and first frame, far off for variable bit rates."""
    if info.frames >= UNKNOWN_FRAMES:
        return False
    if info.format != "MP3":
        return True
    with path.open("rb") as stream:
        head = stream.read(10)
        if head[:3] == b"ID3" and len(head) == 10:  # skip the ID3v2 tag; its size is stored 7 bits a byte
            size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
            stream.seek(10 + size + (10 if head[5] & 0x10 else 0))
        else:
            stream.seek(0)
        data = stream.read(8192)
    start = next((i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] & 0xE0 == 0xE0), None)
    # The header sits in the first frame, after its side information (at most 32 bytes; VBRI at a fixed 32).
    window = data[start + 4:start + 64] if start is not None else b""
    return any(tag in window for tag in (b"Xing", b"Info", b"VBRI"))


def _read_undeclared_length(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Decode a file of unknown length in blocks, refusing it once past the limit, so it is never read whole."""
    import soundfile as sf

    blocks: list[np.ndarray] = []
    frames = 0
    try:
        with sf.SoundFile(str(path)) as stream:
            rate = stream.samplerate
            while True:
                block = np.full((DECODE_BLOCK_FRAMES, stream.channels), np.nan, np.float32)
                try:
                    block = stream.read(dtype="float32", always_2d=True, out=block)
                except RuntimeError:
                    # At the end of a FLAC of unknown length libsndfile decodes the last samples, then fails to seek
                    # past them: they are the rows before the first unfilled (NaN) one. A full block is an error.
                    unfilled = np.isnan(block[:, 0])
                    if not unfilled.any():
                        raise
                    blocks.append(block[:unfilled.argmax()])
                    frames += len(blocks[-1])
                    break
                if not len(block):
                    break
                blocks.append(block)
                frames += len(block)
                _check_duration(frames / rate, str(path), max_seconds, at_least=True)
    except AudioError:
        raise
    except Exception as error:
        raise AudioError(f"{path}: the file is corrupt or truncated ({_first_line(error)})") from None
    _check_duration(frames / rate, str(path), max_seconds, at_least=True)
    if not frames:
        raise AudioError(f"{path}: contains no audio samples")
    return np.concatenate(blocks), rate


@dataclass(frozen=True)
class _DataChunk:
    offset: int  # of the first sample
    declared: int  # bytes, as the header says
    held: int  # bytes present in the file
    byte_rate: int  # from the fmt chunk


def _riff_data_chunk(path: Path) -> _DataChunk | None:
    """Where a RIFF/WAVE file's samples start and how many bytes it declares and holds (None when not found)."""
    with path.open("rb") as stream:
        head = stream.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None  # RIFX, RF64 or something else libsndfile reads its own way
        byte_rate = 0
        while len(chunk := stream.read(8)) == 8:
            chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            start = stream.tell()
            if chunk_id == b"fmt " and len(fields := stream.read(16)) == 16:
                byte_rate = struct.unpack("<HHIIHH", fields)[3]
            elif chunk_id == b"data":
                return _DataChunk(start, size, path.stat().st_size - start, byte_rate)
            stream.seek(start + size + (size & 1))  # chunks are padded to an even length
    return None


def _check_riff_complete(path: Path, chunk: _DataChunk) -> None:
    """Refuse a WAV whose data chunk is shorter than its header declares. A declared size of 0 or 0xFFFFFFFF
    (streaming writers that never went back to fill it in) means unknown, and is accepted."""
    if chunk.declared in (0, 0xFFFFFFFF) or chunk.held >= chunk.declared or chunk.byte_rate <= 0:
        return
    raise _truncated(path, chunk.declared / chunk.byte_rate, chunk.held / chunk.byte_rate)


def _read_unsized_wav(path: Path, chunk: _DataChunk, info: Any, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """A WAV whose writer never filled in the data size: libsndfile sees no frames, so read what follows as raw."""
    import soundfile as sf

    if chunk.held <= 0 or chunk.byte_rate <= 0:
        raise AudioError(f"{path}: contains no audio samples")
    _check_duration(chunk.held / chunk.byte_rate, str(path), max_seconds)
    with path.open("rb") as stream:
        stream.seek(chunk.offset)
        samples = io.BytesIO(stream.read())  # libsndfile would read a file object from its start, header and all
    data, rate = sf.read(samples, format="RAW", subtype=info.subtype, samplerate=info.samplerate,
                         channels=info.channels, endian="LITTLE", dtype="float32", always_2d=True)
    return data, rate


def _truncated(path: Path, declared: float, held: float) -> AudioError:
    return AudioError(f"{path}: truncated: header declares {declared:.2f} s, file holds {held:.2f} s; "
                      "re-export or re-download it")


def _to_float(data: np.ndarray) -> np.ndarray:
    """Integer PCM -> float32 in [-1, 1] (unsigned PCM is centred on half its range); floats pass as they are."""
    if data.dtype.kind == "f":
        return data.astype(np.float32, copy=False)
    info = np.iinfo(data.dtype)
    half = (int(info.max) - int(info.min) + 1) / 2
    centre = 0 if data.dtype.kind == "i" else half
    return ((data.astype(np.float64) - centre) / half).astype(np.float32)


def _normalise(data: np.ndarray, rate: int, label: str, max_seconds: float | None) -> np.ndarray:
    if rate <= 0:
        raise AudioError(f"{label}: sample rate must be positive, got {rate}")
    data = np.asarray(data)
    if data.dtype.kind not in "fiu":
        raise AudioError(f"{label}: expected numeric samples, got dtype {data.dtype}")
    if data.dtype.kind in "iu" and data.dtype.itemsize > 4:
        # No PCM format has 64-bit samples: such an array is int16/int32 PCM widened by numpy (np.array of a list of
        # ints), and scaling it by the 64-bit range would turn it into silence.
        raise AudioError(f"{label}: {data.dtype} samples; give int16 or int32 PCM (e.g. samples.astype(np.int16)) "
                         "or float32 in [-1, 1]")
    if data.ndim == 2:
        if data.shape[1] > data.shape[0]:  # (channels, samples): see load_audio
            data = data.T
        if data.shape[1] > MAX_CHANNELS:
            raise AudioError(f"{label}: shape {data.shape} would be {data.shape[1]} channels (at most "
                             f"{MAX_CHANNELS}); give (samples,) or (samples, channels)")
        data = _to_float(data).mean(axis=1)  # scaled first: the mean of integers is a float and would pass unscaled
    elif data.ndim != 1:
        raise AudioError(f"{label}: expected shape (samples,) or (samples, channels), got {data.shape}")
    data = _to_float(data)
    if data.size == 0:
        raise AudioError(f"{label}: contains no audio samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{label}: contains NaN or infinite samples; the decoder or upstream processing is broken")
    peak = float(np.abs(data).max())
    if peak > MAX_FLOAT_PEAK:
        raise AudioError(f"{label}: samples reach {peak:.3g}; float audio should lie within [-1, 1] (integer PCM "
                         "stored as floats? divide by its full scale, e.g. 32768)")
    _check_duration(data.size / rate, label, max_seconds)
    if rate != SAMPLE_RATE:
        import soxr

        data = soxr.resample(data, rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
    return data


def _check_duration(seconds: float, label: str, max_seconds: float | None, *, at_least: bool = False) -> None:
    """at_least: `seconds` is what was decoded before stopping, not the whole length."""
    if max_seconds is not None and seconds > max_seconds:
        raise AudioError(
            f"{label}: {'at least ' if at_least else ''}{seconds:.1f} s is longer than the {max_seconds:.0f} s limit; "
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
