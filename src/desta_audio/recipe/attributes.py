"""Category labels <-> exact synthesis settings. A clip's label is chosen first, then a setting inside its range.

Labels use the vocabulary of the data module's annotators (`desta_audio.data.annotate`), so a description written
from these settings reads like one written from measurements. The ranges (documented in README "Small recipe:
corpus") were chosen from espeak-ng 1.51 measurements:

- Pitch is relative to the voice's gender: espeak-ng `-p` moves F0 of every variant the same way (male variants
  ~75 Hz at -p 10, ~105 Hz at 50, ~155 Hz at 90; female ~140, ~200, ~300 Hz).
- Speaking speed is espeak-ng `-s` in words per minute (its default is 175), or piper's `length_scale`.
- Volume is espeak-ng `-a` (above 100 it clips) or piper's output gain; measured speech levels are about
  -40, -32, -25 and -19 dBFS for Very low, Low, Normal and High. Every speech clip also records the measured
  level (`level_dbfs`).
"""

from __future__ import annotations

import random

PITCH_LABELS = ("Very low", "Low", "Normal", "High", "Very high")
SPEED_LABELS = ("Very slow", "Slow", "Normal", "Fast", "Very fast")
VOLUME_LABELS = ("Very low", "Low", "Normal", "High")

ESPEAK_PITCH: dict[str, tuple[int, int]] = {
    "Very low": (5, 15), "Low": (25, 35), "Normal": (45, 55), "High": (65, 75), "Very high": (85, 95),
}  # fmt: skip
ESPEAK_SPEED: dict[str, tuple[int, int]] = {
    "Very slow": (80, 100), "Slow": (120, 140), "Normal": (160, 190), "Fast": (225, 255), "Very fast": (290, 340),
}  # fmt: skip
ESPEAK_AMPLITUDE: dict[str, tuple[int, int]] = {"Very low": (8, 12), "Low": (18, 26), "Normal": (45, 60),
                                                "High": (95, 100)}  # fmt: skip
# piper: length_scale > 1 is slower; volume multiplies the peak-normalised output (same levels as espeak's -a).
PIPER_LENGTH_SCALE: dict[str, tuple[float, float]] = {
    "Very slow": (1.55, 1.7), "Slow": (1.25, 1.35), "Normal": (0.95, 1.05), "Fast": (0.78, 0.83),
    "Very fast": (0.62, 0.68),
}  # fmt: skip
PIPER_VOLUME: dict[str, tuple[float, float]] = {"Very low": (0.08, 0.11), "Low": (0.18, 0.24),
                                                "Normal": (0.42, 0.55), "High": (0.92, 1.0)}  # fmt: skip

# sox reverb: reverberance % and room scale %; hf-damping stays at sox's default 50.
REVERB: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "Low": ((10, 25), (20, 40)), "Medium": ((40, 60), (50, 70)), "High": ((80, 100), (85, 100)),
}  # fmt: skip

# Noise level from SNR (dB), the same bands as the data module's SNR annotator.
NOISE_LEVEL_BANDS = ((5.0, "Very high"), (12.0, "High"), (20.0, "Medium"), (30.0, "Low"), (float("inf"), "Very low"))

LANGUAGES: dict[str, dict[str, str]] = {
    # code: espeak-ng voice, language name, accent (English and Portuguese variants only)
    "en-us": {"code": "en", "voice": "en-us", "language": "English", "accent": "American"},
    "en-gb": {"code": "en", "voice": "en-gb", "language": "English", "accent": "British"},
    "fr": {"code": "fr", "voice": "fr-fr", "language": "French"},
    "de": {"code": "de", "voice": "de", "language": "German"},
    "es": {"code": "es", "voice": "es", "language": "Spanish"},
    "it": {"code": "it", "voice": "it", "language": "Italian"},
    "pt": {"code": "pt", "voice": "pt-br", "language": "Portuguese", "accent": "Brazilian"},
    "zh": {"code": "zh", "voice": "cmn-latn-pinyin", "language": "Mandarin Chinese"},
    "ja": {"code": "ja", "voice": "ja", "language": "Japanese"},
    "hi": {"code": "hi", "voice": "hi", "language": "Hindi"},
}

MALE_VARIANTS = tuple(f"m{i}" for i in range(1, 8))
FEMALE_VARIANTS = tuple(f"f{i}" for i in range(1, 6))


def variant_gender(variant: str) -> str:
    return "Female" if variant.startswith("f") else "Male"


def pick_label(labels: tuple[str, ...], rng: random.Random, normal_weight: float = 2.0) -> str:
    """A category label; "Normal" is more common, as in natural speech, but every category is well covered."""
    weights = [normal_weight if label == "Normal" else 1.0 for label in labels]
    return rng.choices(labels, weights=weights)[0]


def int_in(bounds: tuple[int, int], rng: random.Random) -> int:
    return rng.randint(*bounds)


def float_in(bounds: tuple[float, float], rng: random.Random, digits: int = 2) -> float:
    return round(rng.uniform(*bounds), digits)


def noise_level(snr_db: float) -> str:
    return next(label for bound, label in NOISE_LEVEL_BANDS if snr_db < bound)
