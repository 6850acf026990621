"""Voice activity detection: speech found in speech, none in silence, and torch's thread count left alone."""

import subprocess
import sys

import numpy as np

from desta_audio.audio import SAMPLE_RATE, load_audio
from desta_audio.vad import load_vad, speech_timestamps


def test_loading_vad_keeps_the_thread_count():
    # A fresh interpreter: the silero_vad import side effect only happens once per process.
    code = ("import torch; torch.set_num_threads(2); from desta_audio.vad import load_vad; load_vad(); "
            "print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip().splitlines()[-1] == "2"


def test_speech_timestamps_find_speech_and_not_silence(tmp_path):
    vad = load_vad()
    assert speech_timestamps(np.zeros(SAMPLE_RATE * 2, dtype=np.float32), vad) == []
    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "The train to Berlin leaves at seven thirty."], check=True)
    stamps = speech_timestamps(load_audio(path), vad, seconds=True)
    assert stamps and 0 <= stamps[0]["start"] < stamps[-1]["end"] <= 4.0
