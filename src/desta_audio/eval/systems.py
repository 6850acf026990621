"""Systems the harness can evaluate, all behind the `chat(conversations, **generation)` API of DeSTAModel.

- a DeSTA model (any preset, folder or hub id): `load_desta`;
- the text-only backbone (`TextBackbone`): the same frozen LLM reading the benchmark's text version of the audio
  (Speech-IFEval's `textual_audio`, the retention check's seed descriptions);
- a cascade (`Cascade`): Whisper transcribes every clip, the text LLM answers with the transcript in place of
  each `<|AUDIO|>`;
- a served model behind an OpenAI-compatible endpoint: `desta_audio.eval.remote.OpenAIChatSystem`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from desta_audio.eval.records import AUDIO_TAG
from desta_audio.precision import dtype_name

logger = logging.getLogger(__name__)


@dataclass
class TextReply:
    text: str
    transcripts: list[str] = field(default_factory=list)


def load_desta(reference: str, **overrides: Any):
    from desta_audio.modeling import DeSTAModel

    from desta_audio.audio_cache import DEFAULT_AUDIO_CACHE_MB

    model = DeSTAModel.from_pretrained(reference, **overrides)
    model.eval_reference = reference  # recorded in manifests
    # Some benchmarks ask several questions about one clip (SAKURA: a single- and a multi-hop question per clip):
    # each clip is then encoded and transcribed once. The answers are the same either way.
    model.enable_audio_cache(DEFAULT_AUDIO_CACHE_MB)
    return model


def describe_system(system: Any) -> dict[str, Any]:
    """What a manifest records about the system that answered: enough to tell two runs' systems apart."""
    if hasattr(system, "describe"):
        return system.describe()
    if hasattr(getattr(system, "config", None), "llm_model_id"):
        return describe_desta(system)
    return {"kind": type(system).__name__}


def describe_desta(model: Any) -> dict[str, Any]:
    config = model.config
    whisper, llm = model.perception.whisper, model.llm
    adapter = {"connector": config.connector_mode, "qformer_layers": config.qformer_num_hidden_layers,
               "qformer_intermediate_size": config.qformer_intermediate_size, "prompt_size": config.prompt_size,
               "taps": list(model.perception.tap_layers), "lora": config.use_lora}
    if config.use_lora:
        adapter["lora_rank"] = config.lora_rank
    return {"kind": "desta", "model": getattr(model, "eval_reference", None),
            "encoder": {"id": config.encoder_model_id, "path": getattr(whisper.config, "_name_or_path", None),
                        "layers": whisper.config.encoder_layers, "dtype": dtype_name(model.encoder_dtype)},
            "llm": {"id": config.llm_model_id, "path": getattr(llm.config, "_name_or_path", None)},
            "adapter": adapter, "dtype": dtype_name(llm.dtype), "device": str(model.device), "asr": model.use_asr,
            "system_prompt": config.system_prompt}


