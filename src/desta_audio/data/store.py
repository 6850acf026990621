"""Record schema and crash-safe sharded storage.

Layout of an output folder (readable by `datasets.load_dataset(folder)` thanks to the card's `configs` header):

    out/README.md                      dataset card: configs for `default` (data/) and `quarantine`
    out/generation.json                the settings of the run (backend, model, decoding, pool version...)
    out/data/shard-00000.jsonl         kept records
    out/quarantine/shard-00000.jsonl   rejected records, each with `quarantine_reason`

A shard is written whole to a hidden temp file, fsynced and renamed into place, so a shard either exists complete
or not at all. A key is done when it appears in any shard (kept or quarantined); a rerun skips done keys and
regenerates only what the interrupted shard held. Quarantine shards are written before their data shard, so a
crash between the two only means the kept part is regenerated: every key still ends up exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)

DATA_DIR = "data"
QUARANTINE_DIR = "quarantine"
_SHARD_PATTERN = re.compile(r"^shard-(\d{5,})\.jsonl$")

_CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/shard-*.jsonl
- config_name: quarantine
  data_files:
  - split: train
    path: quarantine/shard-*.jsonl
---
# Self-generated audio alignment data

Records written by `desta data generate`: `prompt` is an instruction from the prompt pool, `response` was written
by the generator named in each record's `provenance` from the clip's `seed_description`; `messages` is the training
chat (audio referenced by path in `audios`). Rejected records are in the `quarantine` config with a reason.
"""


class Decoding(BaseModel):
    model_config = ConfigDict(extra="forbid")

    do_sample: bool = True
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 512


class Provenance(BaseModel):
    """Everything needed to know where a target came from and to reproduce it."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    target_source: str  # "self" (backbone), "other-llm", or "template"
    backend: str
    generator: str  # model id / path / endpoint model name
    weights_sha256: str | None = None
    decoding: Decoding | None = None
    seed: int
    prompt_id: str
    prompt_category: str
    pool_version: str
    description_format_version: str
    system_prompt: str | None = None
    project_version: str
    finish_reason: str | None = None
    response_tokens: int | None = None
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


class Record(BaseModel):
    """One training sample; the released dataset's fields plus `key` (unique) and `provenance`."""

    model_config = ConfigDict(extra="allow")

    key: str
    id: str
    dataset: str
    seed_description: str
    prompt: str
    response: str
    messages: list[dict[str, Any]]
    provenance: Provenance
    quarantine_reason: str | None = None


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.jsonl"


class ShardStore:
    """Append-only store of records in atomically written JSONL shards."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.data_dir = self.root / DATA_DIR
        self.quarantine_dir = self.root / QUARANTINE_DIR
        for folder in (self.data_dir, self.quarantine_dir):
            folder.mkdir(parents=True, exist_ok=True)
            for leftover in folder.glob(".*.tmp"):  # a shard that was being written when the process died
                logger.info("removing partial shard %s", leftover)
                leftover.unlink()
        card = self.root / "README.md"
        if not card.exists():
            atomic_write_text(card, _CARD)

    def shard_paths(self, quarantine: bool = False) -> list[Path]:
        folder = self.quarantine_dir if quarantine else self.data_dir
        return sorted(p for p in folder.iterdir() if _SHARD_PATTERN.match(p.name))

    def next_shard_index(self) -> int:
        indices = [int(_SHARD_PATTERN.match(p.name).group(1)) for q in (False, True) for p in self.shard_paths(q)]
        return max(indices, default=-1) + 1

    def iter_rows(self, quarantine: bool = False) -> Iterator[dict[str, Any]]:
        for path in self.shard_paths(quarantine):
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        yield json.loads(line)

    def iter_records(self, quarantine: bool = False) -> Iterator[Record]:
        for row in self.iter_rows(quarantine):
            yield Record.model_validate(row)

    def completed_keys(self) -> set[str]:
        return {row["key"] for q in (False, True) for row in self.iter_rows(q)}

    def write_shard(self, kept: Iterable[Record], quarantined: Iterable[Record] = ()) -> int:
        """Write one shard (and its quarantine counterpart) atomically; returns the shard index."""
        index = self.next_shard_index()
        kept, quarantined = list(kept), list(quarantined)
        if quarantined:
            _atomic_write_lines(self.quarantine_dir / shard_name(index), (r.model_dump_json() for r in quarantined))
        if kept:
            _atomic_write_lines(self.data_dir / shard_name(index), (r.model_dump_json() for r in kept))
        return index

    def run_settings_history(self) -> list[dict[str, Any]]:
        path = self.root / "generation.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []

    def write_run_settings(self, settings: dict[str, Any]) -> None:
        """Settings of each run, appended to a history (a resumed run must share the record-shaping ones)."""
        history = [*self.run_settings_history(), settings]
        atomic_write_text(self.root / "generation.json", json.dumps(history, indent=2, ensure_ascii=False) + "\n")


def _atomic_write_lines(path: Path, lines: Iterable[str]) -> None:
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_writer(path) as handle:
        handle.write(text)


@contextmanager
def atomic_writer(path: str | Path, binary: bool = False) -> Iterator[IO[Any]]:
    """A handle whose content replaces `path` only when the block ends without error (hidden temp file, fsync,
    rename): a failed or interrupted write leaves the earlier file as it was."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temp.open("wb") if binary else temp.open("w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)
