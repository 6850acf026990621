import os

import numpy as np
import pytest
import torch

torch.set_num_threads(2)
# Many tests compare greedy answers across batchings and between the server and in-process runs; in bfloat16 (the
# default on CPUs with native bf16) rounding makes those depend on batch composition. Pin fp32 for the whole suite,
# subprocesses included; tests/test_precision.py checks the bf16 default itself.
os.environ["DESTA_DTYPE"] = "float32"


@pytest.fixture(autouse=True)
def _no_official_prompt_downloads(monkeypatch):
    """No test reaches the network: the official judge files are downloaded only where a test serves them itself."""
    from desta_audio.eval import official_prompts

    monkeypatch.setattr(official_prompts, "OFFICIAL_URLS", {})


def tone(seconds: float, frequency: float = 440.0, rate: int = 16_000, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


@pytest.fixture(scope="session")
def tiny():
    from tests.tiny import tiny_model

    return tiny_model()
