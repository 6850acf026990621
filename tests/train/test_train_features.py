import numpy as np
import pytest
import torch

from desta_audio.train.config import build_config
from desta_audio.train.features import CacheError, FeatureCache, audio_key, encoder_fingerprint, fill_cache, open_cache
from desta_audio.train.features import AudioFeatures
from desta_audio.train.recipe import LossModule
from desta_audio.train.records import read_records
from tests.tiny import tiny_model
from tests.train.helpers import make_dataset


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return read_records(make_dataset(tmp_path_factory.mktemp("data"), 6))


def _loss(model, records, cache):
    module = LossModule(model, AudioFeatures(model, cache, encoder_trainable=False), {"train": records}).eval()
    with torch.no_grad():
        total, count = module("train", list(range(len(records))))
    return float(total) / float(count)


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("float16", 2e-3)])
def test_loss_from_the_cache_equals_the_loss_from_raw_audio(tmp_path, records, dtype, tolerance):
    model = tiny_model()
    cache = open_cache(model, tmp_path, dtype=dtype)
    assert fill_cache(model, cache, [a for r in records for a in r.audios], progress=False) == len(records)
    raw = _loss(model, records, None)
    cached = _loss(model, records, open_cache(model, tmp_path, dtype=dtype))  # reopened from the index on disk
    assert cached == pytest.approx(raw, abs=tolerance)
    item = records[0].audios[0]
    entry = cache.get(audio_key(item.path, item.text))
    assert entry.taps.shape == (1, 4, 1500, 32) and entry.transcript == (item.text if item.text is not None else " ")


def test_cache_resumes_and_is_never_reused_for_another_encoder(tmp_path, records):
    model = tiny_model()
    items = [a for r in records for a in r.audios]
    cache = open_cache(model, tmp_path, shard_windows=2)
    fill_cache(model, cache, items[:3], progress=False)
    assert len(list(cache.directory.glob("shard-*.bin"))) == 2  # 3 windows: one full shard, one sealed at the end
    again = open_cache(model, tmp_path, shard_windows=2)
    assert len(again) == 3 and fill_cache(model, again, items, progress=False) == len(items) - 3
    other = tiny_model(seed=1)
    assert encoder_fingerprint(other, "float16", False) != encoder_fingerprint(model, "float16", False)
    assert len(open_cache(other, tmp_path)) == 0  # a different encoder gets its own, empty cache
    assert encoder_fingerprint(model, "float32", False) != encoder_fingerprint(model, "float16", False)


def test_audio_key_changes_with_the_file_and_the_transcript(tmp_path, records):
    item = records[0].audios[0]
    assert audio_key(item.path, "a") != audio_key(item.path, "b")
    copy = tmp_path / "copy.wav"
    copy.write_bytes(open(item.path, "rb").read() + b"\0")
    assert audio_key(copy, "a") != audio_key(item.path, "a")


def test_cache_size_is_bounded(tmp_path, records):
    model = tiny_model()
    probe = open_cache(model, tmp_path / "probe")
    assert probe.bytes_per_window == 4 * 1500 * 32 * 2
    bounded = open_cache(model, tmp_path / "bounded", max_gb=2.5 * probe.bytes_per_window / 2**30)
    added = fill_cache(model, bounded, [a for r in records for a in r.audios], progress=False)
    assert added == 2 and bounded.size_bytes <= 2.5 * probe.bytes_per_window
    # Audios past the bound are encoded on the fly: the loss is still that of raw audio.
    assert _loss(model, records, bounded) == pytest.approx(_loss(model, records, None), abs=2e-3)


def test_damaged_or_mismatched_cache_says_what_to_do(tmp_path, records):
    model = tiny_model()
    cache = open_cache(model, tmp_path)
    fill_cache(model, cache, records[0].audios, progress=False)
    with pytest.raises(CacheError, match="delete"):
        FeatureCache(tmp_path, cache.fingerprint, (4, 1500, 16))
    next(cache.directory.glob("shard-*.bin")).write_bytes(b"short")
    with pytest.raises(CacheError, match="truncated"):
        open_cache(model, tmp_path).get(next(iter(cache.entries)))


def test_trainer_builds_the_cache_once(tmp_path, records):
    from desta_audio.train.recipe import Trainer
    from tests.train.helpers import tiny_config

    data = make_dataset(tmp_path / "d", 4)
    config = build_config(tiny_config(tmp_path, data, cache={"enabled": True}))
    trainer = Trainer(config).setup(cache_only=True)
    assert len(trainer.features.cache) == 4 and not (tmp_path / "run" / "metrics.csv").exists()
    modified = {p.stat().st_mtime_ns for p in trainer.features.cache.directory.iterdir()}
    Trainer(config).setup(cache_only=True)
    assert {p.stat().st_mtime_ns for p in trainer.features.cache.directory.iterdir()} == modified
    assert np.isfinite(trainer.features.cache.get(next(iter(trainer.features.cache.entries))).taps).all()
