"""CTranslate2 Whisper (`model.bin`) -> transformers `WhisperForConditionalGeneration` folder.

CTranslate2 ships no reverse converter, but its model file is a small, documented binary format:

    uint32 version (>= 5), string spec name, uint32 spec revision, uint32 variable count,
    per variable: string name, uint8 rank, uint32[rank] shape, uint8 dtype, uint32 byte count, raw bytes,
    uint32 alias count, then (alias, target) string pairs.

Strings are a uint16 byte length followed by UTF-8 bytes that end with a NUL. Everything is little endian.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

logger = logging.getLogger(__name__)

# dtype ids of the CTranslate2 file format.
CT2_DTYPES: dict[int, torch.dtype] = {
    0: torch.float32,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.float16,
    5: torch.bfloat16,
}
MIN_FORMAT_VERSION = 5
MAX_FORMAT_VERSION = 6

# CTranslate2 `ActivationType` enum value of exact (erf) GELU, which Whisper uses.
_CT2_GELU = 3

# Whisper writes 1501 timestamp tokens (<|0.00|> .. <|30.00|>, 20 ms apart) after its special tokens. The
# CTranslate2 tokenizer.json leaves them out; the transformers tokenizer needs them to decode timestamps.
_N_TIMESTAMP_TOKENS = 1501
_TIMESTAMP_STEP_S = 0.02
# openai/whisper tells multilingual from English-only models by vocabulary size. (CTranslate2's config.json is no
# help: it lists language ids for English-only models too, shifted by one.)
_MULTILINGUAL_MIN_VOCAB = 51865


class CT2FormatError(ValueError):
    """A CTranslate2 model file is malformed or holds something this converter does not understand."""


@dataclass
class CT2Model:
    """The decoded content of a CTranslate2 `model.bin`."""

    spec: str
    revision: int
    format_version: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- reading


def read_ctranslate2_model(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 `model.bin` into tensors (in their stored dtype; int8/int16 weights keep their scales)."""
    path = Path(path)
    with path.open("rb") as stream:
        try:
            return _read_model(stream, path)
        except struct.error as error:
            raise CT2FormatError(f"{path}: file ends early or is not a CTranslate2 model.bin ({error}).") from error


def _read_model(stream: BinaryIO, path: Path) -> CT2Model:
    version = _read_struct(stream, "<I")
    if not MIN_FORMAT_VERSION <= version <= MAX_FORMAT_VERSION:
        raise CT2FormatError(
            f"{path}: CTranslate2 format version {version} is not supported (expected "
            f"{MIN_FORMAT_VERSION}..{MAX_FORMAT_VERSION}); re-export the model with a recent ctranslate2."
        )
    spec = _read_string(stream)
    revision = _read_struct(stream, "<I")
    variables: dict[str, torch.Tensor] = {}
    for _ in range(_read_struct(stream, "<I")):
        name = _read_string(stream)
        rank = _read_struct(stream, "<B")
        shape = struct.unpack(f"<{rank}I", stream.read(4 * rank))
        dtype_id = _read_struct(stream, "<B")
        num_bytes = _read_struct(stream, "<I")
        if dtype_id not in CT2_DTYPES:
            raise CT2FormatError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}.")
        data = stream.read(num_bytes)
        if len(data) != num_bytes:
            raise CT2FormatError(f"{path}: file ends inside variable {name!r}; the file is truncated.")
        dtype = CT2_DTYPES[dtype_id]
        tensor = torch.frombuffer(bytearray(data), dtype=dtype) if num_bytes else torch.empty(0, dtype=dtype)
        expected = 1
        for dim in shape:
            expected *= dim
        if tensor.numel() != expected:
            raise CT2FormatError(
                f"{path}: variable {name!r} holds {tensor.numel()} values but its shape {shape} needs {expected}."
            )
        variables[name] = tensor.reshape(shape)
    aliases = {}
    for _ in range(_read_struct(stream, "<I")):
        alias = _read_string(stream)
        aliases[alias] = _read_string(stream)
    if stream.read(1):
        raise CT2FormatError(f"{path}: unexpected bytes after the alias table; the file is corrupt.")
    return CT2Model(spec=spec, revision=revision, format_version=version, variables=variables, aliases=aliases)


