"""Two processes (torchrun, gloo on CPU; DDP or FSDP) give the same losses as one process with the same global
batch."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from desta_audio.train.config import build_config
from desta_audio.train.recipe import train
from tests.train.helpers import make_dataset, tiny_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is not installed beside this python")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, strategy):
    data = make_dataset(tmp_path / "data", 10)
    sections = dict(run={"max_steps": 3, "save_every": 3}, optim={"grad_accum": 2, "warmup_steps": 1},
                    cache={"enabled": True})
    single = [s.loss for s in train(build_config(tiny_config(tmp_path / "one", data, **sections))).steps]

    raw = tiny_config(tmp_path / "two", data, **sections)
    # Per-process limits are half the single process's, so each global batch is the same.
    raw["batching"] = {**raw["batching"], "max_audio_seconds": 3.0, "max_tokens": 2048, "max_size": 2}
    raw["distributed"] = {"strategy": strategy}  # fsdp: the frozen LLM's layers are sharded across the 2 processes
    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "2",
               "-m", "desta_audio.train", str(config)]
    # Own session, so a hung run is killed with all its workers rather than left behind.
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("torchrun did not finish within 300 s")
    assert process.returncode == 0, stderr[-3000:]
    rows = [line.split(",") for line in (tmp_path / "two" / "run" / "metrics.csv").read_text().splitlines()[1:]]
    double = [float(row[3]) for row in rows if row[1] == "train"]
    assert double == pytest.approx(single, rel=1e-5)
    assert (tmp_path / "two" / "run" / "checkpoints" / "step-0000003" / "rng-rank1.pt").exists()
