"""Turn the audio a request carries into 16 kHz mono arrays, safely.

A request may carry audio inline only (base64 in `input_audio`, or a `data:` URL). Server-side paths and remote
URLs are refused unless the operator enabled them (`allowed_audio_dir`, `allow_audio_urls`), because a public
endpoint that opens any path or fetches any URL it is handed can read local files or reach internal services.
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


@dataclass(frozen=True)
class AudioPolicy:
    max_seconds: float = 600.0
    max_bytes: int = 25 * 1024 * 1024
    allowed_dir: Path | None = None  # file:// URLs and paths only below this folder
    allow_urls: bool = False  # http(s) URLs fetched by the server


def decode_base64_audio(payload: str, fmt: str, policy: AudioPolicy, label: str) -> np.ndarray:
    try:
        data = base64.b64decode(payload, validate=True)
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
        path = Path(unquote(urlparse(url).path) if scheme == "file" else url)
        return load_audio(_inside(path, policy.allowed_dir, label), max_seconds=policy.max_seconds, name=label)
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
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as audio:
            # Check the header's duration before decoding, so a huge clip is refused without being decoded.
            if audio.samplerate > 0 and audio.frames > 0 and audio.frames / audio.samplerate > max_seconds:
                raise AudioError(
                    f"{label}: {audio.frames / audio.samplerate:.1f} s is longer than the {max_seconds:.0f} s limit"
                )
            samples = audio.read(dtype="float32", always_2d=True)
            return samples, audio.samplerate
    except AudioError:
        raise
    except Exception as error:  # libsndfile raises several types for bad input
        raise _NotDecodable(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)


def _decode_with_ffmpeg(data: bytes, fmt: str, max_seconds: float, label: str) -> np.ndarray:
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
