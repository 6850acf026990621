"""Crash safety: SIGKILL `desta data generate` mid-run, rerun the same command, every key exactly once."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

from desta_audio.data.store import ShardStore
from tests.data.conftest import write_tone

CLIPS = 30
SAMPLES_PER_CLIP = 2


def _command(manifest, out, model_dir):
    return [sys.executable, "-m", "desta_audio.data.cli", "generate", str(manifest), "--out", str(out),
            "--model", str(model_dir), "--greedy", "--max-new-tokens", "12", "--shard-size", "2",
            "--batch-size", "2", "--samples-per-clip", str(SAMPLES_PER_CLIP), "--no-language-check"]  # fmt: skip


def _keys_and_responses(out):
    store = ShardStore(out)
    rows = list(store.iter_rows()) + list(store.iter_rows(quarantine=True))
    return Counter(r["key"] for r in rows), {r["key"]: r["response"] for r in rows}


def test_kill_9_mid_run_then_rerun_gives_every_record_exactly_once(tmp_path, tiny_llm_dir):
    manifest = tmp_path / "clips.jsonl"
    (tmp_path / "audio").mkdir()
    for n in range(CLIPS):
        write_tone(tmp_path / "audio" / f"{n:03d}.wav", 0.1)
    manifest.write_text("".join(
        json.dumps({"audio": f"audio/{n:03d}.wav", "text": f"sentence number {n}", "gender": "female",
                    "duration": 1.0 + n % 4}) + "\n" for n in range(CLIPS)))  # fmt: skip
    crashed = tmp_path / "crashed"
    process = subprocess.Popen(_command(manifest, crashed, tiny_llm_dir), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        shards = list((crashed / "data").glob("shard-*.jsonl")) if (crashed / "data").exists() else []
        if len(shards) >= 2:
            break
        time.sleep(0.005)
    assert process.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    partial, _ = _keys_and_responses(crashed)
    assert 0 < sum(partial.values()) < CLIPS * SAMPLES_PER_CLIP

    subprocess.run(_command(manifest, crashed, tiny_llm_dir), check=True, capture_output=True)
    counts, responses = _keys_and_responses(crashed)
    expected = {f"clips/audio/{n:03d}.wav#{k}" for n in range(CLIPS) for k in range(SAMPLES_PER_CLIP)}
    assert set(counts) == expected
    assert max(counts.values()) == 1

    # The resumed result equals an uninterrupted run (greedy decoding; batching does not change outputs).
    clean = tmp_path / "clean"
    subprocess.run(_command(manifest, clean, tiny_llm_dir), check=True, capture_output=True)
    _, clean_responses = _keys_and_responses(clean)
    assert responses == clean_responses
