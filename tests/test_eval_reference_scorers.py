"""Each default scorer against the scorer behind the published numbers.

The ``reference_*`` functions below restate the public scripts line by line (VizWiz's
``vqaEval.py``, LLaVA-1.5's ``eval_science_qa.py`` / ``convert_gqa_for_eval.py`` /
``convert_seed_for_submission.py``, VLMEvalKit's ``can_infer``); owlkit's scorers must give
their numbers, including on the cases where owlkit's lenient parsers are more forgiving.
"""

from __future__ import annotations

import copy
import re
import string

import pytest

from owlkit.evaluation.answerability import average_precision, f1, unanswerability
from owlkit.evaluation.benchmarks import BENCHMARKS
from owlkit.evaluation.choice import (choice_accuracy, circular_accuracy, exact_letter, llava_scienceqa_choice,
                                      vlmevalkit_choice)
from owlkit.evaluation.samples import EvalSample
from owlkit.evaluation.vqa import gqa_accuracy, normalize_answer, vqa_accuracy

# ----------------------------------------------------------------------------- the references


def reference_vizwiz(prediction: str, gt_answers: list[str]) -> float:
    """VizWiz vqaEval.evaluate: the prediction processed, the annotators' answers as written."""
    res = normalize_answer(prediction)  # newline/tab -> space, strip, punctuation, digits/articles
    accs = []
    for i in range(len(gt_answers)):
        others = [a for j, a in enumerate(gt_answers) if j != i]
        accs.append(min(1, float(len([a for a in others if a == res])) / 3))
    return float(sum(accs)) / len(accs)


def reference_gqa(prediction: str, answer: str) -> bool:
    return prediction.rstrip(".").lower() == answer


def reference_scienceqa(pred_text: str, n_choices: int) -> int:
    options = ["A", "B", "C", "D", "E"]
    if pred_text in options:
        answer = pred_text
    elif len(pred_text) >= 3 and pred_text[0] in options and pred_text[1:3] == ". ":
        answer = pred_text[0]
    else:
        res = re.compile(r"The answer is ([A-Z]).").findall(pred_text)
        answer = res[0] if len(res) == 1 else "FAILED"
    return options.index(answer) if answer in options[:n_choices] else -1


def reference_can_infer(answer: str, choices: dict[str, str]):
    answer = str(answer)
    copt = False
    if "Failed to obtain answer via API" not in answer:
        refusals = ["Sorry, I can't help with images of people yet.", "I can't process this file.",
                    "I'm sorry, but without the image provided", "Cannot determine the answer"]
        if any(err in answer for err in refusals):
            copt = "Z"
        else:
            answer_mod = copy.copy(answer)
            for c in ".()[],:;!*#{}":
                answer_mod = answer_mod.replace(c, " ")
            splits = [x.strip() for x in answer_mod.split()]
            count = sum(1 for c in choices if c in splits)
            if count == 1:
                copt = next(ch for ch in choices if ch in splits)
            elif count == 0 and sum(1 for c in ("Z", "") if c in splits) == 1:
                copt = "Z"
    if copt:
        return copt
    low = answer.lower()
    for k in choices:
        assert k in string.ascii_uppercase
    cands = [k for k in choices if str(choices[k]).lower() in low]
    return cands[0] if len(cands) == 1 else False


# ----------------------------------------------------------------------------- VizWiz


COKE = ["coca-cola"] * 6 + ["coca cola", "coke", "coke", "soda"]


def test_vizwiz_compares_with_the_answers_as_written():
    samples = [EvalSample(id="img.jpg", images=[], answers=COKE, metadata={"answer_type": "other"})]
    assert reference_vizwiz("Coca-Cola", COKE) == pytest.approx(0.3)
    scores = BENCHMARKS["vizwiz"].score(samples, {"img.jpg": "Coca-Cola"})
    assert scores["overall"] == 30.0 and scores["perAnswerType"] == {"other": 30.0}
    assert BENCHMARKS["vizwiz"].score(samples, {"img.jpg": "Coca-Cola"}, lenient=True)["overall_lenient"] == 100.0
    assert vqa_accuracy(samples, {"img.jpg": "Coca-Cola"})["overall"] == 100.0     # the VQA v2 rule


@pytest.mark.parametrize("prediction", ["coca cola", "Coke.", "soda", "coca-cola", "unanswerable", " Coke "])
def test_vizwiz_equals_the_reference(prediction):
    samples = [EvalSample(id=1, images=[], answers=COKE)]
    expected = round(100 * reference_vizwiz(prediction, COKE), 2)
    assert BENCHMARKS["vizwiz"].score(samples, {1: prediction})["overall"] == expected


