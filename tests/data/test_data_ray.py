"""Ray Data scale-out on a local Ray instance (skipped when the `ray` extra is not installed)."""

from functools import partial

import pytest

from desta_audio.data.backends import TransformersBackend
from desta_audio.data.generate import GenerationSettings, run_generation
from desta_audio.data.prompts import PromptPool
from desta_audio.data.sources import read_source
from desta_audio.data.store import Decoding, ShardStore

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_generation_equals_local_generation_and_resumes(local_ray, speech_manifest, tiny_llm_dir, tmp_path):
    from desta_audio.data.ray_engine import ray_generate_fn

    settings = GenerationSettings(samples_per_clip=2, shard_size=4, check_language=False,
                                  decoding=Decoding(do_sample=False, max_new_tokens=8))  # fmt: skip
    factory = partial(TransformersBackend, str(tiny_llm_dir), batch_size=4)
    pool = PromptPool.load()

    def rows(folder):
        store = ShardStore(folder)
        return {r["key"]: r["response"] for q in (False, True) for r in store.iter_rows(q)}

    local = run_generation(read_source(speech_manifest), factory(), tmp_path / "local", settings, pool, progress=False)
    on_ray = run_generation(read_source(speech_manifest), factory(), tmp_path / "ray", settings, pool,
                            generate_fn=ray_generate_fn(factory, settings, workers=2, cpus_per_worker=1),
                            progress=False)  # fmt: skip
    assert on_ray.kept + on_ray.quarantined == local.kept + local.quarantined == 12
    assert rows(tmp_path / "ray") == rows(tmp_path / "local")

    again = run_generation(read_source(speech_manifest), factory(), tmp_path / "ray", settings, pool,
                           generate_fn=ray_generate_fn(factory, settings, workers=2), progress=False)  # fmt: skip
    assert again.skipped == 12 and again.kept == again.quarantined == 0


@pytest.mark.slow
def test_cli_generate_with_ray(local_ray, speech_manifest, tiny_llm_dir, tmp_path):
    from typer.testing import CliRunner

    from desta_audio.data.cli import app

    result = CliRunner().invoke(app, ["generate", str(speech_manifest), "--out", str(tmp_path), "--model",
                                      str(tiny_llm_dir), "--greedy", "--max-new-tokens", "6", "--ray",
                                      "--ray-workers", "1", "--no-language-check"])  # fmt: skip
    assert result.exit_code == 0, result.output
    records = list(ShardStore(tmp_path).iter_records()) + list(ShardStore(tmp_path).iter_records(quarantine=True))
    assert len(records) == 6
    assert {r.provenance.generator for r in records} == {str(tiny_llm_dir)}
    assert all(len(r.provenance.weights_sha256) == 64 for r in records)
