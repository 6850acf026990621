"""CTranslate2 Whisper reader/converter on tiny random Whisper models written in the CTranslate2 format by the tests."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from desta_audio.convert.ctranslate2_whisper import (
    CT2FormatError,
    convert_ctranslate2_whisper,
    read_ctranslate2_model,
)

CT2_DTYPE_IDS = {torch.float32: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.float16: 4, torch.bfloat16: 5}
SPECIALS = [
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|fr|>", "<|translate|>", "<|transcribe|>",
    "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>",
]
N_FRAMES = 200  # mel frames of one window for max_source_positions=100 (two stride-1/stride-2 convs)
TIED = {"decoder/projection/weight": "decoder/embeddings/weight"}  # how CTranslate2 writes Whisper's tied proj_out


# ------------------------------------------------------------------------------------------ test-side writer


def _string(text: str) -> bytes:
    data = text.encode("utf-8") + b"\0"
    return struct.pack("<H", len(data)) + data


def write_ct2_model(
    path: Path,
    variables: dict[str, torch.Tensor],
    aliases: dict[str, str] | None = None,
    *,
    spec: str = "WhisperSpec",
    revision: int = 3,
    version: int = 6,
) -> Path:
    """Write variables in the CTranslate2 model.bin layout."""
    chunks = [struct.pack("<I", version), _string(spec), struct.pack("<I", revision), struct.pack("<I", len(variables))]
    for name, tensor in variables.items():
        tensor = tensor.contiguous()
        raw = tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor
        data = raw.numpy().tobytes()
        chunks += [_string(name), struct.pack("<B", tensor.dim()), struct.pack(f"<{tensor.dim()}I", *tensor.shape)]
        chunks += [struct.pack("<B", CT2_DTYPE_IDS[tensor.dtype]), struct.pack("<I", len(data)), data]
    aliases = aliases or {}
    chunks.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        chunks += [_string(alias), _string(target)]
    path.write_bytes(b"".join(chunks))
    return path


def whisper_to_ct2(model, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The CTranslate2 variables of a transformers Whisper (fused q|k|v and k|v, zero key biases, scalar settings)."""
    sd = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    config = model.config
    out: dict[str, torch.Tensor] = {}

    def put(name: str, tensor: torch.Tensor) -> None:
        out[name] = tensor.to(dtype)

    def linear(hf: str, ct2: str) -> None:
        put(f"{ct2}/weight", sd[f"{hf}.weight"])
        if f"{hf}.bias" in sd:
            put(f"{ct2}/bias", sd[f"{hf}.bias"])

    def norm(hf: str, ct2: str) -> None:
        put(f"{ct2}/gamma", sd[f"{hf}.weight"])
        put(f"{ct2}/beta", sd[f"{hf}.bias"])

    def self_attention(hf: str, ct2: str) -> None:
        q, k, v = (f"{hf}.{p}_proj" for p in "qkv")
        put(f"{ct2}/linear_0/weight", torch.cat([sd[f"{q}.weight"], sd[f"{k}.weight"], sd[f"{v}.weight"]]))
        zeros = torch.zeros_like(sd[f"{q}.bias"])
        put(f"{ct2}/linear_0/bias", torch.cat([sd[f"{q}.bias"], zeros, sd[f"{v}.bias"]]))
        linear(f"{hf}.out_proj", f"{ct2}/linear_1")

    def layer(hf: str, ct2: str, cross: bool) -> None:
        self_attention(f"{hf}.self_attn", f"{ct2}/self_attention")
        norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
        if cross:
            a = f"{hf}.encoder_attn"
            linear(f"{a}.q_proj", f"{ct2}/attention/linear_0")
            put(f"{ct2}/attention/linear_1/weight", torch.cat([sd[f"{a}.k_proj.weight"], sd[f"{a}.v_proj.weight"]]))
            bias = torch.cat([torch.zeros_like(sd[f"{a}.v_proj.bias"]), sd[f"{a}.v_proj.bias"]])
            put(f"{ct2}/attention/linear_1/bias", bias)
            linear(f"{a}.out_proj", f"{ct2}/attention/linear_2")
            norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
        linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0")
        linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1")
        norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")

    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    put("encoder/position_encodings/encodings", sd["model.encoder.embed_positions.weight"])
    for i in range(config.encoder_layers):
        layer(f"model.encoder.layers.{i}", f"encoder/layer_{i}", cross=False)
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    put("decoder/embeddings/weight", sd["model.decoder.embed_tokens.weight"])
    put("decoder/position_encodings/encodings", sd["model.decoder.embed_positions.weight"])
    for i in range(config.decoder_layers):
        layer(f"model.decoder.layers.{i}", f"decoder/layer_{i}", cross=True)
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    # Scalar settings as CTranslate2 writes them for Whisper.
    out["encoder/num_heads"] = torch.tensor(config.encoder_attention_heads, dtype=torch.int16)
    out["decoder/num_heads"] = torch.tensor(config.decoder_attention_heads, dtype=torch.int16)
    for name, value in {"activation": 3, "pre_norm": 1, "alibi": 0, "scale_embeddings": 0}.items():
        out[f"decoder/{name}"] = torch.tensor(value, dtype=torch.int8)
    out["decoder/alignment_heads"] = torch.tensor(1, dtype=torch.int16)
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------------------------- fixtures


