"""Tiny generated training sets (tones and noise with records in the SPEC section 5 layout) and configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

RATE = 16_000
ANSWERS = ["the speaker is female", "a dog barks", "hello world", "the quick brown fox", "music plays",
           "yes", "no", "maybe the lazy dog"]


def make_dataset(folder: Path, count: int = 12, *, seed: int = 0, multi_turn_every: int = 5) -> Path:
    """WAV clips of 0.5-3 s (tones over noise) and a JSONL of records; returns the JSONL path."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "audio").mkdir(exist_ok=True)
    lines = []
    for index in range(count):
        seconds = float(rng.uniform(0.5, 3.0))
        t = np.arange(int(seconds * RATE)) / RATE
        clip = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 900) * t) + 0.02 * rng.standard_normal(t.size)
        name = f"audio/clip-{index:03d}.wav"
        sf.write(folder / name, clip.astype(np.float32), RATE)
        transcript = ANSWERS[(index + 3) % len(ANSWERS)] if index % 3 else None
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": "<start_audio><|AUDIO|><end_audio>\ndescribe the sound in one sentence",
             "audios": [{"audio": name, "text": transcript}]},
            {"role": "assistant", "content": ANSWERS[index % len(ANSWERS)]},
        ]
        if multi_turn_every and index % multi_turn_every == multi_turn_every - 1:
            messages += [{"role": "user", "content": "what did the speaker say"},
                         {"role": "assistant", "content": ANSWERS[(index + 1) % len(ANSWERS)]}]
        lines.append(json.dumps({"key": f"rec-{index:03d}", "id": name, "dataset": "tones", "messages": messages}))
    path = folder / "records.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_config(tmp_path: Path, records: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A raw config dict for the tiny random model; `sections` are merged into the defaults."""
    config: dict[str, Any] = {
        "model": {"factory": "tests.tiny:tiny_model", "overrides": {"qformer_dropout": 0.0}},
        "data": {"train": str(records)},
        "batching": {"max_audio_seconds": 6.0, "max_tokens": 4096, "max_size": 4},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "run": {"output_dir": str(tmp_path / "run"), "max_steps": 4, "log_every": 1, "val_every": None,
                "save_every": None, "progress": False, "tensorboard": False, "seed": 3},
        "cache": {"enabled": False, "dir": str(tmp_path / "cache")},
        "validation": {"generate_samples": 0},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config
