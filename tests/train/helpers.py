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


def add_text_only_records(records: Path, count: int) -> Path:
    """Append `count` chats without audio to a JSONL of records; returns its path."""
    lines = [json.dumps({"key": f"text-{index:03d}", "messages": [
        {"role": "user", "content": f"repeat after me: {ANSWERS[index % len(ANSWERS)]}"},
        {"role": "assistant", "content": ANSWERS[index % len(ANSWERS)]}]}) for index in range(count)]
    with open(records, "a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return records


def point_at_flac(records: Path, line: int, *, truncated: bool) -> str:
    """Point record `line` (1-based) at a FLAC copy of its clip, cut in half if `truncated`; returns its name."""
    import soundfile as sf

    rows = records.read_text().splitlines()
    row = json.loads(rows[line - 1])
    audio = row["messages"][0]["audios"][0]
    wav = (records.parent / audio["audio"]).with_suffix(".wav")
    flac = wav.with_suffix(".flac")
    samples, rate = sf.read(wav)
    sf.write(flac, samples.astype(np.float32), rate)
    if truncated:
        flac.write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
    audio["audio"] = str(flac.relative_to(records.parent))
    rows[line - 1] = json.dumps(row)
    records.write_text("\n".join(rows) + "\n")
    return flac.name


def batch_lines(config: Any) -> list[list[int]]:
    """The records' lines, per global batch of the first epoch (the order depends on lengths and the seed)."""
    from desta_audio.train.recipe import Trainer

    probe = Trainer(config).setup()
    try:
        return [[int(probe.train_records[i].where.rsplit(":", 1)[1]) for i in batch]
                for batch in probe.sampler.batches(0)]
    finally:
        probe.close()


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
