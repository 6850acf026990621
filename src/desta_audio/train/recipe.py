"""The training recipe: setup -> fit -> validate -> save, single process or under `torchrun` (DDP).

Loss: cross-entropy on the assistant turns' tokens plus their end-of-turn token, summed over every token of the
optimizer step (all micro-batches, all processes) and divided by the step's total count. The gradient is then
the same as one process seeing the whole global batch, whatever the split, so runs compare exactly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from desta_audio.processing import IGNORE_INDEX
from desta_audio.train.checkpoint import (
    WriteError,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_adapter,
    save_checkpoint,
    step_dir,
    trained_tensors,
)
from desta_audio.train.config import ConfigError, TrainConfig, dump_config
from desta_audio.train.features import AudioFeatures, FeatureCache, fill_cache, open_cache
from desta_audio.train.metrics import MetricsWriter, plot_loss_curve
from desta_audio.train.model import build_model
from desta_audio.train.records import RecordError, TrainRecord, audio_seconds, held_out, read_records
from desta_audio.train.resume import (
    CONFIG_FILE,
    START_OVER,
    checkpoint_to_resume,
    config_changes,
    move_earlier_run,
    record_changes,
)
from desta_audio.train.sampler import DurationBatchSampler
from desta_audio.train.trainable import WHISPER, configure_trainable

log = logging.getLogger(__name__)

# Architectures whose logits are exactly lm_head(final hidden state): the loss then needs logits only at the
# labelled positions (a fraction of the sequence), which saves most of the lm_head time and memory.
_PLAIN_HEAD_TYPES = {"llama", "qwen2", "qwen3", "mistral", "phi3"}


FIX_RECORD = "replace the file with a readable one or drop the record"


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite losses or gradients, inconsistent data), with what to do."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run; the message names the checkpoint the same command resumes from."""


