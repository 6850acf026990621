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
