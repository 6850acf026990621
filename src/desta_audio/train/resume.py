"""Resuming a run: which checkpoint, whether this config may continue it, and starting over (run.resume=never).

A checkpoint holds the config it was trained with. Resuming with other settings would continue the earlier
schedule while the run's records claimed the new one, so only settings that do not change the optimisation may
differ (the length of the run, cadences, logging, where the cache lives); any other change is refused.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from desta_audio.train.checkpoint import latest_checkpoint
from desta_audio.train.config import ConfigError, TrainConfig, dump_config

log = logging.getLogger(__name__)

CONFIG_FILE = "train_config.yaml"
CHANGES_FILE = "config_changes.log"  # settings changed on resume, with the step they apply from
EARLIER_RUNS = "earlier-runs"  # where run.resume=never moves an earlier run's files
RUN_FILES = ("checkpoints", "final", "metrics.csv", "loss_curve.png", "tensorboard", CONFIG_FILE, CHANGES_FILE)
RESUMABLE = {
    "run": {"max_steps", "epochs", "stop_after_steps", "log_every", "val_every", "save_every", "keep_checkpoints",
            "resume", "max_bad_steps", "tensorboard", "progress", "output_dir"},
    "cache": {"dir", "max_gb", "shard_windows"},
    "validation": {"max_samples", "generate_samples", "max_new_tokens"},
    "distributed": {"backend"},
}
START_OVER = f"a new run.output_dir, or run.resume=never (which moves the earlier run to {EARLIER_RUNS}/ and starts over)"


def checkpoint_to_resume(config: TrainConfig) -> Path | None:
    resume = config.run.resume
    if resume == "never":
        return None
    if resume == "auto":
        return latest_checkpoint(Path(config.run.output_dir) / "checkpoints")
    return Path(resume)


def config_changes(config: TrainConfig, checkpoint: Path) -> list[str]:
    """The settings that differ from the checkpoint's run, as 'key: old -> new'; ConfigError if any of them
    cannot change on resume."""
    saved = _saved_config(checkpoint)
    if saved is None:  # written before checkpoints kept their config: nothing to compare with
        return []
    old, new = _flat(saved), _flat(yaml.safe_load(dump_config(config)))
    changed = sorted(key for key in old.keys() | new.keys() if old.get(key, "(unset)") != new.get(key, "(unset)"))
    described = [f"{key}: {old.get(key, '(unset)')!r} -> {new.get(key, '(unset)')!r}" for key in changed]
    refused = [text for key, text in zip(changed, described) if not _resumable(key)]
    if refused:
        raise ConfigError(f"{checkpoint} belongs to a run with other settings, which cannot change on resume: "
                          f"{'; '.join(refused)}. Keep the run's settings to resume it, or use {START_OVER}")
    return described


def record_changes(output_dir: Path, step: int, changes: list[str]) -> None:
    if not changes:
        return
    log.info("resuming with changed settings: %s", "; ".join(changes))
    with open(output_dir / CHANGES_FILE, "a", encoding="utf-8") as handle:
        handle.writelines(f"from step {step}: {change}\n" for change in changes)


def move_earlier_run(output_dir: Path) -> Path | None:
    """run.resume=never: move an earlier run's files aside (the feature cache stays: it is keyed by encoder)."""
    present = [name for name in RUN_FILES if (output_dir / name).exists()]
    if not present:
        return None
    number = 1
    while (output_dir / EARLIER_RUNS / str(number)).exists():
        number += 1
    destination = output_dir / EARLIER_RUNS / str(number)
    destination.mkdir(parents=True)
    for name in present:
        shutil.move(str(output_dir / name), str(destination / name))
    log.info("run.resume=never: the earlier run in %s was moved to %s", output_dir, destination)
    return destination


def _saved_config(checkpoint: Path) -> dict[str, Any] | None:
    for path in (checkpoint / CONFIG_FILE, checkpoint.parent.parent / CONFIG_FILE):
        if path.is_file():
            return yaml.safe_load(path.read_text(encoding="utf-8"))
    return None


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and not prefix:  # sections; dict-valued fields compare whole
            flat.update(_flat(value, f"{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _resumable(key: str) -> bool:
    section, _, name = key.partition(".")
    return name in RESUMABLE.get(section, set())
