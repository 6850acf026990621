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


def consecutive_words_match(label: str, prediction: str, empty_label: str = "miss") -> bool:
    """DeSTA's "consecutive words" metric: the normalised label's words appear contiguously in the prediction.

    A label with no words once normalised ("", "[noise]", "?") is decided by `empty_label`: "miss" (the default)
    counts it as a miss; "any" matches every prediction, as DeSTA's own metric does (the empty word run is found
    anywhere); "empty" matches only a prediction without words (a record that teaches the model to say nothing).
    """
    label_words = basic_normalize(label).lower().split()
    pred_words = basic_normalize(prediction).lower().split()
    if not label_words:
        if empty_label not in ("miss", "any", "empty"):
            raise ValueError(f"empty_label must be 'miss', 'any' or 'empty', got {empty_label!r}")
        return empty_label == "any" or (empty_label == "empty" and not pred_words)
    width = len(label_words)
    return any(pred_words[i : i + width] == label_words for i in range(len(pred_words) - width + 1))
