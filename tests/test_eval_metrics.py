"""Evaluation metrics against small cases worked out by hand (arithmetic in the comments)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from owlkit.errors import InputError
from owlkit.evaluation.captioning import bleu, caption_scores, cider_d, rouge_l
from owlkit.evaluation.ptb import coco_tokenize, ptb_tokenize
from owlkit.evaluation.choice import (choice_accuracy, circular_accuracy, circular_samples,
                                      extract_choice, rotate_choices)
from owlkit.evaluation.benchmarks import BENCHMARKS, build_prompt
from owlkit.evaluation.benchmarks.owleval import dialogue_prompt
from owlkit.evaluation.benchmarks.mmmu import mmmu_prompt
from owlkit.evaluation.samples import EvalSample
from owlkit.evaluation.vqa import (evalai_normalize, gqa_accuracy, normalize_answer,
                                   process_digit_article, process_punctuation,
                                   vizwiz_submission_answer, vqa_accuracy,
                                   vqa_question_accuracy)
from owlkit.evaluation.yesno import mme_label, mme_scores, pope_label, pope_metrics

IMG = [Path("x.jpg")]


def sample(sid, answers=(), **kw):
    return EvalSample(id=sid, images=IMG, answers=list(answers), **kw)


# ----------------------------------------------------------------------------- VQA normalisation


@pytest.mark.parametrize("text, expected", [
    ("1,000", "1000"),            # digit-comma-digit: every mark is deleted
    ("3.5", "3.5"),               # a period followed by a digit stays
    ("3.5 ft.", "3.5 ft"),        # ... the final one goes
    ("1.5.", "1.5"),
    ("black/white", "black white"),   # not touching a space: replaced by a space
    ("hello, world", "hello world"),  # ", " touches a space: deleted
    ("yes!", "yes "),
    ("red-white 1,000", "redwhite 1000"),  # the digit-comma-digit rule deletes "-" too
    # "(" touches no space in the input -> replaced by a space; ") " does -> deleted
    ("(a) dog", " a dog"),
])
def test_process_punctuation(text, expected):
    assert process_punctuation(text) == expected


def test_period_rule_deletes_at_most_32_periods():
    # Official call: periodStrip.sub("", text, re.UNICODE) -> count = re.UNICODE = 32.
    assert process_punctuation("a" + "." * 40) == "a" + "." * 8


@pytest.mark.parametrize("text, expected", [
    ("Two dogs", "2 dogs"),       # number words -> digits
    ("ten", "10"),
    ("none", "0"),                # 'none' -> '0'
    ("The cat", "cat"),           # articles dropped
    ("a", ""),
    ("an apple", "apple"),
    ("dont", "don't"),            # contraction table
    ("aint", "ain't"),
    ("ain't", "ain't"),           # already contracted: unchanged
    ("Im", "im"),                 # table keys "Im", "Ive" are never hit (input is lowercased)
    ("somebody'd", "somebodyd"),  # the odd official entry is kept
    ("eleven", "eleven"),         # only zero..ten
])
def test_process_digit_article(text, expected):
    assert process_digit_article(text) == expected


def test_normalize_answer_whole_pipeline():
    assert normalize_answer(" Two\tdogs.\n") == "2 dogs"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("3.5") == "3.5"
    assert normalize_answer("The dont") == "don't"


@pytest.mark.parametrize("text, expected", [
    ("Two dogs.", "2 dogs"),
    ("man's", "man 's"),          # EvalAI splits 's
    ("1,000?", "1000"),           # ',' and '?' deleted first
    ("What?", "what"),
    ("it's ten", "it 's 10"),
])
def test_evalai_processor(text, expected):
    assert evalai_normalize(text) == expected


# ----------------------------------------------------------------------------- VQA accuracy


@pytest.mark.parametrize("k, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_k_of_10(k, expected):
    # k annotators said "2", the others "3". Each matching annotator sees k-1 matches among the
    # other 9, each other annotator sees k: acc = (k*min(1,(k-1)/3) + (10-k)*min(1,k/3)) / 10.
    # k=1: (1*0 + 9/3)/10 = 0.3; k=2: (2/3 + 8*2/3)/10 = 0.6; k=3: (3*2/3 + 7)/10 = 0.9.
    gts = ["2"] * k + ["3"] * (10 - k)
    assert vqa_question_accuracy("two", gts) == pytest.approx(expected)


def test_vqa_accuracy_articles_case_and_punctuation():
    assert vqa_question_accuracy("A dog.", ["dog"] * 10) == 1.0
    assert vqa_question_accuracy("Yes", ["yes"] * 10) == 1.0
    assert vqa_question_accuracy("1,000", ["1000"] * 10) == 1.0


def test_vqa_ground_truth_processed_only_when_annotators_disagree():
    # Disagreeing GT: "hot-dog" is punctuation-processed into "hot dog" -> all 10 match.
    assert vqa_question_accuracy("hot dog", ["hot-dog"] * 5 + ["hot dog"] * 5) == 1.0
    # Unanimous GT is left as is; the prediction "hot-dog" becomes "hot dog": no match.
    assert vqa_question_accuracy("hot-dog", ["hot-dog"] * 10) == 0.0
    # GT never goes through the number mapping: a unanimous "two" only matches a prediction
    # whose processed form is "two" (there is none), "2" does not match either.
    assert vqa_question_accuracy("two", ["two"] * 10) == 0.0
    assert vqa_question_accuracy("2", ["2"] * 10) == 1.0


def test_vqa_accuracy_overall_and_breakdowns():
    samples = [
        sample(1, ["yes"] * 10, metadata={"answer_type": "yes/no", "question_type": "is the"}),
        sample(2, ["2"] + ["3"] * 9, metadata={"answer_type": "number", "question_type": "how many"}),
        sample(3, ["red"] * 10, metadata={"answer_type": "other", "question_type": "what color"}),
    ]
    res = vqa_accuracy(samples, {1: "Yes", 2: "two", 3: "blue"})
    # scores 1, 0.3, 0 -> 100 * 1.3 / 3 = 43.333 -> 43.33
    assert res["overall"] == 43.33
    assert res["perAnswerType"] == {"yes/no": 100.0, "number": 30.0, "other": 0.0}
    assert res["perQuestionType"]["how many"] == 30.0
    assert res["per_question"][2] == pytest.approx(0.3)
    # a list aligned with the samples works too; string keys are accepted
    assert vqa_accuracy(samples, ["Yes", "two", "blue"])["overall"] == 43.33
    assert vqa_accuracy(samples, {"1": "Yes", "2": "two", "3": "blue"})["overall"] == 43.33


def test_vqa_accuracy_input_errors():
    with pytest.raises(InputError, match="no prediction for sample 2"):
        vqa_accuracy([sample(1, ["a"] * 10), sample(2, ["b"] * 10)], {1: "a"})
    with pytest.raises(InputError, match="annotators' answers"):
        vqa_accuracy([sample(1, ["a"])], {1: "a"})


def test_vizwiz_unanswerable_is_an_ordinary_answer():
    assert vqa_question_accuracy("Unanswerable.", ["unanswerable"] * 10) == 1.0
    assert vqa_question_accuracy("unsuitable", ["unanswerable"] * 10) == 0.0
    # 4 annotators said unsuitable, 6 unanswerable: "Unsuitable" -> "unsuitable" -> 1.0
    assert vqa_question_accuracy("Unsuitable", ["unsuitable"] * 4 + ["unanswerable"] * 6) == 1.0
    assert vizwiz_submission_answer("") == "unanswerable"
    assert vizwiz_submission_answer("The.") == "unanswerable"   # normalises to ""
    assert vizwiz_submission_answer("Two cans.") == "2 cans"


def test_gqa_lenient_exact_match_after_normalisation():
    samples = [sample("a", ["red one"], metadata={"structural": "query"}),
               sample("b", ["yes"], metadata={"structural": "verify"})]
    res = gqa_accuracy(samples, {"a": "The Red one.", "b": "no"}, lenient=True)
    assert res["accuracy"] == 50.0
    assert res["perStructuralType"] == {"query": 100.0, "verify": 0.0}
    assert gqa_accuracy(samples, {"a": "Red one.", "b": "no"})["perStructuralType"] == {"query": 100.0, "verify": 0.0}


# ----------------------------------------------------------------------------- PTB tokenizer


@pytest.mark.parametrize("text, expected", [
    ("A dog, running on the beach.", "a dog running on the beach"),
    ("A man's hat", "a man 's hat"),
    ("He doesn't know; can't stop!", "he does n't know ca n't stop"),
    ("a 3-year-old boy", "a 3-year-old boy"),
    ("1,000 people at 10:30 pay $5.50", "1,000 people at 10:30 pay $ 5.50"),
    ('a "quoted" word -- and... more', "a quoted word and more"),
    ("a dog (black)", "a dog -lrb- black -rrb-"),   # -lowerCase turns -LRB- into -lrb-: kept
    ("St. Mark's square in the U.S.", "st. mark 's square in the u.s."),
    ("It\u2019s a \u201ctest\u201d \u2014 really\u2026", "it 's a test really"),
    ("Cannot", "can not"),
])
def test_coco_tokenize(text, expected):
    assert coco_tokenize(text) == expected


def test_ptb_tokenize_keeps_punctuation_tokens_before_filtering():
    assert ptb_tokenize("Hi, you.") == ["hi", ",", "you", "."]


# ----------------------------------------------------------------------------- BLEU


def test_bleu_identical_sentence_is_one():
    scores, _ = bleu({1: ["the cat sat on the mat"]}, {1: ["the cat sat on the mat"]})
    assert scores == pytest.approx([1.0] * 4, abs=1e-8)


def test_bleu_hand_computed_clipping_and_tiny_small():
    # hyp "the cat the cat", ref "the cat is here" (both 4 words: no brevity penalty)
    # p1: the x2, cat x2 clipped to 1 each -> 2/4; p2: "the cat" x2 clipped to 1, "cat the" 0 -> 1/3
    # p3: 0 matches of 2 -> (0 + 1e-15)/(2 + 1e-9); p4: (0 + 1e-15)/(1 + 1e-9)
    # BLEU-1 = 0.5, BLEU-2 = sqrt(1/6) = 0.408248, BLEU-3 = (1/6 * 5e-16)^(1/3) = 4.368e-6,
    # BLEU-4 = (1/6 * 5e-16 * 1e-15)^(1/4) = 1.699e-8
    scores, per_image = bleu({1: ["the cat is here"]}, {1: "the cat the cat"})
    assert scores[0] == pytest.approx(0.5)
    assert scores[1] == pytest.approx(math.sqrt(1 / 6))
    assert scores[2] == pytest.approx((1 / 6 * 0.5e-15) ** (1 / 3), rel=1e-6)
    assert scores[3] == pytest.approx((1 / 6 * 0.5e-15 * 1e-15) ** (1 / 4), rel=1e-6)
    assert per_image[1] == [pytest.approx(math.sqrt(1 / 6))]


def test_bleu_closest_reference_and_brevity_penalty():
    # hyp "a dog runs" (c=3); refs of length 4 and 7 -> closest r = 4; BP = exp(1 - 4/3)
    # p1 = p2 = p3 = 1; p4: no 4-gram in the hyp -> (0 + 1e-15)/(0 + 1e-9) = 1e-6
    # BLEU-1..3 = exp(-1/3) = 0.716531; BLEU-4 = (1e-6)^(1/4) * exp(-1/3) = 0.0226587
    gts = {1: ["a dog runs fast", "a big dog runs in the park"]}
    scores, _ = bleu(gts, {1: "a dog runs"})
    bp = math.exp(-1 / 3)
    assert scores[:3] == pytest.approx([bp] * 3, rel=1e-6)
    assert scores[3] == pytest.approx(1e-6 ** 0.25 * bp, rel=1e-6)


def test_bleu_closest_tie_goes_to_shorter_reference():
    # c = 2, refs of length 1 and 3: both at distance 1 -> r = 1 (the shorter): no penalty.
    # p1 = 1/2 ("x" does not match) -> BLEU-1 = 0.5; with r = 3 it would be 0.5*exp(-1/2)
    scores, _ = bleu({1: ["a", "a b c"]}, {1: "a x"})
    assert scores[0] == pytest.approx(0.5)


def test_bleu_is_corpus_level():
    # The two cases above together: p1 = (2+3)/(4+3) = 5/7, p2 = (1+2)/(3+2) = 3/5,
    # c = 4+3 = 7, r = 4+4 = 8 -> BP = exp(1 - 8/7) = exp(-1/7) = 0.866878
    # BLEU-1 = 5/7 * 0.866878 = 0.619198; BLEU-2 = sqrt(5/7 * 3/5) * BP = 0.567505
    gts = {1: ["the cat is here"], 2: ["a dog runs fast", "a big dog runs in the park"]}
    scores, _ = bleu(gts, {1: "the cat the cat", 2: "a dog runs"})
    bp = math.exp(-1 / 7)
    assert scores[0] == pytest.approx(5 / 7 * bp, rel=1e-6)
    assert scores[1] == pytest.approx(math.sqrt(3 / 7) * bp, rel=1e-6)


# ----------------------------------------------------------------------------- CIDEr-D


def test_cider_identical_two_word_captions():
    # N = 2 images, every n-gram in 1 image: idf = log 2 - log 1 = log 2 for all.
    # n=1: cos = 1; n=2: cos = 1; n=3, n=4: no n-grams -> 0; length penalty 1
    # mean([1, 1, 0, 0]) = 0.5, / 1 ref, x 10 = 5.0 per image
    score, per = cider_d({1: ["a b"], 2: ["c d"]}, {1: "a b", 2: "c d"})
    assert score == pytest.approx(5.0)
    assert per == pytest.approx([5.0, 5.0])


def test_cider_hand_computed_idf_clipping_and_length_penalty():
    # Image 1: ref "a b c", hyp "a b".  Image 2: ref "a d", hyp "d".  N = 2, L = log 2.
    # df: a = 2 (both images) -> weight log2 - log2 = 0; every other n-gram df = 1 -> weight L.
    # Image 1: hyp unigrams a:0, b:L (norm L), bigram ab:L (norm L), length = 1 bigram;
    #   ref unigrams a:0, b:L, c:L (norm sqrt2 L), bigrams ab, bc (norm sqrt2 L), length 2.
    #   n1: L*L / (L * sqrt2 L) = 1/sqrt2; n2: same; n3, n4: 0. delta = -1 ->
    #   penalty exp(-1/72). score = 10 * (2/sqrt2)/4 * exp(-1/72) = 3.486769
    # Image 2: hyp d:L, no bigram (length 0); ref a:0, d:L (norm L), ad (length 1).
    #   n1: L*L/(L*L) = 1; others 0. score = 10 * 1/4 * exp(-1/72) = 2.465518
    score, per = cider_d({1: ["a b c"], 2: ["a d"]}, {1: "a b", 2: "d"})
    pen = math.exp(-1 / 72)
    assert per[0] == pytest.approx(10 * math.sqrt(2) / 4 * pen)
    assert per[1] == pytest.approx(10 / 4 * pen)
    assert score == pytest.approx((per[0] + per[1]) / 2)


def test_cider_clips_repeated_ngrams():
    # Image 1: ref "a b", hyp "a a". Image 2 (filler): ref "c", hyp "c". L = log 2, all df = 1.
    # hyp unigram vector a: 2L (norm 2L); ref a: L, b: L (norm sqrt2 L).
    # n1: min(2L, L) * L / (2L * sqrt2 L) = 1/(2 sqrt2) = 0.353553 (unclipped would be 0.7071)
    # n2: hyp "a a" not in ref -> 0. lengths 1 and 1 -> no penalty. 10 * 0.353553/4 = 0.883883
    _, per = cider_d({1: ["a b"], 2: ["c"]}, {1: "a a", 2: "c"})
    assert per[0] == pytest.approx(10 * (1 / (2 * math.sqrt(2))) / 4)


def test_cider_single_image_is_zero():
    # log(N) = log(1) = 0: every weight is 0 (as in pycocoevalcap)
    assert cider_d({1: ["a b"]}, {1: "a b"})[0] == 0.0


# ----------------------------------------------------------------------------- ROUGE-L


def test_rouge_l_hand_computed():
    # cand "a b c d", ref "a c d e f": LCS "a c d" = 3; P = 3/4, R = 3/5, beta = 1.2
    # F = (1 + 1.44) * 0.75 * 0.6 / (0.6 + 1.44 * 0.75) = 1.098 / 1.68 = 0.653571
    score, _ = rouge_l({1: ["a c d e f"]}, {1: "a b c d"})
    assert score == pytest.approx(1.098 / 1.68)


def test_caption_scores_tokenizes_and_scores():
    samples = [sample(1, ["A dog runs on the grass.", "The dog is running!"]),
               sample(2, ["Two cats sleep on a bed."])]
    res = caption_scores(samples, {1: "A dog runs on the grass", 2: "two cats sleep on a bed"})
    # After PTB tokenization both candidates equal one of their references exactly.
    assert res["Bleu_1"] == pytest.approx(1.0, abs=1e-6)
    assert res["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert res["ROUGE_L"] == pytest.approx(1.0)
    assert res["n"] == 2 and set(res["per_image"]) == {1, 2}
    assert res["CIDEr"] > 0


# ----------------------------------------------------------------------------- multiple choice


@pytest.mark.parametrize("text, expected", [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), ("[C]", "C"), ("B)", "B"), (" d ", None),
    ("The answer is B", "B"), ("Answer: C) dog", "C"), ("The correct option is (D).", "D"),
    ("B. a cat", "B"), ("(C) dog", "C"),
    ("I think C is right", "C"),
    ("A dog sleeping on a mat", "C"),    # "A" is an article here; the option text wins
    ("A is correct", "A"),
    ("hot dog", "D"),                     # "dog" and "hot dog" both appear: the longer wins
    ("a cat", "A"),                       # exact option text
    ("B or C", None),                     # two letters: ambiguous
    ("E", None),                          # not an option
    ("", None),
])
def test_extract_choice(text, expected):
    assert extract_choice(text, ["a cat", "a bird", "a dog sleeping", "hot dog"]) == expected


def test_extract_choice_with_only_a_count():
    assert extract_choice("Answer: b", 4) is None     # lower-case b is not a letter answer
    assert extract_choice("(b)", 2) is None
    assert extract_choice("C", 2) is None              # only A and B exist


def test_choice_accuracy():
    samples = [sample(1, ["A"], choices=["cat", "dog"], metadata={"category": "x"}),
               sample(2, ["B"], choices=["cat", "dog"], metadata={"category": "y"}),
               sample(3, ["B"], choices=["cat", "dog"], metadata={"category": "y"})]
    res = choice_accuracy(samples, {1: "A", 2: "The answer is dog.", 3: "no idea"})
    assert res["accuracy"] == 66.67
    assert res["unparsed"] == 1
    assert res["per_category"] == {"x": 100.0, "y": 50.0}
    assert res["extracted"] == {1: "A", 2: "B", 3: None}


def test_rotate_choices():
    rot = rotate_choices(["w", "x", "y", "z"], "C")
    # copy k shows the options starting at original option k: ABCD, BCDA, CDAB, DABC;
    # the gold "y" (C, index 2) sits at (2 - k) mod 4: C, B, A, D
    assert [opts for opts, _ in rot] == [["w", "x", "y", "z"], ["x", "y", "z", "w"],
                                          ["y", "z", "w", "x"], ["z", "w", "x", "y"]]
    assert [gold for _, gold in rot] == ["C", "B", "A", "D"]
    assert rotate_choices(["a", "b"], 1) == [(["a", "b"], "B"), (["b", "a"], "A")]
    with pytest.raises(ValueError):
        rotate_choices(["a", "b"], "C")


def test_mmbench_circular_eval():
    base = [sample(7, ["B"], choices=["cat", "dog", "cow"], metadata={"index": 7, "group": 7, "circular_copy": 0,
                                                                        "category": "animals"}),
            sample(8, ["A"], choices=["red", "blue"], metadata={"index": 8, "group": 8, "circular_copy": 0,
                                                                  "category": "colors"})]
    copies = circular_samples(base)
    assert [s.id for s in copies] == [7, 1_000_007, 2_000_007, 8, 1_000_008]
    assert [s.answers[0] for s in copies] == ["B", "A", "C", "A", "B"]
    assert {s.metadata["group"] for s in copies} == {7, 8}
    assert circular_samples(copies) == copies   # copies are not expanded twice
    # question 7: every copy answered right (by letter or by option text) -> correct;
    # question 8: copy 0 right, copy 1 wrong -> wrong under CircularEval
    preds = {7: "B", 1_000_007: "dog", 2_000_007: "(C)", 8: "A", 1_000_008: "A"}
    res = circular_accuracy(copies, preds)
    assert res["circular_accuracy"] == 50.0
    assert res["vanilla_accuracy"] == 100.0   # copy 0 of both questions right
    assert res["groups"] == 2
    assert res["per_group"] == {7: True, 8: False}
    assert res["per_category"] == {"animals": 100.0, "colors": 0.0}


# ----------------------------------------------------------------------------- MME / POPE


@pytest.mark.parametrize("answer, label", [
    ("Yes", "yes"), ("no", "no"), (" No ", "no"), ("Yes, there is.", "yes"),
    ("No.", "no"), ("not sure", "no"),       # "not " contains "no"
    ("I think so", "other"), ("The answer is yes", "other"),   # only the first 4 characters
    ("know", "no"),                          # the official substring test, kept
])
def test_mme_label(answer, label):
    assert mme_label(answer) == label


def test_mme_scores_acc_plus_and_sums():
    def s(task, image, gt, n):
        return sample(f"{task}/{image}/{n}", [gt], metadata={"task": task, "image_name": image})

    samples = [s("count", "a.jpg", "Yes", 0), s("count", "a.jpg", "No", 1),
               s("count", "b.jpg", "Yes", 2), s("count", "b.jpg", "No", 3),
               s("code_reasoning", "c.png", "Yes", 4), s("code_reasoning", "c.png", "No", 5)]
    preds = ["Yes", "No", "Yes", "Yes",      # count: a both right, b one wrong
             "Yes", "Maybe"]                 # code: one right, one "other"
    res = mme_scores(samples, preds)
    count = res["tasks"]["count"]
    # acc = 3/4, acc+ = 1/2 (only image a) -> score = 75 + 50 = 125
    assert (count["acc"], count["acc_plus"], count["score"]) == (0.75, 0.5, 125.0)
    assert (count["TP"], count["FN"], count["TN"], count["FP"]) == (2, 0, 1, 1)
    assert count["precision"] == pytest.approx(2 / 3)
    code = res["tasks"]["code_reasoning"]
    # acc = 1/2 ("other" is wrong), acc+ = 0 -> 50; "other" is left out of precision/recall
    assert (code["score"], code["other_num"]) == (50.0, 1)
    assert res["perception"] == 125.0 and res["cognition"] == 50.0 and res["total"] == 175.0
    assert "existence" in res["missing_tasks"]


@pytest.mark.parametrize("answer, label", [
    ("Yes", "yes"), ("No", "no"), ("No.", "no"), ("no, there isn't", "no"),
    ("There is not a dog.", "no"), ("Yes. No", "yes"),      # only the first sentence
    ("NO", "yes"), ("Not really", "yes"),                    # case-sensitive words
    ("There is no,dog", "yes"),                              # commas deleted: "nodog"
])
def test_pope_label(answer, label):
    assert pope_label(answer) == label


def test_pope_metrics():
    samples = [sample(i, [lab], metadata={"category": cat}) for i, (lab, cat) in enumerate(
        [("yes", "random"), ("yes", "random"), ("no", "random"), ("no", "popular"), ("yes", "popular")])]
    preds = ["Yes", "No.", "no, there isn't", "Yes there is", "There is not a dog."]
    res = pope_metrics(samples, preds)
    # pred/label: y/y TP, n/y FN, n/n TN, y/n FP, n/y FN -> TP 1, FP 1, TN 1, FN 2
    # acc 2/5, precision 1/2, recall 1/3, F1 = 2 * (1/6) / (5/6) = 0.4, yes-ratio 2/5
    assert (res["TP"], res["FP"], res["TN"], res["FN"]) == (1, 1, 1, 2)
    assert res["accuracy"] == pytest.approx(0.4)
    assert res["precision"] == pytest.approx(0.5)
    assert res["recall"] == pytest.approx(1 / 3)
    assert res["f1"] == pytest.approx(0.4)
    assert res["yes_ratio"] == pytest.approx(0.4)
    assert res["per_category"]["random"]["accuracy"] == pytest.approx(2 / 3)
    # no positive prediction: precision would divide by zero -> 0.0
    assert pope_metrics(samples[:1], ["No"])["precision"] == 0.0


# ----------------------------------------------------------------------------- prompts


def test_official_prompts_character_for_character():
    q = sample(1, question="What color is the cat?")
    assert build_prompt("vqav2", q) == ("USER: <|image|>What color is the cat? Answer the question using a "
                                        "single word or phrase. ASSISTANT: ")
    assert build_prompt("textvqa", q).endswith("ASSISTANT: ")
    mme = sample(1, question="Is there a cat in the image? Please answer yes or no.")
    # "Please answer yes or no." is deleted after formatting: the space before it stays
    assert build_prompt("mme", mme) == ("USER: <|image|>Is there a cat in the image? \nAnswer the question "
                                        "using a single word or phrase. ASSISTANT: ")
    mmb = sample(1, question="Which animal?", choices=["cat", "dog"])
    assert build_prompt("mmbench", mmb) == ("USER: <|image|>N/A\nWhich animal?\nA. cat\nB. dog\nAnswer with "
                                            "the option\u2019s letter from the given choices directly. ASSISTANT: ")
    mmb.hint = "A pet."
    assert build_prompt("mmbench", mmb).startswith("USER: <|image|>A pet.\nWhich animal?\n")
    assert build_prompt("flickr30k", q) == ("USER: <|image|>Provide a one-sentence caption for the provided "
                                            "image. ASSISTANT: ")
    assert BENCHMARKS["flickr30k"].prompt.generation_kwargs == {"max_new_tokens": 60, "min_new_tokens": 8,
                                                      "do_sample": False, "num_beams": 1, "length_penalty": 0.0}
    assert (BENCHMARKS["vqav2"].prompt.max_new_tokens, BENCHMARKS["vqav2"].prompt.min_new_tokens) == (10, 1)
    assert BENCHMARKS["mme"].prompt.max_new_tokens == 10 and BENCHMARKS["mmbench"].prompt.max_new_tokens == 10


def test_other_prompts():
    sqa = sample(1, question="Which is a mammal?", choices=["frog", "cow"], hint="Look at the animals.")
    assert build_prompt("scienceqa", sqa) == ("USER: <|image|>Context: Look at the animals.\nWhich is a mammal?\n"
                                              "A. frog\nB. cow\nAnswer with the option\u2019s letter from the "
                                              "given choices directly. ASSISTANT: ")
    sqa.hint = None
    assert build_prompt("scienceqa", sqa).startswith("USER: <|image|>Which is a mammal?\nA. frog")
    assert build_prompt("pope", sample(1, question="Is there a dog?")) == (
        "USER: <|image|>Is there a dog?\nAnswer the question using a single word or phrase. ASSISTANT: ")
    assert "<|image|>" not in build_prompt("mmlu", sample(1, question="2+2?", choices=["3", "4"]))
    assert mmmu_prompt("Compare <image 1> and <image 2>.", ["x", "y"]) == (
        "USER: Compare <|image|> and <|image|>.\nA. x\nB. y\nAnswer with the option\u2019s letter from the "
        "given choices directly. ASSISTANT: ")
    assert mmmu_prompt("What is <image 1>?").endswith("single word or phrase. ASSISTANT: ")
    assert not any(b.prompt.official for k, b in BENCHMARKS.items() if k in ("gqa", "pope", "seedbench", "mmlu"))


def test_dialogue_prompts():
    turns = [("What is it?", "A cat."), ("What color?", None)]
    assert dialogue_prompt(turns) == "USER: <|image|>What is it? ASSISTANT: A cat.</s>USER: What color? ASSISTANT:"
    v1 = dialogue_prompt(turns, generation=1)
    assert v1.endswith("Human: <|image|>\nHuman: What is it?\nAI: A cat.\nHuman: What color?\nAI: ")
    assert v1.startswith("The following is a conversation between a curious human and AI assistant.")
