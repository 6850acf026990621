"""GGUF -> transformers conversion on tiny random Llama models written to GGUF by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from desta_audio.convert.gguf_llm import GGUFConversionError, convert_gguf_llm, read_gguf_chat_template

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "o n", "i n"]
N_HEADS, N_KV_HEADS = 4, 2


def _vocabulary() -> list[str]:
    from tokenizers import pre_tokenizers

    tokens = SPECIALS + sorted(pre_tokenizers.ByteLevel.alphabet())
    return tokens + ["".join(merge.split()) for merge in MERGES]


def tiny_llama(vocab_size: int, *, tied: bool, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=N_HEADS, num_key_value_heads=N_KV_HEADS, max_position_embeddings=256,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    return model


def _rope_permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    # llama.cpp stores Llama q/k rows interleaved per head for its rope kernel; transformers undoes this on load.
    return weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape
    )


def _rope_unpermute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    return weight.reshape(n_heads, weight.shape[0] // n_heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape
    )


def write_gguf(
    path: Path, model, *, chat_template: str | None = CHATML, quantize: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """Write a Llama model and a byte-level BPE tokenizer as GGUF; returns the float weights the file encodes.

    Tensors whose GGUF name contains one of `quantize` are stored as Q8_0.
    """
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(config.vocab_size)
    tokens = _vocabulary()
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])  # 3: control token
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    sd = {name: tensor.detach().numpy() for name, tensor in model.state_dict().items()}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if not config.tie_word_embeddings:
        names["lm_head.weight"] = "output.weight"
    per_layer = {
        "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }
    for i in range(config.num_hidden_layers):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    encoded: dict[str, np.ndarray] = {}
    for hf, gg in names.items():
        array = sd[hf].astype(np.float32)
        if gg.endswith("attn_q.weight"):
            array = _rope_permute(array, config.num_attention_heads)
        elif gg.endswith("attn_k.weight"):
            array = _rope_permute(array, config.num_key_value_heads)
        if any(part in gg for part in quantize):
            packed = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gg, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            encoded[hf] = gguf.quants.dequantize(packed, gguf.GGMLQuantizationType.Q8_0).reshape(array.shape)
            assert not np.array_equal(encoded[hf], array)
        else:
            writer.add_tensor(gg, array)
            encoded[hf] = array
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return encoded


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(converted folder, original model) for an untied tiny Llama stored in float32 GGUF."""
    folder = tmp_path_factory.mktemp("gguf")
    model = tiny_llama(len(_vocabulary()), tied=False)
    write_gguf(folder / "tiny.gguf", model)
    return convert_gguf_llm(folder / "tiny.gguf", folder / "hf"), model


def test_converted_llm_matches_the_original_logits(converted):
    from transformers import AutoModelForCausalLM

    out, original = converted
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not model.config.tie_word_embeddings
    assert getattr(model.config, "quantization_config", None) is None
    ids = torch.tensor([[1, 40, 50, 60, 70, 2, 80]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits, rtol=1e-5, atol=1e-5)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_saved_files_are_plain_safetensors_with_tokenizer_and_chat_template(converted):
    from transformers import AutoTokenizer, GenerationConfig

    out, _ = converted
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.gguf")) and not list(out.glob("*.bin"))
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "the tin"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nthe tin<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.convert_ids_to_tokens(tokenizer(" the").input_ids) == ["Ġthe"]  # merges survived
    generation = GenerationConfig.from_pretrained(out)
    assert generation.eos_token_id == tokenizer.eos_token_id == 2
    assert generation.pad_token_id is not None


def test_quantized_tensors_are_dequantized_exactly(tmp_path: Path):
    from safetensors.torch import load_file

    model = tiny_llama(len(_vocabulary()), tied=True)
    encoded = write_gguf(tmp_path / "q.gguf", model, quantize=("ffn_", "attn_q"))
    state = load_file(str(convert_gguf_llm(tmp_path / "q.gguf", tmp_path / "hf") / "model.safetensors"))
    down = "model.layers.1.mlp.down_proj.weight"
    for name in (down, "model.layers.0.mlp.gate_proj.weight", "model.layers.0.input_layernorm.weight"):
        np.testing.assert_array_equal(state[name].numpy(), encoded[name], err_msg=name)
    q = "model.layers.1.self_attn.q_proj.weight"  # stored rope-permuted and quantized, read back un-permuted
    np.testing.assert_array_equal(state[q].numpy(), _rope_unpermute(encoded[q], N_HEADS))
    np.testing.assert_allclose(state[q].numpy(), model.state_dict()[q].numpy(), atol=0.02)


def test_missing_chat_template_is_an_error(tmp_path: Path):
    write_gguf(tmp_path / "plain.gguf", tiny_llama(len(_vocabulary()), tied=True), chat_template=None)
    assert read_gguf_chat_template(tmp_path / "plain.gguf") is None
    with pytest.raises(GGUFConversionError, match="chat template"):
        convert_gguf_llm(tmp_path / "plain.gguf", tmp_path / "hf")


def test_chat_template_is_restored_from_gguf_metadata(tmp_path: Path, monkeypatch):
    import transformers

    write_gguf(tmp_path / "m.gguf", tiny_llama(len(_vocabulary()), tied=True))
    assert read_gguf_chat_template(tmp_path / "m.gguf") == CHATML
    load = transformers.AutoTokenizer.from_pretrained

    def load_without_template(*args, **kwargs):  # a transformers version that drops the template
        tokenizer = load(*args, **kwargs)
        if kwargs.get("gguf_file"):
            tokenizer.chat_template = None
        return tokenizer

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", load_without_template)
    out = convert_gguf_llm(tmp_path / "m.gguf", tmp_path / "hf")
    monkeypatch.undo()
    assert transformers.AutoTokenizer.from_pretrained(out).chat_template == CHATML


def test_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nothing.gguf"):
        convert_gguf_llm(tmp_path / "nothing.gguf", tmp_path / "hf")
