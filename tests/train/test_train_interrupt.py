import os
import signal

import pytest

from desta_audio.train.config import build_config
from desta_audio.train.metrics import read_metrics
from desta_audio.train.recipe import Trainer, TrainingInterrupted
from tests.train.helpers import make_dataset, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), 12)


def _fit(config, monkeypatch=None, ctrl_c_at_step=None, presses=1):
    """Train; with `ctrl_c_at_step`, press Ctrl-C `presses` times as that step starts. Returns the losses."""
    trainer = Trainer(config).setup()
    if ctrl_c_at_step is not None:
        real_step = trainer._train_step

        def step(batches):
            if trainer.step + 1 == ctrl_c_at_step:
                for _ in range(presses):
                    os.kill(os.getpid(), signal.SIGINT)
            return real_step(batches)

        monkeypatch.setattr(trainer, "_train_step", step)
    try:
        return [round(s.loss, 10) for s in trainer.fit().steps]
    finally:
        trainer.close()


def test_ctrl_c_finishes_the_step_saves_it_and_the_same_command_resumes(tmp_path, data, monkeypatch):
    sections = dict(run={"max_steps": 5, "save_every": None}, model={"overrides": {"qformer_dropout": 0.1}})
    reference = _fit(build_config(tiny_config(tmp_path / "a", data, **sections)))
    config = build_config(tiny_config(tmp_path / "b", data, **sections))
    with pytest.raises(TrainingInterrupted, match=r"stopped by Ctrl-C after step 2; run the same command to "
                                                  r"resume from .*step-0000002"):
        _fit(config, monkeypatch, ctrl_c_at_step=2)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's own handler is back
    monkeypatch.undo()
    assert _fit(config) == reference[2:]  # steps 3-5, as if never stopped
    rows = [row for row in read_metrics(tmp_path / "b" / "run" / "metrics.csv") if row["split"] == "train"]
    assert [row["step"] for row in rows] == ["1", "2", "3", "4", "5"]
    elapsed = [float(row["elapsed_s"]) for row in rows]
    assert elapsed == sorted(elapsed)  # the resumed run's training time goes on from the checkpoint's


def test_a_second_ctrl_c_stops_at_once_and_names_the_last_whole_checkpoint(tmp_path, data, monkeypatch):
    config = build_config(tiny_config(tmp_path, data, run={"max_steps": 5, "save_every": 2}))
    with pytest.raises(TrainingInterrupted, match=r"interrupted during step 4; run the same command to resume "
                                                  r"from .*step-0000002"):
        _fit(config, monkeypatch, ctrl_c_at_step=4, presses=2)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000002"]
    monkeypatch.undo()
    assert len(_fit(config)) == 3  # steps 3-5


def test_desta_train_reports_ctrl_c_with_how_to_resume(tmp_path, data, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from desta_audio.cli import _register_subcommands, app

    _register_subcommands()
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path, data, run={"max_steps": 3})))

    def interrupted(self):
        raise TrainingInterrupted("stopped by Ctrl-C after step 1; run the same command to resume from X")

    monkeypatch.setattr(Trainer, "fit", interrupted)
    outcome = CliRunner().invoke(app, ["train", str(config)])
    assert outcome.exit_code == 130
    assert "run the same command to resume from X" in outcome.output
