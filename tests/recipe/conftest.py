"""A tiny corpus build (`--size 40`), shared by the recipe tests; skipped where espeak-ng is missing."""

from __future__ import annotations

import pytest

from desta_audio.recipe import synth
from desta_audio.recipe.corpus import Availability, BuildResult, build_corpus

needs_espeak = pytest.mark.skipif(not synth.espeak_available(), reason="espeak-ng not installed (setup.sh installs it)")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> BuildResult:
    if not synth.espeak_available():
        pytest.skip("espeak-ng not installed (setup.sh installs it)")
    return build_corpus(tmp_path_factory.mktemp("corpus"), size=40, seed=7, workers=2, progress=False)


@pytest.fixture(scope="session")
def available() -> Availability:
    return Availability.detect()
