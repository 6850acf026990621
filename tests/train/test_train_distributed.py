"""Two processes (torchrun, gloo on CPU; DDP or FSDP) give the same losses as one process with the same global
batch; FSDP with LoRA on the sharded LLM also saves, resumes and writes the same final adapter."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from desta_audio.train.config import build_config
from desta_audio.train.recipe import train
from tests.train.helpers import add_text_only_records, batch_lines, make_dataset, point_at_flac, tiny_config

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).parent / "torchrun"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")]


def run_two_processes(config: Path, *, succeed: bool = True) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "desta_audio.train", str(config)]
    # Own session, so a hung run is killed with all its workers rather than left behind.
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("torchrun did not finish within 300 s")
    assert (process.returncode == 0) == succeed, stderr[-3000:]
    return stderr


def two_process_config(tmp_path: Path, raw: dict, strategy: str, name: str = "two.yaml") -> Path:
    # Per-process limits are half the single process's, so each global batch is the same.
    raw["batching"] = {**raw["batching"], "max_audio_seconds": 3.0, "max_tokens": 2048, "max_size": 2}
    raw["distributed"] = {"strategy": strategy}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def train_losses(run: Path) -> list[float]:
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    return [float(row[3]) for row in rows if row[1] == "train"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, strategy):
    data = make_dataset(tmp_path / "data", 10)
    sections = dict(run={"max_steps": 3, "save_every": 3}, optim={"grad_accum": 2, "warmup_steps": 1},
                    cache={"enabled": True})
    single = [s.loss for s in train(build_config(tiny_config(tmp_path / "one", data, **sections))).steps]

    # fsdp: the frozen LLM's layers are sharded across the 2 processes
    run_two_processes(two_process_config(tmp_path, tiny_config(tmp_path / "two", data, **sections), strategy))
    assert train_losses(tmp_path / "two" / "run") == pytest.approx(single, rel=1e-5)
    assert (tmp_path / "two" / "run" / "checkpoints" / "step-0000003" / "rng-rank1.pt").exists()


def test_fsdp_trains_lora_on_the_sharded_llm_and_resumes(tmp_path):
    from safetensors.torch import load_file

    data = make_dataset(tmp_path / "data", 10)
    # LoRA without dropout (its masks would differ by rank); a low clip threshold so clipping acts on every step.
    sections = dict(run={"max_steps": 3, "save_every": 1}, optim={"grad_accum": 2, "warmup_steps": 1,
                                                                  "grad_clip": 0.05},
                    cache={"enabled": True}, lora={"enabled": True, "rank": 4, "alpha": 8, "dropout": 0.0,
                                                   "targets": ["q_proj", "v_proj"]})
    single = train(build_config(tiny_config(tmp_path / "one", data, **sections)))
    assert all(step.grad_norm > 0.05 for step in single.steps)

    raw = tiny_config(tmp_path / "two", data, **sections)
    config = two_process_config(tmp_path, raw, "fsdp")
    first_two_steps = {**raw, "run": {**raw["run"], "stop_after_steps": 2}}
    run_two_processes(two_process_config(tmp_path, first_two_steps, "fsdp", "first.yaml"))
    run = tmp_path / "two" / "run"
    assert (run / "checkpoints" / "step-0000002").exists() and not (run / "final").exists()
    run_two_processes(config)  # resumes at step 2: sharded LoRA weights and their optimizer state restored

    assert train_losses(run) == pytest.approx([s.loss for s in single.steps], rel=1e-5)
    expected = load_file(str(single.final_adapter / "model.safetensors"))
    written = load_file(str(run / "final" / "model.safetensors"))
    assert set(written) == set(expected)
    assert any("lora_B" in name and written[name].abs().sum() > 0 for name in written)  # LoRA B starts at zero
    for name, tensor in expected.items():
        torch.testing.assert_close(written[name], tensor, rtol=1e-4, atol=1e-6)


def test_ddp_trains_the_whole_encoder(tmp_path):
    # Taps are taken before the encoder's final LayerNorm: marked trainable, it never got a gradient and DDP
    # stopped at the second step waiting for it.
    data = make_dataset(tmp_path / "data", 6)
    raw = tiny_config(tmp_path, data, encoder={"mode": "full"}, run={"max_steps": 3},
                      optim={"lr": 1e-3, "warmup_steps": 0})
    config = two_process_config(tmp_path, raw, "ddp")
    run_two_processes(config)
    assert len(train_losses(tmp_path / "run")) == 3
    assert (tmp_path / "run" / "final" / "encoder.safetensors").exists()


def test_ddp_trains_on_records_without_audio(tmp_path):
    # A process whose share of a batch has no audio gives the adapter a zero gradient rather than none.
    data = add_text_only_records(make_dataset(tmp_path / "data", 5), 5)
    sections = dict(run={"max_steps": 3}, optim={"warmup_steps": 1})
    single = [s.loss for s in train(build_config(tiny_config(tmp_path / "one", data, **sections))).steps]
    raw = tiny_config(tmp_path / "two", data, **sections)
    run_two_processes(two_process_config(tmp_path, raw, "ddp"))
    assert train_losses(tmp_path / "two" / "run") == pytest.approx(single, rel=1e-5)


def test_a_corrupt_clip_stops_every_process_after_checkpointing_the_steps_done(tmp_path):
    data = make_dataset(tmp_path / "data", 6, multi_turn_every=0)
    sections = dict(run={"max_steps": 3, "save_every": 50})
    line = batch_lines(build_config(tiny_config(tmp_path / "probe", data, **sections)))[1][0]
    name = point_at_flac(data, line, truncated=True)
    stderr = run_two_processes(two_process_config(tmp_path, tiny_config(tmp_path, data, **sections), "ddp"),
                               succeed=False)
    assert f"records.jsonl:{line}: " in stderr and f"{name}: the file is corrupt" in stderr
    assert "Stopped after step 1" in stderr
    assert (tmp_path / "run" / "checkpoints" / "step-0000001" / "rng-rank1.pt").exists()
