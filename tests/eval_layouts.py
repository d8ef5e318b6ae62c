"""Small benchmark folders in each benchmark's real file layout, for the reader and runner tests.

Every ``<task>_layout(root)`` writes a few samples under ``root`` and returns what ``--data``
takes for that task (the folder, or the file for captions / MMBench). Images are tiny
solid-colour files.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image


def img(path: Path, fmt: str | None = None, colour=(200, 30, 30), size=(4, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path


def png_bytes(colour=(0, 0, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2), colour).save(buf, format="PNG")
    return buf.getvalue()


def dump(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- VQA v2 / OK-VQA


def vqa_layout(root: Path, image_ids=(42, 7)) -> Path:
    dump(root / "v2_OpenEnded_mscoco_val2014_questions.json", {
        "data_subtype": "val2014",
        "questions": [{"image_id": 42, "question": "How many dogs?", "question_id": 420},
                      {"image_id": 7, "question": "Is it sunny?", "question_id": 70}]})
    dump(root / "v2_mscoco_val2014_annotations.json", {"annotations": [
        {"question_id": 420, "image_id": 42, "answer_type": "number", "question_type": "how many",
         "multiple_choice_answer": "2", "answers": [{"answer": "2", "answer_id": i} for i in range(1, 11)]},
        {"question_id": 70, "image_id": 7, "answer_type": "yes/no", "question_type": "is it",
         "multiple_choice_answer": "yes",
         "answers": [{"answer": a, "answer_id": i} for i, a in enumerate(["yes"] * 2 + ["no"] * 8, 1)]}]})
    for i in image_ids:
        img(root / "val2014" / f"COCO_val2014_{i:012d}.jpg")
    return root


def okvqa_layout(root: Path) -> Path:
    """OK-VQA's file names (no ``v2_`` prefix), three questions on two images."""
    qs = [(1, 42, "What sport can you use this for?", ["skiing"] * 10),
          (2, 42, "What is the man holding?", ["pole"] * 6 + ["stick"] * 4),
          (3, 9, "Which country is this?", ["france"] * 10)]
    dump(root / "OpenEnded_mscoco_val2014_questions.json", {
        "data_subtype": "val2014",
        "questions": [{"image_id": im, "question": q, "question_id": qid} for qid, im, q, _ in qs]})
    dump(root / "mscoco_val2014_annotations.json", {"annotations": [
        {"question_id": qid, "image_id": im, "answer_type": "other", "question_type": "eight",
         "answers": [{"answer": a, "answer_id": i} for i, a in enumerate(ans, 1)]} for qid, im, _, ans in qs]})
    for i in (42, 9):
        img(root / "val2014" / f"COCO_val2014_{i:012d}.jpg")
    return root


def textvqa_layout(root: Path) -> Path:
    dump(root / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "data": [
        {"image_id": "0054c91397f2fe05", "question": "What brand?", "question_id": 34602,
         "answers": ["nokia"] * 10, "set_name": "val"},
        {"image_id": "005635e119b9f32f", "question": "What does the sign say?", "question_id": 34603,
         "answers": ["stop"] * 8 + ["stop sign"] * 2, "set_name": "val"}]})
    img(root / "train_images" / "0054c91397f2fe05.jpg")
    img(root / "train_images" / "005635e119b9f32f.jpg", colour=(10, 200, 10))
    return root


