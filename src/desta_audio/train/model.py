"""The model a run trains: a preset, adapter folder or factory, with the run's LoRA settings and start weights.
Settings the model cannot take are reported as configuration errors naming the key."""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from desta_audio.train.checkpoint import load_adapter
from desta_audio.train.config import ConfigError, TrainConfig


def build_model(config: TrainConfig, device: torch.device) -> Any:
    """The DeSTA model with the recipe's LoRA settings, on `device`."""
    source = f"model.factory {config.model.factory!r}" if config.model.factory else f"model.base {config.model.base!r}"
    try:
        model = _construct(config, device, lora=config.lora.enabled)
    except (ValueError, OSError) as error:
        if config.lora.enabled:
            # peft refuses targets that match nothing without naming the modules there are: look without LoRA.
            try:
                bare = _construct(config, device, lora=False)
            except (ValueError, OSError):
                bare = None
            if bare is not None:
                check_lora_targets(bare.llm, config.lora.targets)
        raise ConfigError(f"{source}: {error}") from None
    if config.lora.enabled:
        check_lora_targets(model.llm, config.lora.targets)
    model.to(device)
    if config.model.init_adapter:
        try:
            load_adapter(model, config.model.init_adapter)
        except (ValueError, OSError) as error:
            raise ConfigError(f"model.init_adapter {config.model.init_adapter!r}: {error}") from None
    return model


def _construct(config: TrainConfig, device: torch.device, *, lora: bool) -> Any:
    overrides = dict(config.model.overrides)
    if lora:
        overrides.update(use_lora=True, lora_rank=config.lora.rank, lora_alpha=config.lora.alpha,
                         lora_dropout=config.lora.dropout, lora_target_modules=list(config.lora.targets))
    if config.model.factory:
        module_name, _, function = config.model.factory.partition(":")
        if not function:
            raise ValueError("expected 'package.module:function'")
        return getattr(importlib.import_module(module_name), function)(**config.model.factory_kwargs, **overrides)
    from desta_audio.modeling import DeSTAModel

    dtype = config.model.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    return DeSTAModel.from_pretrained(config.model.base, dtype=dtype, device=str(device), asr=config.model.asr,
                                      fresh_adapter=config.model.fresh_adapter, **overrides)


def check_lora_targets(llm: nn.Module, targets: list[str]) -> None:
    """Each target must name some module of the LLM (by its last name part(s), as peft matches them); peft
    itself only complains when none matches."""
    names = [name for name, _ in llm.named_modules() if name and "lora_" not in name]
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        layers = sorted({name.removesuffix(".base_layer").rsplit(".", 1)[-1] for name, module in llm.named_modules()
                         if isinstance(module, (nn.Linear, nn.Embedding)) and "lora_" not in name})
        raise ConfigError(f"lora.targets: {', '.join(unmatched)} matched no module of the LLM; its linear and "
                          f"embedding layers are named {', '.join(layers)}")
