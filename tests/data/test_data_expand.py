from collections import Counter

from desta_audio.data.backends import Backend, Generation
from desta_audio.data.expand import clean_instruction, expand_pool
from desta_audio.data.prompts import CATEGORY_WEIGHTS, PromptPool


class ScriptedBackend(Backend):
    """Answers from a fixed list, in turn: stands in for a backbone with known outputs."""

    name = "scripted"
    model_id = "scripted-llm"

    def __init__(self, answers):
        self.answers = answers

    def generate(self, requests, decoding):
        assert decoding.do_sample
        return [Generation(self.answers[i % len(self.answers)], "stop", 5) for i in range(len(requests))]


def test_clean_instruction():
    assert clean_instruction('1. "Describe the hum in the background."\nMore text') == "Describe the hum in the background."
    assert clean_instruction("Instruction: What makes the voice sound tense?") == "What makes the voice sound tense?"
    assert clean_instruction("ok") is None
    assert clean_instruction("Sure! Here is one") is None  # not an instruction sentence


def test_expand_adds_distinct_prompts_and_keeps_category_shares():
    pool = PromptPool.load()
    answers = ["Which household object could make a sound like this one?",
               "which household object could make a sound like this one",  # duplicate once normalised
               "Describe the audio.",  # already in the pool
               "Explain how the speaker's breathing changes during the clip.", "???"]  # fmt: skip
    grown, added = expand_pool(pool, ScriptedBackend(answers), per_category=1)
    assert added == 2
    new = [p for p in grown.prompts if p.origin == "expanded:scripted-llm"]
    assert sorted(p.text for p in new) == ["Explain how the speaker's breathing changes during the clip.",
                                           "Which household object could make a sound like this one?"]  # fmt: skip
    assert [p.id for p in grown.prompts[: len(pool)]] == [p.id for p in pool.prompts]  # old ids unchanged
    assert grown.version.startswith(pool.version + "+x")
    share = Counter()
    for prompt in grown.prompts:
        share[prompt.category] += prompt.weight
    for category, weight in CATEGORY_WEIGHTS.items():
        assert abs(share[category] - weight) < 1e-3


def test_expand_with_a_real_generate_call(tiny_llm_dir):
    from desta_audio.data.backends import TransformersBackend

    pool = PromptPool.load()
    grown, added = expand_pool(pool, TransformersBackend(tiny_llm_dir), per_category=1, max_new_tokens=8)
    assert len(grown) == len(pool) + added  # random weights rarely write a usable instruction; none is forced
