"""MMMU: the dataset's parquet layout (and the same rows as JSON lines), the prompts and image
references, and the scoring of mPLUG-Owl2's ``evaluate_mmmu.py`` pinned on hand-worked cases
(multiple choice by exact equality, open answers through MMMU's parsing, per-subject accuracy
and the overall accuracy weighted by subject size)."""

from __future__ import annotations

import json
import sys

import pytest

import eval_layouts as layouts
from owlkit.errors import InputError
from owlkit.evaluation.benchmarks import BENCHMARKS, RunFolder
from owlkit.evaluation.benchmarks.mmmu import mmmu_prompt, mmmu_scores, mmmu_submission, read_mmmu
from owlkit.evaluation.open_answers import (extract_numbers, key_phrases, normalize_answer, open_answer_correct,
                                            parse_open_response)
from owlkit.evaluation.samples import EvalSample

MC_SUFFIX = "\nAnswer with the option\u2019s letter from the given choices directly. ASSISTANT: "


def _summary(samples):
    return [(s.id, s.question, s.choices, s.answers, s.metadata, [p.name for p in s.images]) for s in samples]


def test_jsonl_layout(tmp_path):
    root = layouts.mmmu_layout(tmp_path / "MMMU")
    samples = read_mmmu(root)
    assert [s.id for s in samples] == ["validation_Art_1", "validation_Art_2", "validation_Math_1"]
    art1, art2, math1 = samples
    assert art1.choices == ["Baroque", "Cubism", "Pop art"] and art1.answers == ["B"]
    assert art1.metadata == {"subject": "Art", "question_type": "multiple-choice", "subfield": "Art History"}
    assert [p.name for p in art2.images] == ["a.png", "b.png"]       # references in the options count
    assert math1.metadata["question_type"] == "open" and math1.answers == ["16"]
    assert [s.id for s in read_mmmu(root / "Math")] == ["validation_Math_1"]            # one subject
    assert [s.id for s in read_mmmu(root / "Art" / "validation.jsonl")] == ["validation_Art_1", "validation_Art_2"]


def test_parquet_layout_reads_like_the_dataset(tmp_path):
    pytest.importorskip("pyarrow")
    root = layouts.mmmu_parquet_layout(tmp_path / "MMMU")
    samples = read_mmmu(root)
    expected = read_mmmu(layouts.mmmu_layout(tmp_path / "as_jsonl"))
    assert [x[:5] for x in _summary(samples)] == [x[:5] for x in _summary(expected)]
    art2 = samples[1]
    folder = root / "Art" / "validation-00000-of-00001_images"
    assert art2.images == [folder / "validation_Art_2_1.png", folder / "validation_Art_2_2.png"]
    assert art2.images[1].read_bytes() == layouts.png_bytes((30, 30, 200))
    again = read_mmmu(root / "Art", image_dir=tmp_path / "imgs")
    assert again[0].images == [tmp_path / "imgs" / "validation_Art_1_1.png"]


