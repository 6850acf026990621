"""Silero voice activity detection, without its import side effect.

Importing the `silero_vad` package calls `torch.set_num_threads(1)` for the whole process, which would halve every
later encoder and LLM pass on a 2-core machine. Everything here goes through these two functions, which keep the
caller's thread count.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from desta_audio.audio import SAMPLE_RATE


@functools.cache  # the side effect comes with the first import only; later calls need not touch the threads
def _silero() -> Any:
    threads = torch.get_num_threads()
    import silero_vad

    torch.set_num_threads(threads)
    return silero_vad


def load_vad() -> torch.nn.Module:
    return _silero().load_silero_vad()


def speech_timestamps(audio: np.ndarray, vad: torch.nn.Module, *, seconds: bool = False) -> list[dict[str, float]]:
    """Speech segments of a 16 kHz mono clip (sample indices, or seconds when asked)."""
    return _silero().get_speech_timestamps(torch.from_numpy(audio), vad, sampling_rate=SAMPLE_RATE,
                                           return_seconds=seconds)