class TextBackbone:
    """A chat LLM answering text-only conversations (audio messages must have been turned into text)."""

    uses_text_audio = True

    def __init__(self, llm: Any, tokenizer: Any, name: str = "text-backbone"):
        self.llm, self.tokenizer, self.name = llm, tokenizer, name

    @classmethod
    def from_path(cls, path: str | Path) -> TextBackbone:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from desta_audio.few_rows_linear import use_few_rows_linear

        tokenizer = AutoTokenizer.from_pretrained(str(path))
        return cls(use_few_rows_linear(AutoModelForCausalLM.from_pretrained(str(path)).eval()), tokenizer,
                   name=str(path))

    @classmethod
    def from_desta(cls, model: Any) -> TextBackbone:
        """The backbone inside a DeSTA model: frozen, so it is exactly the text-only reference."""
        return cls(model.llm, model.tokenizer, name=f"backbone-of:{getattr(model, 'eval_reference', 'desta')}")

    def describe(self) -> dict[str, Any]:
        return {"kind": "text-backbone", "llm": self.name, "dtype": dtype_name(self.llm.dtype)}

    def chat(self, conversations: list[list[dict[str, Any]]], *, max_new_tokens: int = 512, do_sample: bool = False,
             temperature: float = 0.7, top_p: float = 0.9, **_: Any) -> list[TextReply]:
        import torch

        for conversation in conversations:
            if any(m.get("audios") for m in conversation):
                raise ValueError("a text-only backbone got a conversation with audio; use the benchmark's text "
                                 "version of the item (EvalItem.text_conversation)")
        prompts = [self.tokenizer.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in c],
                                                      add_generation_prompt=True, tokenize=False)
                   for c in conversations]
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"  # generation continues from the right edge
        try:
            batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            self.tokenizer.padding_side = side
        device = next(self.llm.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {
            "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            output = self.llm.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=pad, **sampling)
        new = output[:, batch["input_ids"].shape[1]:]
        return [TextReply(self.tokenizer.decode(row, skip_special_tokens=True).strip()) for row in new]


class WhisperASR:
    """Greedy Whisper transcription from a local HF folder (language detected, no timestamps). Clips longer than
    30 s are cut into 30 s windows like the DeSTA model's own input, and their transcripts joined; windows from all
    clips go through the decoder in batches."""

    batch_size = 16

    def __init__(self, path: str | Path):
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        from desta_audio.few_rows_linear import use_few_rows_linear

        self.processor = WhisperProcessor.from_pretrained(str(path))
        self.model = use_few_rows_linear(WhisperForConditionalGeneration.from_pretrained(str(path)).eval())
        self.name = str(path)

    def __call__(self, audio: np.ndarray) -> str:
        return self.transcribe([audio])[0]

    def transcribe(self, audios: list[np.ndarray]) -> list[str]:
        from desta_audio.audio import SAMPLE_RATE, split_windows
        from desta_audio.whisper_asr import transcribe_encoded, whisper_encode

        windows = [(owner, window) for owner, audio in enumerate(audios) for window in split_windows(audio)]
        texts: list[str] = []
        for start in range(0, len(windows), self.batch_size):
            chunk = [window for _, window in windows[start:start + self.batch_size]]
            features = self.processor(chunk, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
            texts += [heard.text for heard in transcribe_encoded(self.model, self.processor.tokenizer,
                                                                 whisper_encode(self.model, features),
                                                                 max_new_tokens=128)]
        return [" ".join(text for (owner, _), text in zip(windows, texts) if owner == index and text)
                for index in range(len(audios))]


class Cascade:
    """ASR -> text LLM baseline: each `<|AUDIO|>` is replaced by the transcript of its clip. `transcribe` maps a
    list of 16 kHz clips to their transcripts (all clips of a batch in one call)."""

    def __init__(self, transcribe: Callable[[list[np.ndarray]], list[str]], backbone: TextBackbone,
                 asr_name: str = "asr"):
        self.transcribe, self.backbone, self.asr_name = transcribe, backbone, asr_name

    @classmethod
    def from_packaged(cls, whisper: str = "whisper-base", llm: str = "qwen2.5-0.5b-instruct") -> Cascade:
        from desta_audio import zoo

        asr = WhisperASR(zoo.resolve_component(whisper))
        return cls(asr.transcribe, TextBackbone.from_path(zoo.resolve_component(llm)), asr_name=whisper)

    def describe(self) -> dict[str, Any]:
        return {"kind": "cascade", "asr": self.asr_name, "llm": self.backbone.name}

    def chat(self, conversations: list[list[dict[str, Any]]], **generation: Any) -> list[TextReply]:
        from desta_audio.audio import load_audio

        entries = [entry for c in conversations for m in c for entry in m.get("audios") or []]
        heard = iter(self.transcribe([load_audio(e["audio"]) for e in entries if not e.get("text")]))
        in_order = iter([entry.get("text") or next(heard) for entry in entries])  # a given transcript wins
        prompts, transcripts = [], []
        for conversation in conversations:
            messages, used = [], []
            for message in conversation:
                content = message["content"]
                for _ in message.get("audios") or []:
                    used.append(next(in_order))
                    content = content.replace(AUDIO_TAG, used[-1], 1)
                messages.append({"role": message["role"], "content": content})
            prompts.append(messages)
            transcripts.append(used)
        replies = self.backbone.chat(prompts, **generation)
        for reply, used in zip(replies, transcripts):
            reply.transcripts = used
        return replies
