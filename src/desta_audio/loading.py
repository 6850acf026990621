"""Assemble a DeSTAModel from a preset, an adapter folder or a hub id, plus its Whisper and LLM components."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from desta_audio.config import DeSTAConfig
from desta_audio.modeling import (
    ADAPTER_FILE,
    CONFIG_FILE,
    ENCODER_FILE,
    ENCODER_LORA_METADATA,
    CheckpointError,
    DeSTAModel,
    read_config,
)
from desta_audio.precision import resolve_dtype

log = logging.getLogger(__name__)

ADAPTER_FILES = (CONFIG_FILE, ADAPTER_FILE, ENCODER_FILE)  # what an adapter folder or hub repo holds
# Said wherever a hub download was needed and failed.
HUB_ADVICE = ("it needs the network once (unset HF_HUB_OFFLINE; `desta models prepare PRESET` fetches a preset), "
              "or give a local folder or an offline preset (`desta models list`)")

# An adapter that has not been trained yet starts from this seed, so its (meaningless) outputs are reproducible.
UNTRAINED_SEED = 0
DEVICE_TYPES = ("cpu", "cuda", "mps")


class ModelLoadError(ValueError):
    """A model, component or device that cannot be used here; the message says what to do instead."""


def user_load_errors() -> tuple[type[Exception], ...]:
    """What loading a model the user named raises for their mistakes: CLIs show these as one line, not a traceback."""
    from desta_audio.zoo import PackagedWeightsError

    return ModelLoadError, CheckpointError, PackagedWeightsError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to load on (None: cuda when available, else cpu), checked before any weight is read."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        resolved = None
    if resolved is None or resolved.type not in DEVICE_TYPES:
        raise ModelLoadError(f"device {str(device)!r} is not one of {', '.join(DEVICE_TYPES)} (cuda:N for one GPU)")
    available = _device_count(resolved.type)
    if available == 0:
        raise ModelLoadError(f"device {str(device)!r}: this machine's torch has no usable {resolved.type} device; "
                             "use --device cpu (or install a torch build for it)")
    if resolved.index is not None and resolved.index >= available:
        raise ModelLoadError(f"device {str(device)!r}: only {available} {resolved.type} device(s) here")
    return resolved


def _device_count(kind: str) -> int:
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "mps":
        return int(torch.backends.mps.is_available())
    return 1


def load_model(
    reference: str | Path,
    *,
    encoder: str | Path | None = None,
    llm: str | Path | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    asr: bool = True,
    fresh_adapter: bool = False,
    **config_overrides: Any,
) -> DeSTAModel:
    """`fresh_adapter`: a newly initialised (seeded) adapter instead of the reference's trained weights, e.g. to
    train a preset's adapter from scratch; a preset then uses its own connector settings (`Preset.adapter_config`)."""
    from desta_audio import zoo

    device = resolve_device(device)
    adapter_dir: Path | None = None
    if str(reference) in zoo.PRESETS:
        named = zoo.get_preset(str(reference))
        preset = zoo.prepare(str(reference))
        # The config names the components as the preset does (packaged names, hub ids), not this machine's cache
        # folders, so an adapter trained from it loads anywhere.
        config = DeSTAConfig(encoder_model_id=str(named.encoder), llm_model_id=str(named.llm),
                             **getattr(preset, "adapter_config", {}))
        if preset.adapter is not None and not fresh_adapter:
            adapter_dir = _preset_adapter_dir(str(reference), preset.adapter)
            config = read_config(adapter_dir)
        encoder, llm = encoder or preset.encoder, llm or preset.llm
    else:
        adapter_dir = _local_dir(reference)
        config = read_config(adapter_dir)
    for key, value in config_overrides.items():
        if not hasattr(config, key):
            raise TypeError(f"unknown DeSTAConfig field {key!r}")
        setattr(config, key, value)

    encoder_path = _component(encoder or config.encoder_model_id)
    llm_path = _component(llm or config.llm_model_id)
    dtype = resolve_dtype(dtype, device)
    model = build_model(config, encoder_path, llm_path, dtype=dtype, asr=asr)
    if fresh_adapter:
        log.info("%s: starting from a newly initialised adapter", reference)
    elif adapter_dir is not None and (adapter_dir / ADAPTER_FILE).exists():
        from safetensors.torch import load_file

        model.load_adapter_state_dict(load_file(str(adapter_dir / ADAPTER_FILE)))
        if (adapter_dir / ENCODER_FILE).exists():
            load_trained_encoder(model, adapter_dir / ENCODER_FILE)
    else:
        log.warning("%s has no trained adapter yet: answers use the transcript, not the sound itself", reference)
    return model.to(device).eval()


