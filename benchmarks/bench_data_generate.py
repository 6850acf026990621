"""Throughput of target generation: the batched transformers backend against a one-by-one loop, same run.

    python benchmarks/bench_data_generate.py [--models smollm2-135m-instruct qwen2.5-0.5b-instruct]
                                             [--records 16] [--max-new-tokens 48] [--batch-sizes 1 4 16]

Each model answers the same `--records` generation chats (seed descriptions of synthetic clips + instructions
from the shipped pool), greedy, first one by one (a plain loop of batch-1 calls), then batched with left padding
and length-sorted batches. Prints a Markdown table: records/s, generated tokens/s, speed-up over the loop, and
whether the batched answers equal the loop's.
"""

from __future__ import annotations

import argparse
import logging
import random
import time

import torch

from desta_audio.data.backends import TransformersBackend
from desta_audio.data.generate import GenerationSettings, plan_samples, request_for
from desta_audio.data.prompts import PromptPool
from desta_audio.data.sources import SourceItem
from desta_audio.data.store import Decoding

_WORDS = "the weather is lovely today and we should go for a walk by the river before it gets dark".split()


def synthetic_items(count: int, seed: int = 0) -> list[SourceItem]:
    rng = random.Random(seed)
    items = []
    for number in range(count):
        words = rng.randint(3, 14)
        items.append(SourceItem(
            id=f"clip{number:04d}.wav", dataset="bench", audio=f"clip{number:04d}.wav",
            duration=round(rng.uniform(1, 12), 1), transcript=" ".join(rng.choices(_WORDS, k=words)).capitalize() + ".",
            attributes={"Gender": rng.choice(["Female", "Male"]), "Emotion": rng.choice(["Happy", "Sad", "Neutral"]),
                        "Pitch": rng.choice(["Low", "Normal", "High"])},
        ))  # fmt: skip
    return items


def run(backend: TransformersBackend, requests, decoding: Decoding, batch_size: int | None):
    """Seconds, answers; batch_size None = the one-by-one loop."""
    start = time.perf_counter()
    if batch_size is None:
        answers = [backend.generate([r], decoding)[0] for r in requests]
    else:
        backend.batch_size = batch_size
        answers = backend.generate(requests, decoding)
    return time.perf_counter() - start, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "qwen2.5-0.5b-instruct"])
    parser.add_argument("--records", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all modes; each mode's best time counts")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    settings = GenerationSettings(decoding=Decoding(do_sample=False, max_new_tokens=args.max_new_tokens))
    samples = list(plan_samples(synthetic_items(args.records), PromptPool.load(), settings))
    requests = [request_for(s, settings) for s in samples]
    lines = _Table()
    lines += [
        f"records: {args.records}, greedy, max_new_tokens {args.max_new_tokens}, best of {args.repeats}, torch threads "
        f"{torch.get_num_threads()}, device cpu, float32",
        "",
        "| backbone | mode | records/s | tokens/s | speed-up | same answers as loop |",
        "|---|---|---|---|---|---|",
    ]
    for model in args.models:
        backend = TransformersBackend(model)
        run(backend, requests[:2], settings.decoding, 2)  # warm-up
        # Rounds interleave the modes and keep each mode's best time, so a busy machine skews them less.
        modes: list[int | None] = [None, *args.batch_sizes]
        best: dict[int | None, tuple[float, list]] = {}
        for _ in range(args.repeats):
            for mode in modes:
                seconds, answers = run(backend, requests, settings.decoding, mode)
                if mode not in best or seconds < best[mode][0]:
                    best[mode] = (seconds, answers)
        loop_seconds, loop_answers = best[None]
        tokens = sum(a.tokens or 0 for a in loop_answers)
        lines.append(f"| {model} | one-by-one loop | {len(requests) / loop_seconds:.2f} | {tokens / loop_seconds:.1f} "
                     f"| 1.0x | - |")  # fmt: skip
        for batch_size in args.batch_sizes:
            seconds, answers = best[batch_size]
            batch_tokens = sum(a.tokens or 0 for a in answers)
            same = sum(a.text == b.text for a, b in zip(answers, loop_answers))
            lines.append(f"| {model} | batched, batch {batch_size} | {len(requests) / seconds:.2f} | "
                         f"{batch_tokens / seconds:.1f} | {loop_seconds / seconds:.1f}x | {same}/{len(requests)} |")  # fmt: skip
        del backend

class _Table(list):
    """Prints each line as soon as it is known (a long run still shows its finished rows)."""

    def append(self, line: str) -> None:
        super().append(line)
        print(line, flush=True)  # noqa: T201  (a benchmark script: the table is its output)

    def __iadd__(self, lines):
        for line in lines:
            self.append(line)
        return self


if __name__ == "__main__":
    main()
