"""Which parameters a run trains: the adapter (and LoRA) by default, the encoder by `encoder.mode`, then the
`freeze` regexes; parameters that no gradient can reach stay frozen whatever asks for them.

No gradient reaches the Whisper decoder (it only transcribes, without gradient) nor the encoder's parts after the
last tapped layer, its final LayerNorm included (taps are taken before it). Marked trainable they would never be
updated, and DDP stops at the second step waiting for their gradients.
"""

from __future__ import annotations

import logging
import re

import torch
from torch import nn

from desta_audio.train.config import ConfigError, TrainConfig

log = logging.getLogger(__name__)

WHISPER = "perception.whisper."
ENCODER = r"^perception\.whisper\.model\.encoder\."
_ENCODER_INPUT = re.compile(ENCODER + r"(conv1|conv2|embed_positions)\.")
_ENCODER_LAYER = re.compile(ENCODER + r"layers\.(\d+)\.")
_MODULE = re.compile(r"^perception\.whisper\.(model\.decoder|proj_out|model\.encoder\.(layers\.\d+|layer_norm))")


def gradient_reaches(name: str, last_tap: int) -> bool:
    """Whether the loss can depend on this parameter of a DeSTA model tapping encoder layers up to `last_tap`."""
    if not name.startswith(WHISPER):
        return True
    if _ENCODER_INPUT.match(name):
        return True
    layer = _ENCODER_LAYER.match(name)
    return layer is not None and int(layer.group(1)) <= last_tap


def configure_trainable(model: nn.Module, config: TrainConfig) -> list[str]:
    """Encoder LoRA/unfreezing, then the default (adapter + LoRA), then the freeze regexes. Returns the names."""
    encoder = model.perception.whisper.model.encoder
    if config.encoder.mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        inject_adapter_in_model(LoraConfig(r=config.encoder.lora_rank, lora_alpha=config.encoder.lora_alpha,
                                           lora_dropout=config.encoder.lora_dropout,
                                           target_modules=list(config.encoder.lora_targets)), encoder)
    model.freeze_backbones()
    trainable = [re.compile(p) for p in config.freeze.trainable]
    if config.encoder.mode == "full":
        trainable.append(re.compile(ENCODER))
    frozen = [re.compile(p) for p in config.freeze.frozen]
    last_tap = max(model.perception.tap_layers)
    unreachable: dict[str, int] = {}
    for name, parameter in model.named_parameters():
        if any(p.search(name) for p in trainable):
            parameter.requires_grad = True
        if any(p.search(name) for p in frozen):
            parameter.requires_grad = False
        if parameter.requires_grad and not gradient_reaches(name, last_tap):
            parameter.requires_grad = False
            group = _MODULE.match(name)
            key = group.group(0) if group else name
            unreachable[key] = unreachable.get(key, 0) + 1
    if unreachable:
        log.info("left frozen, as no gradient reaches them (the Whisper decoder only transcribes; taps end before "
                 "the encoder's final LayerNorm): %s",
                 ", ".join(f"{key} ({count} tensors)" for key, count in unreachable.items()))
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise ConfigError("no parameter is trainable: check freeze.frozen / freeze.trainable")
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()  # master weights in fp32; bf16 happens in autocast
    return names
