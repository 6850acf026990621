"""desta-tiny on its real packaged weights: the loss from float16 cached encoder states equals the raw-audio loss."""

import math
import shutil
import subprocess

import pytest
import torch

from desta_audio.train.features import fill_cache, open_cache
from desta_audio.train.features import AudioFeatures
from desta_audio.train.recipe import LossModule
from desta_audio.train.records import parse_record


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng for speech")
def test_desta_tiny_loss_from_the_cache_equals_the_loss_from_raw_audio(tmp_path):
    from desta_audio.modeling import DeSTAModel

    records = []
    for index, text in enumerate(["The train leaves at seven.", "Please buy some milk and bread tonight."]):
        path = tmp_path / f"clip{index}.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        row = {"key": f"clip{index}", "messages": [
            {"role": "user", "content": "<start_audio><|AUDIO|><end_audio>\nWhat is said?",
             "audios": [{"audio": path.name, "text": text}]},
            {"role": "assistant", "content": f"The speaker says: {text}"}]}
        records.append(parse_record(row, tmp_path))
    model = DeSTAModel.from_pretrained("desta-tiny", asr=False)

    def loss(cache):
        module = LossModule(model, AudioFeatures(model, cache, encoder_trainable=False), {"train": records}).eval()
        with torch.no_grad():
            total, count = module("train", [0, 1])
        return float(total) / float(count)

    cache = open_cache(model, tmp_path / "cache")
    assert fill_cache(model, cache, [a for r in records for a in r.audios], progress=False) == 2
    assert cache.bytes_per_window == 4 * 1500 * 512 * 2  # 6.1 MB per window for Whisper-base in float16
    raw = loss(None)
    assert math.isfinite(raw)
    assert loss(cache) == pytest.approx(raw, abs=5e-3)
