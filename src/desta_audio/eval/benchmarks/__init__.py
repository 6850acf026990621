"""One module per benchmark. Each exposes `NAME`, `SCORER_VERSION`, `PUBLISHED`, `load(path, **options)` ->
list[EvalItem] and `score(rows, judge=None, **options)` -> dict over prediction rows (JSONL)."""

from __future__ import annotations

import importlib
from types import ModuleType

BENCHMARKS = ("mmau", "dynamic_superb", "sakura", "speech_ifeval", "voicebench")
ALIASES = {"dynamic-superb": "dynamic_superb", "speech-ifeval": "speech_ifeval", "dsb": "dynamic_superb"}


def get_benchmark(name: str) -> ModuleType:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    return importlib.import_module(f"desta_audio.eval.benchmarks.{key}")
