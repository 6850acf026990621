"""Training checkpoints: the adapter in the released layout plus everything needed to resume step for step.

    checkpoints/step-0000100/
        config.json, model.safetensors   loadable with DeSTAModel.from_pretrained (released key names)
        encoder.safetensors               only when the encoder was trained (LoRA or full); from_pretrained
                                          applies it too (LoRA merged)
        trainer_state.pt                  optimizer, scheduler, sampler, step (tensors and plain data only)
        train_config.yaml                 the run's settings (a resume with other settings is refused)
        rng-rank{r}.pt                    each process's RNG streams (dropout, shuffles)

A checkpoint is written into `step-N.tmp/` and renamed when complete, so a killed run leaves either a whole
checkpoint or none. States are read with `torch.load(weights_only=True)`: nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from desta_audio.modeling import ADAPTER_FILE, ADAPTER_PREFIX, ENCODER_FILE, ENCODER_LORA_METADATA

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class WriteError(OSError):
    """A checkpoint or adapter that could not be written (a full disk, no permission), with the folder."""


@contextlib.contextmanager
def writing(folder: Path) -> Any:
    """Report a failed write as a WriteError naming `folder` and its free space: torch.save reports a full disk as
    a RuntimeError about stream positions, safetensors as its own error type."""
    from safetensors import SafetensorError

    try:
        yield
    except WriteError:
        raise
    except (OSError, RuntimeError, SafetensorError) as error:
        try:
            free = f"{shutil.disk_usage(folder.parent).free / 1e9:.1f} GB free there"
        except OSError:
            free = "free space unknown"
        raise WriteError(f"cannot write {folder} ({free}): {error}") from None


def released_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """What `load_adapter_state_dict` of a model rebuilt from the saved config expects: the connector and the
    LLM's LoRA, under their released names."""
    return {name: tensor for name, tensor in model.adapter_state_dict().items()
            if name.startswith(ADAPTER_PREFIX) or name.startswith("llm_model.")}


def encoder_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """Trained weights outside the released layout (encoder LoRA or a fine-tuned encoder)."""
    released = released_state_dict(model)
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad and name not in released}


def trained_tensors(model: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(released, encoder) weights as whole tensors. Collective under FSDP: every process calls it, since sharded
    LLM weights (LoRA) are gathered."""
    from torch.distributed.tensor import DTensor

    def whole(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: (v.full_tensor() if isinstance(v, DTensor) else v).contiguous().cpu() for k, v in tensors.items()}

    return whole(released_state_dict(model)), whole(encoder_state_dict(model))


def save_adapter(model: Any, directory: str | Path,
                 tensors: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None) -> Path:
    """config.json + model.safetensors (+ encoder.safetensors when the encoder was trained). Under FSDP pass the
    `trained_tensors` every process gathered."""
    from safetensors.torch import save_file

    released, extra = tensors if tensors is not None else trained_tensors(model)
    directory = Path(directory)
    with writing(directory):
        directory.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(directory)
        save_file(released, str(directory / ADAPTER_FILE), metadata={"format": "pt"})
        if extra:
            metadata = {"format": "pt"}
            lora = getattr(model.perception.encoder, "peft_config", {}).get("default")
            if lora is not None:
                # The deltas alone do not give their scale; loading for inference needs it to merge them.
                metadata[ENCODER_LORA_METADATA] = json.dumps({"r": lora.r, "lora_alpha": lora.lora_alpha,
                                                              "use_rslora": lora.use_rslora})
            save_file(extra, str(directory / ENCODER_FILE), metadata=metadata)
    return directory


def load_adapter(model: Any, directory: str | Path) -> None:
    """Strictly load what `save_adapter` wrote into a model set up the same way (same LoRA and encoder mode)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    released = load_file(str(directory / ADAPTER_FILE))
    path = directory / ENCODER_FILE
    extra = load_file(str(path)) if path.exists() else {}
    expected = encoder_state_dict(model)
    if set(extra) != set(expected):
        raise ValueError(f"{directory}: trained encoder weights do not match this run's encoder setup (encoder.mode): "
                         f"{len(set(expected) - set(extra))} missing, {len(set(extra) - set(expected))} unexpected")
    # Encoder LoRA weights count as adapter weights for the model's strict loader; full encoder weights do not.
    adapter_names = set(model.adapter_state_dict())
    model.load_adapter_state_dict({**released, **{k: v for k, v in extra.items() if k in adapter_names}})
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in extra.items():
            if name not in adapter_names:
                parameters[name].copy_(tensor)


def rng_state() -> dict[str, Any]:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                       "has_gauss": has_gauss, "cached": cached}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:07d}"


def latest_checkpoint(root: str | Path) -> Path | None:
    root = Path(root)
    if not root.is_dir():
        return None
    complete = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))
                and (p / STATE_FILE).exists()]
    return max(complete)[1] if complete else None


def save_checkpoint(root: str | Path, step: int, *, model: Any, trainer_state: dict[str, Any], rank: int = 0,
                    barrier: Any = None, keep: int = 2, files: dict[str, str] | None = None,
                    rng: dict[str, Any] | None = None) -> Path:
    """Collective when distributed: every rank writes its RNG state (`rng`, default: the current one), rank 0
    the rest (`files`: name -> text, e.g. the config), then renames."""
    barrier = barrier or (lambda: None)
    root = Path(root)
    final = step_dir(root, step)
    temporary = final.with_name(final.name + ".tmp")
    if rank == 0:
        shutil.rmtree(temporary, ignore_errors=True)
        with writing(temporary):
            temporary.mkdir(parents=True)
    barrier()
    with _removed_if_incomplete(temporary):
        torch.save(rng if rng is not None else rng_state(), temporary / f"rng-rank{rank}.pt")
    tensors = trained_tensors(model)
    barrier()
    if rank == 0:
        with _removed_if_incomplete(temporary):
            save_adapter(model, temporary, tensors)
            torch.save(trainer_state, temporary / STATE_FILE)
            for name, text in (files or {}).items():
                (temporary / name).write_text(text, encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
        _prune(root, keep)
        log.info("checkpoint %s", final)
    barrier()
    return final


@contextlib.contextmanager
def _removed_if_incomplete(temporary: Path) -> Any:
    """A checkpoint that could not be written whole is deleted: on a full disk its part would keep the space."""
    try:
        with writing(temporary):
            yield
    except WriteError:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _prune(root: Path, keep: int) -> None:
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)))
    for _, path in steps[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(directory: str | Path, *, model: Any, rank: int = 0) -> dict[str, Any]:
    """Restore the adapter and this rank's RNG; return the trainer state (optimizer, scheduler, sampler, step)."""
    directory = Path(directory)
    if not (directory / STATE_FILE).exists():
        raise FileNotFoundError(f"{directory}: not a complete training checkpoint (no {STATE_FILE})")
    load_adapter(model, directory)
    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    rng_file = directory / f"rng-rank{rank}.pt"
    if not rng_file.exists():
        raise FileNotFoundError(f"{rng_file}: missing; resume with the same number of processes as the saved run")
    set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
    return state
