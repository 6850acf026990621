"""Calibrate the annotators' category thresholds on real speech with known attributes.

    python -m desta_audio.data.calibrate [--out calibration.md]

Renders a sentence with espeak-ng (Debian package `espeak-ng`) while varying one control at a time: amplitude
(`-a`), pitch (`-p`, male and female voices), speed (`-s`, words per minute), and white noise mixed at a known SNR;
then runs the annotators and prints what they measure and the category they assign, as Markdown tables.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from desta_audio.audio import SAMPLE_RATE, load_audio
from desta_audio.data.annotate import (
    NOISE_BANDS,
    PITCH_BANDS,
    SPEED_BANDS,
    VOLUME_BANDS,
    Clip,
    LoudnessAnnotator,
    PitchAnnotator,
    RateAnnotator,
    SnrAnnotator,
    VadAnnotator,
)

SENTENCE = "The quick brown fox jumps over the lazy dog while the children watch from the old wooden bridge."


def espeak(text: str, path: Path, *args: str) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    subprocess.run(["espeak-ng", *args, "-w", str(path), text], check=True, capture_output=True)
    return load_audio(str(path))


def with_noise(speech: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """Speech padded with 0.5 s of silence each side, plus white noise at `snr_db` relative to the speech power."""
    pad = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    padded = np.concatenate([pad, speech, pad])
    speech_power = float(np.mean(speech.astype(np.float64) ** 2))
    noise = np.random.default_rng(seed).standard_normal(padded.size) * np.sqrt(speech_power / 10 ** (snr_db / 10))
    return (padded + noise).astype(np.float32)


def measure(audio: np.ndarray, text: str = SENTENCE) -> dict:
    fields: dict = {"text": text}
    for annotator in (VadAnnotator(), LoudnessAnnotator(), PitchAnnotator(), RateAnnotator(), SnrAnnotator()):
        fields.update(annotator(Clip(audio, fields)))
    return fields


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"#### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _bands(bands) -> str:
    return ", ".join(f"< {bound:g}: {label}" if bound != float("inf") else f"above: {label}" for bound, label in bands)


def calibrate() -> str:
    vad = VadAnnotator()
    out = []
    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "clip.wav"
        rows = []
        for amplitude in (10, 25, 50, 100, 150, 200):
            fields = measure(espeak(SENTENCE, wav, "-a", str(amplitude)))
            rows.append([f"-a {amplitude}", f"{fields['volume_dbfs']:.1f}", fields["volume"]])
        out.append(_table("Volume (speech RMS, dBFS)", ["espeak-ng", "measured dBFS", "category"], rows))
        rows = []
        for voice in ("en+m3", "en+f3"):
            for pitch in (0, 25, 50, 75, 99):
                fields = measure(espeak(SENTENCE, wav, "-v", voice, "-p", str(pitch)))
                rows.append([f"-v {voice} -p {pitch}", f"{fields['f0_median_hz']}", fields.get("pitch", "-")])
        out.append(_table("Pitch (median F0, Hz)", ["espeak-ng", "measured F0", "category"], rows))
        rows = []
        for wpm in (80, 120, 160, 200, 260, 350):
            fields = measure(espeak(SENTENCE, wav, "-s", str(wpm)))
            rows.append([f"-s {wpm} ({wpm / 60:.1f} w/s)", f"{fields['speech_rate_wps']}", fields["speaking_speed"]])
        out.append(_table("Speaking speed (words per second of speech)", ["espeak-ng", "measured", "category"], rows))
        rows = []
        speech = espeak(SENTENCE, wav)
        for snr in (0, 5, 10, 15, 20, 30, 40):
            noisy = with_noise(speech, snr)
            fields = {"speech_segments": vad(Clip(noisy, {}))["speech_segments"]}
            fields.update(SnrAnnotator()(Clip(noisy, fields)))
            rows.append([f"{snr} dB", f"{fields['snr_db']:.1f}", fields["noise_level"]])
        out.append(_table("Noise (white noise mixed at a known SNR)", ["true SNR", "estimated dB", "category"], rows))
    out.append(
        "Bands: volume " + _bands(VOLUME_BANDS) + "; pitch " + _bands(PITCH_BANDS) + "; speed " + _bands(SPEED_BANDS)
        + "; noise level (SNR dB) " + _bands(NOISE_BANDS) + ".\n"
    )  # fmt: skip
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the Markdown tables here")
    args = parser.parse_args()
    report = calibrate()
    if args.out:
        args.out.write_text(report)
    print(report)  # noqa: T201  (a script: its report is its output)


if __name__ == "__main__":
    main()
