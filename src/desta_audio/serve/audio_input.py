"""Turn the audio a request carries into 16 kHz mono arrays, safely.

A request may carry audio inline only (base64 in `input_audio`, or a `data:` URL). Server-side paths and remote
URLs are refused unless the operator enabled them (`allowed_audio_dir`, `allow_audio_urls`), because a public
endpoint that opens any path or fetches any URL it is handed can read local files or reach internal services.

The header is read before anything is decoded, and decoding is bounded: a few hundred KB of compressed silence can
declare a huge sample rate and many channels and decode to gigabytes.
"""

from __future__ import annotations

import base64
import binascii
import io
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from desta_audio.audio import SAMPLE_RATE, AudioError, load_audio

# The duration limit bounds work only together with a bound on samples per second. 192 kHz is the top rate of studio
# gear and 8 channels is 7.1 surround: no recording someone asks a question about needs more, so a clip may decode
# to at most max_seconds x 192 kHz x 8 samples (the few that need more channels must be shorter), and rates above
# 192 kHz are refused outright (an absurd rate would let a short, tiny file decode to gigabytes).
MAX_SAMPLE_RATE = 192_000
MAX_CHANNEL_BUDGET = 8
_BLOCK_FRAMES = 1 << 16  # decoded and mixed to mono a block at a time, so channels never sit in memory all at once


@dataclass(frozen=True)
class AudioPolicy:
    max_seconds: float = 600.0
    max_bytes: int = 25 * 1024 * 1024
    allowed_dir: Path | None = None  # file:// URLs and paths only below this folder
    allow_urls: bool = False  # http(s) URLs fetched by the server


def decode_base64_audio(payload: str, fmt: str, policy: AudioPolicy, label: str) -> np.ndarray:
    try:
        # Line breaks are allowed: `base64` and MIME encoders wrap their output at 76 characters.
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise AudioError(f"{label}: input_audio.data is not valid base64; send the file bytes base64-encoded") from None
    return decode_audio_bytes(data, fmt, policy, label)


def decode_audio_url(url: str, policy: AudioPolicy, label: str) -> np.ndarray:
    scheme = urlparse(url).scheme.lower()
    if scheme == "data":
        header, _, payload = url.partition(",")
        if ";base64" not in header:
            raise AudioError(f"{label}: only base64 data URLs are supported (data:audio/wav;base64,...)")
        fmt = header[len("data:") :].split(";")[0].rpartition("/")[2] or "wav"
        return decode_base64_audio(payload, fmt, policy, label)
    if scheme in ("http", "https"):
        if not policy.allow_urls:
            raise AudioError(f"{label}: this server does not fetch audio URLs; send the audio inline as input_audio")
        return decode_audio_bytes(_fetch(url, policy, label), Path(urlparse(url).path).suffix.lstrip("."), policy, label)
    if scheme in ("file", ""):
        if policy.allowed_dir is None:
            raise AudioError(f"{label}: this server does not read server-side files; send the audio inline as input_audio")
        path = _inside(Path(unquote(urlparse(url).path) if scheme == "file" else url), policy.allowed_dir, label)
        check_file_header(path, policy.max_seconds, label)
        return load_audio(path, max_seconds=policy.max_seconds, name=label)
    raise AudioError(f"{label}: unsupported URL scheme {scheme!r}; send the audio inline as input_audio")


def decode_audio_bytes(data: bytes, fmt: str, policy: AudioPolicy, label: str) -> np.ndarray:
    if not data:
        raise AudioError(f"{label}: the audio is empty (0 bytes)")
    if len(data) > policy.max_bytes:
        raise AudioError(f"{label}: {len(data)} bytes is more than the {policy.max_bytes} byte limit")
    try:
        samples, rate = _decode_with_soundfile(data, policy.max_seconds, label)
    except _NotDecodable as error:
        # libsndfile covers wav/flac/ogg/mp3; ffmpeg (when installed) covers the rest (m4a, webm, aac...).
        if shutil.which("ffmpeg") is None:
            raise AudioError(
                f"{label}: cannot decode the {fmt or 'audio'} data ({error}); send wav, flac, ogg or mp3"
            ) from None
        samples, rate = _decode_with_ffmpeg(data, fmt, policy.max_seconds, label), SAMPLE_RATE
    return load_audio(samples, sample_rate=rate, max_seconds=policy.max_seconds, name=label)


