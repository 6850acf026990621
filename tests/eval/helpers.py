"""Helpers for the evaluation tests: generated audio, a fake chat system."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16_000


def write_tone(path: Path, frequency: float = 440.0, seconds: float = 0.5, rate: int = RATE) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), rate)
    return path


def write_speech(path: Path, text: str) -> Path:
    """espeak-ng speech when available, else a tone (the tests only need a decodable clip)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if shutil.which("espeak-ng"):
        result = subprocess.run(["espeak-ng", "-v", "en-us+f3", "-s", "150", "-w", str(path), text],
                                capture_output=True, timeout=30)
        if result.returncode == 0 and path.exists():
            return path
    return write_tone(path)


def wav_bytes(frequency: float = 440.0, seconds: float = 0.3) -> bytes:
    import io

    t = np.arange(int(seconds * RATE)) / RATE
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), RATE, format="WAV")
    return buffer.getvalue()


class InterruptedRun(RuntimeError):
    """Stands for a run stopped half-way (Ctrl-C, a crash, a lost machine)."""


@dataclass
class Reply:
    text: str
    transcripts: list[str] = field(default_factory=list)


class FakeSystem:
    """Chat API stand-in: answers with `answer(conversation)`; can fail after a number of calls."""

    def __init__(self, answer, fail_after_calls: int | None = None, uses_text_audio: bool = False):
        self.answer = answer
        self.fail_after_calls = fail_after_calls
        self.uses_text_audio = uses_text_audio
        self.calls: list[list] = []

    def describe(self) -> dict:
        return {"kind": "fake"}

    def chat(self, conversations, **generation):
        if self.fail_after_calls is not None and len(self.calls) >= self.fail_after_calls:
            raise InterruptedRun("simulated interruption")
        self.calls.append(conversations)
        return [Reply(self.answer(c)) for c in conversations]

