"""A training process killed outright (SIGKILL, no cleanup) and started again with the same command ends exactly
where an uninterrupted run does, with one metrics row per step."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from desta_audio.train.checkpoint import latest_checkpoint
from desta_audio.train.metrics import read_metrics
from tests.train.helpers import make_dataset, tiny_config

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300
MAX_STEPS = 6


def _start(config: Path, output_dir: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "desta_audio.train", str(config), f"run.output_dir={output_dir}"]
    with open(log, "w") as handle:
        # Own session, so the kill (and any cleanup) reaches the whole process group.
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _finish(process: subprocess.Popen, log: Path) -> str:
    try:
        process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"training did not finish within {TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
    output = log.read_text()
    assert process.returncode == 0, output[-3000:]
    return output


def _checkpointed_step(output_dir: Path) -> int:
    latest = latest_checkpoint(output_dir / "checkpoints")
    return int(latest.name.split("-")[1]) if latest else 0


def _last_logged_step(output_dir: Path) -> int:
    path = output_dir / "metrics.csv"
    if not path.exists():
        return 0
    steps = [line.split(",")[0] for line in path.read_text().splitlines()[1:]]
    return max((int(step) for step in steps if step.isdigit()), default=0)


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    data = make_dataset(tmp_path / "data", 8)
    raw = tiny_config(tmp_path, data, run={"max_steps": MAX_STEPS, "save_every": 2},
                      model={"overrides": {"qformer_dropout": 0.1}},  # the dropout RNG must be restored too
                      batching={"max_size": 2})
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(raw))

    reference = tmp_path / "reference"
    _finish(_start(config, reference, tmp_path / "reference.log"), tmp_path / "reference.log")

    killed = tmp_path / "killed"
    process = _start(config, killed, tmp_path / "first.log")
    deadline = time.monotonic() + TIMEOUT_S
    # Kill once a checkpoint exists and metrics.csv already has steps after it: the resumed run must redo those
    # steps and log each of them once.
    while _checkpointed_step(killed) == 0 or _last_logged_step(killed) <= _checkpointed_step(killed):
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be killed:\n{(tmp_path / 'first.log').read_text()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"no checkpoint within {TIMEOUT_S} s")
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "final").exists(), "the run finished before the kill: nothing was interrupted"

    output = _finish(_start(config, killed, tmp_path / "second.log"), tmp_path / "second.log")
    assert "resumed from" in output  # not started over, which would also end at the reference's weights

    expected = load_file(str(reference / "final" / "model.safetensors"))
    resumed = load_file(str(killed / "final" / "model.safetensors"))
    assert set(resumed) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)
    rows = [(row["step"], row["split"], row["loss"]) for row in read_metrics(killed / "metrics.csv")]
    assert [int(step) for step, _, _ in rows] == list(range(1, MAX_STEPS + 1))
    assert rows == [(row["step"], row["split"], row["loss"]) for row in read_metrics(reference / "metrics.csv")]


class _Killed(Exception):
    pass


def test_metrics_kept_for_resume_survive_a_kill_while_they_are_rewritten(tmp_path, monkeypatch):
    import csv

    from desta_audio.train.metrics import MetricsWriter

    writer = MetricsWriter(tmp_path, tensorboard=False)
    for step in range(1, 5):
        writer.write({"step": step, "split": "train", "loss": 1.0 / step})
    writer.close()
    before = (tmp_path / "metrics.csv").read_text()

    def killed(self, rows):
        raise _Killed

    monkeypatch.setattr(csv.DictWriter, "writerows", killed)
    with pytest.raises(_Killed):
        MetricsWriter(tmp_path, resume_step=2, tensorboard=False)
    assert (tmp_path / "metrics.csv").read_text() == before
    monkeypatch.undo()
    MetricsWriter(tmp_path, resume_step=2, tensorboard=False).close()
    assert [row["step"] for row in read_metrics(tmp_path / "metrics.csv")] == ["1", "2"]


def test_tensorboard_scalars_follow_the_csv_across_a_resume(tmp_path):
    """The TensorBoard copy of the metrics is readable, and a resumed run replaces the steps after its checkpoint
    there too (purged), instead of showing both runs' values for the same steps."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from desta_audio.train.metrics import MetricsWriter

    writer = MetricsWriter(tmp_path)
    for step in range(1, 5):
        writer.write({"step": step, "split": "train", "loss": 1.0 / step, "lr": 1e-4})
    writer.write({"step": 4, "split": "validation", "loss": 0.5, "accuracy": 0.25})
    writer.close()
    resumed = MetricsWriter(tmp_path, resume_step=2)  # killed after the checkpoint of step 2
    for step in (3, 4):
        resumed.write({"step": step, "split": "train", "loss": 10.0 + step, "lr": 2e-4})
    resumed.close()

    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "validation/loss", "validation/accuracy"} <= set(events.Tags()["scalars"])
    loss = {event.step: event.value for event in events.Scalars("train/loss")}
    assert loss == pytest.approx({1: 1.0, 2: 0.5, 3: 13.0, 4: 14.0})
    assert [row["loss"] for row in read_metrics(tmp_path / "metrics.csv")] == ["1", "0.5", "13", "14"]