def test_parquet_without_pyarrow_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "Art").mkdir()
    (tmp_path / "Art" / "validation-00000-of-00001.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(InputError, match=r"needs pyarrow: pip install pyarrow$"):
        read_mmmu(tmp_path)


def test_reader_errors(tmp_path):
    root = layouts.mmmu_layout(tmp_path / "MMMU")
    with pytest.raises(InputError, match="unknown MMMU split 'val'; choose one of: dev, validation, test"):
        read_mmmu(root, split="val")
    with pytest.raises(InputError, match="no dev files; expected the MMMU folder"):
        read_mmmu(root, split="dev")
    bad = {"id": "validation_Art_3", "question": "Look at <image 2>.", "options": "['a', 'b']", "answer": "A",
           "question_type": "multiple-choice", "image_1": "a.png"}
    cases = [({k: v for k, v in bad.items() if k != "answer"}, "missing 'answer'"),
             (dict(bad, options="not a list"), "'options' is not a list"),
             (dict(bad, question_type="yes/no"), "question_type 'yes/no' is not multiple-choice or open"),
             (bad, r"refers to <image 2> but image_2 is empty"),
             (dict(bad, image_2="missing.png"), "image not found")]
    for row, message in cases:
        layouts.jsonl(root / "Art" / "validation.jsonl", [row])
        with pytest.raises(InputError, match=message):
            read_mmmu(root / "Art")
    assert "validation.jsonl:1:" in str(pytest.raises(InputError, read_mmmu, root / "Art").value)


def test_prompts():
    assert BENCHMARKS["mmmu"].prompt.max_new_tokens == 20 and BENCHMARKS["mmmu"].prompt.official
    assert mmmu_prompt("Compare <image 1> and <image 2>.", ["x", "y"]) == (
        "USER: Compare <|image|> and <|image|>.\nA. x\nB. y" + MC_SUFFIX)
    assert mmmu_prompt("<image 1> What is the area?") == (
        "USER: <|image|> What is the area?\nAnswer the question using a single word or phrase. ASSISTANT: ")


def test_every_image_reference_becomes_a_placeholder(tmp_path):
    """The official script replaces <image 1>..<image 5> only while giving the model every
    referenced image; owlkit makes every reference a placeholder, and asks an image-less question
    as text (where the script would crash)."""
    rows = [{"id": "validation_Math_7", "question": "Compare <image 6> with <image 1> and <image 6>.",
             "options": "[]", "answer": "7", "question_type": "open", "image_1": "a.png", "image_6": "b.png"},
            {"id": "validation_Math_8", "question": "What is 2 + 2?", "options": "['3', '4']", "answer": "B",
             "question_type": "multiple-choice"}]
    layouts.img(tmp_path / "Math" / "a.png", "PNG")
    layouts.img(tmp_path / "Math" / "b.png", "PNG")
    layouts.jsonl(tmp_path / "Math" / "validation.jsonl", rows)
    six, text_only = read_mmmu(tmp_path)
    prompt = BENCHMARKS["mmmu"].prompt.build(six)
    assert [p.name for p in six.images] == ["b.png", "a.png", "b.png"]
    assert prompt.count("<|image|>") == len(six.images) and "<image" not in prompt
    assert text_only.images == [] and BENCHMARKS["mmmu"].prompt.build(text_only) == (
        "USER: What is 2 + 2?\nA. 3\nB. 4" + MC_SUFFIX)


# ----------------------------------------------------------------------------- scoring


def test_open_answer_parsing():
    assert normalize_answer(" 1,234.567 ") == [1234.57]
    assert normalize_answer("Cubism") == ["cubism"] and normalize_answer("x") == [" x", "x "]
    # commas, then scientific, then plain numbers; the plain pattern also finds "000" in "1,000"
    assert extract_numbers("from -3 to 1,000 or 2.5e3 and .5") == ["1,000", "2.5e3", "-3", "000", "2", "3", ".5"]
    # the shortest tail after an indicator, per line; '=' in the last line only
    assert key_phrases("The area is 16 square units, so the answer is 16.") == ["16"]
    assert key_phrases("x = 3\ny is 4") == ["4"] and key_phrases("x = 3") == ["3"]
    assert key_phrases("Sixteen") == ["sixteen"]                       # no indicator: the whole answer
    assert parse_open_response("The area is 16 square units.") == ["16 square units", 16.0]
    assert open_answer_correct("16", parse_open_response("It is 4 by 4, so 16"))
    assert open_answer_correct("16", parse_open_response("16.0"))     # numbers compare as numbers
    assert not open_answer_correct("16", parse_open_response("160"))
    assert open_answer_correct("cubism", parse_open_response("I think it is Cubism."))
    assert not open_answer_correct("c", parse_open_response("cubism"))  # one letter only as a word edge


def test_scores_as_the_official_script():
    art = [EvalSample(id=f"validation_Art_{i}", images=[], choices=["a", "b", "c"], answers=["B"],
                      metadata={"subject": "Art", "question_type": "multiple-choice"}) for i in (1, 2, 3)]
    math = [EvalSample(id="validation_Math_1", images=[], answers=["16"],
                       metadata={"subject": "Math", "question_type": "open"})]
    samples = art + math
    preds = {"validation_Art_1": "B", "validation_Art_2": "B.", "validation_Art_3": "(B)",
             "validation_Math_1": "The area is 16."}
    scores = mmmu_scores(samples, preds)
    # "B." and "(B)" are wrong: the script compares the answer with the letter, unparsed
    assert scores["per_question"] == {"validation_Art_1": 1.0, "validation_Art_2": 0.0, "validation_Art_3": 0.0,
                                      "validation_Math_1": 1.0}
    assert scores["per_subject"] == {"Art": 33.33, "Math": 100.0}
    assert scores["overall"] == 50.0                                   # weighted by subject size, not 66.67
    assert scores["per_question_type"] == {"multiple-choice": 33.33, "open": 100.0}
    assert scores["extracted"]["validation_Math_1"] == [16.0]
    lenient = BENCHMARKS["mmmu"].score(samples, preds, lenient=True)
    assert lenient["overall_lenient"] == 100.0 and lenient["n"] == 4
    with pytest.raises(ValueError, match="no gold answer"):
        mmmu_scores([EvalSample(id=1, images=[], metadata={"question_type": "open"})], {1: "x"})


def test_submission(tmp_path):
    samples = read_mmmu(layouts.mmmu_layout(tmp_path / "MMMU"))
    preds = {"validation_Art_1": "B", "validation_Art_2": "A.", "validation_Math_1": "It is 16"}
    assert mmmu_submission(samples, preds) == {"validation_Art_1": "B", "validation_Art_2": "A.",
                                               "validation_Math_1": [16.0]}
    files = BENCHMARKS["mmmu"].submission(samples, preds, RunFolder(tmp_path, "mmmu", tmp_path))
    assert json.loads(files[0].read_text()) == mmmu_submission(samples, preds)
