"""Audio work kept across calls: each audio's soft tokens and transcript, looked up by the audio's content.

A multi-turn conversation sends its clips again on every turn (the OpenAI chat API is stateless; `desta chat` and
the web demo keep the whole history too), and people often ask several questions about one clip. Whisper, the
Q-Former, VAD and ASR depend only on the waveform and the weights, so their results are kept in a
least-recently-used store bounded in bytes and keyed by a hash of the 16 kHz waveform: a clip seen before costs a
hash instead of an encoder pass and a Whisper decode.

Inference only. The model bypasses the store while gradients are enabled, and empties it when the weights that
produce its entries (Whisper and the connector) change: loading an adapter, an optimizer step, any in-place write.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the CLI reads this module's default before torch is needed
    import torch

DEFAULT_AUDIO_CACHE_MB = 256.0  # what `desta chat`, `desta serve` and `desta demo` keep unless told otherwise


@dataclass(frozen=True)
class CachedAudio:
    tokens: torch.Tensor  # (windows, prompt_size, llm_hidden): the connector's output for every 30 s window
    transcript: str | None  # the VAD + ASR result; None while only a caller-given transcript has been used

    @property
    def nbytes(self) -> int:
        return self.tokens.numel() * self.tokens.element_size() + len(self.transcript or "")


class AudioCache:
    """Least-recently-used map from waveform hash to `CachedAudio`, at most `max_bytes` of tensors in all."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"an audio cache needs a positive size, got {max_bytes} bytes")
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, CachedAudio] = OrderedDict()
        self._bytes = 0
        self._weights_stamp: int | None = None
        self._lock = threading.Lock()

    @staticmethod
    def key(audio: np.ndarray) -> str:
        """Content hash of a mono 16 kHz float32 waveform (its length is part of the bytes hashed)."""
        samples = np.ascontiguousarray(audio, dtype=np.float32)
        return hashlib.blake2b(memoryview(samples).cast("B"), digest_size=16).hexdigest()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> CachedAudio | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: str, tokens: torch.Tensor, transcript: str | None) -> None:
        """Keep an audio's tokens (and its ASR transcript when one was made; an earlier one is kept otherwise)."""
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= previous.nbytes
                if transcript is None:
                    transcript = previous.transcript
            entry = CachedAudio(tokens.detach(), transcript)
            if entry.nbytes > self.max_bytes:
                return  # larger than the whole budget: keeping it would evict everything else
            self._entries[key] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def check_weights(self, stamp: int) -> None:
        """Empty the store when the weights behind its entries have changed since it was last used."""
        with self._lock:
            if self._weights_stamp is not None and stamp != self._weights_stamp:
                self._entries.clear()
                self._bytes = 0
            self._weights_stamp = stamp
