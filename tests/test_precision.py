"""The default precision: bf16 where the hardware has it natively, fp32 elsewhere, $DESTA_DTYPE first."""

import shutil
import subprocess

import pytest
import torch

from desta_audio import precision


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(precision.DTYPE_ENV, raising=False)


@pytest.mark.parametrize("native", [True, False])
def test_cpu_default_follows_native_bf16(no_env, monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    expected = torch.bfloat16 if native else torch.float32
    assert precision.default_dtype(torch.device("cpu")) == expected
    assert precision.resolve_dtype(None, torch.device("cpu")) == expected


def test_gpu_default_is_bf16(no_env, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.default_dtype(torch.device("cuda")) == torch.bfloat16


def test_environment_overrides_the_hardware(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setenv(precision.DTYPE_ENV, "FP32")
    assert precision.default_dtype(torch.device("cpu")) == torch.float32
    monkeypatch.setenv(precision.DTYPE_ENV, "bf16")
    assert precision.default_dtype(torch.device("cuda")) == torch.bfloat16
    assert precision.resolve_dtype("float16", torch.device("cpu")) == torch.float16  # explicit wins
    assert precision.resolve_dtype(torch.float32, torch.device("cpu")) == torch.float32


def test_unknown_names_are_refused_with_their_source(monkeypatch):
    monkeypatch.setenv(precision.DTYPE_ENV, "double")
    with pytest.raises(ValueError, match=r"\$DESTA_DTYPE 'double'.*float32, bfloat16 or float16"):
        precision.default_dtype(torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        precision.resolve_dtype("int8", torch.device("cpu"))


def test_native_bf16_check_matches_cpu_flags():
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    assert precision.cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16", "amx_tile"} & set(flags))


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_native_bf16_default_loads_and_hears_speech(no_env, monkeypatch, tmp_path):
    """What a machine with native bf16 gets when it asks for nothing: every part in bf16, and it still works."""
    from desta_audio.modeling import DeSTAModel

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    model = DeSTAModel.from_pretrained("desta-tiny", device="cpu")
    for part in (model.perception.whisper, model.connector, model.llm_model):  # Silero VAD keeps its own fp32
        assert {p.dtype for p in part.parameters()} == {torch.bfloat16}
    path = tmp_path / "spoken.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), "The quick brown fox jumps over the lazy dog."],
                   check=True)
    reply = model.ask([str(path)], "What did the speaker say?", max_new_tokens=16)
    heard = {w.strip(".,!?").lower() for w in reply.transcripts[0].split()}
    assert {"quick", "brown", "fox", "lazy", "dog"} <= heard
    assert reply.text.strip()


def test_names_are_checked_without_loading_anything(monkeypatch):
    monkeypatch.delenv(precision.DTYPE_ENV, raising=False)
    precision.check_dtype_names(None)
    precision.check_dtype_names("BF16")
    with pytest.raises(ValueError, match="unknown --dtype 'int8'"):
        precision.check_dtype_names("int8")
    monkeypatch.setenv(precision.DTYPE_ENV, "double")
    with pytest.raises(ValueError, match=r"unknown \$DESTA_DTYPE 'double'"):
        precision.check_dtype_names(None)
    precision.check_dtype_names("float32")  # an explicit --dtype wins over the environment


@pytest.mark.parametrize("command", [["ask", "{clip}", "What is said?", "--dtype", "int8"],
                                     ["serve", "--port", "{port}"], ["demo", "--port", "{port}"]])
def test_commands_refuse_a_bad_precision_in_one_line(monkeypatch, tmp_path, command):
    import numpy as np
    import soundfile as sf
    from typer.testing import CliRunner

    from desta_audio.cli import _register_subcommands, app
    from desta_audio.modeling import DeSTAModel

    _register_subcommands()
    monkeypatch.setenv(precision.DTYPE_ENV, "double")
    monkeypatch.setattr(DeSTAModel, "from_pretrained", lambda *a, **k: pytest.fail("the model must not be loaded"))
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.zeros(1600, dtype=np.float32), 16000)
    from tests.serve.helpers import free_port

    result = CliRunner().invoke(app, [part.format(clip=clip, port=free_port()) for part in command])
    assert result.exit_code == 2
    assert ("'int8'" if "--dtype" in command else "$DESTA_DTYPE 'double'") in result.output
    assert "Traceback" not in result.output