def vizwiz_layout(root: Path) -> Path:
    dump(root / "Annotations" / "val.json", [
        {"image": "VizWiz_val_00000000.jpg", "question": "What is this?", "answerable": 0,
         "answer_type": "unanswerable",
         "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 10},
        {"image": "VizWiz_val_00000001.jpg", "question": "What colour is this shirt?", "answerable": 1,
         "answer_type": "other", "answers": [{"answer": "blue", "answer_confidence": "yes"}] * 10}])
    img(root / "val" / "VizWiz_val_00000000.jpg")
    img(root / "val" / "VizWiz_val_00000001.jpg", colour=(20, 20, 220))
    return root


def gqa_layout(root: Path) -> Path:
    dump(root / "testdev_balanced_questions.json", {
        "201307251": {"imageId": "n15740", "question": "Is the plate white?", "answer": "yes",
                      "types": {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"}},
        "201640614": {"imageId": "n15740", "question": "What is on the plate?", "answer": "food",
                      "types": {"structural": "query", "semantic": "rel", "detailed": "relS"}}})
    img(root / "images" / "n15740.jpg")
    return root


def scienceqa_layout(root: Path) -> Path:
    dump(root / "problems.json", {
        "5": {"question": "Which is a mammal?", "choices": ["frog", "cow"], "answer": 1, "hint": "Farm.",
              "image": "image.png", "split": "test", "subject": "natural science"},
        "6": {"question": "No image", "choices": ["a", "b"], "answer": 0, "hint": "", "image": None,
              "split": "test"},
        "8": {"question": "Which colour is shown?", "choices": ["red", "green", "blue"], "answer": 0, "hint": "",
              "image": "image.png", "split": "test", "subject": "natural science"},
        "7": {"question": "Train", "choices": ["a", "b"], "answer": 0, "hint": "", "image": "image.png",
              "split": "train"}})
    img(root / "images" / "test" / "5" / "image.png", "PNG")
    img(root / "images" / "test" / "8" / "image.png", "PNG")
    return root


def seedbench_layout(root: Path) -> Path:
    q = {"question": "What is shown?", "choice_a": "a", "choice_b": "b", "choice_c": "c", "choice_d": "d",
         "answer": "C", "question_type_id": 1}
    dump(root / "SEED-Bench.json", {"question_type": {"Scene Understanding": 1, "Instance Counting": 2}, "questions": [
        dict(q, question_id="101669", data_id="1454426_2591111986", data_type="image"),
        dict(q, question_id="v1", data_id="video.mp4", data_type="video"),
        dict(q, question_id="101670", data_id="1454426_2591111986", data_type="image", answer="A",
             question_type_id=2, question="How many cats?")]})
    img(root / "SEED-Bench-image" / "1454426_2591111986", "JPEG")
    return root


def mmbench_tsv(path: Path) -> Path:
    b64 = base64.b64encode(png_bytes()).decode()
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
    rows = [["0", "What color?", "", "red", "blue", "", "", "B", "color", "perception", b64],
            ["1000000", "What color?", "", "blue", "red", "", "", "A", "color", "perception", "0"],
            ["1", "Which city?", "A famous tower.", "Paris", "Rome", "Oslo", "", "A", "landmark", "perception", b64]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in [header] + rows) + "\n", encoding="utf-8")
    return path


def mmbench_layout(root: Path) -> Path:
    return mmbench_tsv(root / "mmbench_dev_en.tsv")


def mme_layout(root: Path) -> Path:
    # flat subtask: <name>.jpg beside <name>.txt
    img(root / "existence" / "000000006040.jpg")
    (root / "existence" / "000000006040.txt").write_text(
        "Is there a train in this image? Please answer yes or no.\tYes\n"
        "Is there a bed in this image? Please answer yes or no.\tNo\n", encoding="utf-8")
    # split subtask: images/ + questions_answers_YN/
    img(root / "artwork" / "images" / "10002.jpg")
    (root / "artwork" / "questions_answers_YN").mkdir(parents=True)
    (root / "artwork" / "questions_answers_YN" / "10002.txt").write_text(
        "Does this artwork exist in the form of painting? Please answer yes or no.\tYes\r\n"
        "Does this artwork exist in the form of glassware? Please answer yes or no.\tNo\r\n", encoding="utf-8")
    img(root / "code_reasoning" / "0020.png", "PNG")
    (root / "code_reasoning" / "0020.txt").write_text("Is the output 3? Please answer yes or no.\tYes\n"
                                                      "Is the output 4? Please answer yes or no.\tNo\n")
    return root


def pope_layout(root: Path) -> Path:
    img(root / "val2014" / "COCO_val2014_000000310196.jpg")
    rows = [{"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?",
             "label": "yes"},
            {"question_id": 2, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a car in the image?",
             "label": "no"}]
    jsonl(root / "coco_pope_random.json", rows)
    jsonl(root / "coco_pope_adversarial.json", rows[:1])
    return root


_CAPTIONS = [["A man with a hat.", "A man wears an orange hat."],
             ["Two dogs run on the grass.", "Dogs playing in a field."],
             ["A red bus on a street.", "A bus drives down the road."]]


def coco_caption_layout(root: Path) -> Path:
    """A Karpathy ``dataset_coco.json`` (test split) with ``val2014/`` images."""
    images = []
    for k, refs in enumerate(_CAPTIONS):
        name = f"COCO_val2014_{391895 + k:012d}.jpg"
        img(root / "val2014" / name, colour=(60 * k, 100, 200))
        images.append({"filepath": "val2014", "filename": name, "split": "test", "cocoid": 391895 + k,
                       "sentences": [{"raw": r} for r in refs]})
    images.append({"filepath": "val2014", "filename": "train.jpg", "split": "train", "cocoid": 5,
                   "sentences": [{"raw": "x"}]})
    return dump(root / "dataset_coco.json", {"dataset": "coco", "images": images})


def flickr30k_layout(root: Path) -> Path:
    """The COCO-style Flickr30K Karpathy test JSON mPLUG-Owl2 reads, with ``flickr30k-images/``."""
    ids = [1007129816, 1009434119, 101362133]
    for k, i in enumerate(ids):
        img(root / "flickr30k-images" / f"{i}.jpg", colour=(200, 60 * k, 30))
    return dump(root / "flickr30k_karpathy_test.json", {
        "images": [{"id": i, "image": f"flickr30k-images/{i}.jpg"} for i in ids],
        "annotations": [{"image_id": i, "caption": c, "id": 10 * k + j}
                        for k, (i, refs) in enumerate(zip(ids, _CAPTIONS)) for j, c in enumerate(refs)]})


def nocaps_layout(root: Path) -> Path:
    """NoCaps' ``nocaps_val_4500_captions.json`` (``file_name``) with the images beside it."""
    names = ["0013ea2087020901.jpg", "0023a9c6b5bdcd36.jpg"]
    for k, n in enumerate(names):
        img(root / "validation" / n, colour=(30, 30 + 100 * k, 90))
    return dump(root / "nocaps_val_4500_captions.json", {
        "images": [{"id": k, "file_name": f"validation/{n}", "domain": "in-domain"} for k, n in enumerate(names)],
        "annotations": [{"image_id": k, "caption": c, "id": 10 * k + j}
                        for k in range(len(names)) for j, c in enumerate(_CAPTIONS[k])]})


_MMMU_ROWS = {
    "Art": [
        {"id": "validation_Art_1", "question": "Which style is shown in <image 1>?",
         "options": "['Baroque', 'Cubism', 'Pop art']", "answer": "B", "question_type": "multiple-choice",
         "subfield": "Art History", "image_1": "a.png"},
        {"id": "validation_Art_2", "question": "Which picture is warmer?",
         "options": "['<image 1>', '<image 2>']", "answer": "A", "question_type": "multiple-choice",
         "subfield": "Drawing", "image_1": "a.png", "image_2": "b.png"}],
    "Math": [
        {"id": "validation_Math_1", "question": "<image 1> What is the area of the square?", "options": "[]",
         "answer": "16", "question_type": "open", "subfield": "Geometry", "image_1": "b.png"}],
}


def mmmu_layout(root: Path) -> Path:
    """MMMU's rows as ``<Subject>/validation.jsonl`` with the images beside them (the parquet
    layout's columns, image paths instead of embedded bytes)."""
    for subject, rows in _MMMU_ROWS.items():
        for name, colour in (("a.png", (200, 30, 30)), ("b.png", (30, 30, 200))):
            img(root / subject / name, "PNG", colour)
        jsonl(root / subject / "validation.jsonl", rows)
    return root


def mmmu_parquet_layout(root: Path) -> Path:
    """The same rows as the ``MMMU/MMMU`` dataset ships them: ``<Subject>/validation-00000-of-00001.parquet``,
    options as a string, ``image_1..image_7`` as ``{bytes, path}`` or null (needs pyarrow)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    colours = {"a.png": (200, 30, 30), "b.png": (30, 30, 200)}
    for subject, rows in _MMMU_ROWS.items():
        table = []
        for row in rows:
            row = dict(row)
            for k in range(1, 8):
                name = row.pop(f"image_{k}", None)
                row[f"image_{k}"] = None if name is None else {"bytes": png_bytes(colours[name]), "path": name}
            table.append(row)
        (root / subject).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(table), root / subject / "validation-00000-of-00001.parquet")
    return root


def mmvet_layout(root: Path) -> Path:
    dump(root / "mm-vet.json", {
        "v1_0": {"imagename": "v1_0.png", "question": "What is x in the equation?", "answer": "-1 <AND> -5",
                 "capability": ["ocr", "math"]},
        "v1_1": {"imagename": "v1_1.jpg", "question": "Which colour is the shape?", "answer": "blue",
                 "capability": ["rec"]}})
    img(root / "images" / "v1_0.png", "PNG")
    img(root / "images" / "v1_1.jpg", colour=(20, 20, 220))
    return root


def mmlu_layout(root: Path) -> Path:
    test = root / "test"
    test.mkdir(parents=True, exist_ok=True)
    (test / "astronomy_test.csv").write_text('"What is ""Sol""?",A star,A planet,A moon,A comet,A\n'
                                             "2+2?,3,4,5,6,B\n", encoding="utf-8")
    (test / "virology_test.csv").write_text("What is a virus?,A cell,A particle,A plant,An animal,B\n",
                                            encoding="utf-8")
    return root


def owleval_layout(root: Path) -> Path:
    for n in (1, 2):
        img(root / "cases" / f"{n}.jpg", colour=(100 * n, 50, 50), size=(8, 6))
    jsonl(root / "questions.jsonl", [
        {"image": "1.jpg", "question_id": 1, "question": "What is funny?", "ability": "a,b", "category": ["single_turn"]},
        {"image": "2.jpg", "question_id": 2, "question": "Read it.", "ability": "c",
         "category": ["single_turn", "multi_turn"]},
        {"image": "2.jpg", "question_id": 3, "question": "And then?", "ability": "f", "category": ["multi_turn"]}])
    jsonl(root / "answer" / "llava_answer.jsonl", [
        {"image": f"{i}.png", "question_id": i, "question": "q", "answer": f"llava {i}", "model_id": "llava-13b"}
        for i in (1, 2, 3)])
    return root


#: command-line task name -> builder
LAYOUTS = {
    "vqav2": vqa_layout, "okvqa": okvqa_layout, "textvqa": textvqa_layout, "vizwiz": vizwiz_layout,
    "gqa": gqa_layout, "scienceqa": scienceqa_layout, "seedbench": seedbench_layout, "mmbench": mmbench_layout,
    "mmmu": mmmu_layout, "mme": mme_layout, "pope": pope_layout, "mmvet": mmvet_layout, "coco": coco_caption_layout,
    "flickr30k": flickr30k_layout, "nocaps": nocaps_layout, "mmlu": mmlu_layout, "owleval": owleval_layout,
}
