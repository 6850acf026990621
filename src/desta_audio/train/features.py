"""Feature cache: the frozen encoder's tapped hidden states and the transcripts, computed once.

Per 30 s window the cache keeps the tapped layers' states, shape (taps, 1500, d_model), padding frames included
(the Q-Former cross-attends to all 1500 frames, as the release does). Cost per window: taps * 1500 * d_model *
bytes, e.g. whisper-base in float16: 4 * 1500 * 512 * 2 B = 6.1 MB; whisper-large-v3: 15.4 MB.

Layout: `<root>/<fingerprint>/shard-00000.bin` (raw arrays, memory-mapped for reading) + `index.json` (audio key ->
shard, offset, windows, transcript). The fingerprint covers the encoder's config and weights, the tap layers, the
feature extractor, the storage dtype and whether transcripts come from ASR, so a changed encoder never reuses a
stale cache. An audio's key covers its path, size, modification time and the record's transcript. Shards are
written under a temporary name and renamed, then the index is replaced atomically: an interrupted build keeps
every finished shard and resumes from there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from desta_audio.train.records import RecordError

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
FORMAT_VERSION = 1
STORAGE_DTYPES = {"float16": np.float16, "float32": np.float32}


class CacheError(RuntimeError):
    """A feature cache that does not match the model or is damaged."""


@dataclass
class CachedAudio:
    taps: np.ndarray  # (windows, taps, frames, d_model), memory-mapped
    transcript: str


def audio_key(path: str | Path, text: str | None) -> str:
    """Identity of one audio as the cache sees it: the file (path, size, mtime) and the record's transcript."""
    stat = os.stat(path)
    identity = [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, text]
    return hashlib.sha1(json.dumps(identity).encode()).hexdigest()


