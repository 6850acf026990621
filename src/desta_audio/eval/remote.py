"""Evaluate a model behind an OpenAI-compatible chat endpoint: `desta serve` on a GPU box, or another audio LLM
served by vLLM (Qwen2-Audio, Ultravox...). Same `chat(conversations, **generation)` API as the local systems.

- Each clip goes as an `input_audio` part holding a float32 WAV of the very 16 kHz mono samples the local model
  would read, so a greedy run through `desta serve` gives the answers of an in-process run.
- A batch's requests go out concurrently, so the server's dynamic batching sees them together.
- Connection failures, timeouts, 429 and 5xx are retried by the client, then stop the run (resume picks up where it
  stopped). A request the server refuses for what it is (another 4xx: audio over its limit, a prompt too long)
  comes back as a reply with `error`: the runner lists the item in the errors file, not as a prediction, so it is
  scored as missing and sent again on the next run.
"""

from __future__ import annotations

import base64
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from desta_audio.eval.records import AUDIO_TAG

logger = logging.getLogger(__name__)
# Statuses worth retrying later rather than recording as the item's outcome.
TRANSIENT_STATUSES = {408, 409, 429}


@dataclass
class RemoteReply:
    text: str | None
    transcripts: list[str] = field(default_factory=list)
    error: str | None = None


def wav_base64(audio: Any) -> str:
    """A path or array -> base64 float32 WAV of its 16 kHz mono samples (lossless: the server reads what we read)."""
    import soundfile as sf

    from desta_audio.audio import SAMPLE_RATE, load_audio

    buffer = io.BytesIO()
    sf.write(buffer, load_audio(audio), SAMPLE_RATE, format="WAV", subtype="FLOAT")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def openai_messages(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Model-API conversation -> OpenAI messages: each `<|AUDIO|>` becomes an `input_audio` part at its place.

    The text around a tag keeps its own whitespace (the DeSTA prompts put a line break after the tag), which is what
    `desta serve` joins back, so the prompt the remote model sees is the local one.
    """
    messages = []
    for index, message in enumerate(conversation):
        audios = message.get("audios") or []
        pieces = message["content"].split(AUDIO_TAG)
        if len(pieces) - 1 != len(audios):
            raise ValueError(f"message {index}: {len(pieces) - 1} {AUDIO_TAG} tags for {len(audios)} audios")
        if not audios:
            messages.append({"role": message["role"], "content": message["content"]})
            continue
        parts: list[dict[str, Any]] = []
        for position, text in enumerate(pieces):
            if text:
                parts.append({"type": "text", "text": text})
            if position < len(audios):
                entry = audios[position]
                clip: dict[str, Any] = {"data": wav_base64(entry["audio"]), "format": "wav"}
                if entry.get("text") is not None:
                    clip["transcript"] = entry["text"]  # desta serve's extension: a known transcript skips ASR
                parts.append({"type": "input_audio", "input_audio": clip})
        messages.append({"role": message["role"], "content": parts})
    return messages


class OpenAIChatSystem:
    """A served model reached with the official `openai` client. `text_only`: a text LLM that gets the benchmark's
    text version of each item (e.g. the backbone's Speech-IFEval reference, served by vLLM)."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, concurrency: int = 8,
                 timeout_s: float = 600.0, max_retries: int = 3, client: Any = None, text_only: bool = False) -> None:
        import openai

        self.base_url, self.model, self.concurrency = base_url, model, max(1, concurrency)
        self.uses_text_audio = text_only
        self.client = client or openai.OpenAI(base_url=base_url, api_key=api_key or "unused", timeout=timeout_s,
                                              max_retries=max_retries)
        self._check_model()

    def _check_model(self) -> None:
        import openai

        try:
            served = [entry.id for entry in self.client.models.list()]
        except openai.APIConnectionError as error:
            raise ConnectionError(f"{self.base_url}: no OpenAI-compatible server answers ({error})") from None
        except openai.APIStatusError as error:
            raise ConnectionError(f"{self.base_url}/models answered {error.status_code}: {error.message}") from None
        if self.model not in served:
            raise ValueError(f"{self.base_url} serves {served}, not {self.model!r}; pass one of them as --model")

    def describe(self) -> dict[str, Any]:
        return {"kind": "openai-api-text" if self.uses_text_audio else "openai-api", "base_url": self.base_url,
                "model": self.model}

    def chat(self, conversations: list[list[dict[str, Any]]], *, max_new_tokens: int = 512, do_sample: bool = False,
             temperature: float = 0.7, top_p: float = 0.9, seed: int | None = None, **_: Any) -> list[RemoteReply]:
        params: dict[str, Any] = {"max_tokens": max_new_tokens, "temperature": temperature if do_sample else 0.0}
        if do_sample:
            params["top_p"] = top_p
        if seed is not None:
            params["seed"] = seed
        requests = [openai_messages(conversation) for conversation in conversations]
        with ThreadPoolExecutor(min(self.concurrency, len(requests)) or 1) as pool:
            return list(pool.map(lambda messages: self._ask(messages, params), requests))

    def _ask(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> RemoteReply:
        import openai

        try:
            completion = self.client.chat.completions.create(model=self.model, messages=messages, **params)
        except openai.APIStatusError as error:
            if error.status_code >= 500 or error.status_code in TRANSIENT_STATUSES:
                raise
            logger.warning("request refused (%s): %s", error.status_code, error.message)
            return RemoteReply(None, error=f"{error.status_code}: {error.message}")
        message = completion.choices[0].message
        transcripts = (message.model_extra or {}).get("transcripts") or []
        return RemoteReply(message.content or "", list(transcripts))