def write_whisper_tokenizer(path: Path) -> int:
    """A byte-level BPE tokenizer with Whisper's control tokens; returns its size."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tokenizer.save(str(path))
    return tokenizer.get_vocab_size()


def tiny_whisper(vocab_size: int, end_of_text: int, seed: int = 0):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=vocab_size, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=N_FRAMES // 2, max_target_positions=48, pad_token_id=end_of_text,
        bos_token_id=end_of_text, eos_token_id=end_of_text, decoder_start_token_id=end_of_text + 1,
    )
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # random everything (biases, norms, positions), so every mapping is exercised
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model


@pytest.fixture()
def ct2_folder(tmp_path: Path):
    """(folder with model.bin + tokenizer.json + config.json, original transformers model)."""
    base = write_whisper_tokenizer(tmp_path / "tokenizer.json")
    ids = {token: base - len(SPECIALS) + i for i, token in enumerate(SPECIALS)}
    # Room for the 1501 timestamp tokens after the control tokens, as in real Whisper.
    model = tiny_whisper(vocab_size=base + 1501, end_of_text=ids["<|endoftext|>"])
    write_ct2_model(tmp_path / "model.bin", whisper_to_ct2(model), TIED)
    config = {
        "lang_ids": [ids["<|en|>"], ids["<|fr|>"]],
        "suppress_ids": [5, 6, ids["<|translate|>"]],
        "suppress_ids_begin": [ids["<|endoftext|>"]],
        "alignment_heads": [[1, 0], [1, 3]],
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path, model


def _convert(folder: Path, **kwargs) -> Path:
    return convert_ctranslate2_whisper(
        folder / "model.bin", folder / "tokenizer.json", folder / "hf", folder / "config.json", **kwargs
    )


def _features(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 80, N_FRAMES, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------- tests


def test_reader_round_trips_every_dtype_scalars_and_aliases(tmp_path: Path):
    variables = {
        f"v/{dtype}": (torch.arange(12, dtype=torch.float32).reshape(3, 4) - 5).to(dtype) for dtype in CT2_DTYPE_IDS
    }
    variables["scalar"] = torch.tensor(8, dtype=torch.int16)
    path = write_ct2_model(tmp_path / "model.bin", variables, {"alias/a": "v/torch.float32"}, spec="TestSpec")
    model = read_ctranslate2_model(path)
    assert (model.spec, model.revision, model.format_version) == ("TestSpec", 3, 6)
    assert model.aliases == {"alias/a": "v/torch.float32"}
    assert model.variables.keys() == variables.keys()
    for name, tensor in variables.items():
        assert model.variables[name].dtype == tensor.dtype
        assert torch.equal(model.variables[name], tensor), name


def test_converted_model_reproduces_encoder_and_decoder_exactly(ct2_folder):
    from transformers import WhisperForConditionalGeneration

    folder, original = ct2_folder
    converted = WhisperForConditionalGeneration.from_pretrained(_convert(folder, multilingual=True)).eval()
    assert converted.config.encoder_layers == 2 and converted.config.decoder_layers == 2
    assert converted.config.encoder_attention_heads == 4 and converted.config.d_model == 64
    assert converted.config.decoder_ffn_dim == 128 and converted.config.max_target_positions == 48
    features = _features()
    decoder_ids = torch.tensor([[1, 7, 3, 9], [4, 4, 2, 8]])
    with torch.no_grad():
        expected = original(input_features=features, decoder_input_ids=decoder_ids, output_hidden_states=True)
        actual = converted(input_features=features, decoder_input_ids=decoder_ids, output_hidden_states=True)
    torch.testing.assert_close(actual.encoder_last_hidden_state, expected.encoder_last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=0, atol=0)
    assert converted.proj_out.weight.data_ptr() == converted.model.decoder.embed_tokens.weight.data_ptr()


def test_float16_weights_convert_to_float32_without_loss(ct2_folder):
    from transformers import WhisperForConditionalGeneration

    folder, original = ct2_folder
    with torch.no_grad():  # make the original exactly representable in float16
        for param in original.parameters():
            param.copy_(param.half().float())
    write_ct2_model(folder / "model.bin", whisper_to_ct2(original, torch.float16), TIED)
    converted = WhisperForConditionalGeneration.from_pretrained(_convert(folder))
    state = converted.state_dict()
    assert all(t.dtype == torch.float32 for t in state.values())
    for name, tensor in original.state_dict().items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0, msg=name)


def test_int8_weights_are_dequantized_with_their_scales(ct2_folder):
    from desta_audio.convert.ctranslate2_whisper import ctranslate2_whisper_state_dict

    folder, original = ct2_folder
    variables = whisper_to_ct2(original)
    name = "encoder/layer_1/ffn/linear_0/weight"
    weight = variables[name]
    scale = 127.0 / weight.abs().amax(dim=1)
    variables[name] = torch.round(weight * scale[:, None]).to(torch.int8)
    variables[name + "_scale"] = scale
    state, _, _ = ctranslate2_whisper_state_dict(read_ctranslate2_model(write_ct2_model(folder / "q.bin", variables)))
    dequantized = state["model.encoder.layers.1.fc1.weight"]
    torch.testing.assert_close(dequantized, variables[name].float() / scale[:, None], rtol=0, atol=0)
    assert (dequantized - weight).abs().max() <= (0.5 / scale).max() + 1e-6


def test_generation_config_tokenizer_and_feature_extractor(ct2_folder):
    from transformers import AutoFeatureExtractor, AutoTokenizer, GenerationConfig

    folder, _ = ct2_folder
    out = _convert(folder, multilingual=True)
    tokenizer = AutoTokenizer.from_pretrained(out)
    generation = GenerationConfig.from_pretrained(out)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIALS}
    assert generation.decoder_start_token_id == ids["<|startoftranscript|>"]
    assert generation.eos_token_id == generation.pad_token_id == ids["<|endoftext|>"]
    assert generation.no_timestamps_token_id == ids["<|notimestamps|>"]
    assert generation.lang_to_id == {"<|en|>": ids["<|en|>"], "<|fr|>": ids["<|fr|>"]}
    assert generation.task_to_id == {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    assert generation.is_multilingual and generation.task == "transcribe" and not generation.return_timestamps
    assert generation.suppress_tokens == [5, 6, ids["<|translate|>"]]
    assert generation.begin_suppress_tokens == [ids["<|endoftext|>"]]
    assert generation.alignment_heads == [[1, 0], [1, 3]]
    # Timestamp tokens follow <|notimestamps|> as in real Whisper, and are not special (decode filters them).
    assert tokenizer.convert_tokens_to_ids("<|0.00|>") == ids["<|notimestamps|>"] + 1
    assert tokenizer.convert_tokens_to_ids("<|30.00|>") == ids["<|notimestamps|>"] + 1501
    assert tokenizer.all_special_ids[-1] == ids["<|notimestamps|>"]
    text_ids = tokenizer("hello", add_special_tokens=False).input_ids
    framed = [ids["<|startoftranscript|>"], *text_ids, ids["<|endoftext|>"]]
    assert tokenizer.decode(framed, skip_special_tokens=True) == "hello"
    assert AutoFeatureExtractor.from_pretrained(out).feature_size == 80


def test_generate_detects_language_and_matches_original(ct2_folder):
    from transformers import WhisperForConditionalGeneration

    folder, original = ct2_folder
    converted = WhisperForConditionalGeneration.from_pretrained(_convert(folder, multilingual=True)).eval()
    original.generation_config = converted.generation_config
    features = _features(seed=3)
    detected = converted.detect_language(input_features=features)
    assert set(detected.tolist()) <= set(converted.generation_config.lang_to_id.values())
    with torch.no_grad():
        expected = original.generate(features, max_new_tokens=6)
        actual = converted.generate(features, max_new_tokens=6)
    assert torch.equal(actual, expected)


def test_english_only_model_has_no_language_detection(ct2_folder):
    from transformers import GenerationConfig

    folder, _ = ct2_folder
    generation = GenerationConfig.from_pretrained(_convert(folder))  # small vocabulary: English-only by rule
    assert generation.is_multilingual is False
    assert getattr(generation, "lang_to_id", None) is None and getattr(generation, "task", None) is None


def test_unknown_variable_is_an_error_not_silently_dropped(ct2_folder):
    folder, original = ct2_folder
    variables = whisper_to_ct2(original)
    variables["encoder/layer_0/self_attention/extra/weight"] = torch.zeros(2)
    write_ct2_model(folder / "model.bin", variables, TIED)
    with pytest.raises(CT2FormatError, match="extra/weight"):
        _convert(folder)


def test_missing_variable_is_an_error(ct2_folder):
    folder, original = ct2_folder
    variables = whisper_to_ct2(original)
    del variables["decoder/layer_1/attention/linear_2/weight"]
    write_ct2_model(folder / "model.bin", variables)
    with pytest.raises(CT2FormatError, match="linear_2/weight"):
        _convert(folder)


def test_non_whisper_settings_are_rejected(ct2_folder):
    folder, original = ct2_folder
    variables = whisper_to_ct2(original)
    variables["decoder/activation"] = torch.tensor(0, dtype=torch.int8)  # ReLU
    write_ct2_model(folder / "model.bin", variables)
    with pytest.raises(CT2FormatError, match="activation"):
        _convert(folder)


def test_wrong_spec_and_version_and_truncation_are_clear_errors(tmp_path: Path):
    variables = {"x": torch.zeros(4)}
    with pytest.raises(CT2FormatError, match="WhisperSpec"):
        convert_ctranslate2_whisper(
            write_ct2_model(tmp_path / "a.bin", variables, spec="TransformerSpec"), tmp_path / "t.json", tmp_path / "o"
        )
    with pytest.raises(CT2FormatError, match="version 4"):
        read_ctranslate2_model(write_ct2_model(tmp_path / "b.bin", variables, version=4))
    data = write_ct2_model(tmp_path / "c.bin", {"x": torch.zeros(64)}).read_bytes()
    (tmp_path / "c.bin").write_bytes(data[:-40])
    with pytest.raises(CT2FormatError, match="truncated|ends"):
        read_ctranslate2_model(tmp_path / "c.bin")
