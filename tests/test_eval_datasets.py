"""Benchmark readers on each benchmark's real file layout (built in tmp_path), their input
errors, and the report writers."""

from __future__ import annotations

import io
import json

import pytest

from eval_layouts import dump, img, jsonl, mmbench_tsv, mme_layout, mmvet_layout, png_bytes, vqa_layout
from owlkit.errors import InputError
from owlkit.evaluation import score
from owlkit.evaluation.benchmarks import BENCHMARKS, build_prompt, read_task
from owlkit.evaluation.benchmarks.captions import read_captions
from owlkit.evaluation.benchmarks.gqa import read_gqa
from owlkit.evaluation.benchmarks.mmbench import read_mmbench
from owlkit.evaluation.benchmarks.mme import read_mme, write_mme_results
from owlkit.evaluation.benchmarks.mmlu import read_mmlu
from owlkit.evaluation.benchmarks.mmvet import read_mmvet
from owlkit.evaluation.benchmarks.owleval import (owleval_html, read_owleval, read_owleval_answers,
                                                  write_owleval_answers)
from owlkit.evaluation.benchmarks.pope import read_pope
from owlkit.evaluation.benchmarks.scienceqa import read_scienceqa
from owlkit.evaluation.benchmarks.seedbench import read_seedbench
from owlkit.evaluation.benchmarks.textvqa import read_textvqa
from owlkit.evaluation.benchmarks.vizwiz import read_vizwiz
from owlkit.evaluation.benchmarks.vqav2 import read_vqa, write_vqa_submission
from owlkit.evaluation.report import compare, load_results, write_results
from owlkit.evaluation.samples import group_dialogues


# ----------------------------------------------------------------------------- VQA v2 / OK-VQA


def test_vqa_official_layout_and_scoring(tmp_path):
    root = vqa_layout(tmp_path / "vqav2")
    samples = read_vqa(root)
    assert [s.id for s in samples] == [420, 70]
    assert samples[0].image == root / "val2014" / "COCO_val2014_000000000042.jpg"
    assert samples[0].answers == ["2"] * 10
    assert samples[1].metadata["answer_type"] == "yes/no"
    assert build_prompt("vqav2", samples[0]).startswith("USER: <|image|>How many dogs? Answer")
    res = score("vqav2", samples, {420: "Two", 70: "yes"})
    # 420: 10/10 -> 1; 70: 2 annotators said yes -> 0.6; overall 80.0
    assert res["overall"] == 80.0 and res["perAnswerType"] == {"number": 100.0, "yes/no": 60.0}
    # the questions file alone (test-dev): no answers
    assert read_vqa(root / "v2_OpenEnded_mscoco_val2014_questions.json")[0].answers == []


def test_vqa_errors(tmp_path):
    root = vqa_layout(tmp_path / "vqav2", image_ids=(42,))
    with pytest.raises(InputError) as e:
        read_vqa(root)
    msg = str(e.value)
    assert "questions.json: questions[1]" in msg and "COCO_val2014_000000000007.jpg" in msg
    assert len(read_vqa(root, check_images=False)) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no questions JSON found; expected a folder with"):
        read_vqa(empty)
    bad = tmp_path / "bad"
    dump(bad / "questions.json", {"questions": [{"image_id": 1, "question_id": 3}]})
    with pytest.raises(InputError, match=r"questions\[0\]: malformed question: missing 'question'"):
        read_vqa(bad)
    dump(bad / "questions.json", {"data": []})
    with pytest.raises(InputError, match="not a VQA questions file; expected"):
        read_vqa(bad)
    (bad / "questions.json").write_text('{"questions": [', encoding="utf-8")
    with pytest.raises(InputError, match=r"questions.json:1: invalid JSON"):
        read_vqa(bad)


