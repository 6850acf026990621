"""Exact and near-duplicate detection for prompts and responses (MinHash LSH from `datasketch`)."""

from __future__ import annotations

import re
import unicodedata

from datasketch import MinHash, MinHashLSH

_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)


def normalize_text(text: str) -> str:
    """Lowercase, accents folded, punctuation dropped, whitespace collapsed: the key for exact duplicates."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return " ".join(_NON_WORD.sub(" ", folded).split())


def shingles(normalized: str) -> set[str]:
    """Words and word pairs: one changed word in a short sentence moves it well away from its neighbour."""
    words = normalized.split()
    return set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / max(1, len(a | b))


class NearDuplicateIndex:
    """Remembers texts; `find(text)` returns the key of an earlier exact or near duplicate (Jaccard >= threshold)."""

    def __init__(self, threshold: float = 0.85, num_perm: int = 64):
        self.threshold = threshold
        self.num_perm = num_perm
        self._exact: dict[str, str] = {}
        self._shingles: dict[str, set[str]] = {}
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)

    def __len__(self) -> int:
        return len(self._exact)

    def _minhash(self, items: set[str]) -> MinHash:
        signature = MinHash(num_perm=self.num_perm, seed=1)
        signature.update_batch([s.encode("utf-8") for s in sorted(items)])
        return signature

    def find(self, text: str) -> str | None:
        normalized = normalize_text(text)
        if normalized in self._exact:
            return self._exact[normalized]
        items = shingles(normalized)
        if not items:
            return None
        for candidate in self._lsh.query(self._minhash(items)):
            if jaccard(items, self._shingles[candidate]) >= self.threshold:  # LSH gives candidates; verify
                return candidate
        return None

    def add(self, key: str, text: str) -> None:
        normalized = normalize_text(text)
        if normalized in self._exact or key in self._shingles:
            return
        self._exact[normalized] = key
        items = shingles(normalized)
        if items:
            self._shingles[key] = items
            self._lsh.insert(key, self._minhash(items))

    def add_if_new(self, key: str, text: str) -> str | None:
        """Adds `text` unless it duplicates an earlier one; returns that earlier key, or None when added."""
        duplicate = self.find(text)
        if duplicate is None:
            self.add(key, text)
        return duplicate