def build_model(config: DeSTAConfig, encoder_path: str | Path, llm_path: str | Path, *,
                dtype: torch.dtype = torch.float32, asr: bool = True) -> DeSTAModel:
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    with _loading(encoder_path):
        whisper = WhisperForConditionalGeneration.from_pretrained(str(encoder_path), dtype=dtype)
        feature_extractor = WhisperFeatureExtractor.from_pretrained(str(encoder_path))
        whisper_tokenizer = AutoTokenizer.from_pretrained(str(encoder_path)) if asr else None
    with _loading(llm_path):
        llm_model = AutoModelForCausalLM.from_pretrained(str(llm_path), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(llm_path))
    vad = None
    if asr:
        from desta_audio.vad import load_vad

        vad = load_vad()
    with torch.random.fork_rng():
        torch.manual_seed(UNTRAINED_SEED)
        model = DeSTAModel(config, whisper=whisper, llm=llm_model, tokenizer=tokenizer,
                           feature_extractor=feature_extractor, whisper_tokenizer=whisper_tokenizer, vad=vad)
    model.connector.to(dtype)
    return model


def load_trained_encoder(model: DeSTAModel, path: str | Path) -> None:
    """Apply the encoder weights a training run saved beside its adapter (encoder.mode lora or full).

    Plain weights are copied; LoRA deltas are merged into the weights they adapt, so the model keeps its usual
    layout and gives the trained encoder's outputs. Strict: every key must name a weight of this model (with the
    same shape), and every LoRA module must have all its weights.
    """
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        state = {name: handle.get_tensor(name) for name in handle.keys()}
    encoder = model.perception.encoder
    prefix = "perception.whisper.model.encoder."
    adapted = sorted({name.split(".lora_")[0] for name in state if ".lora_" in name and name.startswith(prefix)})
    if adapted:
        if ENCODER_LORA_METADATA not in metadata:
            raise CheckpointError(f"{path}: encoder LoRA weights without their settings (metadata "
                                  f"{ENCODER_LORA_METADATA!r}), so they cannot be merged")
        from peft import LoraConfig, inject_adapter_in_model

        settings = json.loads(metadata[ENCODER_LORA_METADATA])
        inject_adapter_in_model(LoraConfig(r=settings["r"], lora_alpha=settings["lora_alpha"],
                                           use_rslora=settings.get("use_rslora", False),
                                           target_modules=[name[len(prefix):] for name in adapted]), encoder)
    parameters = dict(model.named_parameters())
    missing = sorted(name for name in parameters if name.startswith(prefix) and ".lora_" in name and name not in state)
    unexpected = sorted(set(state) - set(parameters))
    wrong = sorted(name for name in set(state) & set(parameters)
                   if tuple(state[name].shape) != tuple(parameters[name].shape))
    if missing or unexpected or wrong:
        details = [f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}" if missing else "",
                   f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}" if unexpected else "",
                   "shape mismatch " + ", ".join(f"{name}: file {tuple(state[name].shape)} vs model "
                                                 f"{tuple(parameters[name].shape)}" for name in wrong[:5])
                   if wrong else ""]
        raise CheckpointError(f"{path} does not match this model's encoder (was it trained on another Whisper?): "
                              + "; ".join(d for d in details if d))
    with torch.no_grad():
        for name, tensor in state.items():
            parameters[name].copy_(tensor)
    if adapted:
        from peft.tuners.lora import LoraLayer

        for name, module in list(encoder.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent, _, child = name.rpartition(".")
                setattr(encoder.get_submodule(parent), child, module.get_base_layer())
        encoder.__dict__.pop("peft_config", None)  # no adapter left: saving this model must not claim one
    log.info("encoder weights from %s (%d tensors%s)", path, len(state),
             f", LoRA merged into {len(adapted)} layers" if adapted else "")


def _component(reference: str | Path) -> str | Path:
    """A component's local folder or hub id; a bad name is a ModelLoadError (what zoo raises is a ValueError)."""
    from desta_audio import zoo

    try:
        return zoo.resolve_component(reference)
    except ValueError as error:
        raise ModelLoadError(str(error)) from None


@contextmanager
def _loading(component: str | Path) -> Iterator[None]:
    """Turn transformers' failure to find or read a component (OSError: offline hub, missing files) into a
    ModelLoadError that says what to do."""
    from safetensors import SafetensorError

    from desta_audio import zoo

    # A converted folder whose marker and file sizes are intact yet fails to load most likely had bytes changed
    # after conversion (or predates file checks): any error reading it names the command that checks and rebuilds it.
    cached = isinstance(component, Path) and component.parent == zoo.models_dir() and component.name in zoo.PACKAGED
    failures = (OSError, ValueError, SafetensorError) if cached else (OSError,)
    try:
        yield
    except failures as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if cached:
            raise ModelLoadError(f"{component}: cannot load this converted model ({reason}); it may be damaged: run "
                                 f"`desta models prepare {component.name}` to check and convert it again") from None
        if isinstance(component, Path):
            raise ModelLoadError(f"{component}: cannot load this model folder ({reason})") from None
        raise ModelLoadError(f"{component}: not in the local cache, and the Hugging Face hub download failed "
                             f"({reason}); {HUB_ADVICE}") from None


def _preset_adapter_dir(preset: str, adapter: str | Path) -> Path:
    """A preset's adapter: shipped in the package (a folder) or on the hub, where a failed download is no
    mistyped name and is reported as the preset's."""
    from desta_audio import zoo

    if isinstance(adapter, Path):
        return _local_dir(adapter)
    try:
        return zoo.download_from_hub(adapter, ADAPTER_FILES)
    except zoo.HubDownloadError as error:
        raise ModelLoadError(f"preset {preset}: {error}; it needs the network once (`desta models prepare "
                             f"{preset}` fetches it), or use an offline preset (`desta models list`)") from None


def _local_dir(reference: str | Path) -> Path:
    from desta_audio import zoo

    if not str(reference).strip():  # Path("") is the current folder
        raise ModelLoadError("the model name is empty; give a preset (`desta models list`), an adapter folder or "
                             "a hub id (owner/name)")
    path = Path(reference).expanduser()
    if path.is_dir():
        if not (path / CONFIG_FILE).exists():
            raise CheckpointError(f"{path}: no {CONFIG_FILE}; expected a DeSTA adapter folder")
        return path
    if path.exists():
        raise CheckpointError(f"{path}: expected a folder with {CONFIG_FILE} and {ADAPTER_FILE}, got a file")
    if str(reference).startswith((".", "/", "~")) or str(reference).count("/") > 1:
        raise ModelLoadError(f"{reference}: no such folder; give a DeSTA adapter folder, a preset "
                             "(`desta models list`) or a hub id (owner/name)")
    if str(reference).count("/") != 1:
        raise ModelLoadError(f"{reference}: not a preset ({', '.join(zoo.PRESETS)}), a folder, or a hub id "
                             "(owner/name)")
    try:
        return zoo.download_from_hub(str(reference), ADAPTER_FILES)
    except zoo.HubDownloadError as error:
        raise ModelLoadError(f"{error} (taken as a hub id: it is not a preset or a folder); {HUB_ADVICE}") from None
