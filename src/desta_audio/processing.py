"""Conversations -> token ids with audio slots, labels for training, and batch collation.

A conversation is a list of chat messages; a message may carry audios in the release's form:
`{"role": "user", "content": "<|AUDIO|>\\nWhat is said?", "audios": [{"audio": path_or_array, "text": None}]}`;
an array at another rate than 16 kHz says so with `"sampling_rate": rate`.
Each `<|AUDIO|>` becomes `<start_audio>` + audio tokens (64 per 30 s window) + transcript tokens + `<end_audio>`.
The markers are ordinary text; audio positions are tracked explicitly (a mask), so no vocabulary entry is
reserved or added.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from desta_audio.config import AUDIO_END, AUDIO_LOCATOR, AUDIO_START

IGNORE_INDEX = -100
# What an entry of a message's `audios` may hold; `sampling_rate` is named as in Hugging Face datasets' audio.
AUDIO_KEYS = frozenset({"audio", "text", "sampling_rate"})
Conversation = Sequence[dict[str, Any]]


class ConversationError(ValueError):
    """A malformed conversation, with the message at fault."""


class ContextLengthError(ConversationError):
    """A prompt (clips' audio tokens and transcripts included) and its answer that do not fit in the LLM's context."""


@dataclass
class AudioRef:
    """One audio of a conversation, in order of appearance."""

    audio: Any  # path or array
    text: str | None  # caller-supplied transcript, or None to transcribe
    sample_rate: int | None = None  # of an array (None: 16 kHz); a file carries its own


@dataclass
class Encoded:
    """One conversation as token ids; audio_slots[i] = (start, length) of audio i's soft-token positions."""

    input_ids: list[int]
    labels: list[int] | None
    audio_slots: list[tuple[int, int]] = field(default_factory=list)


def audio_refs(conversation: Conversation) -> list[AudioRef]:
    """The audios of a conversation in order, after checking each message's locator count."""
    refs: list[AudioRef] = []
    for index, message in enumerate(conversation):
        if not isinstance(message, dict) or "role" not in message:
            raise ConversationError(f"message {index}: expected a dict with 'role' and 'content', got {message!r:.80}")
        content = message.get("content")
        if not isinstance(content, str):
            raise ConversationError(f"message {index}: 'content' must be a string, got {type(content).__name__}")
        audios = message.get("audios") or []
        if not isinstance(audios, (list, tuple)):
            raise ConversationError(f"message {index}: 'audios' must be a list (one entry per {AUDIO_LOCATOR}), "
                                    f"got {type(audios).__name__}")
        slots = content.count(AUDIO_LOCATOR)
        if slots != len(audios):
            raise ConversationError(
                f"message {index} ({message['role']}): {slots} {AUDIO_LOCATOR} locator(s) but {len(audios)} audio(s); "
                f"put one {AUDIO_LOCATOR} in the text where each audio belongs"
            )
        for audio in audios:
            if isinstance(audio, dict):
                if "audio" not in audio:
                    raise ConversationError(f"message {index}: each audio needs an 'audio' key, got {sorted(audio)}")
                unknown = sorted(set(audio) - AUDIO_KEYS)
                if unknown:  # a misspelt key (a rate, say) would otherwise be dropped without a word
                    raise ConversationError(f"message {index}: unknown audio key(s) {unknown}; an audio takes "
                                            f"{', '.join(repr(k) for k in sorted(AUDIO_KEYS))}")
                text = audio.get("text")
                if text is not None and not isinstance(text, str):
                    raise ConversationError(f"message {index}: an audio's 'text' must be its transcript (a string) "
                                            f"or None to transcribe it, got {type(text).__name__}")
                refs.append(AudioRef(audio["audio"], text, audio.get("sampling_rate")))
            else:  # a bare path or array
                refs.append(AudioRef(audio, None))
    return refs


def mark_audio(text: str) -> str:
    """Wrap each bare `<|AUDIO|>` in the start/end markers (training records already carry them)."""
    wrapped = f"{AUDIO_START}{AUDIO_LOCATOR}{AUDIO_END}"
    return text.replace(wrapped, AUDIO_LOCATOR).replace(AUDIO_LOCATOR, wrapped)


class ConversationEncoder:
    """Renders conversations with the LLM's own chat template and tokenises them around the audio slots."""

    def __init__(self, tokenizer: Any, *, system_prompt: str | None, placeholder_id: int) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the LLM tokenizer has no chat template; DeSTA needs an instruction-tuned LLM")
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.placeholder_id = placeholder_id
        self.end_of_turn_ids = end_of_turn_ids(tokenizer)

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        plain = [{"role": m["role"], "content": mark_audio(m["content"])} for m in messages]
        return self.tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _with_system(self, conversation: Conversation) -> list[dict[str, Any]]:
        messages = list(conversation)
        if self.system_prompt and (not messages or messages[0]["role"] != "system"):
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def encode(self, conversation: Conversation, slot_lengths: list[int], transcripts: list[list[int]],
               *, for_training: bool = False) -> Encoded:
        """Token ids (and labels) for one conversation.

        slot_lengths[i]: number of audio soft tokens of audio i; transcripts[i]: its transcript token ids.
        For training, the conversation ends with an assistant turn and every assistant turn is labelled
        (its content and the end-of-turn token); otherwise a generation prompt is appended.
        """
        messages = self._with_system(conversation)
        if for_training:
            pieces = self._training_pieces(messages)
        else:
            pieces = [(self._render(messages, add_generation_prompt=True), False)]
        ids: list[int] = []
        labels: list[int] = []
        slots: list[tuple[int, int]] = []
        audio_index = 0
        for text, supervised in pieces:
            for part_index, part in enumerate(text.split(AUDIO_LOCATOR)):
                if part_index:  # an audio slot sits before every part but the first
                    if supervised:
                        raise ConversationError("assistant turns cannot contain audio")
                    if audio_index >= len(slot_lengths):
                        raise ConversationError("the rendered chat has more audio locators than audios")
                    slots.append((len(ids), slot_lengths[audio_index]))
                    slot = [self.placeholder_id] * slot_lengths[audio_index] + list(transcripts[audio_index])
                    ids += slot
                    labels += [IGNORE_INDEX] * len(slot)
                    audio_index += 1
                part_ids = self.tokenizer.encode(part, add_special_tokens=False) if part else []
                ids += part_ids
                labels += self._supervise(part_ids) if supervised else [IGNORE_INDEX] * len(part_ids)
        if audio_index != len(slot_lengths):
            raise ConversationError(f"{len(slot_lengths)} audios given but the chat has {audio_index} locators")
        return Encoded(ids, labels if for_training else None, slots)

    def _training_pieces(self, messages: list[dict[str, Any]]) -> list[tuple[str, bool]]:
        """Split the rendered chat into (text, is_assistant_turn) pieces by rendering growing prefixes."""
        if messages[-1]["role"] != "assistant":
            raise ConversationError("a training conversation must end with an assistant message")
        pieces: list[tuple[str, bool]] = []
        done = ""
        for end, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self._render(messages[:end], add_generation_prompt=True)
            full = self._render(messages[: end + 1], add_generation_prompt=False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise ConversationError("the chat template does not render turns as a growing prefix; cannot label")
            pieces += [(prompt[len(done):], False), (full[len(prompt):], True)]
            done = full
        return pieces

    def _supervise(self, ids: list[int]) -> list[int]:
        """Label an assistant turn up to and including its end-of-turn token; what follows it is not learned."""
        labels = list(ids)
        for position, token in enumerate(ids):
            if token in self.end_of_turn_ids:
                labels[position + 1:] = [IGNORE_INDEX] * (len(ids) - position - 1)
                break
        return labels


def end_of_turn_ids(tokenizer: Any) -> set[int]:
    """Token ids that end an assistant turn: the tokenizer's eos plus the common chat-template terminators."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    for name in ("<|eot_id|>", "<|im_end|>", "<|end_of_text|>", "<end_of_turn>", "<|endoftext|>", "</s>"):
        if name in vocab:
            ids.add(vocab[name])
    return ids


@dataclass
class Batch:
    """Left-padded token ids with the positions that receive audio soft tokens."""

    input_ids: torch.Tensor  # (b, t)
    attention_mask: torch.Tensor  # (b, t)
    audio_mask: torch.Tensor  # (b, t) bool, row-major order == order of audio tokens
    labels: torch.Tensor | None  # (b, t)


def collate(encoded: list[Encoded], pad_id: int, *, padding_side: str = "left") -> Batch:
    length = max(len(e.input_ids) for e in encoded)
    input_ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
    audio_mask = torch.zeros((len(encoded), length), dtype=torch.bool)
    with_labels = all(e.labels is not None for e in encoded)
    labels = torch.full((len(encoded), length), IGNORE_INDEX, dtype=torch.long) if with_labels else None
    for row, item in enumerate(encoded):
        offset = length - len(item.input_ids) if padding_side == "left" else 0
        span = slice(offset, offset + len(item.input_ids))
        input_ids[row, span] = torch.tensor(item.input_ids, dtype=torch.long)
        attention_mask[row, span] = 1
        for start, size in item.audio_slots:
            audio_mask[row, offset + start: offset + start + size] = True
        if labels is not None:
            labels[row, span] = torch.tensor(item.labels, dtype=torch.long)
    return Batch(input_ids, attention_mask, audio_mask, labels)