def test_vizwiz_answerability_average_precision_and_f1():
    # y = unanswerable; predictions: unanswerable for items 0, 1, 4
    answerable = [0, 0, 1, 1, 1, 0]
    preds = ["unanswerable", "Unanswerable.", "a cat", "blue", "unanswerable", "red"]
    samples = [EvalSample(id=i, images=[], answers=["x", "y"], metadata={"answerable": a})
               for i, a in enumerate(answerable)]
    # by hand (scikit-learn's definitions): threshold 1: TP 2 of 3 predicted, recall 2/3;
    # threshold 0: precision 3/6, recall 1 -> AP = 2/3 * 2/3 + 1/3 * 1/2; F1 = 2*2 / (3 + 3)
    assert unanswerability(samples, preds) == {"unanswerable_average_precision": round(100 * (4 / 9 + 1 / 6), 2),
                                               "unanswerable_f1": round(100 * 4 / 6, 2)}
    assert average_precision([1, 0, 1], [0.9, 0.8, 0.1]) == pytest.approx(1 * 0.5 + 0.5 * 2 / 3)
    assert average_precision([0, 0], [1, 0]) == 0.0 and f1([0, 0], [0, 0]) == 0.0


# ----------------------------------------------------------------------------- GQA


@pytest.mark.parametrize("prediction,answer", [("The right", "right"), ("A dog", "dog"), ("Yes.", "yes"),
                                               ("RIGHT", "right"), ("right.", "right"), ("on the left", "left")])
def test_gqa_equals_llava_protocol(prediction, answer):
    samples = [EvalSample(id="q", images=[], answers=[answer])]
    assert gqa_accuracy(samples, {"q": prediction})["accuracy"] == (100.0 if reference_gqa(prediction, answer) else 0.0)
    assert BENCHMARKS["gqa"].score(samples, {"q": "The right"}, lenient=True)["accuracy_lenient"] == (
        100.0 if answer == "right" else 0.0)


# ----------------------------------------------------------------------------- multiple choice

ANSWERS = ["B", "B.", "B. a dog", "(B)", "Option B", "[B]", "a dog", "The answer is B.", "The answer is B",
           "The answer is (B).", "A dog", "A", "b", "Answer: B", "The answer is B. The answer is C.",
           "C. cat", "I think B", "A cat or a dog", "Cannot determine the answer", "Z", "E",
           "The answer is E.", "B\n", " B", "Failed to obtain answer via API", "dog", "b. a dog"]
CHOICES = ["a cat", "a dog", "a cow"]


@pytest.mark.parametrize("answer", ANSWERS)
def test_scienceqa_equals_llava_eval_science_qa(answer):
    expected = reference_scienceqa(answer, len(CHOICES))
    letter = llava_scienceqa_choice(answer, CHOICES)
    assert (letter is None and expected == -1) or letter == "ABCDE"[expected]


def test_scienceqa_reference_is_stricter_than_lenient():
    samples = [EvalSample(id=i, images=[], choices=CHOICES, answers=["B"]) for i in range(5)]
    preds = ["(B)", "Option B", "[B]", "a dog", "The answer is B."]
    assert BENCHMARKS["scienceqa"].score(samples, preds)["accuracy"] == 20.0
    assert BENCHMARKS["scienceqa"].score(samples, preds, lenient=True)["accuracy_lenient"] == 100.0


@pytest.mark.parametrize("answer", ANSWERS)
def test_mmbench_equals_vlmevalkit_can_infer(answer):
    expected = reference_can_infer(answer, {k: v for k, v in zip("ABC", CHOICES)})
    assert vlmevalkit_choice(answer, CHOICES) == (expected or None)


def test_mmbench_reads_a_dog_as_option_a():
    sample = EvalSample(id=0, images=[], choices=["a cat", "a dog"], answers=["B"], metadata={"group": 0})
    assert circular_accuracy([sample], {0: "A dog"}, parse=vlmevalkit_choice)["vanilla_accuracy"] == 0.0
    assert BENCHMARKS["mmbench"].score([sample], {0: "A dog"})["vanilla_accuracy"] == 0.0
    assert BENCHMARKS["mmbench"].score([sample], {0: "A dog"}, lenient=True)["vanilla_accuracy_lenient"] == 100.0


@pytest.mark.parametrize("answer", ANSWERS)
def test_seedbench_compares_the_text_with_the_answer(answer):
    assert (exact_letter(answer, CHOICES) == "B") == (answer == "B")
    samples = [EvalSample(id=1, images=[], choices=CHOICES, answers=["B"])]
    assert BENCHMARKS["seedbench"].score(samples, [answer])["accuracy"] == (100.0 if answer == "B" else 0.0)


def test_default_choice_accuracy_keeps_the_lenient_parser():
    samples = [EvalSample(id=1, images=[], choices=CHOICES, answers=["B"])]
    assert choice_accuracy(samples, ["Option B"])["accuracy"] == 100.0


def test_every_scored_benchmark_names_its_reference():
    for name, bench in BENCHMARKS.items():
        if bench.metric is not None:
            assert bench.reference, name
