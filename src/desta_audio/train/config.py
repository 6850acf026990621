"""Typed training configuration: a YAML file plus `section.key=value` overrides; unknown keys are an error.

Defaults reproduce the release's recipe (SPEC section 6): adapter only, AdamW lr 1e-4, betas (0.9, 0.98),
weight decay 0.01, cosine schedule with 5,000 warmup steps, gradient clip 1.0, bf16 on GPU.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


_SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


class ConfigError(ValueError):
    """A training configuration that cannot be used, with the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelSection(_Section):
    base: str = "desta-tiny"  # preset name, adapter folder or hub id (see `desta models list`)
    factory: str | None = None  # "package.module:function" returning a DeSTAModel (custom builds, tests)
    factory_kwargs: dict[str, Any] = Field(default_factory=dict)
    init_adapter: str | None = None  # adapter folder to start from instead of the base's weights
    fresh_adapter: bool = False  # a newly initialised adapter, not the base's trained one (training from scratch)
    dtype: str | None = None  # float32 / bfloat16; default: float32 on CPU, bfloat16 on GPU
    asr: bool = False  # transcribe audios whose record has no transcript (the release trains on record text)
    overrides: dict[str, Any] = Field(default_factory=dict)  # DeSTAConfig fields, e.g. qformer_dropout


class LoraSection(_Section):
    """LoRA on the LLM (the release's code has it; its checkpoint does not use it)."""

    enabled: bool = False
    rank: int = Field(16, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    targets: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])


class EncoderSection(_Section):
    """Whisper encoder training. Anything but `frozen` disables the feature cache (the taps change)."""

    mode: Literal["frozen", "lora", "full"] = "frozen"
    lora_rank: int = Field(8, gt=0)
    lora_alpha: int = Field(16, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])


class FreezeSection(_Section):
    """Regexes over parameter names (`re.search`), applied after the mode defaults: `trainable` first, then
    `frozen`, so `frozen` wins."""

    trainable: list[str] = Field(default_factory=list)
    frozen: list[str] = Field(default_factory=list)


class DataSection(_Section):
    train: str  # JSONL file, folder of JSONL shards, or a `desta data` output folder
    validation: str | None = None
    val_fraction: float = Field(0.0, ge=0, lt=1)  # held out from `train` (by record key) when no validation set
    audio_root: str | None = None  # relative audio paths resolve here (default: beside the JSONL file)
    max_records: int | None = Field(None, gt=0)


class BatchingSection(_Section):
    """Batches are filled up to a total audio duration and a padded token count, not a fixed count."""

    max_audio_seconds: float = Field(240.0, gt=0)
    max_tokens: int = Field(8192, gt=0)  # rows x longest row, i.e. what the LLM actually processes
    max_size: int = Field(12, gt=0)  # per process, as the release's 12 per GPU
    bucket_pool: int = Field(64, gt=0)  # batches' worth of records sorted by length together before cutting
    shuffle: bool = True


class OptimSection(_Section):
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(5000, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    grad_accum: int = Field(1, gt=0)


class RunSection(_Section):
    output_dir: str = "runs/desta"
    epochs: float = Field(5.0, gt=0)
    max_steps: int | None = Field(None, gt=0)  # overrides epochs
    seed: int = 42
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    log_every: int = Field(10, gt=0)
    val_every: int | None = Field(500, gt=0)  # also validates at the end when a validation split exists
    save_every: int | None = Field(500, gt=0)  # also saves at the end
    keep_checkpoints: int = Field(2, gt=0)
    resume: str = "auto"  # auto (latest checkpoint of output_dir), never, or a checkpoint folder
    max_bad_steps: int = Field(3, gt=0)  # consecutive non-finite steps before giving up
    stop_after_steps: int | None = Field(None, gt=0)  # end this invocation early (the schedule is unchanged)
    tensorboard: bool = True  # when the tensorboard package is installed
    progress: bool = True


class CacheSection(_Section):
    """Frozen-encoder features computed once: (taps, 1500, d_model) per 30 s window."""

    enabled: bool = True
    dir: str | None = None  # default: <output_dir>/feature-cache
    dtype: Literal["float16", "float32"] = "float16"
    max_gb: float | None = Field(None, gt=0)  # audios beyond the bound are encoded on the fly
    shard_windows: int = Field(256, gt=0)


class ValidationSection(_Section):
    max_samples: int = Field(256, gt=0)  # held-out records scored by loss
    generate_samples: int = Field(32, ge=0)  # of which this many are answered greedily and scored
    max_new_tokens: int = Field(128, gt=0)


class DistributedSection(_Section):
    strategy: Literal["ddp", "fsdp"] = "ddp"  # fsdp shards the LLM's layers (and their LoRA): backbones too big per GPU
    backend: Literal["auto", "nccl", "gloo"] = "auto"


class TrainConfig(_Section):
    model: ModelSection = Field(default_factory=ModelSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    encoder: EncoderSection = Field(default_factory=EncoderSection)
    freeze: FreezeSection = Field(default_factory=FreezeSection)
    data: DataSection
    batching: BatchingSection = Field(default_factory=BatchingSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    run: RunSection = Field(default_factory=RunSection)
    cache: CacheSection = Field(default_factory=CacheSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.encoder.mode != "frozen" and self.cache.enabled:
            # Cached taps would be stale after the first update; say so rather than silently ignoring the cache.
            raise ValueError("encoder.mode is not 'frozen': the feature cache cannot be used; set cache.enabled=false")
        return self

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache.dir) if self.cache.dir else Path(self.run.output_dir) / "feature-cache"


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """["optim.lr=2e-4", "lora.enabled=true"] -> nested dict; values are parsed as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. optim.lr=2e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({error.problem})") from None
        if isinstance(value, str):
            value = _number(value)
        target = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {item!r}: {part!r} is set both as a value and as a section")
        target[parts[-1]] = value
    return nested


def _number(text: str) -> Any:
    """YAML 1.1 reads '2e-4' (no dot) as a string; read scientific notation as the number it is."""
    return float(text) if _SCIENTIFIC.match(text.strip()) else text


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(raw: dict[str, Any], overrides: list[str] | None = None, *, source: str = "config") -> TrainConfig:
    merged = _merge(raw or {}, parse_overrides(overrides or []))
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as error:
        problems = []
        for issue in error.errors():
            where = ".".join(str(p) for p in issue["loc"]) or "(top level)"
            hint = " (unknown key: check the spelling against configs/train_tiny.yaml)" \
                if issue["type"] == "extra_forbidden" else ""
            problems.append(f"  {where}: {issue['msg']}{hint}")
        raise ConfigError(f"{source}: invalid training configuration:\n" + "\n".join(problems)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config and apply `section.key=value` overrides. Relative data/output paths stay relative to the
    working directory (as on the command line)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file (see configs/train_tiny.yaml for an example)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, data, optim, ...), got {type(raw).__name__}")
    return build_config(raw, overrides, source=str(path))


def dump_config(config: TrainConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
