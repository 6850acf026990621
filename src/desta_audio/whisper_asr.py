"""Greedy Whisper transcription (language detected, no timestamps) from encoder states already computed.

Whisper's own `generate()` detects the language with a decoder pass of its own: from mel features it runs the whole
encoder again, and either way it projects the encoder states into cross-attention keys and values once for the
detection and once more for decoding. Those projections cover all 1500 frames of every window in every decoder layer,
the largest cost of transcribing a short clip. Here the detection pass fills the cross-attention cache, and decoding
reuses it: the same tokens as `generate(encoder_outputs=..., task="transcribe")`, one projection instead of two.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Transcription:
    text: str
    language: str | None  # Whisper's language code ("en", "fr"...), None for an English-only model


def whisper_encode(whisper: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Mel features (windows, mels, 3000) -> final encoder states (windows, 1500, d)."""
    with torch.no_grad():
        return whisper.model.encoder(features.to(whisper.dtype)).last_hidden_state


def transcribe_encoded(whisper: nn.Module, tokenizer, encoder_states: torch.Tensor, *,
                       max_new_tokens: int) -> list[Transcription]:
    """One greedy transcript per window of `encoder_states` (windows, 1500, d), in a single batched decode."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache
    from transformers.modeling_outputs import BaseModelOutput

    encoded = BaseModelOutput(last_hidden_state=encoder_states)
    config = whisper.generation_config
    lang_to_id = getattr(config, "lang_to_id", None) or {}
    languages: list[str | None] = [None] * len(encoder_states)
    extra = {}  # English-only models (*.en) take neither a language nor a task
    with torch.no_grad():
        if lang_to_id:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            start = torch.full((len(encoder_states), 1), config.decoder_start_token_id, device=encoder_states.device)
            logits = whisper(encoder_outputs=encoded, decoder_input_ids=start, past_key_values=cache,
                             use_cache=True).logits[:, -1]  # fmt: skip
            tokens = sorted(lang_to_id, key=lang_to_id.get)  # id order: ties go to the lowest id, as in generate()
            ids = torch.tensor([lang_to_id[token] for token in tokens], device=logits.device)
            chosen = [tokens[i] for i in logits[:, ids].argmax(-1).tolist()]
            # Decoding starts again from the start token; the filled cross-attention half of the cache is kept.
            cache.self_attention_cache.crop(0)
            languages = [token.strip("<|>") for token in chosen]
            extra = {"language": chosen, "task": "transcribe", "past_key_values": cache}
        with _whisper_generate_quietly():
            ids = whisper.generate(encoder_outputs=encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                   return_timestamps=False, **extra)  # fmt: skip
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [Transcription(text.strip(), language) for text, language in zip(texts, languages)]


@contextlib.contextmanager
def _whisper_generate_quietly() -> Iterator[None]:
    """Whisper's generate() warns on every call about its own argument passing (generation_config beside suppress
    tokens, max_length 448 beside max_new_tokens) and about the unpadded decoder prompt's attention mask; none of
    it applies to greedy decoding of whole windows, so transformers' warnings are silenced for that call only."""
    from transformers.utils import logging as transformers_logging

    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(level)
