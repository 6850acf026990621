"""What the held-out split holds back, and the check that training never sees it.

Held out (never in train): espeak-ng voices +f5 and +m7, three English sentence templates and every sixth sentence
of the other languages (`texts`), a hash-chosen eighth of the Asterisk prompts, all alsa-utils clips, the music
track "Morning Coffee", brown noise, the sawtooth waveform and the augmented chord.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

HELDOUT_FRACTION = 0.15  # share of each splittable family's clips that go to the held-out split

HELDOUT_VOICES = frozenset({"f5", "m7"})
HELDOUT_MUSIC_TRACKS = frozenset({"manolo_camp-morning_coffee"})
HELDOUT_NOISE_COLOURS = frozenset({"brown"})
HELDOUT_WAVEFORMS = frozenset({"sawtooth"})
HELDOUT_CHORDS = frozenset({"augmented"})
ASTERISK_HELDOUT_BUCKETS = 8  # a prompt is held out when the hash of its text falls in bucket 0


def normalise_text(text: str) -> str:
    """Case, accents' composition, punctuation and spacing do not make a different sentence."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[^\w\s']", " ", text).split())


def asterisk_heldout(text: str) -> bool:
    digest = hashlib.sha256(normalise_text(text).encode()).digest()
    return digest[0] % ASTERISK_HELDOUT_BUCKETS == 0


def heldout_count(count: int) -> int:
    """Held-out clips of a family with `count` clips: at least one as soon as there are two."""
    return 0 if count < 2 else max(1, round(count * HELDOUT_FRACTION))


def leaks(train: Iterable[dict[str, Any]], heldout: Iterable[dict[str, Any]]) -> list[str]:
    """Ways a training row touches the held-out split: its voice, text or sound type. Empty when clean."""
    heldout = list(heldout)
    held_texts = {normalise_text(row["text"]) for row in heldout if row.get("text")}
    found = []
    for row in train:
        if row.get("voice_variant") in HELDOUT_VOICES:
            found.append(f"{row['id']}: held-out voice {row['voice_variant']}")
        if row.get("text") and normalise_text(row["text"]) in held_texts:
            found.append(f"{row['id']}: held-out text {row['text']!r}")
        for key, held in (("noise_colour", HELDOUT_NOISE_COLOURS), ("waveform", HELDOUT_WAVEFORMS),
                          ("chord_type", HELDOUT_CHORDS), ("track_id", HELDOUT_MUSIC_TRACKS)):  # fmt: skip
            if row.get(key) in held:
                found.append(f"{row['id']}: held-out {key} {row[key]}")
        if row.get("origin") == "alsa":
            found.append(f"{row['id']}: alsa clips are held out")
    return found