def test_vqa_jsonl_layout(tmp_path):
    img(tmp_path / "images" / "a.jpg")
    f = jsonl(tmp_path / "okvqa_val.jsonl", [
        {"image": "images/a.jpg", "question": "What is it?", "question_id": 1, "answers": ["cat"] * 10},
        {"image": "images/a.jpg", "question": "Color?", "question_id": 2,
         "answers": [{"answer": "red"}] * 5 + [{"answer": "blue"}] * 5}])
    samples = read_vqa(f)
    assert samples[0].image == tmp_path / "images" / "a.jpg"
    assert samples[1].answers[:1] == ["red"] and len(samples[1].answers) == 10
    # a JSON array in a .jsonl (what mPLUG-Owl2's json.load expects) reads the same
    arr = dump(tmp_path / "arr.jsonl", [{"image": "images/a.jpg", "question": "Q", "question_id": 5, "answer": "x"}])
    assert read_vqa(arr)[0].answers == ["x"]
    # join with the official annotations
    ann = dump(tmp_path / "ann.json", {"annotations": [{"question_id": 5, "answers": [{"answer": "y"}] * 10,
                                                        "answer_type": "other", "question_type": "what"}]})
    joined = read_vqa(arr, annotations=ann)[0]
    assert joined.answers == ["y"] * 10 and joined.metadata["answer_type"] == "other"


def test_vqa_jsonl_errors(tmp_path):
    img(tmp_path / "a.jpg")
    f = jsonl(tmp_path / "vqa.jsonl", [{"image": "a.jpg", "question": "Q", "question_id": 1, "answer": "x"},
                                       '{"image": "a.jpg", "question": ',
                                       {"image": "gone.jpg", "question": "Q", "question_id": 3}])
    with pytest.raises(InputError, match=r"vqa.jsonl:2: invalid JSON line"):
        read_vqa(f)
    jsonl(f, [{"image": "a.jpg", "question": "Q", "question_id": 1},
              {"image": "gone.jpg", "question": "Q", "question_id": 3}])
    with pytest.raises(InputError, match=r"vqa.jsonl:2: image not found: .*gone.jpg"):
        read_vqa(f)
    jsonl(f, [{"image": "a.jpg", "question_id": 1}])
    with pytest.raises(InputError, match=r"vqa.jsonl:1: malformed row: missing 'question'"):
        read_vqa(f)


# ----------------------------------------------------------------------------- TextVQA / VizWiz / GQA


def test_textvqa(tmp_path):
    dump(tmp_path / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "data": [
        {"image_id": "0054c91397f2fe05", "question": "What brand?", "question_id": 34602,
         "answers": ["nokia"] * 10, "set_name": "val"}]})
    img(tmp_path / "train_images" / "0054c91397f2fe05.jpg")
    (s,) = read_textvqa(tmp_path)
    assert s.id == 34602 and s.image.name == "0054c91397f2fe05.jpg" and s.answers == ["nokia"] * 10
    (tmp_path / "train_images" / "0054c91397f2fe05.jpg").unlink()
    with pytest.raises(InputError, match=r"TextVQA_0.5.1_val.json: data\[0\]: image not found"):
        read_textvqa(tmp_path)


