"""Scale-out of `desta data generate` with Ray Data (optional extra: `pip install 'desta-audio[ray]'`).

Ray actors each build their own backend (a local model per GPU/CPU slot, or a client of an OpenAI-compatible
endpoint) and answer batches of requests; the driver keeps planning, filtering and the atomic shard writes, so a
killed run resumes exactly like a single-process one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

from desta_audio.data.backends import Backend, Generation
from desta_audio.data.generate import GenerationSettings, PlannedSample, request_for
from desta_audio.data.store import Decoding

logger = logging.getLogger(__name__)


class _GeneratorActor:
    """Ray Data callable class: one backend per actor, built once."""

    def __init__(self, backend_factory: Callable[[], Backend], decoding: dict[str, Any]):
        self.backend = backend_factory()
        self.decoding = Decoding(**decoding)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from desta_audio.data.backends import GenerationRequest

        requests = [
            GenerationRequest(json.loads(messages), int(seed), answer if has_answer else None)
            for messages, seed, answer, has_answer in zip(
                batch["messages"], batch["seed"], batch["template_answer"], batch["has_answer"]
            )
        ]
        generations = self.backend.generate(requests, self.decoding)
        return {
            "index": batch["index"],
            "text": [g.text for g in generations],
            "finish_reason": [g.finish_reason for g in generations],
            "tokens": [-1 if g.tokens is None else g.tokens for g in generations],
        }


def ray_generate_fn(
    backend_factory: Callable[[], Backend],
    settings: GenerationSettings,
    workers: int = 1,
    address: str | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
) -> Callable[[list[PlannedSample]], Iterator[tuple[list[PlannedSample], list[Generation]]]]:
    """A `generate_fn` for `run_generation` that fans the pending samples out to `workers` Ray actors."""
    try:
        import ray
    except ImportError as err:
        raise ImportError("Ray is not installed; pip install 'desta-audio[ray]' (ray[data])") from err

    def generate(pending: list[PlannedSample]) -> Iterator[tuple[list[PlannedSample], list[Generation]]]:
        if not pending:
            return
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        rows = []
        for index, sample in enumerate(pending):
            request = request_for(sample, settings)
            rows.append({"index": index, "messages": json.dumps(request.messages), "seed": request.seed,
                         "template_answer": request.template_answer or "",
                         "has_answer": request.template_answer is not None})  # fmt: skip
        blocks = max(1, min(len(rows), workers * 4, -(-len(rows) // settings.shard_size)))
        dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            _GeneratorActor,
            fn_constructor_args=(backend_factory, settings.decoding.model_dump()),
            batch_size=settings.shard_size,
            batch_format="numpy",
            concurrency=workers,
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker,
        )
        for batch in dataset.iter_batches(batch_size=settings.shard_size, batch_format="numpy"):
            samples = [pending[int(i)] for i in batch["index"]]
            generations = [
                Generation(str(text), str(finish), None if int(tokens) < 0 else int(tokens))
                for text, finish, tokens in zip(batch["text"], batch["finish_reason"], batch["tokens"])
            ]
            yield samples, generations

    return generate
