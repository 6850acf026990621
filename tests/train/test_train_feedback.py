"""What a user of `desta train` sees: log lines, one-line errors for unusable output folders and config files,
a full disk while checkpointing, Ctrl-C before the first step, and rerunning a finished run."""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from desta_audio.train.config import ConfigError, build_config, load_config
from desta_audio.train.recipe import Trainer, TrainingError
from tests.train.helpers import make_dataset, tiny_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), 6)


def _cli(args):
    from desta_audio.cli import _register_subcommands, app

    _register_subcommands()
    return CliRunner().invoke(app, ["train", *[str(a) for a in args]])


def _write(tmp_path, data):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path, data)))
    return path


def _fit(config):
    trainer = Trainer(config).setup()
    try:
        return trainer.fit()
    finally:
        trainer.close()


def test_desta_train_shows_its_log_lines_each_on_a_line_of_its_own(tmp_path, data):
    # Through the `desta` entry point, where every command is registered first: none may set up logging for all.
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path, data, run={"max_steps": 2, "progress": True},
                                                 data={"val_fraction": 0.5})))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", "from desta_audio.cli import main; main()", "train", str(config)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = re.split(r"[\r\n]", done.stderr)
    for expected in ("training records", "validation at step 2: loss", "checkpoint "):
        assert any(expected in line for line in lines), done.stderr[-3000:]
    # Written above the progress bar, not glued to the end of one of its lines.
    assert not [line for line in lines if "train:" in line and "INFO" in line], done.stderr[-3000:]
    bar = [line for line in lines if line.startswith("train: 100%")][-1]
    assert re.search(r"loss=[\d.]+, lr=[\d.e+-]+, samples/s=[\d.]+", bar), bar  # the fields the README names


def test_an_output_dir_that_is_a_file_is_named_before_the_model_loads(tmp_path, data, monkeypatch):
    in_the_way = tmp_path / "run"
    in_the_way.write_text("")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("desta_audio.train.recipe.build_model", no_model)
    config = build_config(tiny_config(tmp_path, data))
    with pytest.raises(ConfigError, match=r"run.output_dir: .*run is a file, not a folder"):
        Trainer(config).setup()
    result = _cli([_write(tmp_path, data), f"run.output_dir={in_the_way}/sub"])
    assert result.exit_code == 2 and result.output.startswith("run.output_dir: cannot write to"), result.output


def test_an_output_dir_without_write_permission_is_named(tmp_path, data, monkeypatch):
    def refused(self, content):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_bytes", refused)  # root ignores file modes: refuse the probe instead
    with pytest.raises(ConfigError, match=r"cache.dir: cannot write to .*cache \(Permission denied\)"):
        Trainer(build_config(tiny_config(tmp_path, data, cache={"enabled": True}))).setup(cache_only=True)


def test_a_full_disk_while_checkpointing_stops_in_one_line_and_keeps_the_last_whole_checkpoint(tmp_path, data,
                                                                                            monkeypatch):
    import desta_audio.train.checkpoint as checkpoint

    real_save = checkpoint.torch.save

    def save(obj, path, *args, **kwargs):
        if "step-0000002" in str(path):  # torch.save's own report of a full disk
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 14737152 vs 14737040")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    config = build_config(tiny_config(tmp_path, data, run={"max_steps": 3, "save_every": 1}))
    with pytest.raises(TrainingError, match=r"cannot write .*step-0000002.tmp \(.* free there\): .*unexpected pos.* "
                                            r"run the same command to resume from .*step-0000001"):
        _fit(config)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000001"]
    monkeypatch.undo()
    assert [s.step for s in _fit(config).steps] == [2, 3]


def test_a_config_file_that_is_not_yaml_is_refused_in_one_line(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("data:\n  train: [records.jsonl\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: not valid YAML (line 3, column 1: expected ',' or ']'")
    assert "\n" not in str(caught.value)


def test_ctrl_c_before_the_first_step_says_so_in_one_line(tmp_path, data, monkeypatch):
    def interrupted(self, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "setup", interrupted)
    result = _cli([_write(tmp_path, data)])
    assert result.exit_code == 130
    assert result.output.startswith("interrupted before the first step; nothing new was trained"), result.output


def test_rerunning_a_finished_run_says_there_is_nothing_to_train(tmp_path, data, caplog):
    config = build_config(tiny_config(tmp_path, data, run={"max_steps": 1}))
    _fit(config)
    with caplog.at_level(logging.WARNING):
        assert _fit(config).steps == []
    assert "already reached its last step (1): nothing to train; raise run.max_steps" in caplog.text


def test_under_torchrun_only_the_first_process_reports_ctrl_c(tmp_path, data, monkeypatch):
    from desta_audio.train.recipe import TrainingInterrupted

    def interrupted(self):
        raise TrainingInterrupted("interrupted during step 3; run the same command to resume from X")

    monkeypatch.setattr(Trainer, "fit", interrupted)
    config = _write(tmp_path, data)
    assert "resume from X" in _cli([config]).output
    monkeypatch.setenv("RANK", "1")
    result = _cli([config])
    assert result.exit_code == 130 and result.output == ""
