from desta_audio.data.dedup import NearDuplicateIndex, normalize_text
from desta_audio.data.filters import ResponseFilter, quality_reason


def test_normalize_folds_case_accents_punctuation():
    assert normalize_text("  Café,  NOW!! ") == "cafe now"


def test_near_duplicate_index():
    index = NearDuplicateIndex(threshold=0.85)
    base = ("The speaker sounds calm and speaks slowly about the weather today in the city near the old bridge, "
            "then mentions that a small dog barked twice while children played loudly outside on a sunny afternoon")
    assert index.add_if_new("a", base + ".") is None
    assert index.add_if_new("b", base.lower().replace("calm", "calm,")) == "a"  # exact after normalisation
    assert index.add_if_new("c", base.replace("old", "new") + "!") == "a"  # one word changed: near duplicate
    assert index.add_if_new("d", "A dog barks twice in a quiet street at night.") is None


def test_quality_reasons():
    assert quality_reason("   ", "stop", "en") == "empty"
    assert quality_reason("The speaker is", "length", "en") == "truncated"
    assert quality_reason("I'm sorry, but I can't listen to audio files.", "stop", "en") == "refusal"
    assert quality_reason("As an AI language model, I cannot hear sounds.", "stop", "en") == "refusal"
    assert quality_reason("Based on the description provided, the speaker is happy.", "stop", "en") == (
        "mentions_description"
    )
    assert quality_reason("La personne parle calmement de la météo et du temps qu'il fera demain.", "stop", "en") == (
        "wrong_language:fr!=en"
    )
    assert quality_reason("La personne parle calmement de la météo et du temps qu'il fera demain.", "stop", "fr") is None
    assert quality_reason("According to the description, the dog barks twice.", "stop", "en") == "mentions_description"
    assert quality_reason("Based on the information in the audio, it is raining.", "stop", "en") is None
    assert quality_reason("Here is a detailed description of the audio: a dog barks.", "stop", "en") is None
    assert quality_reason("The speaker is female.", "stop", "en") is None
    assert quality_reason("Female.", "stop", "fr") is None  # too short to judge the language


def test_filter_dedups_prompts_per_clip_and_long_responses_only():
    keep = ResponseFilter()
    long_answer = "The recording features a calm female voice greeting everyone warmly in a quiet office room."
    assert keep.check("k1", "clip1", "Describe the audio.", long_answer) is None
    assert keep.check("k2", "clip1", "Describe the audio!", "Something else entirely.") == "duplicate_of:k1"
    assert keep.check("k3", "clip2", "Describe the audio.", long_answer + "..") == "duplicate_of:k1"
    # short factual answers are shared across clips legitimately
    assert keep.check("k4", "clip2", "What is the gender?", "The speaker is female.") is None
    assert keep.check("k5", "clip3", "What is the gender?", "The speaker is female.") is None
    assert keep.check("k6", "clip3", "Any words?", "", "stop") == "empty"
