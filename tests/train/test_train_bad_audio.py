"""A clip that cannot be decoded, found mid-run: the completed steps are checkpointed, the message names the
record, and once the file is fixed the same command resumes to the result of a run that never stopped."""

import pytest
import yaml
from typer.testing import CliRunner

from desta_audio.train.config import build_config
from desta_audio.train.metrics import read_metrics
from desta_audio.train.recipe import Trainer, train
from desta_audio.train.records import RecordError
from tests.train.helpers import batch_lines, make_dataset, point_at_flac, tiny_config

SECTIONS = dict(run={"max_steps": 6, "save_every": 50}, batching={"max_size": 1},
                model={"overrides": {"qformer_dropout": 0.1}})  # the dropout RNG must be restored too


def test_a_corrupt_clip_mid_run_keeps_the_steps_done_and_resumes_once_fixed(tmp_path):
    from desta_audio.cli import _register_subcommands, app

    records = make_dataset(tmp_path / "data", 6, multi_turn_every=0)
    [line] = batch_lines(build_config(tiny_config(tmp_path / "probe", records, **SECTIONS)))[2]
    name = point_at_flac(records, line, truncated=True)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path, records, **SECTIONS)))
    _register_subcommands()

    stopped = CliRunner().invoke(app, ["train", str(config)])
    assert stopped.exit_code == 2, stopped.output
    assert f"records.jsonl:{line}: " in stopped.output and f"{name}: the file is corrupt or truncated" in stopped.output
    assert "Stopped after step 2, checkpoint" in stopped.output and "run the same command to resume" in stopped.output
    assert "Traceback" not in stopped.output
    assert (tmp_path / "run" / "checkpoints" / "step-0000002").is_dir()

    point_at_flac(records, line, truncated=False)  # the fix: a readable copy
    resumed = CliRunner().invoke(app, ["train", str(config)])
    assert resumed.exit_code == 0, resumed.output
    reference = [s.loss for s in train(build_config(tiny_config(tmp_path / "reference", records, **SECTIONS))).steps]
    rows = [row for row in read_metrics(tmp_path / "run" / "metrics.csv") if row["split"] == "train"]
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4, 5, 6]
    assert [float(row["loss"]) for row in rows] == pytest.approx(reference, rel=1e-6)


def test_a_corrupt_clip_found_while_building_the_cache_names_its_record(tmp_path):
    records = make_dataset(tmp_path / "data", 3, multi_turn_every=0)
    name = point_at_flac(records, 2, truncated=True)
    config = build_config(tiny_config(tmp_path, records, cache={"enabled": True}))
    with pytest.raises(RecordError, match=rf"records.jsonl:2: .*{name}: the file is corrupt or truncated"):
        Trainer(config).setup()
