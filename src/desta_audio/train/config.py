"""Typed training configuration: a YAML file plus `section.key=value` overrides; unknown keys are an error.

Defaults reproduce the release's recipe (SPEC section 6): adapter only, AdamW lr 1e-4, betas (0.9, 0.98),
weight decay 0.01, cosine schedule with 5,000 warmup steps, gradient clip 1.0, bf16 on GPU.
"""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from desta_audio.messages import yaml_problem


_BETA = Annotated[float, Field(ge=0, lt=1)]  # what AdamW accepts; refused here, before the model loads
_SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


class ConfigError(ValueError):
    """A training configuration that cannot be used, with the offending key."""


def _kinds(annotation: Any) -> set[Any]:
    """The plain types a field takes: `int | None` -> {int, NoneType}, `tuple[float, float]` -> {tuple}."""
    if get_origin(annotation) in (Union, types.UnionType):
        return set().union(*(_kinds(a) for a in get_args(annotation)))
    return {get_origin(annotation) or annotation}


def _has_bool(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @field_validator("*", mode="before")
    @classmethod
    def _plain_types(cls, value: Any, info: ValidationInfo) -> Any:
        """Pydantic's lax mode reads true as 1 for a number and refuses 2024 for a text field; do the reverse."""
        kinds = _kinds(cls.model_fields[info.field_name].annotation)
        if kinds & {int, float, tuple} and _has_bool(value):
            raise ValueError("expected a number, got a boolean (YAML also reads yes/no/on/off as booleans)")
        if str in kinds and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # a name or path that YAML read as a number, e.g. output_dir: 2024
        return value


class ModelSection(_Section):
    base: str = "desta-tiny"  # preset name, adapter folder or hub id (see `desta models list`)
    factory: str | None = None  # "package.module:function" returning a DeSTAModel (custom builds, tests)
    factory_kwargs: dict[str, Any] = Field(default_factory=dict)
    init_adapter: str | None = None  # adapter folder to start from instead of the base's weights
    fresh_adapter: bool = False  # a newly initialised adapter, not the base's trained one (training from scratch)
    dtype: str | None = None  # float32 / bfloat16; default: float32 on CPU, bfloat16 on GPU
    asr: bool = False  # transcribe audios whose record has no transcript (the release trains on record text)
    overrides: dict[str, Any] = Field(default_factory=dict)  # DeSTAConfig fields, e.g. qformer_dropout

    @field_validator("overrides")
    @classmethod
    def _known_fields(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        if not overrides:
            return overrides
        import inspect

        from desta_audio.config import DeSTAConfig

        defaults = DeSTAConfig()
        unknown = sorted(key for key in overrides if not hasattr(defaults, key))
        if unknown:
            fields = [name for name in inspect.signature(DeSTAConfig.__init__).parameters
                      if name not in ("self", "kwargs")]
            raise ValueError(f"unknown DeSTAConfig field(s) {', '.join(unknown)}; the fields are {', '.join(fields)}")
        return overrides


class LoraSection(_Section):
    """LoRA on the LLM (the release's code has it; its checkpoint does not use it)."""

    enabled: bool = False
    rank: int = Field(16, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    targets: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"], min_length=1)


class EncoderSection(_Section):
    """Whisper encoder training. Anything but `frozen` needs `cache.enabled=false` (cached taps would go stale)."""

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

    @field_validator("trainable", "frozen")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"{pattern!r} is not a valid regular expression ({error})") from None
        return patterns


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
    betas: tuple[_BETA, _BETA] = (0.9, 0.98)
    eps: float = Field(1e-8, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(5000, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    grad_accum: int = Field(1, gt=0)


class RunSection(_Section):
    output_dir: str = "runs/desta"
    epochs: float = Field(5.0, gt=0)
    max_steps: int | None = Field(None, gt=0)  # overrides epochs
    seed: int = Field(42, ge=0, lt=2**31)  # numpy takes 0 <= seed + process rank < 2**32
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    log_every: int = Field(10, gt=0)
    val_every: int | None = Field(500, gt=0)  # also validates at the end when a validation split exists
    save_every: int | None = Field(500, gt=0)  # also saves at the end
    keep_checkpoints: int = Field(2, gt=0)
    # auto: the latest checkpoint of output_dir; never: start over (an earlier run there is moved aside);
    # or a checkpoint folder (output_dir/checkpoints/step-N)
    resume: str = "auto"
    max_bad_steps: int = Field(3, gt=0)  # consecutive non-finite steps before giving up
    stop_after_steps: int | None = Field(None, gt=0)  # end this invocation early (the schedule is unchanged)
    tensorboard: bool = True  # when the tensorboard package is installed
    progress: bool = True

    @field_validator("resume")
    @classmethod
    def _resume_target(cls, resume: str) -> str:
        if resume in ("auto", "never"):
            return resume
        from desta_audio.train.checkpoint import STATE_FILE

        if not (Path(resume) / STATE_FILE).is_file():
            raise ValueError(f"{resume!r} is neither auto, never nor a complete checkpoint folder (a step-N folder "
                             f"holding {STATE_FILE}, under <output_dir>/checkpoints)")
        return resume


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
    """["optim.lr=2e-4", "lora.enabled=true"] -> nested dict; values are parsed as YAML scalars/lists, except
    that a text field (a path, a name) keeps the text as typed: run.output_dir=2024 is the folder "2024"."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. optim.lr=2e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({error.problem})") from None
        parts = key.strip().split(".")
        if str in _kinds(_field_annotation(parts)):
            value = value if value is None or isinstance(value, str) else raw.strip()
        elif isinstance(value, str):
            value = _number(value)
        target = nested
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {item!r}: {part!r} is set both as a value and as a section")
        target[parts[-1]] = value
    return nested


def _field_annotation(parts: list[str]) -> Any:
    """The declared type of the field a dotted key names (None for unknown keys and keys inside dict fields)."""
    section: Any = TrainConfig
    for part in parts:
        if not (isinstance(section, type) and issubclass(section, BaseModel)) or part not in section.model_fields:
            return None
        section = section.model_fields[part].annotation
    return section


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


def _known_keys(location: tuple[Any, ...]) -> str:
    """The keys the unknown key's section does take (the example configs set only the common ones)."""
    section = _field_annotation([str(part) for part in location[:-1]])
    if not (isinstance(section, type) and issubclass(section, BaseModel)):
        return " (unknown key)"
    owner = ".".join(str(part) for part in location[:-1]) or "the config"
    return f" (unknown key; {owner} takes: {', '.join(section.model_fields)})"


def build_config(raw: dict[str, Any], overrides: list[str] | None = None, *, source: str = "config") -> TrainConfig:
    merged = _merge(raw or {}, parse_overrides(overrides or []))
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as error:
        problems = []
        for issue in error.errors():
            where = ".".join(str(p) for p in issue["loc"]) or "(top level)"
            hint = _known_keys(issue["loc"]) if issue["type"] == "extra_forbidden" else ""
            problems.append(f"  {where}: {issue['msg'].removeprefix('Value error, ')}{hint}")
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
        raise ConfigError(f"{path}: not valid YAML ({yaml_problem(error)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, data, optim, ...), got {type(raw).__name__}")
    return build_config(raw, overrides, source=str(path))


def dump_config(config: TrainConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