class _NotDecodable(Exception):
    pass


def _decode_with_soundfile(data: bytes, max_seconds: float, label: str) -> tuple[np.ndarray, int]:
    """(mono samples at the clip's own rate, that rate); channels are averaged, as load_audio does."""
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as audio:
            _check_header(audio.samplerate, audio.channels, audio.frames, max_seconds, label)
            # A header may understate the length: stop decoding one block past what the limit allows.
            most_frames = int(max_seconds * audio.samplerate) + _BLOCK_FRAMES
            mono, decoded = [], 0
            for block in audio.blocks(blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True):
                mono.append(block.mean(axis=1, dtype=np.float32))
                decoded += len(block)
                if decoded > most_frames:
                    raise _too_long(decoded / audio.samplerate, max_seconds, label)
            return (np.concatenate(mono) if mono else np.zeros(0, np.float32)), audio.samplerate
    except AudioError:
        raise
    except Exception as error:  # libsndfile raises several types for bad input
        raise _NotDecodable(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)


def _check_header(rate: int, channels: int, frames: int, max_seconds: float, label: str) -> None:
    """Refuse, before decoding, a clip longer than the limit or bigger than the limit allows (see MAX_SAMPLE_RATE)."""
    if rate > MAX_SAMPLE_RATE:
        raise AudioError(f"{label}: the sample rate {rate} Hz is above this server's limit of {MAX_SAMPLE_RATE} Hz; "
                         "resample the clip (16 kHz is what the model uses)")
    if rate <= 0 or frames <= 0:
        return  # nothing declared: decoding itself is bounded
    if frames / rate > max_seconds:
        raise _too_long(frames / rate, max_seconds, label)
    most_samples = max_seconds * MAX_SAMPLE_RATE * MAX_CHANNEL_BUDGET
    if frames * channels > most_samples:
        raise AudioError(
            f"{label}: {channels} channels x {frames} frames is more audio data than this server's limit of "
            f"{most_samples:.0f} samples ({max_seconds:g} s x {MAX_SAMPLE_RATE} Hz x {MAX_CHANNEL_BUDGET} "
            "channels); mix it down to mono or stereo")


def check_file_header(path: Path, max_seconds: float, label: str) -> None:
    """Refuse, from its header, a file longer than the limit or bigger than it allows (the demo's uploads too)."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:  # not readable by libsndfile: load_audio says why
        return
    _check_header(info.samplerate, info.channels, info.frames, max_seconds, label)


def _too_long(seconds: float, max_seconds: float, label: str) -> AudioError:
    return AudioError(f"{label}: {seconds:.1f} s is longer than the {max_seconds:g} s limit")


def _decode_with_ffmpeg(data: bytes, fmt: str, max_seconds: float, label: str) -> np.ndarray:
    # Bounded whatever the input declares: ffmpeg streams, mixes to mono and resamples to 16 kHz as it decodes, and
    # stops after the limit, so its output is at most (max_seconds + 1) x 16 kHz samples.
    command = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", "pipe:0"]
    # Decode one second past the limit: enough to know the clip is too long without decoding all of it.
    command += ["-t", str(max_seconds + 1), "-f", "f32le", "-ac", "1", "-ar", str(SAMPLE_RATE), "pipe:1"]
    try:
        result = subprocess.run(command, input=data, capture_output=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        raise AudioError(f"{label}: decoding took too long; send a plain wav file") from None
    samples = np.frombuffer(result.stdout, dtype=np.float32)
    if result.returncode != 0 or samples.size == 0:
        raise AudioError(
            f"{label}: cannot decode the {fmt or 'audio'} data (not a valid audio file); send wav, flac, ogg or mp3"
        )
    return samples.copy()


def _inside(path: Path, root: Path, label: str) -> Path:
    resolved = (root / path).resolve() if not path.is_absolute() else path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise AudioError(f"{label}: the path is outside the folder this server may read audio from")
    return resolved


def _fetch(url: str, policy: AudioPolicy, label: str) -> bytes:
    import httpx

    try:
        with httpx.stream("GET", url, timeout=30.0, follow_redirects=False) as response:
            response.raise_for_status()
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > policy.max_bytes:
                    raise AudioError(f"{label}: the audio at the URL is larger than {policy.max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as error:
        raise AudioError(f"{label}: could not fetch the audio URL ({type(error).__name__})") from None
