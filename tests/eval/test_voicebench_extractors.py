"""VoiceBench answer extraction pinned on concrete replies.

Each expected verdict was worked out by hand from VoiceBench's evaluator rules (src/evaluator/mcq.py and bbh.py);
the comment says which rule gives it. None means upstream finds nothing and draws a random answer.
"""

import pytest

from desta_audio.eval.benchmarks import voicebench


@pytest.mark.parametrize("response, letter", [
    ("The answer is (B).", "B"),                    # "is (#)" (after lowercasing)
    ("B) because plants need light", "B"),          # no template; the reply starts with "b)"
    ("I think A or B", None),                       # no template and no leading letter: a miss
    ("a", "A"),                                     # the whole reply is the letter
    ("c, since the moon reflects light", "C"),      # starts with "c,"
    ("Photosynthesis", None),                       # option text only: a miss
    ("", None),
    (" B", None),                                   # nothing is stripped, so the leading space defeats "== b"
    ("**B**", None),                                # bold letter alone matches no template
    ("Answer: C", "C"),                             # "answer: #"
    ("Final answer: b", "B"),                       # "final answer: #", right after the Chinese templates
    ("The answer is:\nB", "B"),                     # "answer is:\n#"
    ("{C}", "C"),                                   # "{#}", one of the last templates
    ("**D: mammals**", "D"),                        # "**#:"
    ("Here it is\n\n**B Mitochondria**", "B"),      # "\n\n**#"
    ("It would be:\n\nD", "D"),                     # "would be:\n\n#", the very last template
    ("Answer: a bird, so C.", "A"),                 # "answer: #" comes before " #." and reads the article "a"
    ("It could be a.", "A"),                        # " #." again: a hedge still counts
    ("The answer is a mineral (option B).", "A"),   # "the answer is #" comes first and reads the article "a"
    ("The correct answer is D, photosynthesis.", "D"),  # "the correct answer is #"
    ("Option C: mitochondria", "C"),                # "option #:"
    ("<2>The answer is D", "D"),                    # turn marker dropped, then "the answer is #"
    ("\u7b54\u6848\u662fC", "C"),                   # Chinese "the answer is C"
    ("\u7b54\u6848\u662f\u2018B\u2019", "B"),       # Chinese with a curly opening quote
    ("The answer is \\( \\boxed{B} \\)", "B"),      # "is \( \boxed{#}"
])
def test_mcq_extraction(response, letter):
    assert voicebench.extract_choice(response) == letter


@pytest.mark.parametrize("item_id, response, answer", [
    # hyperbaton: 0 = option (A), 1 = option (B)
    ("hyperbaton_1", "The answer is (A).", 0),                     # "the answer is (a)"
    ("hyperbaton_2", "B.", 0),                                     # normalised to "b", which upstream reads as (A)
    ("hyperbaton_3", "Option B is the correct one.", 1),           # "option b is the correct"
    ("hyperbaton_4", "The answer is about adjective order: B", 0),  # "answer is a" inside "answer is about"
    ("hyperbaton_5", "b) is right", 1),                            # starts with "b)"
    ("hyperbaton_6", "I think the first sentence sounds better.", None),
    ("hyperbaton_7", "The correct adjective order is clearly found in option B.", 1),  # the "... option b" regex
    # sports_understanding: 0 = no, 1 = yes
    ("sports_understanding_1", "Yes, it's plausible.", 1),         # starts with "yes"
    ("sports_understanding_2", "This is implausible.", None),      # no phrase covers a bare "implausible"
    ("sports_understanding_3", "Not plausible.", 0),               # the whole reply is "not plausible"
    ("sports_understanding_4", 'The sentence "Tom scored a touchdown" is not plausible.', 1),  # sic upstream
    ("sports_understanding_5", "Nope, never in soccer.", 0),       # starts with "no"
    ("sports_understanding_6", "It's not a plausible sentence.", None),  # apostrophe kept: "it s not" never fires
    ("sports_understanding_7", "The answer is: Yes", 1),           # "answer is yes" once ":" is spaced out
    # navigate
    ("navigate_1", "You don't return to the starting point.", None),  # only "you do not return ..." is listed
    ("navigate_2", "If you follow these steps, you return to the starting point, so no.", 1),  # phrase beats end
    ("navigate_3", "No.", 0),
    ("navigate_4", "Yes - we are back at the starting point!", 1),
    ("navigate_5", "You are not at the starting point, so the answer is No.", 0),  # "answer is no" comes first
    # web_of_lies
    ("web_of_lies_1", "So the answer is Jim lies.", 0),            # "answer is (.+?) lies"
    ("web_of_lies_2", "Therefore, Kristian tells the truth.", 1),  # ends with "tells the truth"
    ("web_of_lies_3", "Alice must be lying.", 1),                  # sic upstream: "must be lying" reads as yes
    ("web_of_lies_4", "Not sure.", 0),                             # starts with "no"
    ("web_of_lies_5", "The answer is: **Yes**", 1),                # "**" and ":" spaced out: "answer is yes"
    ("web_of_lies_6", "Sherrie tells the truth, so Vina lies.", 0),  # ends with "lies"
    ("web_of_lies_7", "I cannot tell.", None),
])
def test_bbh_extraction(item_id, response, answer):
    assert voicebench.extract_bbh(response, item_id) == answer


def test_bbh_normalisation_and_unknown_subtask():
    assert voicebench.normalize_bbh('<1>The Answer: "No" -- sure.<|turn_end|><|user|>') == "the answer no sure"
    with pytest.raises(ValueError, match="unknown subtask"):
        voicebench.extract_bbh("yes", "date_understanding_3")


def test_bbh_misses_fall_back_to_a_seeded_draw():
    rows = [{"id": f"bbh_{i}", "source_id": f"navigate_{i}", "subset": "bbh", "reference": ref, "response": resp}
            for i, (resp, ref) in enumerate([("No.", "no"), ("I cannot say.", "yes"), ("Hmm.", "no")])]
    result = voicebench.score(rows, seed=5)
    assert result["fail_rate"] == pytest.approx(200 / 3)
    assert result == voicebench.score(rows, seed=5)
