"""Text normalisation shared by the scorers."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache


@lru_cache(maxsize=1)
def _whisper_basic_normalizer():
    try:  # transformers ships Whisper's own implementation: reuse it so results match bit for bit
        from transformers.models.whisper.english_normalizer import BasicTextNormalizer

        return BasicTextNormalizer()
    except ImportError:  # pragma: no cover - transformers is a hard dependency; kept for clarity
        return None


def basic_normalize(text: str) -> str:
    """Whisper's BasicTextNormalizer: lowercase, drop [bracketed] and (parenthesised) text, turn marks, symbols and
    punctuation (unicode categories M*, S*, P*) into spaces, collapse whitespace."""
    normalizer = _whisper_basic_normalizer()
    if normalizer is not None:
        return normalizer(text)
    text = text.lower()
    text = re.sub(r"[<\[][^>\]]*[>\]]", "", text)
    text = re.sub(r"\(([^)]+?)\)", "", text)
    text = "".join(" " if unicodedata.category(c)[0] in "MSP" else c for c in unicodedata.normalize("NFKC", text))
    return re.sub(r"\s+", " ", text)


def consecutive_words_match(label: str, prediction: str, empty_label_matches: bool = False) -> bool:
    """DeSTA's "consecutive words" metric: the normalised label's words appear contiguously in the prediction.

    A label with no words once normalised ("", "[noise]", "?") matches every prediction in DeSTA's own metric
    (the empty word run is found anywhere); `empty_label_matches=True` keeps that, the default counts it as a miss.
    """
    label_words = basic_normalize(label).lower().split()
    pred_words = basic_normalize(prediction).lower().split()
    if not label_words:
        return empty_label_matches
    width = len(label_words)
    return any(pred_words[i : i + width] == label_words for i in range(len(pred_words) - width + 1))