class StopRequest:
    """While active, a first Ctrl-C (SIGINT) only asks the run to stop once the step in progress is done (it is
    then checkpointed); a second one interrupts at once. Python's default (interrupt at once; the last whole
    checkpoint stays) is kept outside the main thread and under torchrun, whose processes each see the signal at
    their own moment and would not stop after the same step."""

    def __init__(self, enabled: bool) -> None:
        self.requested = False
        self._enabled = (enabled and threading.current_thread() is threading.main_thread()
                         and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        self._previous: Any = None

    def __enter__(self) -> "StopRequest":
        if self._enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Ctrl-C: stopping after this step and saving a checkpoint (Ctrl-C again stops at once)")

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# ----- audio and loss -----


def token_loss(model: Any, batch: Any, audio_tokens: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over labelled tokens, and their count."""
    device = model.device
    embeds = model.embed(batch, audio_tokens)
    attention_mask = batch.attention_mask.to(device)
    targets = batch.labels.to(device)[:, 1:]
    labelled = targets != IGNORE_INDEX
    llm = model.llm
    if llm.config.model_type in _PLAIN_HEAD_TYPES:
        hidden = llm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        logits = llm.get_output_embeddings()(hidden[:, :-1][labelled])
    else:
        logits = llm(inputs_embeds=embeds, attention_mask=attention_mask).logits[:, :-1][labelled]
    return F.cross_entropy(logits.float(), targets[labelled], reduction="sum"), int(labelled.sum())


class LossModule(nn.Module):
    """One micro-batch -> (loss sum, labelled tokens). The unit DDP wraps, so gradients sync in its backward."""

    def __init__(self, model: Any, features: AudioFeatures, splits: dict[str, list[TrainRecord]]) -> None:
        super().__init__()
        self.model = model
        self.features = features
        self.splits = splits

    def forward(self, split: str, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        records = [self.splits[split][i] for i in indices]
        taps, windows, transcripts = self.features(records)
        prepared, cursor = [], 0
        if taps is not None:
            tokens = self.model.connector(list(taps.unbind(1)))  # (windows, prompt_size, llm_hidden)
            for count, text in zip(windows, transcripts):
                prepared.append(self.model.prepared_audio(tokens[cursor:cursor + count], text))
                cursor += count
        batch, audio_tokens, _ = self.model.build_batch([r.messages for r in records], for_training=True,
                                                        prepared=prepared)
        loss, count = token_loss(self.model, batch, audio_tokens)
        if taps is None and torch.is_grad_enabled():
            # Text only: the audio side takes no part, but DDP waits for a gradient of every trainable weight.
            # A zero one: the same update as without it.
            loss = loss + 0.0 * sum(p.sum() for p in self.model.perception.parameters() if p.requires_grad)
        return loss, torch.tensor(count, dtype=torch.float64)


def writable_folder(folder: Path, key: str) -> None:
    """Create `folder` and write a probe file in it: a file in the way or a folder without write permission is
    named with its key before the model loads, not found as a traceback when the first file is written."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{key}: {folder} is a file, not a folder; give a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"{key}: cannot write to {folder} ({error.strerror or error})") from None


# ----- distributed -----


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def sum(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64)
        if self.enabled:
            backend = torch.distributed.get_backend()
            device = torch.device("cuda", self.local_rank) if backend == "nccl" else torch.device("cpu")
            tensor = tensor.to(device)
            torch.distributed.all_reduce(tensor)
        return tensor.cpu().tolist()


def init_distributed(backend: str) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        chosen = backend if backend != "auto" else ("nccl" if cuda else "gloo")
        torch.distributed.init_process_group(chosen)
    return Dist(rank, world, local_rank), device


def _is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def clip_gradients(parameters: list[nn.Parameter], max_norm: float) -> float:
    """Clip to a total L2 norm and return the norm before clipping. Unlike `clip_grad_norm_` it takes a mix of
    FSDP-sharded gradients (each process holds a disjoint shard: squared norms summed across processes) and
    replicated ones (already equal everywhere)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    sharded = [g for g in grads if _is_sharded(g)]
    if not sharded:
        return float(torch.nn.utils.clip_grad_norm_(parameters, max_norm))
    squares = torch.zeros((), dtype=torch.float64, device=grads[0].device)
    for grad in sharded:
        squares += grad.to_local().double().pow(2).sum()
    torch.distributed.all_reduce(squares)
    for grad in grads:
        if not _is_sharded(grad):
            squares += grad.double().pow(2).sum()
    total = float(squares.sqrt())
    factor = min(max_norm / (total + 1e-6), 1.0)  # as clip_grad_norm_ computes it
    if factor < 1.0:
        for grad in grads:
            (grad.to_local() if _is_sharded(grad) else grad).mul_(factor)
    return total


# ----- the trainer -----


@dataclass
class StepLog:
    step: int
    loss: float
    lr: float
    grad_norm: float
    samples: int
    seconds: float


@dataclass
class TrainResult:
    steps: list[StepLog] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    output_dir: Path | None = None
    final_adapter: Path | None = None


class Trainer:
    def __init__(self, config: TrainConfig, *, model: Any = None) -> None:
        self.config = config
        self.model = model
        self.output_dir = Path(config.run.output_dir)
        self.step = 0
        self.saved_step = 0  # the step of the latest checkpoint this run wrote or resumed from
        self.elapsed_before = 0.0  # training seconds of the runs before a resume (metrics.csv's elapsed_s goes on)
        self._fit_started = time.perf_counter()

    # ----- setup -----

    def setup(self, *, cache_only: bool = False) -> "Trainer":
        """Build the model, data, cache, sampler, optimizer; resume. `cache_only` stops after the feature cache."""
        config = self.config
        self.dist, self.device = init_distributed(config.distributed.backend)
        torch.manual_seed(config.run.seed + self.dist.rank)
        np.random.seed(config.run.seed + self.dist.rank)
        mixed = config.run.precision == "bf16" or (config.run.precision == "auto" and self.device.type == "cuda")
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if mixed else contextlib.nullcontext()
        if not cache_only:
            self._check_resume()  # first: a refused resume costs seconds, not a model load
            writable_folder(self.output_dir, "run.output_dir")
        if config.cache.enabled:
            writable_folder(config.cache_dir, "cache.dir" if config.cache.dir else "run.output_dir")
        self._load_data()  # before the model: bad records fail in seconds, not after loading the weights
        if self.model is None:
            self.model = build_model(config, self.device)
        self.model.to(self.device)
        self.trainable_names = configure_trainable(self.model, config)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        log.info("trainable: %d tensors, %.2fM parameters", len(self.parameters),
                 sum(p.numel() for p in self.parameters) / 1e6)

        # The encoder also trains when freeze.trainable picks its weights (encoder.mode frozen): it must then run
        # with gradients, and cached states could neither reach those weights nor stay current.
        encoder_trains = any(name.startswith(WHISPER) for name in self.trainable_names)
        if encoder_trains and config.cache.enabled:
            raise ConfigError("freeze.trainable makes Whisper encoder weights trainable: the feature cache would "
                              "hold stale states no gradient goes through; set cache.enabled=false")
        cache = self._prepare_cache() if config.cache.enabled else None
        self.features = AudioFeatures(self.model, cache, encoder_trainable=encoder_trains)
        if cache_only:
            return self
        self.loss_module = LossModule(self.model, self.features, {"train": self.train_records,
                                                                   "validation": self.val_records})
        self.wrapped: nn.Module = self.loss_module
        self.sharded = self.dist.enabled and config.distributed.strategy == "fsdp"
        if self.sharded:
            self._shard_llm()
            # fully_shard swaps a layer's parameters for sharded ones: the optimizer must hold those.
            self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        elif self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.wrapped = DistributedDataParallel(
                self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        self.sampler = self._sampler(self.train_records, shuffle=config.batching.shuffle)
        # Rounded up: an epoch's last batches that do not fill a whole accumulation are trained too (in a step
        # that runs into the next epoch), never left out of the count.
        batches_per_epoch = len(self.sampler.batches(0))
        self.total_steps = config.run.max_steps or max(
            1, math.ceil(config.run.epochs * batches_per_epoch / config.optim.grad_accum))
        if config.optim.warmup_steps > self.total_steps:
            log.warning("optim.warmup_steps=%d is more than the run's %d steps: the learning rate stays below "
                        "optim.lr (%g) throughout", config.optim.warmup_steps, self.total_steps, config.optim.lr)
        from transformers import get_cosine_schedule_with_warmup

        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.optim.lr, betas=tuple(config.optim.betas),
                                           eps=config.optim.eps, weight_decay=config.optim.weight_decay)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, config.optim.warmup_steps, self.total_steps)
        self._resume()
        if self.dist.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            # Written once the run is known to apply it (a refused resume never gets here).
            (self.output_dir / CONFIG_FILE).write_text(dump_config(config), encoding="utf-8")
            record_changes(self.output_dir, self.step, self.config_changes)
            self.metrics = MetricsWriter(self.output_dir, resume_step=self.step if self.step else None,
                                         tensorboard=config.run.tensorboard)
        return self

    def _shard_llm(self) -> None:
        """FSDP for backbones too big to replicate: each LLM decoder layer, LoRA weights included, is sharded
        across processes and gathered for its forward and backward. Gradients of sharded weights are
        reduce-scattered as sums; those of replicated weights (the adapter) are all-reduced by hand in the step."""
        from torch.distributed.fsdp import fully_shard

        for layer in self.model.llm.get_decoder().layers:
            fully_shard(layer)
            layer.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM
            layer.set_gradient_divide_factor(1.0)  # sums, not means: the step divides by its token count

    def _load_data(self) -> None:
        data = self.config.data
        records = read_records(data.train, audio_root=data.audio_root, max_records=data.max_records)
        if data.validation:
            val = read_records(data.validation, audio_root=data.audio_root)
        else:
            val = [r for r in records if held_out(r.key, data.val_fraction)]
            records = [r for r in records if not held_out(r.key, data.val_fraction)]
        self.train_records, self.val_records = records, val[: self.config.validation.max_samples]
        if not self.train_records:
            raise TrainingError(f"{data.train}: no training records (after holding out {data.val_fraction:.0%})")
        log.info("%d training records, %d validation records", len(self.train_records), len(self.val_records))
        if data.val_fraction and not self.val_records:
            log.warning("data.val_fraction=%s held out none of the %d records: no validation; raise it or give "
                        "data.validation", data.val_fraction, len(self.train_records))
        if 0 < len(self.val_records) < self.dist.world:
            log.warning("%d validation records for %d processes: validation is skipped; hold out more",
                        len(self.val_records), self.dist.world)

    def _prepare_cache(self) -> FeatureCache:
        config = self.config.cache
        cache = open_cache(self.model, self.config.cache_dir, dtype=config.dtype, max_gb=config.max_gb,
                           shard_windows=config.shard_windows)
        def fill() -> None:  # one writer; the others wait, then read the finished index
            if self.dist.rank == 0:
                items = [a for r in self.train_records + self.val_records for a in r.audios]
                fill_cache(self.model, cache, items, progress=self.config.run.progress)

        try:
            self.together(fill)
        except RecordError as error:
            raise RecordError(f"{error}. Found building the feature cache (the audios encoded so far are kept): "
                              f"{FIX_RECORD}, then run again") from None
        if self.dist.rank != 0:
            cache = open_cache(self.model, self.config.cache_dir, dtype=config.dtype, max_gb=config.max_gb,
                               shard_windows=config.shard_windows)
        log.info("feature cache: %d audios, %.1f MB (%.2f MB per window)", len(cache), cache.size_bytes / 1e6,
                 cache.bytes_per_window / 1e6)
        return cache

    def _lengths(self, records: list[TrainRecord]) -> tuple[list[float], list[int]]:
        """Audio seconds and exact token count per record (transcripts from the record; ASR ones count as 0)."""
        from desta_audio.audio import WINDOW_SECONDS

        model = self.model
        durations, tokens = [], []
        for record in records:
            seconds = [audio_seconds(a.path) for a in record.audios]
            windows = [max(1, math.ceil(s / WINDOW_SECONDS)) for s in seconds]
            transcripts = [model.tokenizer.encode(a.text or "", add_special_tokens=False)
                           [: model.config.max_transcript_tokens * w] for a, w in zip(record.audios, windows)]
            encoded = model.conversations.encode(record.messages, [w * model.config.prompt_size for w in windows],
                                                 transcripts, for_training=True)
            durations.append(sum(seconds))
            tokens.append(len(encoded.input_ids))
        return durations, tokens

    def _sampler(self, records: list[TrainRecord], *, shuffle: bool) -> DurationBatchSampler:
        batching = self.config.batching
        durations, tokens = self._lengths(records)
        return DurationBatchSampler(durations, tokens, max_seconds=batching.max_audio_seconds,
                                    max_tokens=batching.max_tokens, max_size=batching.max_size,
                                    world_size=self.dist.world, bucket_pool=batching.bucket_pool, shuffle=shuffle,
                                    seed=self.config.run.seed)

    def _check_resume(self) -> None:
        """Which checkpoint this run continues, and whether its config may (run.resume=never: move the earlier
        run aside instead)."""
        if self.config.run.resume == "never":
            if self.dist.rank == 0:
                move_earlier_run(self.output_dir)
            self.dist.barrier()
        self.resume_from = checkpoint_to_resume(self.config)
        self.config_changes = config_changes(self.config, self.resume_from) if self.resume_from else []

    def _resume(self) -> None:
        path = self.resume_from
        if path is None:
            return
        try:
            state = load_checkpoint(path, model=self.model, rank=self.dist.rank)
            if state["world_size"] != self.dist.world:
                raise ValueError(f"it was saved by {state['world_size']} processes; resume with as many")
            self.sampler.load_state_dict(state["sampler"])
        except (ValueError, FileNotFoundError) as error:  # the model, data or process count differ
            raise ConfigError(f"cannot resume from {path}: {error}; to train this setup anyway, use {START_OVER}") \
                from None
        self._load_optimizer_state(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = self.saved_step = int(state["step"])
        self.elapsed_before = float(state.get("elapsed_s", 0.0))  # absent from older checkpoints
        log.info("resumed from %s at step %d", path, self.step)

    def together(self, action: Callable[[], Any]) -> Any:
        """Run `action` in every process; a data error in any of them stops them all (one stopping alone would
        leave the others waiting in the next collective operation)."""
        error: RecordError | None = None
        result = None
        try:
            result = action()
        except RecordError as caught:
            error = caught
        if self.dist.enabled and self.dist.sum([float(error is not None)])[0] and error is None:
            error = RecordError("another process stopped on a data error; its message names the record")
        if error is not None:
            raise error
        return result

    # ----- fit -----

    def fit(self) -> TrainResult:
        from tqdm import tqdm

        config = self.config
        result = TrainResult(output_dir=self.output_dir)
        batches = iter(self.sampler)
        bad_steps = 0
        self._fit_started = time.perf_counter()
        stop_at = self.total_steps
        if config.run.stop_after_steps:
            stop_at = min(stop_at, self.step + config.run.stop_after_steps)
        if self.step >= self.total_steps and self.dist.rank == 0:
            log.warning("the run in %s already reached its last step (%d): nothing to train; raise run.max_steps or "
                        "run.epochs to train on, or use run.resume=never to start over", self.output_dir, self.step)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step",
                   disable=not config.run.progress or self.dist.rank != 0, dynamic_ncols=True)
        before: dict[str, Any] | None = None
        stop = StopRequest(enabled=not self.dist.enabled)
        try:
            with stop:
                while self.step < stop_at:
                    # The state before this step: what a checkpoint holds if the step stops on bad data.
                    before = {"sampler_state": self.sampler.state_dict(), "rng": rng_state()}
                    clock = time.perf_counter()
                    lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
                    loss, grad_norm, samples, tokens, ok = self._train_step(
                        [next(batches) for _ in range(config.optim.grad_accum)])
                    self.step += 1
                    before = None
                    seconds = time.perf_counter() - clock
                    if ok:
                        bad_steps = 0
                    else:
                        bad_steps += 1
                        if bad_steps >= config.run.max_bad_steps:
                            raise TrainingError(
                                f"{bad_steps} steps in a row had a non-finite loss or gradient (last: step "
                                f"{self.step}); the weights were left untouched. Lower optim.lr, check the data, "
                                "or use run.precision=fp32")
                    result.steps.append(StepLog(self.step, loss, lr, grad_norm, samples, seconds))
                    # Before the update, which redraws the bar: one line per step, with its numbers.
                    bar.set_postfix({"loss": f"{loss:.4f}", "lr": f"{lr:.2e}",
                                     "samples/s": f"{samples / seconds:.1f}"}, refresh=False)
                    bar.update(1)
                    if self.dist.rank == 0 and (self.step % config.run.log_every == 0 or self.step == stop_at or
                                                self.step <= 1):
                        self.metrics.write({"step": self.step, "split": "train", "epoch": self.sampler.epoch,
                                            "loss": loss, "lr": lr, "grad_norm": grad_norm, "samples": samples,
                                            "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds,
                                            "elapsed_s": self.elapsed_seconds()})
                    last = self.step == self.total_steps
                    due = bool(config.run.val_every and self.step % config.run.val_every == 0) or last
                    if due and len(self.val_records) >= self.dist.world:
                        result.validation.append(self.validate())
                    if (config.run.save_every and self.step % config.run.save_every == 0) or self.step == stop_at:
                        self.save()
                    if stop.requested and self.step < stop_at:
                        if self.saved_step != self.step:
                            self.save()
                        break
        except RecordError as error:
            raise self._stopped_on_bad_data(error, before) from None
        except WriteError as error:
            raise self._write_failed(error) from None
        except KeyboardInterrupt:
            raise TrainingInterrupted(f"interrupted during step {self.step + 1}; {self._resume_hint()}") from None
        finally:
            bar.close()
        if stop.requested and self.step < stop_at:
            raise TrainingInterrupted(f"stopped by Ctrl-C after step {self.step}; {self._resume_hint()}")
        if self.step >= self.total_steps:
            tensors = trained_tensors(self.model)  # every process: sharded LoRA weights are gathered
            if self.dist.rank == 0:
                try:
                    result.final_adapter = save_adapter(self.model, self.output_dir / "final", tensors)
                except WriteError as error:
                    raise self._write_failed(error) from None
                plot_loss_curve(self.metrics.csv_path, self.output_dir / "loss_curve.png")
        self.dist.barrier()
        return result

    def _resume_hint(self) -> str:
        latest = latest_checkpoint(self.output_dir / "checkpoints")
        if latest is None:
            return "no checkpoint was saved yet, so the same command starts over"
        return f"run the same command to resume from {latest}"

    def _write_failed(self, error: WriteError) -> TrainingError:
        return TrainingError(f"{error}. Make room there or fix its permissions, then {self._resume_hint()}")

    def _stopped_on_bad_data(self, error: RecordError, before: dict[str, Any] | None) -> RecordError:
        """Checkpoint the last completed step (`before`: the state ahead of a step that did not complete), so
        nothing is lost, and say how to go on."""
        if self.step == 0:
            return RecordError(f"{error}. Stopped before the first step: {FIX_RECORD}, then run again")
        advice = ("replace the file with a readable one, then run the same command to resume; dropping the record "
                  f"instead changes the data, which needs a new run: {START_OVER}")
        if self.saved_step != self.step:
            self.save(**(before or {}))
        saved = step_dir(self.output_dir / "checkpoints", self.step)
        return RecordError(f"{error}. Stopped after step {self.step}, checkpoint {saved}: {advice}")

    def _train_step(self, global_batches: list[list[int]]) -> tuple[float, float, int, float, bool]:
        self.wrapped.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, count, samples = 0.0, 0.0, 0
        for position, global_batch in enumerate(global_batches):
            indices = self.sampler.shard(global_batch, self.dist.rank)
            self.together(lambda: self.features.preload([self.train_records[i] for i in indices]))
            last = position == len(global_batches) - 1
            ddp = self.dist.enabled and not self.sharded
            sync = self.wrapped.no_sync() if ddp and not last else contextlib.nullcontext()
            with sync:
                with self.autocast:
                    micro_loss, micro_count = self.wrapped("train", indices)
                micro_loss.backward()
            loss_sum += float(micro_loss.detach())
            count += float(micro_count)
            samples += len(global_batch)
        loss_sum, count = self.dist.sum([loss_sum, count])
        if count == 0:
            raise TrainingError("a training step had no labelled tokens: every record needs an assistant target")
        loss = loss_sum / count
        # Each rank's gradient is of its own summed loss; DDP averaged them over ranks (FSDP: sharded weights
        # reduce-scattered as sums, the rest summed here by hand): rescale to the mean over the step's tokens.
        scale = self.dist.world / count
        if self.sharded:
            for parameter in self.parameters:
                if parameter.grad is not None and not _is_sharded(parameter.grad):
                    torch.distributed.all_reduce(parameter.grad)
            scale = 1.0 / count
        for parameter in self.parameters:
            if parameter.grad is not None:
                parameter.grad.mul_(scale)
        clip = self.config.optim.grad_clip
        grad_norm = clip_gradients(self.parameters, clip if clip else float("inf"))
        ok = math.isfinite(loss) and math.isfinite(grad_norm)
        if ok:
            self.optimizer.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            log.error("step %d: non-finite %s (loss %s, gradient norm %s); skipped without touching the weights",
                      self.step + 1, "loss" if not math.isfinite(loss) else "gradient", loss, grad_norm)
        with warnings.catch_warnings():  # a skipped step still advances the schedule: it stays aligned with steps
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            self.scheduler.step()
        return loss, grad_norm, samples, count, ok

    # ----- validation -----

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Loss on the held-out split (all processes) and greedy answers scored by consecutive-words accuracy."""
        self.loss_module.eval()
        sampler = self.__dict__.get("_val_sampler") or self._sampler(self.val_records, shuffle=False)
        self._val_sampler = sampler
        loss_sum, count = 0.0, 0.0
        for global_batch in sampler.batches(0):
            indices = sampler.shard(global_batch, self.dist.rank)
            self.together(lambda: self.features.preload([self.val_records[i] for i in indices]))
            with self.autocast:
                micro_loss, micro_count = self.loss_module("validation", indices)
            loss_sum += float(micro_loss)
            count += float(micro_count)
        loss_sum, count = self.dist.sum([loss_sum, count])
        metrics = {"step": self.step, "loss": loss_sum / max(count, 1.0)}
        # Sharded layers gather collectively, so one process cannot generate alone; FSDP runs score loss only.
        if self.dist.rank == 0 and self.config.validation.generate_samples and not self.sharded:
            metrics["accuracy"] = self._generation_accuracy()
        self.dist.barrier()
        if self.dist.rank == 0:
            self.metrics.write({"step": self.step, "split": "validation", "epoch": self.sampler.epoch, **metrics})
            log.info("validation at step %d: loss %.4f%s", self.step, metrics["loss"],
                     f", consecutive-words accuracy {metrics['accuracy']:.3f}" if "accuracy" in metrics else "")
        self.loss_module.train()
        return metrics

    def _generation_accuracy(self, batch_size: int = 8) -> float:
        from desta_audio.eval.textnorm import consecutive_words_match

        records = self.val_records[: self.config.validation.generate_samples]
        correct = 0
        for start in range(0, len(records), batch_size):
            chunk = records[start:start + batch_size]
            with self.autocast:
                replies = self.model.chat([r.prompt_messages() for r in chunk], do_sample=False,
                                          max_new_tokens=self.config.validation.max_new_tokens)
            # A target with no words ("" or "?": the record teaches the model to say nothing) is matched only
            # by a reply without words; accepting any reply, or none, would score it whatever the model learnt.
            correct += sum(consecutive_words_match(r.target, reply.text, empty_label="empty")
                           for r, reply in zip(chunk, replies))
        return correct / max(len(records), 1)

    # ----- checkpoints -----

    def save(self, *, sampler_state: dict[str, int] | None = None, rng: dict[str, Any] | None = None) -> Path:
        """Checkpoint the current step; `sampler_state` and `rng` (default: the current ones) when the data
        position and random streams have moved on since it completed."""
        state = {"optimizer": self._optimizer_state(), "scheduler": self.scheduler.state_dict(),
                 "sampler": sampler_state or self.sampler.state_dict(), "step": self.step,
                 "world_size": self.dist.world, "elapsed_s": self.elapsed_seconds()}
        self.saved_step = self.step
        return save_checkpoint(self.output_dir / "checkpoints", self.step, model=self.model, trainer_state=state,
                               rank=self.dist.rank, barrier=self.dist.barrier, keep=self.config.run.keep_checkpoints,
                               files={CONFIG_FILE: dump_config(self.config)}, rng=rng)

    def elapsed_seconds(self) -> float:
        """Training time of the whole run: this process's time in fit() plus that of the runs it resumed."""
        return self.elapsed_before + time.perf_counter() - self._fit_started

    def _optimizer_state(self) -> dict[str, Any]:
        """The optimizer's state; under FSDP gathered whole (collective), so the file holds every shard."""
        if not self.sharded:
            return self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, self.optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        if not self.sharded:
            self.optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.model, self.optimizer, state,
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))

    def close(self) -> None:
        if self.dist.rank == 0 and hasattr(self, "metrics"):
            self.metrics.close()


def train(config: TrainConfig, *, model: Any = None) -> TrainResult:
    trainer = Trainer(config, model=model).setup()
    try:
        return trainer.fit()
    finally:
        trainer.close()
