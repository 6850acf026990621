"""The DeSTA2.5 model: Whisper perception (tapped encoder + transcripts) -> Q-Former -> frozen LLM.

Only the connector (and optional LoRA) is trained and saved; Whisper and the LLM load from their own folders.
Generation uses the LLM's stock `generate()` on `inputs_embeds`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from desta_audio.audio import DEFAULT_MAX_SECONDS, SAMPLE_RATE, load_audio, split_windows
from desta_audio.audio_cache import AudioCache
from desta_audio.config import DeSTAConfig
from desta_audio.few_rows_linear import use_few_rows_linear
from desta_audio.processing import (
    Batch,
    Conversation,
    ConversationEncoder,
    ContextLengthError,
    ConversationError,
    Encoded,
    audio_refs,
    collate,
)
from desta_audio.qformer import QFormerConnector

log = logging.getLogger(__name__)

ADAPTER_FILE = "model.safetensors"
ENCODER_FILE = "encoder.safetensors"  # beside the adapter when training changed the encoder (LoRA or full)
ENCODER_LORA_METADATA = "encoder_lora"  # its metadata entry: the LoRA settings its deltas were trained with
CONFIG_FILE = "config.json"
ADAPTER_PREFIX = "perception.connector."  # the released checkpoint's key prefix
NO_SPEECH_TRANSCRIPT = " "  # what the release feeds the LLM when VAD finds no speech
ENCODER_BATCH = 16  # 30 s windows per encoder or ASR pass: bounds peak memory on long or many clips
# On a CPU the encoder is compute-bound and a single window per pass is the fastest per window (cache-friendly):
# Whisper-base on 2 cores, 454 ms per window alone, 512 in passes of 8, 700 in passes of 16.
CPU_ENCODER_PASS = 1


class CheckpointError(ValueError):
    """An adapter checkpoint that does not match the model it is loaded into."""


class WhisperPerception(nn.Module):
    """Runs the Whisper encoder once per 30 s window, keeps the tapped layers' hidden states (before the final
    LayerNorm) for the connector and the final states for the decoder's transcript."""

    def __init__(self, whisper: nn.Module, connector: QFormerConnector, tap_layers: list[int]) -> None:
        super().__init__()
        self.whisper = whisper
        self.connector = connector
        self.tap_layers = list(tap_layers)

    @property
    def encoder(self) -> nn.Module:
        return self.whisper.model.encoder

    def encode(self, features: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """features (windows, mels, 3000) -> (taps: list of (windows, 1500, d), final encoder states)."""
        step = CPU_ENCODER_PASS if features.device.type == "cpu" else len(features)
        if len(features) <= step:
            return self._encode(features)
        parts = [self._encode(features[start:start + step]) for start in range(0, len(features), step)]
        taps = [torch.cat([part[0][i] for part in parts]) for i in range(len(self.tap_layers))]
        return taps, torch.cat([part[1] for part in parts])

    def _encode(self, features: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        captured: dict[int, torch.Tensor] = {}

        def keep(index: int):
            def hook(_module, _inputs, output):
                captured[index] = output[0] if isinstance(output, tuple) else output
            return hook

        handles = [self.encoder.layers[i].register_forward_hook(keep(i)) for i in self.tap_layers]
        try:
            final = self.encoder(features).last_hidden_state
        finally:
            for handle in handles:
                handle.remove()
        return [captured[i] for i in self.tap_layers], final


@dataclass
class ChatReply:
    """One answer of `DeSTAModel.chat`: its text (stripped), the transcript used for each audio of the conversation
    (in order; the caller's where given), the generated token ids (up to the end of turn), the timings of the
    call in seconds (shared by every reply of a batch) and the prompt's length in LLM positions (the clips' audio
    tokens and transcripts included)."""

    text: str
    transcripts: list[str]
    token_ids: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    prompt_tokens: int = 0


@dataclass
class PreparedAudio:
    """One audio ready for the LLM: its soft tokens and its transcript (text and LLM token ids)."""

    tokens: torch.Tensor  # (windows * prompt_size, llm_hidden)
    transcript: str
    transcript_ids: list[int]


class DeSTAModel(nn.Module):
    """DeSTA2.5-Audio. Build with `from_pretrained` (preset, folder or hub id) or from components (tests)."""

    def __init__(
        self,
        config: DeSTAConfig,
        *,
        whisper: nn.Module,
        llm: nn.Module,
        tokenizer: Any,
        feature_extractor: Any,
        whisper_tokenizer: Any = None,
        vad: Any = None,
    ) -> None:
        super().__init__()
        self.config = config
        encoder_config = whisper.config
        connector = QFormerConnector(
            num_taps=len(config.tap_layers(encoder_config.encoder_layers)),
            encoder_hidden=encoder_config.d_model,
            encoder_heads=encoder_config.encoder_attention_heads,
            llm_hidden=llm.config.get_text_config().hidden_size,
            num_layers=config.qformer_num_hidden_layers,
            prompt_size=config.prompt_size,
            ffn=config.qformer_intermediate_size,
            dropout=config.qformer_dropout,
            eps=config.qformer_layer_norm_eps,
        )
        self.perception = WhisperPerception(whisper, connector, config.tap_layers(encoder_config.encoder_layers))
        self.llm_model = llm
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.whisper_tokenizer = whisper_tokenizer
        self.vad = vad
        self.use_asr = whisper_tokenizer is not None
        self.audio_cache: AudioCache | None = None  # off by default; see enable_audio_cache
        # Longest clip accepted, in seconds (None: no limit); raise it for audio longer than 20 minutes.
        self.max_audio_seconds: float | None = DEFAULT_MAX_SECONDS
        self.encoder_dtype = next(whisper.parameters()).dtype
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.conversations = ConversationEncoder(
            tokenizer, system_prompt=config.system_prompt, placeholder_id=self._placeholder_id()
        )
        use_few_rows_linear(whisper)  # decode-step speed (see few_rows_linear)
        use_few_rows_linear(llm)
        if config.use_lora:
            self._add_lora()
        self.freeze_backbones()

    # ----- construction -----

    @property
    def llm(self) -> nn.Module:
        return self.llm_model

    @property
    def connector(self) -> QFormerConnector:
        return self.perception.connector

    @property
    def device(self) -> torch.device:
        return next(self.connector.parameters()).device

    def _placeholder_id(self) -> int:
        """Any id works (positions are tracked by mask); prefer the configured reserved token when it exists."""
        token = self.config.placeholder_token
        vocab = self.tokenizer.get_vocab()
        if token and token in vocab:
            return vocab[token]
        return self.pad_id

    def _add_lora(self) -> None:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=self.config.lora_rank,
            lora_alpha=self.config.lora_alpha,
            lora_dropout=self.config.lora_dropout,
            target_modules=list(self.config.lora_target_modules),
        )
        # Keep the bare causal LM object (as the release does) so parameter names stay `llm_model.model...`.
        self.llm_model = get_peft_model(self.llm_model, lora).base_model.model

    def freeze_backbones(self) -> None:
        """Adapter (and LoRA) trainable; Whisper and the LLM frozen."""
        for name, parameter in self.named_parameters():
            parameter.requires_grad = name.startswith(ADAPTER_PREFIX) or "lora_" in name

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable weights under their released names."""
        return {
            name: parameter.detach()
            for name, parameter in self.named_parameters()
            if name.startswith(ADAPTER_PREFIX) or "lora_" in name
        }

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Strict load: every key of the checkpoint used, none of the model's adapter keys missing, shapes equal."""
        expected = self.adapter_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
        if missing or unexpected or wrong:
            details = [f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}" if missing else "",
                       f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}" if unexpected else "",
                       "shape mismatch " + ", ".join(
                           f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                           for k in wrong[:5]) if wrong else ""]
            raise CheckpointError(
                "adapter checkpoint does not match this model (check qformer_num_hidden_layers, prompt_size, "
                "target_layer_ids, the encoder and the LLM): " + "; ".join(d for d in details if d)
            )
        from torch.distributed.tensor import DTensor, distribute_tensor

        with torch.no_grad():
            parameters = dict(self.named_parameters())
            for name, tensor in state.items():
                target = parameters[name]
                value = tensor.to(target.dtype)
                if isinstance(target, DTensor):  # an FSDP-sharded weight: keep this process's shard
                    value = distribute_tensor(value.to(target.device), target.device_mesh, target.placements,
                                              src_data_rank=None)
                target.copy_(value)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json and the adapter-only model.safetensors in the released layout."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(directory)
        state = {name: tensor.contiguous().cpu() for name, tensor in self.adapter_state_dict().items()}
        save_file(state, str(directory / ADAPTER_FILE), metadata={"format": "pt"})
        return directory

    @classmethod
    def from_pretrained(cls, reference: str | Path = "desta-mini", **overrides: Any) -> "DeSTAModel":
        """Load a preset name, an adapter folder (config.json [+ model.safetensors]) or a hub id.

        overrides: `encoder`, `llm` (paths, hub ids or packaged names), `dtype`, `device`, `asr` (bool),
        `fresh_adapter` (bool: a newly initialised adapter instead of the trained one), any DeSTAConfig field.
        """
        from desta_audio.loading import load_model

        return load_model(reference, **overrides)

    # ----- audio -> soft tokens and transcripts -----

    def _features(self, windows: list[np.ndarray]) -> torch.Tensor:
        # The extractor mixes torch and numpy in float32: an enclosing CPU autocast (bf16 training) breaks it.
        with torch.autocast("cpu", enabled=False):
            features = self.feature_extractor(windows, sampling_rate=SAMPLE_RATE,
                                              return_tensors="pt").input_features
        return features.to(self.device, self.encoder_dtype)

    def encode_audio_windows(self, windows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """30 s windows -> (soft tokens (windows, prompt_size, llm_hidden), final encoder states for ASR)."""
        tokens, finals = [], []
        for start in range(0, len(windows), ENCODER_BATCH):
            with torch.no_grad():
                taps, final = self.perception.encode(self._features(windows[start:start + ENCODER_BATCH]))
            tokens.append(self.connector(taps))
            finals.append(final)
        return torch.cat(tokens), torch.cat(finals)

    def _speech_windows(self, audio: np.ndarray) -> list[bool]:
        """Per 30 s window, whether VAD hears speech in it (all True without a VAD). Whisper invents words for a
        silent window ("you", "Thank you."), so those get no ASR."""
        windows = split_windows(audio)
        if self.vad is None:
            return [True] * len(windows)
        from desta_audio.vad import speech_timestamps

        return [bool(speech_timestamps(window, self.vad)) for window in windows]

    def transcribe_windows(self, encoder_states: torch.Tensor) -> list[str]:
        """Greedy Whisper transcripts (language detected, no timestamps) from the encoder pass already made."""
        from desta_audio.whisper_asr import transcribe_encoded

        texts: list[str] = []
        for start in range(0, len(encoder_states), ENCODER_BATCH):
            texts += [t.text for t in transcribe_encoded(self.perception.whisper, self.whisper_tokenizer,
                                                         encoder_states[start:start + ENCODER_BATCH],
                                                         max_new_tokens=self.config.max_transcript_tokens)]
        return texts

    def resolve_transcripts(self, given: list[str | None], arrays: list[np.ndarray], windows_per_audio: list[int],
                            encoder_states: torch.Tensor) -> list[str]:
        """One transcript per audio: the caller's when given; otherwise ASR on the windows where VAD finds speech
        (batched over all audios, reusing `encoder_states`), joined; the release's blank transcript when no window
        has speech."""
        transcripts = [text if text is not None else NO_SPEECH_TRANSCRIPT for text in given]
        if not self.use_asr:
            return transcripts
        offsets = np.cumsum([0] + list(windows_per_audio))
        asr_windows = {i: [offsets[i] + k for k, speech in enumerate(self._speech_windows(arrays[i])) if speech]
                       for i, text in enumerate(given) if text is None}
        flat = [j for windows in asr_windows.values() for j in windows]
        if flat:
            by_window = dict(zip(flat, self.transcribe_windows(encoder_states[flat])))
            for i, windows in asr_windows.items():
                transcripts[i] = " ".join(by_window[j] for j in windows if by_window[j]) or NO_SPEECH_TRANSCRIPT
        return transcripts

    def enable_audio_cache(self, max_mb: float) -> None:
        """Keep the soft tokens and transcripts of audios seen before (at most `max_mb` MB), so a clip sent again,
        as every turn of a multi-turn chat does, skips Whisper, the connector, VAD and ASR; 0 turns it off. The
        answers do not change: an entry is what the same audio gives when computed again."""
        self.audio_cache = AudioCache(int(max_mb * 2**20)) if max_mb > 0 else None

    def _weights_stamp(self) -> int:
        """Changes whenever a weight behind the audio tokens or transcripts is replaced, moved or written in place."""
        return hash(tuple((p.data_ptr(), p._version) for p in self.perception.parameters()))

    def prepare_audios(self, refs: list, timings: dict[str, float] | None = None) -> list[PreparedAudio]:
        """Load every audio (up to `max_audio_seconds` each), run the encoder over all their windows in batches,
        transcribe where needed. With the audio cache on (inference only), audios seen before skip all of that,
        and a clip repeated within the call is worked on once."""
        timings = timings if timings is not None else {}
        clock = time.perf_counter()
        arrays = [load_audio(ref.audio, ref.sample_rate, max_seconds=self.max_audio_seconds,
                             name=None if isinstance(ref.audio, (str, PathLike)) else
                             f"audio {i + 1}" + (" (array)" if isinstance(ref.audio, np.ndarray) else ""))
                  for i, ref in enumerate(refs)]
        cache = self.audio_cache if not torch.is_grad_enabled() else None
        if cache is not None:
            cache.check_weights(self._weights_stamp())
            keys = [cache.key(a) for a in arrays]
        else:
            keys = [str(i) for i in range(len(refs))]
        needs_asr = [ref.text is None and self.use_asr for ref in refs]
        # Per distinct audio: what is known already, and whether a transcript must be made.
        known: dict[str, Any] = {}
        wants_asr: dict[str, bool] = {}
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key not in first:
                first[key] = i
                known[key] = cache.get(key) if cache is not None else None
            wants_asr[key] = wants_asr.get(key, False) or needs_asr[i]
        todo = [key for key in first
                if known[key] is None or (wants_asr[key] and known[key].transcript is None)]
        windows = [split_windows(arrays[first[key]]) for key in todo]
        flat = [w for per_audio in windows for w in per_audio]
        timings["load_s"] = time.perf_counter() - clock
        timings["encode_s"] = timings["asr_s"] = 0.0
        fresh_tokens: dict[str, torch.Tensor] = {}
        heard: dict[str, str] = {}  # ASR transcripts (or the blank one where VAD found no speech)
        if flat:
            clock = time.perf_counter()
            tokens, finals = self.encode_audio_windows(flat)
            timings["encode_s"] = time.perf_counter() - clock

            clock = time.perf_counter()
            # A given text (any) skips ASR for audios nobody asked a transcript of.
            given = [None if wants_asr[key] else "" for key in todo]
            transcripts = self.resolve_transcripts(given, [arrays[first[key]] for key in todo],
                                                   [len(w) for w in windows], finals)
            timings["asr_s"] = time.perf_counter() - clock
            offsets = np.cumsum([0] + [len(w) for w in windows])
            for position, key in enumerate(todo):
                fresh_tokens[key] = tokens[offsets[position]:offsets[position + 1]]
                if wants_asr[key]:
                    heard[key] = transcripts[position]
                if cache is not None:
                    cache.put(key, fresh_tokens[key], heard.get(key))

        prepared = []
        for i, (ref, key) in enumerate(zip(refs, keys)):
            if ref.text is not None:
                transcript = ref.text
            elif needs_asr[i]:
                transcript = heard[key] if key in heard else known[key].transcript
            else:
                transcript = NO_SPEECH_TRANSCRIPT
            window_tokens = fresh_tokens[key] if key in fresh_tokens else known[key].tokens
            prepared.append(self.prepared_audio(window_tokens, transcript))
        return prepared

    def prepared_audio(self, window_tokens: torch.Tensor, transcript: str) -> PreparedAudio:
        """window_tokens (windows, prompt_size, llm_hidden) + transcript -> PreparedAudio; the transcript is
        capped at max_transcript_tokens per window, the same in training and inference."""
        limit = self.config.max_transcript_tokens * window_tokens.shape[0]
        ids = self.tokenizer.encode(transcript, add_special_tokens=False)[:limit]
        return PreparedAudio(window_tokens.flatten(0, 1), transcript, ids)

    # ----- LLM inputs -----

    def embed(self, batch: Batch, audio_tokens: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with the audio positions overwritten by the soft tokens (in row-major order)."""
        embeds = self.llm_model.get_input_embeddings()(batch.input_ids.to(self.device))
        if audio_tokens is None or audio_tokens.numel() == 0:
            return embeds
        mask = batch.audio_mask.to(self.device)
        if int(mask.sum()) != audio_tokens.shape[0]:
            raise RuntimeError(f"{int(mask.sum())} audio positions but {audio_tokens.shape[0]} audio tokens")
        return embeds.masked_scatter(mask.unsqueeze(-1), audio_tokens.to(embeds.dtype))

    def build_batch(self, conversations: Sequence[Conversation], *, for_training: bool = False,
                    timings: dict[str, float] | None = None, prepared: list[PreparedAudio] | None = None,
                    ) -> tuple[Batch, torch.Tensor | None, list[list[str]]]:
        """Conversations -> (padded batch, audio soft tokens in batch order, transcripts per conversation).

        `prepared` (one per audio, in order) skips audio loading and encoding, e.g. when training from cached
        encoder states.
        """
        refs_per_conversation = [audio_refs(c) for c in conversations]
        flat_refs = [r for refs in refs_per_conversation for r in refs]
        if prepared is None:
            prepared = self.prepare_audios(flat_refs, timings)
        elif len(prepared) != len(flat_refs):
            raise ValueError(f"{len(prepared)} prepared audios for {len(flat_refs)} audios in the conversations")
        encoded: list[Encoded] = []
        transcripts: list[list[str]] = []
        cursor = 0
        for conversation, refs in zip(conversations, refs_per_conversation):
            mine = prepared[cursor:cursor + len(refs)]
            cursor += len(refs)
            encoded.append(self.conversations.encode(
                conversation,
                [p.tokens.shape[0] for p in mine],
                [p.transcript_ids for p in mine],
                for_training=for_training,
            ))
            transcripts.append([p.transcript for p in mine])
        batch = collate(encoded, self.pad_id, padding_side="right" if for_training else "left")
        audio_tokens = torch.cat([p.tokens for p in prepared]) if prepared else None
        return batch, audio_tokens, transcripts

    def forward(self, batch: Batch, audio_tokens: torch.Tensor | None) -> Any:
        """Teacher-forced LLM pass; returns the HF output with `.loss` when the batch has labels."""
        embeds = self.embed(batch, audio_tokens)
        labels = batch.labels.to(self.device) if batch.labels is not None else None
        return self.llm_model(inputs_embeds=embeds, attention_mask=batch.attention_mask.to(self.device), labels=labels)

    # ----- generation -----

    def generation_defaults(self) -> dict[str, Any]:
        return {
            "eos_token_id": sorted(self.conversations.end_of_turn_ids),
            "pad_token_id": self.pad_id,
        }

    @torch.inference_mode()
    def chat(
        self,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int = 512,
        do_sample: bool = False,
        temperature: float = 0.7,
        top_p: float = 0.9,
        seed: int | None = None,
        streamer: Any = None,
        on_text: Sequence[Callable[[str], None] | None] | None = None,
        on_start: Sequence[Callable[[list[str]], None] | None] | None = None,
        stop_strings: Sequence[Sequence[str]] | None = None,
        **generate_kwargs: Any,
    ) -> list[ChatReply]:
        """Answer a batch of conversations (each a list of messages; see `processing`). Greedy by default; the
        release's sampling settings are temperature 0.7, top_p 0.9. Extra keyword arguments go to the LLM's
        `generate()` (e.g. `min_new_tokens`, `repetition_penalty`). A malformed conversation raises
        ConversationError, unusable audio AudioError, bad settings ValueError or TypeError, all before generating.

        on_text: one callback per conversation (or None) that receives its answer as it is generated, in deltas
        that join to exactly the returned `text`. on_start: one callback per conversation (or None) called with
        its transcripts once the audio is processed, before generation starts.

        stop_strings: one list per conversation (empty for none). A row stops generating as soon as its answer
        holds one of its own stop strings (once cutting before the earliest one can no longer change), while the
        other rows go on. The returned text is not cut (it runs to the token that settled the stop), so cutting it
        before its earliest stop string gives exactly the cut of the answer generated without stop strings."""
        _check_conversations(conversations)
        if not conversations:
            return []
        check_generation(max_new_tokens, do_sample, temperature, top_p)
        self._check_generate_kwargs(generate_kwargs)
        for name, hooks in (("on_text", on_text), ("on_start", on_start)):
            if hooks is not None and len(hooks) != len(conversations):
                raise ValueError(f"{name} has {len(hooks)} callbacks for {len(conversations)} conversations")
        stops = self.conversations.end_of_turn_ids | {self.pad_id}
        if stop_strings is not None:
            generate_kwargs = self._with_stop_strings(stop_strings, len(conversations), stops, generate_kwargs)
        if on_text is not None:
            if streamer is not None:
                raise ValueError("pass either streamer or on_text, not both")
            from desta_audio.streaming import BatchedTextStreamer

            streamer = BatchedTextStreamer(self.tokenizer, on_text, stops)
        self.eval()
        timings: dict[str, float] = {}
        batch, audio_tokens, transcripts = self.build_batch(conversations, timings=timings)
        prompt_lengths = self._check_context(batch, max_new_tokens)
        for callback, row_transcripts in zip(on_start or (), transcripts):
            if callback is not None:
                callback(list(row_transcripts))
        if seed is not None:
            torch.manual_seed(seed)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {
            "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        clock = time.perf_counter()
        generated = self.llm_model.generate(
            inputs_embeds=self.embed(batch, audio_tokens),
            attention_mask=batch.attention_mask.to(self.device),
            max_new_tokens=max_new_tokens,
            streamer=streamer,
            # The caller's settings win, e.g. a top_k given with greedy decoding.
            **{**sampling, **self.generation_defaults(), **generate_kwargs},
        )
        timings["generate_s"] = time.perf_counter() - clock
        replies = []
        for row, ids in enumerate(generated.tolist()):
            ids = _until_stop(ids, stops)
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            replies.append(ChatReply(text, transcripts[row], ids, dict(timings), prompt_lengths[row]))
        return replies

    def _check_context(self, batch: Batch, max_new_tokens: int) -> list[int]:
        """Past its context the LLM answers with nonsense, or fails, after minutes of work: refuse such a row first.
        Known only here, once the clips' audio tokens and transcripts are in the prompt."""
        lengths = batch.attention_mask.sum(dim=1).tolist()
        context = getattr(self.llm_model.config, "max_position_embeddings", None)
        for row, length in enumerate(lengths):
            if isinstance(context, int) and length + max_new_tokens > context:
                raise ContextLengthError(
                    f"conversation {row}: its prompt is {length} tokens (the clips' audio tokens and transcripts "
                    f"included) and {max_new_tokens} new tokens are asked, more than the LLM's context of {context} "
                    "tokens; shorten the conversation or its clips, or ask for fewer new tokens")
        return lengths

    def _check_generate_kwargs(self, generate_kwargs: dict[str, Any]) -> None:
        """Refuse a keyword `generate()` does not know (a misspelt `temprature`) before any audio work: generate()
        itself would refuse it only after the encoder and ASR have run."""
        import inspect

        from transformers import GenerationConfig

        known = set(inspect.signature(self.llm_model.generate).parameters) | set(GenerationConfig().to_dict())
        unknown = sorted(set(generate_kwargs) - known)
        if unknown:
            raise TypeError(f"unknown generation setting(s) {unknown}; chat() takes max_new_tokens, do_sample, "
                            "temperature, top_p, seed, stop_strings, on_text, on_start, and the LLM's generate() "
                            "settings (e.g. top_k, min_new_tokens, repetition_penalty)")

    def _with_stop_strings(self, stop_strings: Sequence[Sequence[str]], rows: int, end_ids: set[int],
                           generate_kwargs: dict[str, Any]) -> dict[str, Any]:
        """generate_kwargs with a stopping criterion for the rows that have stop strings (unchanged if none do)."""
        if len(stop_strings) != rows or any(isinstance(row, str) for row in stop_strings):
            raise ValueError(f"stop_strings needs one list of strings per conversation ({rows}), got {stop_strings!r}")
        if not any(stop for row in stop_strings for stop in row):
            return generate_kwargs
        from transformers import StoppingCriteriaList

        from desta_audio.streaming import RowStopStrings

        criteria = StoppingCriteriaList(generate_kwargs.get("stopping_criteria") or [])
        criteria.append(RowStopStrings(self.tokenizer, stop_strings, end_ids))
        return {**generate_kwargs, "stopping_criteria": criteria}

    def ask(self, audios: Sequence[Any], question: str, *, system: str | None = None, **generation: Any) -> ChatReply:
        """One question about a list of audios (paths or 16 kHz arrays), transcribed by the model; a `<|AUDIO|>`
        per audio is put before the question unless it has them. Keywords as for `chat`."""
        if isinstance(audios, (str, PathLike, np.ndarray)):
            raise TypeError("ask() takes a list of audios; wrap a single path or array in a list")
        content = question if "<|AUDIO|>" in question else "".join("<|AUDIO|>" for _ in audios) + "\n" + question
        conversation = [{"role": "user", "content": content, "audios": [{"audio": a, "text": None} for a in audios]}]
        if system is not None:
            conversation.insert(0, {"role": "system", "content": system})
        return self.chat([conversation], **generation)[0]


def _check_conversations(conversations: Any) -> None:
    """A list of conversations, each a list of messages with a user message to answer."""
    if isinstance(conversations, (str, dict)) or (conversations and isinstance(conversations[0], (str, dict))):
        raise TypeError("chat() takes a list of conversations, each a list of messages; wrap a single "
                        "conversation in a list")
    for index, conversation in enumerate(conversations):
        if isinstance(conversation, (str, dict)) or not isinstance(conversation, Sequence):
            raise TypeError(f"chat() takes a list of conversations, each a list of messages; item {index} is "
                            f"{type(conversation).__name__} {conversation!r:.60}")
        roles = [message.get("role") for message in conversation if isinstance(message, dict)]
        if len(roles) == len(conversation) and "user" not in roles:  # a non-dict message gets audio_refs' error
            raise ConversationError(f"conversation {index} has no user message to answer (roles: {roles!r:.120})")


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_generation(max_new_tokens: int, do_sample: bool, temperature: float | None, top_p: float | None) -> None:
    """Refuse generation settings `generate()` would fail on, or take without complaint (top_p 2); temperature
    and top_p matter only when sampling."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens (--max-new-tokens) must be a whole number of at least 1, "
                         f"got {max_new_tokens!r}")
    if not do_sample:
        return
    if not _is_real(temperature) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature (--temperature) must be above 0 when sampling, got {temperature!r}; "
                         "for greedy decoding leave sampling off")
    if not _is_real(top_p) or not 0 < top_p <= 1:
        raise ValueError(f"top_p (--top-p) must be above 0 and at most 1 when sampling, got {top_p!r}")


def _until_stop(ids: list[int], stops: set[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in stops:
            return ids[:position]
    return ids


def read_config(directory: Path) -> DeSTAConfig:
    with open(directory / CONFIG_FILE, encoding="utf-8") as handle:
        raw = json.load(handle)
    if raw.get("model_type") not in (None, DeSTAConfig.model_type):
        raise CheckpointError(f"{directory / CONFIG_FILE}: model_type {raw.get('model_type')!r} is not a DeSTA model")
    return DeSTAConfig(**{k: v for k, v in raw.items() if k != "model_type"})