def _read_struct(stream: BinaryIO, fmt: str) -> int:
    size = struct.calcsize(fmt)
    return struct.unpack(fmt, stream.read(size))[0]


def _read_string(stream: BinaryIO) -> str:
    length = _read_struct(stream, "<H")
    return stream.read(length).rstrip(b"\0").decode("utf-8")


# ------------------------------------------------------------------------------------- CT2 -> HF state dict


class _Consumer:
    """Hands out CTranslate2 variables by name and remembers which were used, so none is silently dropped."""

    def __init__(self, model: CT2Model) -> None:
        self.variables = _dequantize(model.variables)
        self.aliases = dict(model.aliases)
        self.unused = set(self.variables)

    def take(self, name: str) -> torch.Tensor:
        if name not in self.variables:
            raise CT2FormatError(f"CTranslate2 Whisper model has no variable {name!r}; is this a Whisper model?")
        self.unused.discard(name)
        return self.variables[name]

    def scalar(self, name: str) -> int | None:
        if name not in self.variables:
            return None
        return int(self.take(name).item())

    def has(self, name: str) -> bool:
        return name in self.variables


def _dequantize(variables: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Merge `X/weight` + `X/weight_scale` (CTranslate2 int8/int16 quantization: w = q / scale) into float32."""
    result: dict[str, torch.Tensor] = {}
    for name, tensor in variables.items():
        if name.endswith("_scale") and name[: -len("_scale")] in variables:
            continue
        scale = variables.get(name + "_scale")
        if scale is not None:
            tensor = tensor.to(torch.float32) / scale.to(torch.float32).reshape(-1, *([1] * (tensor.dim() - 1)))
        elif tensor.is_floating_point() and tensor.dim() > 0:
            tensor = tensor.to(torch.float32)
        result[name] = tensor
    return result


# Model-level settings the spec stores as scalars, with the value Whisper needs (None: informational only).
_EXPECTED_SETTINGS: dict[str, int | None] = {
    "activation": _CT2_GELU,
    "pre_norm": 1,
    "alibi": 0,
    "scale_embeddings": 0,
    "start_from_zero_embedding": 0,
    "multi_query_attention": 0,
    "rms_norm": 0,
    "alignment_heads": None,
    "alignment_layer": None,
    "num_heads": None,
}


@dataclass
class _Sizes:
    d_model: int
    vocab_size: int
    num_mel_bins: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    max_source_positions: int
    max_target_positions: int


def _count_layers(names: set[str], stack: str) -> int:
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in names if (m := pattern.match(name))}
    if indices != set(range(len(indices))):
        raise CT2FormatError(f"CTranslate2 {stack} layers are not numbered 0..N-1: {sorted(indices)}.")
    return len(indices)


def _check_settings(source: _Consumer) -> None:
    for stack in ("encoder", "decoder"):
        for setting, wanted in _EXPECTED_SETTINGS.items():
            value = source.scalar(f"{stack}/{setting}")
            if value is not None and wanted is not None and value != wanted:
                raise CT2FormatError(
                    f"CTranslate2 setting {stack}/{setting} = {value}, but Whisper needs {wanted}; "
                    "this model is not a standard Whisper and cannot be converted."
                )


def _infer_sizes(source: _Consumer) -> _Sizes:
    names = set(source.variables)
    embeddings = source.variables["decoder/embeddings/weight"] if source.has("decoder/embeddings/weight") else None
    if embeddings is None:
        raise CT2FormatError("CTranslate2 model has no decoder/embeddings/weight; is this a Whisper model?")
    vocab_size, d_model = embeddings.shape
    conv1 = source.variables["encoder/conv1/weight"]
    heads_default = max(1, d_model // 64)  # Whisper's head size is 64 in every released size
    encoder_heads = int(source.variables["encoder/num_heads"].item()) if "encoder/num_heads" in names else None
    decoder_heads = int(source.variables["decoder/num_heads"].item()) if "decoder/num_heads" in names else None
    if encoder_heads is None or decoder_heads is None:
        logger.warning("CTranslate2 model does not store num_heads; assuming %d (d_model / 64).", heads_default)
    return _Sizes(
        d_model=d_model,
        vocab_size=vocab_size,
        num_mel_bins=conv1.shape[1],
        encoder_layers=_count_layers(names, "encoder"),
        decoder_layers=_count_layers(names, "decoder"),
        encoder_heads=encoder_heads or heads_default,
        decoder_heads=decoder_heads or heads_default,
        encoder_ffn_dim=source.variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=source.variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=source.variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=source.variables["decoder/position_encodings/encodings"].shape[0],
    )


def _linear(source: _Consumer, ct2: str, hf: str, out: dict[str, torch.Tensor]) -> None:
    out[f"{hf}.weight"] = source.take(f"{ct2}/weight")
    if source.has(f"{ct2}/bias"):
        out[f"{hf}.bias"] = source.take(f"{ct2}/bias")


def _layer_norm(source: _Consumer, ct2: str, hf: str, out: dict[str, torch.Tensor]) -> None:
    out[f"{hf}.weight"] = source.take(f"{ct2}/gamma")
    out[f"{hf}.bias"] = source.take(f"{ct2}/beta")


def _drop_key_bias(bias: torch.Tensor, where: str) -> None:
    # Whisper's k_proj has no bias; CTranslate2 stores zeros there. A key bias only shifts every score of a query
    # by the same amount, which softmax cancels, so dropping a non-zero one would still be exact; say so anyway.
    if bias.abs().max().item() > 0:
        logger.warning("%s: non-zero key bias dropped (softmax-invariant, output unchanged).", where)


def _attention(
    source: _Consumer, ct2: str, hf: str, out: dict[str, torch.Tensor], *, fused_qkv: bool, d_model: int
) -> None:
    if fused_qkv:  # self-attention: linear_0 = q|k|v, linear_1 = out
        weight = source.take(f"{ct2}/linear_0/weight")
        bias = source.take(f"{ct2}/linear_0/bias")
        q_w, k_w, v_w = weight.split(d_model, dim=0)
        q_b, k_b, v_b = bias.split(d_model, dim=0)
        _drop_key_bias(k_b, f"{ct2}/linear_0")
        out.update({f"{hf}.q_proj.weight": q_w, f"{hf}.q_proj.bias": q_b})
        out.update({f"{hf}.k_proj.weight": k_w})
        out.update({f"{hf}.v_proj.weight": v_w, f"{hf}.v_proj.bias": v_b})
        _linear(source, f"{ct2}/linear_1", f"{hf}.out_proj", out)
    else:  # cross-attention: linear_0 = q, linear_1 = k|v, linear_2 = out
        _linear(source, f"{ct2}/linear_0", f"{hf}.q_proj", out)
        weight = source.take(f"{ct2}/linear_1/weight")
        bias = source.take(f"{ct2}/linear_1/bias")
        k_w, v_w = weight.split(d_model, dim=0)
        k_b, v_b = bias.split(d_model, dim=0)
        _drop_key_bias(k_b, f"{ct2}/linear_1")
        out.update({f"{hf}.k_proj.weight": k_w, f"{hf}.v_proj.weight": v_w, f"{hf}.v_proj.bias": v_b})
        _linear(source, f"{ct2}/linear_2", f"{hf}.out_proj", out)
    for tensor_name in (f"{hf}.q_proj.weight", f"{hf}.k_proj.weight", f"{hf}.v_proj.weight"):
        if out[tensor_name].shape != (d_model, d_model):
            raise CT2FormatError(f"{ct2}: projection has shape {tuple(out[tensor_name].shape)}, expected square.")


def _feed_forward(source: _Consumer, ct2: str, hf: str, out: dict[str, torch.Tensor]) -> None:
    _linear(source, f"{ct2}/linear_0", f"{hf}.fc1", out)
    _linear(source, f"{ct2}/linear_1", f"{hf}.fc2", out)
    _layer_norm(source, f"{ct2}/layer_norm", f"{hf}.final_layer_norm", out)


def ctranslate2_whisper_state_dict(model: CT2Model) -> tuple[dict[str, torch.Tensor], dict[str, int], bool]:
    """Map CTranslate2 Whisper variables onto `WhisperForConditionalGeneration` names.

    Returns (state dict in float32, sizes for the config, whether proj_out is tied to the token embeddings).
    Raises `CT2FormatError` if any CTranslate2 variable is left unused.
    """
    if model.spec != "WhisperSpec":
        raise CT2FormatError(f"CTranslate2 model spec is {model.spec!r}, expected 'WhisperSpec'.")
    source = _Consumer(model)
    _check_settings(source)
    sizes = _infer_sizes(source)
    d = sizes.d_model
    out: dict[str, torch.Tensor] = {}

    _linear(source, "encoder/conv1", "model.encoder.conv1", out)
    _linear(source, "encoder/conv2", "model.encoder.conv2", out)
    out["model.encoder.embed_positions.weight"] = source.take("encoder/position_encodings/encodings")
    for i in range(sizes.encoder_layers):
        ct2, hf = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        _attention(source, f"{ct2}/self_attention", f"{hf}.self_attn", out, fused_qkv=True, d_model=d)
        _layer_norm(source, f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm", out)
        _feed_forward(source, f"{ct2}/ffn", hf, out)
    _layer_norm(source, "encoder/layer_norm", "model.encoder.layer_norm", out)

    out["model.decoder.embed_tokens.weight"] = source.take("decoder/embeddings/weight")
    out["model.decoder.embed_positions.weight"] = source.take("decoder/position_encodings/encodings")
    for i in range(sizes.decoder_layers):
        ct2, hf = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _attention(source, f"{ct2}/self_attention", f"{hf}.self_attn", out, fused_qkv=True, d_model=d)
        _layer_norm(source, f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm", out)
        _attention(source, f"{ct2}/attention", f"{hf}.encoder_attn", out, fused_qkv=False, d_model=d)
        _layer_norm(source, f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm", out)
        _feed_forward(source, f"{ct2}/ffn", hf, out)
    _layer_norm(source, "decoder/layer_norm", "model.decoder.layer_norm", out)

    tied = _output_projection(source, out)
    if source.unused:
        raise CT2FormatError(f"CTranslate2 variables not understood by the converter: {sorted(source.unused)}.")
    return out, sizes.__dict__, tied


def _output_projection(source: _Consumer, out: dict[str, torch.Tensor]) -> bool:
    """Whisper ties proj_out to the token embeddings; CTranslate2 writes that as an alias or an equal copy."""
    name = "decoder/projection/weight"
    embeddings = out["model.decoder.embed_tokens.weight"]
    target = source.aliases.pop(name, None)
    if target is not None:
        if target != "decoder/embeddings/weight":
            raise CT2FormatError(f"{name} is an alias of {target!r}; expected decoder/embeddings/weight.")
    elif source.has(name):
        projection = source.take(name)
        if not torch.equal(projection, embeddings):
            out["proj_out.weight"] = projection
            return False
    out["proj_out.weight"] = embeddings
    if source.aliases:
        raise CT2FormatError(f"CTranslate2 aliases not understood by the converter: {source.aliases}.")
    return True


# ------------------------------------------------------------------------------------------------ converting


@dataclass(frozen=True)
class _SpecialTokens:
    """Ids of Whisper's control tokens, looked up by text so English-only and multilingual vocabularies both work."""

    end_of_text: int
    start_of_transcript: int
    no_timestamps: int
    start_of_prev: int | None
    transcribe: int | None
    translate: int | None


def _special_tokens(tokenizer) -> _SpecialTokens:  # tokenizer: transformers WhisperTokenizer
    def lookup(token: str, required: bool = True) -> int | None:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id and token != tokenizer.unk_token:
            if required:
                raise CT2FormatError(f"Whisper tokenizer has no {token} token; is this a Whisper tokenizer.json?")
            return None
        return token_id

    return _SpecialTokens(
        end_of_text=lookup("<|endoftext|>"),
        start_of_transcript=lookup("<|startoftranscript|>"),
        no_timestamps=lookup("<|notimestamps|>"),
        start_of_prev=lookup("<|startofprev|>", required=False),
        transcribe=lookup("<|transcribe|>", required=False),
        translate=lookup("<|translate|>", required=False),
    )


def _build_tokenizer(tokenizer_json: Path, vocab_size: int):
    """A transformers Whisper tokenizer from CTranslate2's tokenizer.json (a standard `tokenizers` file)."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import WhisperTokenizer

    backend = Tokenizer.from_file(str(tokenizer_json))
    specials = [token.content for _, token in sorted(backend.get_added_tokens_decoder().items()) if token.special]
    tokenizer = WhisperTokenizer(
        tokenizer_object=backend, additional_special_tokens=specials, pad_token="<|endoftext|>"
    )
    missing = vocab_size - len(tokenizer)
    if missing == _N_TIMESTAMP_TOKENS:
        timestamps = [f"<|{i * _TIMESTAMP_STEP_S:.2f}|>" for i in range(_N_TIMESTAMP_TOKENS)]
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in timestamps])
    elif missing != 0:
        logger.warning(
            "Whisper tokenizer has %d tokens but the model's vocabulary has %d; ids above the tokenizer decode to ''.",
            len(tokenizer),
            vocab_size,
        )
    return tokenizer


def _generation_config(
    ct2_config: dict, tokens: _SpecialTokens, tokenizer, max_target_positions: int, multilingual: bool
):
    from transformers import GenerationConfig

    lang_ids = [int(i) for i in ct2_config.get("lang_ids", [])]
    if multilingual and not lang_ids:
        raise CT2FormatError(
            "Multilingual Whisper needs `lang_ids` in the CTranslate2 config.json for language detection."
        )
    fields: dict = dict(
        decoder_start_token_id=tokens.start_of_transcript,
        bos_token_id=tokens.end_of_text,
        eos_token_id=tokens.end_of_text,
        pad_token_id=tokens.end_of_text,
        max_length=max_target_positions,  # as in the transformers Whisper checkpoints on the hub
        suppress_tokens=[int(i) for i in ct2_config.get("suppress_ids", [])],
        begin_suppress_tokens=[int(i) for i in ct2_config.get("suppress_ids_begin", [])],
        no_timestamps_token_id=tokens.no_timestamps,
        return_timestamps=False,
        max_initial_timestamp_index=50,  # 1 s, Whisper's default
        is_multilingual=multilingual,
    )
    if ct2_config.get("alignment_heads"):
        fields["alignment_heads"] = [[int(layer), int(head)] for layer, head in ct2_config["alignment_heads"]]
    if tokens.start_of_prev is not None:
        fields["prev_sot_token_id"] = tokens.start_of_prev
    if multilingual:
        fields["lang_to_id"] = {tokenizer.convert_ids_to_tokens(i): i for i in lang_ids}
        fields["task_to_id"] = {"transcribe": tokens.transcribe, "translate": tokens.translate}
        # With `task` set and no `language`, generate() detects the language, then transcribes without timestamps.
        fields["task"] = "transcribe"
    return GenerationConfig(**fields)


def convert_ctranslate2_whisper(
    model_bin: str | Path,
    tokenizer_json: str | Path,
    output_dir: str | Path,
    ct2_config_json: str | Path | None = None,
    *,
    multilingual: bool | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Convert a CTranslate2 Whisper model into a transformers folder loadable with `from_pretrained`.

    Writes config.json, model.safetensors (float32), generation_config.json, the tokenizer and
    preprocessor_config.json (WhisperFeatureExtractor) into `output_dir`. `ct2_config_json` is CTranslate2's
    config.json (suppressed tokens, language ids, alignment heads); without it generation suppresses nothing and
    cannot detect the language. `multilingual` defaults to openai/whisper's rule (vocabulary of at least 51865
    tokens); English-only models (`*.en`) transcribe without a language token.
    """
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    step = progress or (lambda message: logger.info(message))
    output_dir = Path(output_dir)
    step("reading CTranslate2 model")
    ct2 = read_ctranslate2_model(model_bin)
    state_dict, sizes, tied = ctranslate2_whisper_state_dict(ct2)
    del ct2
    ct2_config = json.loads(Path(ct2_config_json).read_text()) if ct2_config_json else {}
    if not ct2_config:
        logger.warning("No CTranslate2 config.json given: no suppressed tokens and no language detection.")

    step("building tokenizer")
    tokenizer = _build_tokenizer(Path(tokenizer_json), sizes["vocab_size"])
    tokens = _special_tokens(tokenizer)
    if multilingual is None:
        multilingual = sizes["vocab_size"] >= _MULTILINGUAL_MIN_VOCAB
    generation_config = _generation_config(
        ct2_config, tokens, tokenizer, sizes["max_target_positions"], multilingual
    )

    config = WhisperConfig(
        vocab_size=sizes["vocab_size"],
        num_mel_bins=sizes["num_mel_bins"],
        d_model=sizes["d_model"],
        encoder_layers=sizes["encoder_layers"],
        decoder_layers=sizes["decoder_layers"],
        encoder_attention_heads=sizes["encoder_heads"],
        decoder_attention_heads=sizes["decoder_heads"],
        encoder_ffn_dim=sizes["encoder_ffn_dim"],
        decoder_ffn_dim=sizes["decoder_ffn_dim"],
        max_source_positions=sizes["max_source_positions"],
        max_target_positions=sizes["max_target_positions"],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=tied,
        pad_token_id=tokens.end_of_text,
        bos_token_id=tokens.end_of_text,
        eos_token_id=tokens.end_of_text,
        decoder_start_token_id=tokens.start_of_transcript,
        # Generation settings live in generation_config.json only; duplicating them here makes generate() warn.
        suppress_tokens=None,
        begin_suppress_tokens=None,
    )

    step("loading weights")
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    # strict=True: every parameter of the transformers model must come from the CTranslate2 file.
    model.load_state_dict(state_dict, strict=True, assign=True)
    if tied:
        model.tie_weights()
    leftovers = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if leftovers:
        raise CT2FormatError(f"Converted Whisper has tensors that were never filled: {leftovers}.")
    model.generation_config = generation_config
    model.eval()

    step("saving transformers model")
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    feature_extractor = WhisperFeatureExtractor(feature_size=sizes["num_mel_bins"])
    feature_extractor.save_pretrained(output_dir)  # preprocessor_config.json, for WhisperFeatureExtractor
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(output_dir)
    _check_reload(output_dir)
    return output_dir


def _check_reload(output_dir: Path) -> None:
    """Load the written folder back strictly: no missing, unexpected or mis-shaped weights."""
    from transformers import WhisperForConditionalGeneration

    _, info = WhisperForConditionalGeneration.from_pretrained(output_dir, output_loading_info=True)
    problems = {key: value for key, value in info.items() if value and key != "error_msgs"}
    if problems or info.get("error_msgs"):
        raise CT2FormatError(f"Converted Whisper in {output_dir} does not load cleanly: {info}.")
