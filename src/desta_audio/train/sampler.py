"""Batches by total audio duration and padded token count (bucketing), resumable and shared across processes.

Every process builds the same global batches from the same seed; a global batch is dealt out to the processes by
duration so each gets a similar load. The sampler's `state_dict()` (epoch, position) lets a run resume exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


class DurationBatchSampler:
    """Global batches whose audio seconds <= max_seconds * world and rows * longest row <= max_tokens * world.

    Records are shuffled, then sorted by length inside pools of about `bucket_pool` batches so a batch holds
    similar lengths (little padding), then the batches themselves are shuffled. A global batch always has at least
    `world_size` records (one per process), even if that overruns a limit.
    """

    def __init__(
        self,
        durations: Sequence[float],
        token_counts: Sequence[int],
        *,
        max_seconds: float,
        max_tokens: int,
        max_size: int,
        world_size: int = 1,
        bucket_pool: int = 64,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        if len(durations) != len(token_counts):
            raise ValueError(f"{len(durations)} durations but {len(token_counts)} token counts")
        if len(durations) < world_size:
            raise ValueError(f"{len(durations)} records cannot feed {world_size} processes; add data or processes")
        self.durations = np.asarray(durations, dtype=np.float64)
        self.token_counts = np.asarray(token_counts, dtype=np.int64)
        self.world_size = world_size
        self.max_seconds = max_seconds * world_size
        self.max_tokens = max_tokens * world_size
        self.max_size = max_size * world_size
        self.bucket_pool = bucket_pool
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.position = 0  # batches of the current epoch already handed out
        self._cache: tuple[int, list[list[int]]] | None = None

    def batches(self, epoch: int) -> list[list[int]]:
        """The global batches of an epoch (deterministic in seed and epoch)."""
        if self._cache and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.durations)) if self.shuffle else np.arange(len(self.durations))
        pool = max(self.max_size * self.bucket_pool, 1)
        result: list[list[int]] = []
        for start in range(0, len(order), pool):
            chunk = order[start:start + pool]
            chunk = chunk[np.lexsort((self.durations[chunk], self.token_counts[chunk]))]
            result += self._cut(chunk)
        if len(result) > 1 and len(result[-1]) < self.world_size:  # a tail too small to share: merge it
            result[-2] += result.pop()
        if self.shuffle:
            result = [result[i] for i in rng.permutation(len(result))]
        self._cache = (epoch, result)
        return result

    def _cut(self, indices: np.ndarray) -> list[list[int]]:
        batches: list[list[int]] = []
        current: list[int] = []
        seconds = 0.0
        longest = 0
        for index in indices.tolist():
            tokens = int(self.token_counts[index])
            fits = (seconds + self.durations[index] <= self.max_seconds
                    and max(longest, tokens) * (len(current) + 1) <= self.max_tokens
                    and len(current) < self.max_size)
            if current and not fits and len(current) >= self.world_size:
                batches.append(current)
                current, seconds, longest = [], 0.0, 0
            current.append(index)
            seconds += float(self.durations[index])
            longest = max(longest, tokens)
        if current:
            batches.append(current)
        return batches

    def __len__(self) -> int:
        return len(self.batches(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        """Global batches forever, epoch after epoch, from the saved position."""
        while True:
            epoch_batches = self.batches(self.epoch)
            while self.position < len(epoch_batches):
                batch = epoch_batches[self.position]
                self.position += 1
                yield batch
            self.epoch += 1
            self.position = 0

    def shard(self, batch: list[int], rank: int) -> list[int]:
        """This process's part of a global batch: dealt out in order of duration for balanced loads."""
        by_length = sorted(batch, key=lambda i: (self.durations[i], self.token_counts[i], i))
        return sorted(by_length[rank::self.world_size])

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "records": len(self.durations)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("records") != len(self.durations) or state.get("seed") != self.seed:
            raise ValueError(
                f"the checkpoint's sampler saw {state.get('records')} records with seed {state.get('seed')}, this run "
                f"has {len(self.durations)} with seed {self.seed}: the data or seed changed, so it cannot resume "
                "exactly"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
