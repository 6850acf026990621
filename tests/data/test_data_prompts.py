import random
from collections import Counter

import pytest

from desta_audio.data.dedup import NearDuplicateIndex, normalize_text
from desta_audio.data.prompts import CATEGORY_WEIGHTS, MANIFEST_PATH, PromptPool, build_pool


@pytest.fixture(scope="module")
def pool() -> PromptPool:
    return PromptPool.load()


def test_shipped_pool_is_large_distinct_and_matches_the_builder(pool):
    assert len(pool) >= 2000
    assert len({normalize_text(p.text) for p in pool.prompts}) == len(pool)
    assert len({p.id for p in pool.prompts}) == len(pool)
    rebuilt, manifest = build_pool()
    assert [p.text for p in rebuilt] == [p.text for p in pool.prompts]  # shipped file is up to date
    import json

    assert json.loads(MANIFEST_PATH.read_text())["sha256"] == manifest["sha256"]


def test_no_near_duplicates_left(pool):
    index = NearDuplicateIndex(threshold=0.85)
    duplicates = [p.text for p in pool.prompts if index.add_if_new(p.id, p.text) is not None]
    assert duplicates == []


def test_every_category_present_and_weights_sum_to_category_share(pool):
    weight_per_category = Counter()
    for prompt in pool.prompts:
        weight_per_category[prompt.category] += prompt.weight
    assert set(weight_per_category) == set(CATEGORY_WEIGHTS)
    for category, share in CATEGORY_WEIGHTS.items():
        assert weight_per_category[category] == pytest.approx(share, rel=1e-3)


def test_sampling_follows_category_weights(pool):
    rng = random.Random(0)
    draws = Counter(pool.sample(rng).category for _ in range(20_000))
    total = sum(CATEGORY_WEIGHTS.values())
    for category, share in CATEGORY_WEIGHTS.items():
        assert draws[category] / 20_000 == pytest.approx(share / total, abs=0.015)


def test_sampling_respects_audio_kind(pool):
    rng = random.Random(1)
    music = [pool.sample(rng, "music") for _ in range(2000)]
    assert all("music" in p.audio_kinds for p in music)
    assert not any(p.category == "paralinguistic" for p in music)  # speaker questions make no sense for music


def test_format_and_language_prompts_are_there(pool):
    texts = [p.text for p in pool.prompts]
    assert any("JSON" in t for t in texts)
    assert any("bullet points" in t for t in texts)
    assert any("no more than 20 words" in t for t in texts)
    french = [p for p in pool.prompts if p.category == "language" and "French" in p.text]
    assert french and all(p.response_language == "fr" for p in french)