def test_vizwiz(tmp_path):
    dump(tmp_path / "Annotations" / "val.json", [
        {"image": "VizWiz_val_00000000.jpg", "question": "What is this?", "answerable": 0,
         "answer_type": "unanswerable",
         "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 10}])
    img(tmp_path / "val" / "VizWiz_val_00000000.jpg")
    samples = read_vizwiz(tmp_path)
    assert samples[0].id == "VizWiz_val_00000000.jpg" and samples[0].metadata["answerable"] == 0
    assert score("vizwiz", samples, ["Unanswerable."])["overall"] == 100.0
    with pytest.raises(InputError, match="no Annotations/test.json; expected Annotations/<split>.json"):
        read_vizwiz(tmp_path, split="test")


def test_gqa(tmp_path):
    dump(tmp_path / "testdev_balanced_questions.json", {
        "201307251": {"imageId": "n15740", "question": "Is the plate white?", "answer": "yes",
                      "types": {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"}}})
    img(tmp_path / "images" / "n15740.jpg")
    (s,) = read_gqa(tmp_path)
    assert (s.id, s.answers, s.metadata["structural"]) == ("201307251", ["yes"], "verify")
    dump(tmp_path / "testdev_balanced_questions.json", {"1": {"question": "no image id"}})
    with pytest.raises(InputError, match="question '1': malformed question: missing 'imageId'"):
        read_gqa(tmp_path)


# ----------------------------------------------------------------------------- multiple choice


def test_scienceqa_keeps_image_questions_of_the_split(tmp_path):
    dump(tmp_path / "problems.json", {
        "5": {"question": "Which is a mammal?", "choices": ["frog", "cow"], "answer": 1, "hint": "Farm.",
              "image": "image.png", "split": "test", "subject": "natural science"},
        "6": {"question": "No image", "choices": ["a", "b"], "answer": 0, "hint": "", "image": None,
              "split": "test"},
        "7": {"question": "Train", "choices": ["a", "b"], "answer": 0, "hint": "", "image": "image.png",
              "split": "train"}})
    img(tmp_path / "images" / "test" / "5" / "image.png", "PNG")
    (s,) = read_scienceqa(tmp_path)
    assert (s.id, s.choices, s.answers, s.hint) == ("5", ["frog", "cow"], ["B"], "Farm.")
    assert s.image == tmp_path / "images" / "test" / "5" / "image.png"
    assert score("scienceqa", [s], ["B"])["accuracy"] == 100.0
    assert [x.id for x in read_scienceqa(tmp_path, split="train", check_images=False)] == ["7"]
    with pytest.raises(InputError, match=r"problem '7': image not found: .*train/7/image.png"):
        read_scienceqa(tmp_path, split="train")


def test_seedbench_image_questions_only(tmp_path):
    q = {"question": "What is shown?", "choice_a": "a", "choice_b": "b", "choice_c": "c", "choice_d": "d",
         "answer": "C", "question_type_id": 1}
    dump(tmp_path / "SEED-Bench.json", {"question_type": {"Scene Understanding": 1}, "questions": [
        dict(q, question_id="101669", data_id="1454426_2591111986", data_type="image"),
        dict(q, question_id="v1", data_id="video.mp4", data_type="video")]})
    img(tmp_path / "SEED-Bench-image" / "1454426_2591111986", "JPEG")
    (s,) = read_seedbench(tmp_path)
    assert (s.id, s.choices, s.answers, s.metadata["category"]) == ("101669", ["a", "b", "c", "d"], ["C"],
                                                                    "Scene Understanding")


def test_mmbench_tsv(tmp_path):
    samples = read_mmbench(mmbench_tsv(tmp_path / "mmbench_dev_en.tsv"))
    assert [s.id for s in samples] == [0, 1_000_000, 1]
    s0, copy, s1 = samples
    assert s0.choices == ["red", "blue"] and s0.answers == ["B"] and s0.hint is None
    assert copy.metadata["group"] == 0 and copy.metadata["circular_copy"] == 1
    assert copy.image == s0.image == tmp_path / "mmbench_dev_en_images" / "0.png"   # image by reference
    assert s0.image.read_bytes() == png_bytes()
    assert s1.hint == "A famous tower." and s1.choices == ["Paris", "Rome", "Oslo"]
    assert build_prompt("mmbench", s0).startswith("USER: <|image|>N/A\nWhat color?\nA. red\nB. blue\n")
    res = score("mmbench", samples, {0: "B", 1_000_000: "A", 1: "Rome"})
    assert (res["circular_accuracy"], res["vanilla_accuracy"]) == (50.0, 50.0)


def test_mmbench_errors_and_jsonl(tmp_path):
    f = mmbench_tsv(tmp_path / "mmb.tsv")
    lines = f.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2] + "\textra"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"mmb.tsv:3: malformed row: 12 columns, header has 11"):
        read_mmbench(f)
    f.write_text("index\tquestion\nx\ty\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"mmb.tsv:1: missing column\(s\) A, B; expected an MMBench .tsv"):
        read_mmbench(f)
    img(tmp_path / "images" / "3.jpg")
    j = jsonl(tmp_path / "mmbench_dev_20230712.jsonl", [
        {"index": 3, "image": "images/3.jpg", "hint": "N/A", "question": "Q?", "choices": ["x", "y"], "answer": 1}])
    (s,) = read_mmbench(j)
    assert (s.id, s.answers, s.hint) == (3, ["B"], None)


def test_mmlu(tmp_path):
    test = tmp_path / "data" / "test"
    test.mkdir(parents=True)
    (test / "astronomy_test.csv").write_text('"What is ""Sol""?",A star,A planet,A moon,A comet,A\n'
                                             "2+2?,3,4,5,6,B\n", encoding="utf-8")
    samples = read_mmlu(tmp_path / "data")
    assert [s.id for s in samples] == ["astronomy/0", "astronomy/1"]
    assert samples[0].question == 'What is "Sol"?' and samples[0].images == []
    assert score("mmlu", samples, ["A", "The answer is B"])["accuracy"] == 100.0
    (test / "astronomy_test.csv").write_text("q,a,b,c,d,A\nq,a,b,c,E\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"astronomy_test.csv:2: malformed row: 5 columns"):
        read_mmlu(test)
    with pytest.raises(InputError, match="no <subject>_test.csv; expected test/<subject>_test.csv"):
        read_mmlu(tmp_path)


# ----------------------------------------------------------------------------- MME


def test_mme_folder_layout(tmp_path):
    root = mme_layout(tmp_path / "MME_Benchmark_release_version")
    samples = read_mme(root)
    assert [s.metadata["task"] for s in samples] == ["existence"] * 2 + ["artwork"] * 2 + ["code_reasoning"] * 2
    assert samples[2].image == root / "artwork" / "images" / "10002.jpg"
    assert samples[2].answers == ["Yes"] and samples[3].answers == ["No"]
    assert samples[4].image.name == "0020.png" and samples[4].metadata["category"] == "Cognition"
    assert build_prompt("mme", samples[0]) == ("USER: <|image|>Is there a train in this image? \nAnswer the "
                                               "question using a single word or phrase. ASSISTANT: ")
    res = score("mme", samples, ["Yes", "No", "Yes", "Yes", "yes", "no"])
    # existence 100 + 100; artwork acc 1/2 + acc+ 0 = 50; code 200
    assert res["tasks"]["existence"]["score"] == 200.0 and res["tasks"]["artwork"]["score"] == 50.0
    assert (res["perception"], res["cognition"]) == (250.0, 200.0)
    assert len(read_mme(root, tasks=["artwork"])) == 2


def test_mme_your_results_layout(tmp_path):
    root = mme_layout(tmp_path / "MME")
    results = root / "eval_tool" / "Your_Results"
    results.mkdir(parents=True)
    (results / "artwork.txt").write_text("10002.jpg\tDoes this artwork exist in the form of painting? Please "
                                         "answer yes or no.\tYes\n", encoding="utf-8")
    (results / "existence.txt").write_text("000000006040.jpg\tIs there a train?\tYes\n", encoding="utf-8")
    samples = read_mme(root)
    assert [(s.metadata["task"], s.image.name) for s in samples] == [("existence", "000000006040.jpg"),
                                                                      ("artwork", "10002.jpg")]
    # the Your_Results folder itself: images two levels up
    assert len(read_mme(results)) == 2
    # write and read back the official eval_tool format
    out = write_mme_results(samples, ["yes", "No"], tmp_path / "answers")
    assert (tmp_path / "answers" / "artwork.txt").read_text().endswith("\tYes\tNo\n")
    assert len(out) == 2


def test_mme_errors(tmp_path):
    root = mme_layout(tmp_path / "MME")
    (root / "existence" / "000000006040.txt").write_text("Is there a train?\tYes\nbroken line\n")
    with pytest.raises(InputError, match=r"existence/000000006040.txt:2: malformed line: expected question<TAB>"):
        read_mme(root)
    (root / "existence" / "000000006040.txt").write_text("Is there a train?\tMaybe\n")
    with pytest.raises(InputError, match=r"000000006040.txt:1: malformed line: answer 'Maybe' must be Yes or No"):
        read_mme(root)
    (root / "existence" / "000000006040.jpg").unlink()
    with pytest.raises(InputError, match=r"000000006040.txt:1: image not found"):
        read_mme(root)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(InputError, match="no MME subtask found; expected MME_Benchmark_release_version/"):
        read_mme(tmp_path / "nothing")


# ----------------------------------------------------------------------------- POPE


def test_pope(tmp_path):
    img(tmp_path / "val2014" / "COCO_val2014_000000310196.jpg")
    rows = [{"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?",
             "label": "yes"},
            {"question_id": 2, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a car in the image?",
             "label": "no"}]
    jsonl(tmp_path / "coco_pope_random.json", rows)
    jsonl(tmp_path / "coco_pope_adversarial.json", rows[:1])
    samples = read_pope(tmp_path / "coco_pope_random.json")
    assert [s.id for s in samples] == [1, 2] and samples[0].metadata["category"] == "random"
    assert samples[1].answers == ["no"]
    both = read_pope(tmp_path)
    assert [s.id for s in both] == ["coco_pope_adversarial:1", "coco_pope_random:1", "coco_pope_random:2"]
    res = score("pope", both, ["Yes", "Yes", "No"])
    assert res["accuracy"] == 1.0 and set(res["per_category"]) == {"adversarial", "random"}
    jsonl(tmp_path / "coco_pope_random.json", [dict(rows[0], label="maybe")])
    with pytest.raises(InputError, match=r"coco_pope_random.json:1: malformed row: label 'maybe'"):
        read_pope(tmp_path / "coco_pope_random.json")


# ----------------------------------------------------------------------------- MM-Vet


def test_mmvet(tmp_path):
    root = mmvet_layout(tmp_path / "mm-vet")
    samples = read_mmvet(root)
    assert [s.id for s in samples] == ["v1_0", "v1_1"] and samples[0].image == root / "images" / "v1_0.png"
    assert samples[0].metadata == {"capability": ["ocr", "math"]} and samples[0].answers == ["-1 <AND> -5"]
    assert [s.id for s in read_mmvet(root / "mm-vet.json")] == ["v1_0", "v1_1"]
    assert build_prompt("mmvet", samples[1]) == "USER: <|image|>Which colour is the shape? ASSISTANT: "
    with pytest.raises(InputError, match="mmvet has no automatic metric: MM-Vet is graded by a GPT-4 judge"):
        BENCHMARKS["mmvet"].score(samples, {"v1_0": "x", "v1_1": "y"})
    (root / "images" / "v1_1.jpg").unlink()
    with pytest.raises(InputError, match=r"mm-vet.json: entry 'v1_1': image not found"):
        read_mmvet(root)
    dump(root / "mm-vet.json", {"v1_0": {"question": "?"}})
    with pytest.raises(InputError, match=r"entry 'v1_0': malformed entry: missing 'imagename'"):
        read_mmvet(root)
    dump(root / "mm-vet.json", [1, 2])
    with pytest.raises(InputError, match="not an MM-Vet file"):
        read_mmvet(root)


# ----------------------------------------------------------------------------- captions


def test_captions_coco_style(tmp_path):
    img(tmp_path / "flickr30k-images" / "1007129816.jpg")
    f = dump(tmp_path / "flickr30k_karpathy_test.json", {
        "images": [{"id": 1007129816, "image": "flickr30k-images/1007129816.jpg"}],
        "annotations": [{"image_id": 1007129816, "caption": "A man with a hat.", "id": 1},
                        {"image_id": 1007129816, "caption": "A man wears an orange hat.", "id": 2}]})
    (s,) = read_captions(f)
    assert s.id == 1007129816 and len(s.answers) == 2
    # an image path written relative to the repository root (data/flickr30k/...) is found by name
    dump(f, {"images": [{"id": 1, "image": "data/flickr30k/flickr30k-images/1007129816.jpg"}], "annotations": []})
    assert read_captions(f, images=tmp_path / "flickr30k-images")[0].image.name == "1007129816.jpg"
    dump(f, {"images": [{"id": 1}], "annotations": []})
    with pytest.raises(InputError, match=r"images\[0\]: malformed image: expected id\|image_id and file_name\|image"):
        read_captions(f)


def test_captions_karpathy_layout(tmp_path):
    img(tmp_path / "coco" / "val2014" / "COCO_val2014_000000391895.jpg")
    f = dump(tmp_path / "dataset_coco.json", {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "split": "test", "cocoid": 391895,
         "sentences": [{"raw": "A man riding a bike.", "tokens": []}, {"raw": "A person on a bicycle."}]},
        {"filepath": "val2014", "filename": "x.jpg", "split": "train", "cocoid": 5, "sentences": [{"raw": "x"}]}]})
    (s,) = read_captions(f, images=tmp_path / "coco")
    assert s.id == 391895 and s.answers == ["A man riding a bike.", "A person on a bicycle."]
    assert s.image == tmp_path / "coco" / "val2014" / "COCO_val2014_000000391895.jpg"
    with pytest.raises(InputError, match=r"dataset_coco.json: images\[1\]: image not found"):
        read_captions(f, images=tmp_path / "coco", split=None)


# ----------------------------------------------------------------------------- OwlEval


def test_owleval_layout_and_dialogues(tmp_path):
    root = tmp_path / "owleval"
    for n in (1, 2):
        img(root / "cases" / f"{n}.jpg")
    jsonl(root / "questions.jsonl", [
        {"image": "1.jpg", "question_id": 1, "question": "What is funny?", "ability": "a,b", "category": ["single_turn"]},
        {"image": "2.jpg", "question_id": 2, "question": "Read it.", "ability": "c",
         "category": ["single_turn", "multi_turn"]},
        {"image": "2.jpg", "question_id": 3, "question": "And then?", "ability": "f", "category": ["multi_turn"]}])
    jsonl(root / "answer" / "llava_answer.jsonl", [
        {"image": f"{i}.png", "question_id": i, "question": "q", "answer": f"llava {i}", "model_id": "llava-13b"}
        for i in (1, 2, 3)])
    samples = read_owleval(root)
    assert [s.metadata["turn"] for s in samples] == [0, 0, 1]
    assert [[s.id for s in d] for d in group_dialogues(samples)] == [[1], [2, 3]]
    assert samples[0].metadata["ability"] == ["a", "b"]
    published = read_owleval_answers(root)
    assert published == {"llava-13b": {1: "llava 1", 2: "llava 2", 3: "llava 3"}}
    (root / "cases" / "2.jpg").unlink()
    with pytest.raises(InputError, match=r"questions.jsonl:2: image not found"):
        read_owleval(root)


def test_owleval_real_data(owleval_dir):
    samples = read_owleval(owleval_dir)
    assert len(samples) == 82 and len({s.image for s in samples}) == 50
    dialogues = group_dialogues(samples)
    assert len(dialogues) == 50
    assert [s.id for s in next(d for d in dialogues if d[0].id == 15)] == list(range(15, 23))
    for d in dialogues:
        if len(d) > 1:
            assert "multi_turn" in d[0].metadata["category"]
            assert all(s.metadata["category"] == ["multi_turn"] for s in d[1:])
    published = read_owleval_answers(owleval_dir)
    assert len(published) == 6 and all(len(a) == 82 for a in published.values())


# ----------------------------------------------------------------------------- reports


def test_write_results_markdown_and_compare(tmp_path):
    run_a, run_b = tmp_path / "runs" / "base", tmp_path / "runs" / "tuned"
    vqa = {"overall": 78.2, "perAnswerType": {"yes/no": 91.0, "number": 60.5}, "n": 3,
           "per_question": {1: 1.0, 2: 0.3, 3: 0.0}}
    write_results(run_a, "vqav2", vqa, predictions=[{"id": 1, "prediction": "yes"}], info={"model": "a"})
    write_results(run_a, "mme", {"perception": 1450.5, "cognition": 300.25,
                                 "tasks": {"count": {"score": 150.0, "acc": 0.8}}})
    write_results(run_b, "vqav2", dict(vqa, overall=79.0))
    data = load_results(run_a)
    assert set(data["tasks"]) == {"vqav2", "mme"} and data["tasks"]["vqav2"]["info"] == {"model": "a"}
    assert "per_question" not in data["tasks"]["vqav2"]["metrics"]
    assert json.loads((run_a / "vqav2_details.json").read_text())["per_question"]["2"] == 0.3
    assert (run_a / "vqav2_predictions.jsonl").read_text().count("\n") == 1
    md = (run_a / "results.md").read_text()
    assert "| overall | 78.20 |" in md and "### perAnswerType" in md and "| count | 150.00 | 0.8000 |" in md
    out = io.StringIO()
    res = compare([run_a, run_b], stream=out)
    assert "| vqav2 | overall | 78.20 | 79.00 |" in res["table"]
    assert "| mme | perception | 1450.50 | — |" in res["table"]
    assert res["table"] in out.getvalue()
    assert res["png"] == tmp_path / "runs" / "comparison.png"
    assert res["png"].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError, match="no results.json"):
        compare([tmp_path])


def test_submission_files(tmp_path):
    root = vqa_layout(tmp_path / "vqa")
    samples = read_vqa(root)
    out = write_vqa_submission(samples, {420: "Two.", 70: "Yes"}, tmp_path / "sub" / "vqav2_testdev.json")
    assert json.loads(out.read_text()) == [{"question_id": 420, "answer": "2"}, {"question_id": 70, "answer": "yes"}]


def test_owleval_html_report(tmp_path, owleval_dir):
    samples = read_owleval(owleval_dir)[:6]
    published = read_owleval_answers(owleval_dir)
    ours = {s.id: f"our <answer> {s.id}" for s in samples}
    page = owleval_html(samples, ours, tmp_path / "report" / "owleval.html", published=published)
    text = page.read_text()
    assert text.count("<tr>") == 1 + 6          # header + one row per question
    assert "our &lt;answer&gt; 5" in text          # escaped
    assert all(f"<th>{name}</th>" in text for name in published)
    assert 'rowspan="2"' in text                  # questions 4 and 5 share image 4.jpg
    assert "../" in text and "cases/1.jpg" in text
    small = owleval_html(samples[:1], ours, tmp_path / "b64.html", embed="base64", thumbnail=32)
    assert "data:image/jpeg;base64," in small.read_text()
    answers = write_owleval_answers(samples, ours, tmp_path / "ours.jsonl", model_id="owlkit")
    row = json.loads(answers.read_text().splitlines()[0])
    assert row == {"image": "1.jpg", "question_id": 1, "question": samples[0].question,
                   "answer": "our <answer> 1", "model_id": "owlkit"}


def test_read_task_unknown():
    with pytest.raises(InputError, match="unknown evaluation task 'nope'"):
        read_task("nope", ".")
