import numpy as np
import pytest
import torch

torch.set_num_threads(2)


def tone(seconds: float, frequency: float = 440.0, rate: int = 16_000, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


@pytest.fixture(scope="session")
def tiny():
    from tests.tiny import tiny_model

    return tiny_model()
