"""Tiny random-weight DeSTA models built offline, for fast unit tests."""

from __future__ import annotations

import functools

import torch

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "the quick brown fox jumps over the lazy dog", "what did the speaker say in the audio clip",
    "focus on the audio clips and instructions", "the speaker is female and sounds happy",
    "a dog barks while music plays in the background", "describe the sound in one sentence",
    "<start_audio> <end_audio> hello world 0123456789 yes no maybe", "système français 你好 ünïcödé",
]


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHATML)


def tiny_whisper(seed: int = 0):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    config = WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=32, encoder_layers=4, decoder_layers=1,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=32,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    return WhisperForConditionalGeneration(config).eval(), WhisperFeatureExtractor(feature_size=80)


def tiny_llm(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def tiny_model(seed: int = 0, **config_fields):
    """A DeSTAModel with random weights and no ASR (transcripts come from the caller or are blank)."""
    from desta_audio.config import DeSTAConfig
    from desta_audio.modeling import DeSTAModel

    tokenizer = tiny_tokenizer()
    whisper, features = tiny_whisper(seed)
    llm = tiny_llm(len(tokenizer), seed)
    fields = dict(encoder_model_id="tiny-whisper", llm_model_id="tiny-llm", qformer_num_hidden_layers=2,
                  prompt_size=8, qformer_intermediate_size=64)
    fields.update(config_fields)
    torch.manual_seed(seed + 1)
    return DeSTAModel(DeSTAConfig(**fields), whisper=whisper, llm=llm, tokenizer=tokenizer,
                      feature_extractor=features).eval()