def encoder_fingerprint(model: Any, dtype: str, asr: bool) -> str:
    """Hash of everything that determines the cached values."""
    digest = hashlib.sha256()
    perception = model.perception
    digest.update(perception.whisper.config.to_json_string(use_diff=False).encode())
    extractor = {k: v for k, v in model.feature_extractor.to_dict().items() if not isinstance(v, (np.ndarray, list))}
    digest.update(json.dumps(
        {"taps": perception.tap_layers, "dtype": dtype, "asr": asr, "extractor": extractor,
         "encoder_dtype": str(model.encoder_dtype), "version": FORMAT_VERSION}, sort_keys=True, default=str,
    ).encode())
    with torch.no_grad():
        for name, parameter in sorted(perception.whisper.named_parameters()):
            flat = parameter.detach().flatten()
            sample = flat[:: max(1, flat.numel() // 65536)]  # strided: every layer contributes, hashing stays cheap
            digest.update(name.encode())
            digest.update(sample.float().cpu().numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Sharded memory-mapped store of tapped encoder states, keyed by `audio_key`."""

    def __init__(self, root: str | Path, fingerprint: str, window_shape: Sequence[int], *, dtype: str = "float16",
                 max_bytes: int | None = None, shard_windows: int = 256) -> None:
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"cache dtype {dtype!r}: use one of {sorted(STORAGE_DTYPES)}")
        self.directory = Path(root) / fingerprint[:20]
        self.fingerprint = fingerprint
        self.window_shape = tuple(int(s) for s in window_shape)
        self.dtype = np.dtype(STORAGE_DTYPES[dtype])
        self.max_bytes = max_bytes
        self.shard_windows = shard_windows
        self.entries: dict[str, dict[str, Any]] = {}
        self.shards: dict[int, int] = {}  # shard -> windows
        self._maps: dict[int, np.ndarray] = {}
        self._open: tuple[int, Any, int] | None = None  # (shard, file handle, windows written)
        self._pending: dict[str, dict[str, Any]] = {}
        self._load_index()

    # ----- geometry -----

    @property
    def bytes_per_window(self) -> int:
        return int(np.prod(self.window_shape)) * self.dtype.itemsize

    @property
    def size_bytes(self) -> int:
        written = sum(self.shards.values()) + (self._open[2] if self._open else 0)
        return written * self.bytes_per_window

    # ----- reading -----

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> CachedAudio:
        entry = self.entries[key]
        shard = self._map(entry["shard"])
        return CachedAudio(shard[entry["offset"]:entry["offset"] + entry["windows"]], entry["transcript"])

    def _map(self, shard: int) -> np.ndarray:
        if shard not in self._maps:
            path = self._shard_path(shard)
            windows = self.shards[shard]
            expected = windows * self.bytes_per_window
            if not path.exists() or path.stat().st_size != expected:
                raise CacheError(f"{path}: missing or truncated ({expected} bytes expected); delete "
                                 f"{self.directory} to rebuild the feature cache")
            self._maps[shard] = np.memmap(path, dtype=self.dtype, mode="r", shape=(windows, *self.window_shape))
        return self._maps[shard]

    def _shard_path(self, shard: int) -> Path:
        return self.directory / f"shard-{shard:05d}.bin"

    def _load_index(self) -> None:
        path = self.directory / INDEX_FILE
        if not path.exists():
            return
        index = json.loads(path.read_text(encoding="utf-8"))
        if index.get("fingerprint") != self.fingerprint or tuple(index.get("window_shape", ())) != self.window_shape \
                or index.get("dtype") != self.dtype.name:
            raise CacheError(f"{path}: written for another encoder, tap layers or dtype; delete {self.directory}")
        self.entries = index["entries"]
        self.shards = {int(k): int(v) for k, v in index["shards"].items()}

    # ----- writing -----

    def can_add(self, windows: int) -> bool:
        return self.max_bytes is None or self.size_bytes + windows * self.bytes_per_window <= self.max_bytes

    def add(self, key: str, taps: np.ndarray, transcript: str) -> bool:
        """Append one audio's states (windows, taps, frames, d); False (nothing written) when over the bound."""
        if tuple(taps.shape[1:]) != self.window_shape:
            raise CacheError(f"states of shape {tuple(taps.shape[1:])} per window; "
                             f"this cache holds {self.window_shape}")
        if key in self.entries or key in self._pending:
            return True
        if not self.can_add(len(taps)):
            return False
        if self._open is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            shard = max(self.shards, default=-1) + 1
            self._open = (shard, open(self._shard_path(shard).with_suffix(".tmp"), "wb"), 0)
        shard, handle, written = self._open
        handle.write(np.ascontiguousarray(taps, dtype=self.dtype).tobytes())
        self._pending[key] = {"shard": shard, "offset": written, "windows": len(taps), "transcript": transcript}
        self._open = (shard, handle, written + len(taps))
        if written + len(taps) >= self.shard_windows:
            self.flush()
        return True

    def flush(self) -> None:
        """Seal the open shard (rename into place) and publish its entries in the index."""
        if self._open is None:
            return
        shard, handle, written = self._open
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        os.replace(self._shard_path(shard).with_suffix(".tmp"), self._shard_path(shard))
        self.shards[shard] = written
        self.entries.update(self._pending)
        self._pending, self._open = {}, None
        self._write_index()

    def _write_index(self) -> None:
        index = {"version": FORMAT_VERSION, "fingerprint": self.fingerprint, "window_shape": list(self.window_shape),
                 "dtype": self.dtype.name, "bytes_per_window": self.bytes_per_window,
                 "shards": {str(k): v for k, v in self.shards.items()}, "entries": self.entries}
        temporary = self.directory / (INDEX_FILE + ".tmp")
        temporary.write_text(json.dumps(index), encoding="utf-8")
        os.replace(temporary, self.directory / INDEX_FILE)


def open_cache(model: Any, root: str | Path, *, dtype: str = "float16", max_gb: float | None = None,
               shard_windows: int = 256) -> FeatureCache:
    whisper_config = model.perception.whisper.config
    shape = (len(model.perception.tap_layers), whisper_config.max_source_positions, whisper_config.d_model)
    cache = FeatureCache(root, encoder_fingerprint(model, dtype, model.use_asr), shape, dtype=dtype,
                         max_bytes=int(max_gb * 2**30) if max_gb else None, shard_windows=shard_windows)
    return cache


def encode_taps(model: Any, windows: list[np.ndarray], *, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor,
                                                                                     torch.Tensor]:
    """16 kHz windows -> (taps (windows, taps, frames, d), final encoder states, mel features)."""
    features = model._features(windows)
    with torch.set_grad_enabled(grad):
        taps, final = model.perception.encode(features)
    return torch.stack(taps, dim=1), final, features


def transcripts_for(model: Any, items: Sequence[Any], arrays: list[np.ndarray], windows_per_item: list[int],
                    features: torch.Tensor, final: torch.Tensor) -> list[str]:
    """The record's transcript where it has one; otherwise ASR (if the model has it) or the blank transcript."""
    return model.resolve_transcripts([item.text for item in items], arrays, windows_per_item, final)


def load_item_audio(item: Any) -> np.ndarray:
    """A record's audio, decoded; a file that cannot be decoded is reported with the record holding it."""
    from desta_audio.audio import AudioError, load_audio

    try:
        return load_audio(item.path)
    except AudioError as error:
        where = getattr(item, "where", "")
        raise RecordError(f"{where}: {error}" if where else str(error)) from None


class AudioFeatures:
    """Tapped encoder states and transcripts for records' audios: from the cache where present, else encoded."""

    def __init__(self, model: Any, cache: FeatureCache | None, *, encoder_trainable: bool) -> None:
        self.model = model
        self.cache = cache
        self.encoder_trainable = encoder_trainable
        self._keys: dict[tuple[str, str | None], str] = {}
        self._loaded: dict[str, np.ndarray] = {}

    def key(self, item: Any) -> str:
        ident = (item.path, item.text)
        if ident not in self._keys:
            self._keys[ident] = audio_key(item.path, item.text)
        return self._keys[ident]

    def cached(self, item: Any) -> bool:
        return self.cache is not None and self.key(item) in self.cache

    def preload(self, records: Sequence[Any]) -> None:
        """Decode the records' uncached audios now, for the next call: a bad file then stops the step before any
        collective operation starts (see Trainer.together)."""
        self._loaded = {item.path: load_item_audio(item) for record in records for item in record.audios
                        if not self.cached(item)}

    def __call__(self, records: Sequence[Any]) -> tuple[torch.Tensor | None, list[int], list[str]]:
        """-> (taps (windows, taps, frames, d) in audio order, windows per audio, transcripts); no taps for
        records without audio."""
        from desta_audio.audio import split_windows

        items = [item for record in records for item in record.audios]
        device = self.model.device
        parts: list[torch.Tensor | None] = [None] * len(items)
        transcripts: list[str | None] = [None] * len(items)
        raw: list[int] = []
        for i, item in enumerate(items):
            if self.cached(item):
                cached = self.cache.get(self.key(item))
                # A copy: the memmap is read-only (and float16 on disk).
                parts[i] = torch.from_numpy(np.array(cached.taps, dtype=np.float32)).to(device)
                transcripts[i] = cached.transcript
            else:
                raw.append(i)
        loaded, self._loaded = self._loaded, {}
        if raw:
            arrays = [loaded[items[i].path] if items[i].path in loaded else load_item_audio(items[i]) for i in raw]
            windows = [split_windows(a) for a in arrays]
            taps, final, features = encode_taps(self.model, [w for ws in windows for w in ws],
                                                grad=self.encoder_trainable and torch.is_grad_enabled())
            with torch.no_grad():
                texts = transcripts_for(self.model, [items[i] for i in raw], arrays, [len(w) for w in windows],
                                        features, final.detach())
            cursor = 0
            for i, per_audio, text in zip(raw, windows, texts):
                parts[i] = taps[cursor:cursor + len(per_audio)]
                transcripts[i] = text
                cursor += len(per_audio)
        taps = torch.cat(parts) if parts else None  # type: ignore[arg-type]
        return taps, [len(p) for p in parts], transcripts  # type: ignore[arg-type, misc]


def fill_cache(model: Any, cache: FeatureCache, items: Sequence[Any], *, encoder_batch: int = 8,
               progress: bool = True) -> int:
    """Encode every audio (AudioItem: path, text) not yet cached. Returns how many were added."""
    from tqdm import tqdm

    todo: dict[str, Any] = {}
    for item in items:
        key = audio_key(item.path, item.text)
        if key not in cache:
            todo.setdefault(key, item)
    if not todo:
        return 0
    log.info("feature cache %s: encoding %d audios (%.1f MB per 30 s window)", cache.directory, len(todo),
             cache.bytes_per_window / 1e6)
    model.eval()
    bar = tqdm(total=len(todo), desc="feature cache", unit="audio", disable=not progress, leave=False)
    try:
        added, full = _encode_into(model, cache, todo, encoder_batch, bar)
    finally:  # also when a bad file stops the build: the audios encoded so far are kept
        bar.close()
        cache.flush()
    if full:
        log.warning("feature cache reached its bound (cache.max_gb); the remaining %d audios are encoded on the "
                    "fly during training", len(todo) - added)
    return added


def _encode_into(model: Any, cache: FeatureCache, todo: dict[str, Any], encoder_batch: int,
                 bar: Any) -> tuple[int, bool]:
    """Encode and add `todo` (key -> AudioItem) in groups. Returns (how many were added, whether it got full)."""
    from desta_audio.audio import split_windows

    added = 0
    keys = list(todo)
    for start in range(0, len(keys), encoder_batch):
        group = keys[start:start + encoder_batch]
        arrays = [load_item_audio(todo[k]) for k in group]
        windows = [split_windows(a) for a in arrays]
        with torch.inference_mode():
            taps, final, features = encode_taps(model, [w for ws in windows for w in ws])
            texts = transcripts_for(model, [todo[k] for k in group], arrays, [len(w) for w in windows], features, final)
        states = taps.float().cpu().numpy()
        cursor = 0
        for key, per_audio, text in zip(group, windows, texts):
            if not cache.add(key, states[cursor:cursor + len(per_audio)], text):
                return added, True
            cursor += len(per_audio)
            added += 1
        bar.update(len(group))
    return added, False
