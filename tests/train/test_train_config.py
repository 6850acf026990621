from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from desta_audio.train.config import ConfigError, build_config, load_config, parse_overrides

REPO = Path(__file__).resolve().parents[2]


def test_overrides_parse_as_yaml_values():
    assert parse_overrides(["optim.lr=2e-4", "lora.enabled=true", "lora.targets=[q_proj, v_proj]", "run.seed=7"]) == {
        "optim": {"lr": 2e-4}, "lora": {"enabled": True, "targets": ["q_proj", "v_proj"]}, "run": {"seed": 7}}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["optim.lr"])


def test_defaults_are_the_release_recipe():
    config = build_config({"data": {"train": "x.jsonl"}})
    assert (config.optim.lr, config.optim.betas, config.optim.weight_decay) == (1e-4, (0.9, 0.98), 0.01)
    assert (config.optim.warmup_steps, config.optim.grad_clip, config.batching.max_size) == (5000, 1.0, 12)
    assert not config.lora.enabled and config.encoder.mode == "frozen"


def test_unknown_keys_are_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"optim\.learning_rate.*unknown key"):
        build_config({"data": {"train": "x"}}, ["optim.learning_rate=1e-3"])
    with pytest.raises(ConfigError, match="data: Field required"):
        build_config({})


def test_a_trained_encoder_cannot_use_the_feature_cache():
    with pytest.raises(ConfigError, match="cache.enabled=false"):
        build_config({"data": {"train": "x"}, "encoder": {"mode": "lora"}})
    assert build_config({"data": {"train": "x"}}, ["encoder.mode=full", "cache.enabled=false"]).encoder.mode == "full"


def test_shipped_configs_validate():
    for path in sorted((REPO / "configs").glob("train_*.yaml")):
        assert load_config(path).data.train


def test_cli_shows_the_resolved_config_with_overrides(tmp_path):
    from desta_audio.cli import _register_subcommands, app

    _register_subcommands()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": "records.jsonl"}}))
    result = CliRunner().invoke(app, ["train", str(path), "optim.lr=3e-4", "--show-config"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["optim"]["lr"] == 3e-4
    bad = CliRunner().invoke(app, ["train", str(path), "optim.typo=1"])
    assert bad.exit_code == 2 and "optim.typo" in bad.output


@pytest.mark.parametrize("override", ["optim.lr=true", "lora.rank=yes", "run.max_steps=true", "optim.betas=[true, 0.9]"])
def test_booleans_are_not_numbers(override):
    with pytest.raises(ConfigError, match=rf"{override.split('=')[0]}: expected a number, got a boolean"):
        build_config({"data": {"train": "x"}}, [override])


def test_booleans_in_the_config_file_are_not_numbers_either():
    with pytest.raises(ConfigError, match="optim.lr: expected a number"):
        build_config({"data": {"train": "x"}, "optim": {"lr": True}})


@pytest.mark.parametrize("typed, folder", [("2024", "2024"), ("1e3", "1e3"), ("0123", "0123"), ("true", "true")])
def test_text_fields_keep_numeric_looking_values_as_typed(typed, folder):
    config = build_config({"data": {"train": "x"}}, [f"run.output_dir={typed}", f"data.train={typed}"])
    assert config.run.output_dir == folder and config.data.train == folder
    assert build_config({"data": {"train": 7}, "run": {"output_dir": 2024}}).run.output_dir == "2024"
    assert build_config({"data": {"train": "x"}}, ["data.validation=null"]).data.validation is None


@pytest.mark.parametrize("override, message", [
    ("run.resume=nevr", r"run.resume: 'nevr' is neither auto, never nor a complete checkpoint folder"),
    ("freeze.trainable=['(']", r"freeze.trainable: '\(' is not a valid regular expression"),
    ("freeze.frozen=['a', '[b']", r"freeze.frozen: '\[b' is not a valid regular expression"),
    ("model.overrides={foo: 1}", r"model.overrides: unknown DeSTAConfig field\(s\) foo; the fields are .*prompt_size"),
    ("lora.targets=[]", r"lora.targets: List should have at least 1 item"),
    # Refused by AdamW or numpy otherwise, with a traceback and (betas, eps) only once the model had loaded.
    ("optim.betas=[1.5, 0.9]", r"optim.betas.0: Input should be less than 1"),
    ("optim.eps=-1e-8", r"optim.eps: Input should be greater than or equal to 0"),
    ("run.seed=-1", r"run.seed: Input should be greater than or equal to 0"),
])
def test_bad_values_are_refused_when_the_config_is_read(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"data": {"train": "x"}}, [override])


def test_resume_takes_a_complete_checkpoint_folder(tmp_path):
    (tmp_path / "step-0000002").mkdir()
    with pytest.raises(ConfigError, match="run.resume: .*step-0000002"):
        build_config({"data": {"train": "x"}}, [f"run.resume={tmp_path / 'step-0000002'}"])
    (tmp_path / "step-0000002" / "trainer_state.pt").write_bytes(b"")
    assert build_config({"data": {"train": "x"}}, [f"run.resume={tmp_path / 'step-0000002'}"]).run.resume


def _tiny_setup(tmp_path, **sections):
    from desta_audio.train.recipe import Trainer
    from tests.train.helpers import make_dataset, tiny_config

    data = make_dataset(tmp_path / "data", 3)
    return Trainer(build_config(tiny_config(tmp_path, data, **sections))).setup()


@pytest.mark.parametrize("sections, message", [
    (dict(lora={"enabled": True, "targets": ["qq_proj"]}),
     r"lora.targets: qq_proj matched no module of the LLM; its linear and embedding layers are named .*q_proj"),
    (dict(lora={"enabled": True, "targets": ["q_proj", "vv_proj"]}), r"lora.targets: vv_proj matched no module"),
    (dict(model={"factory": None, "base": "desta-nope"}), r"model.base 'desta-nope': .*not a preset"),
    (dict(model={"init_adapter": "no-such-adapter"}), r"model.init_adapter 'no-such-adapter': "),
])
def test_settings_the_model_cannot_take_name_their_key(tmp_path, sections, message):
    with pytest.raises(ConfigError, match=message):
        _tiny_setup(tmp_path, **sections)


def test_cli_reports_settings_the_model_cannot_take_in_one_line(tmp_path):
    from desta_audio.cli import _register_subcommands, app
    from tests.train.helpers import make_dataset, tiny_config

    _register_subcommands()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path, make_dataset(tmp_path / "data", 3))))
    result = CliRunner().invoke(app, ["train", str(path), "lora.enabled=true", "lora.targets=[qq_proj]"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("lora.targets: qq_proj matched no module") and "Traceback" not in result.output


def test_help_shows_a_plain_command_with_its_usage_notes():
    from desta_audio.cli import _register_subcommands, app

    _register_subcommands()
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    assert "COMMAND" not in usage and "torchrun" in result.output


def test_an_unknown_key_lists_the_keys_its_section_takes():
    with pytest.raises(ConfigError, match=r"optim\.lrr: .*unknown key; optim takes: lr, betas, eps, "):
        build_config({"data": {"train": "x"}}, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown key; the config takes: model, lora, encoder, "):
        build_config({"data": {"train": "x"}, "optimizer": {"lr": 1}})
