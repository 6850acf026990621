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
