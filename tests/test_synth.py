"""The procedural visual world (owlkit.zoo.world) and ``owl synth``."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from owlkit.cli import main
from owlkit.config import IMAGE_PLACEHOLDER
from owlkit.errors import ConfigError, OwlError
from owlkit.zoo import world as S

SIZE = 96  # small images keep the tests fast; pixel checks below render at 224 too


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    S.make_world(out, seed=7, n=40, image_size=SIZE, n_instruct=120, shard_size=16)
    return out


def _images(sample: dict) -> list[str]:
    image = sample.get("image", [])
    return [image] if isinstance(image, str) else list(image)


# ---------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files(tmp_path, world):
    again = tmp_path / "again"
    S.make_world(again, seed=7, n=40, image_size=SIZE, n_instruct=120, shard_size=16)
    assert _tree(world) == _tree(again)


def test_different_seed_gives_different_files(tmp_path, world):
    other = tmp_path / "other"
    S.make_world(other, seed=8, n=40, image_size=SIZE, n_instruct=120, shard_size=16)
    a, b = _tree(world), _tree(other)
    assert a.keys() == b.keys()
    for name in ("scenes.jsonl", "captions.jsonl", "instruct.json", "shards/00000.tar"):
        assert a[name] != b[name], name
    assert sum(a[k] != b[k] for k in a if k.startswith("images/")) > 30


def test_eval_set_is_deterministic_and_apart_from_training(world):
    one, two = S.make_eval_set(7, 2, SIZE), S.make_eval_set(7, 2, SIZE)
    assert [s.conversations for s in one] == [s.conversations for s in two]
    assert all(
        np.array_equal(np.asarray(x), np.asarray(y)) for a, b in zip(one, two) for x, y in zip(a.images, b.images)
    )
    # Same integer seed as the world, yet other scenes: the streams are namespaced.
    train = {s.to_dict().__repr__() for s in S.load_scenes(world).values()}
    held_out = [sc for s in one for sc in s.scenes]
    assert sum(sc.to_dict().__repr__() in train for sc in held_out) == 0
    assert S.make_eval_set(8, 2, SIZE)[0].conversations != one[0].conversations


def test_eval_set_can_exclude_training_scenes(world):
    train = list(S.load_scenes(world).values())
    keys = {s.key() for s in train if len(s.objects) >= 2}
    samples = S.make_eval_set(11, 3, SIZE, exclude_scenes=train)
    assert not [sc for s in samples for sc in s.scenes if sc.key() in keys]


# ---------------------------------------------------------------------------------- answers


def test_every_task_present(world):
    samples = json.loads((world / "instruct.json").read_text())
    manifest = json.loads((world / "world.json").read_text())
    assert {s["task"] for s in samples} == set(S.TASKS)
    assert manifest["task_counts"] == {t: 12 for t in S.TASKS}
    evals = S.make_eval_set(3, 2, SIZE)
    assert [s.task for s in evals] == [t for t in S.TASKS for _ in range(2)]


def test_answers_rederived_from_scenes(world):
    scenes = S.load_scenes(world)
    samples = json.loads((world / "instruct.json").read_text())
    for sample in samples:
        sc = [scenes[p] for p in _images(sample)]
        conv = sample["conversations"]
        for human, gpt in zip(conv[::2], conv[1::2]):
            assert S.answer_question(human["value"], sc) == gpt["value"], (sample["id"], human["value"])
    for sample in S.make_eval_set(5, 4, SIZE):
        for q, a in sample.history + [(sample.question, sample.answer)]:
            assert S.answer_question(q, sample.scenes) == a, (sample.id, q)


def test_answers_by_hand_from_scenes_jsonl(world):
    """A few question kinds re-derived here, independently of the module's own solver."""
    scenes = {}
    for line in (world / "scenes.jsonl").read_text().splitlines():
        row = json.loads(line)
        scenes[row["image"]] = row["scene"]
    checked = 0
    for sample in json.loads((world / "instruct.json").read_text()):
        paths = _images(sample)
        for human, gpt in zip(sample["conversations"][::2], sample["conversations"][1::2]):
            q, a = human["value"].split("\n")[-1], gpt["value"]
            objs = scenes[paths[0]]["objects"] if paths else []
            if q == "How many objects are there?":
                assert a == str(len(objs))
            elif m := re.fullmatch(r"How many (\w+)s are there\?", q):
                assert a == str(sum(o["shape"] == m[1] for o in objs))
            elif m := re.fullmatch(r"What colour is the (\w+)\?", q):
                hits = [o for o in objs if o["shape"] == m[1]]
                assert len(hits) == 1 and a == hits[0]["colour"]
            elif m := re.fullmatch(r"What shape is the (\w+) object\?", q):
                hits = [o for o in objs if o["colour"] == m[1]]
                assert len(hits) == 1 and a == hits[0]["shape"]
            elif m := re.fullmatch(r"Where is the (\w+) (\w+)\?", q):
                hits = [o for o in objs if o["colour"] == m[1] and o["shape"] == m[2]]
                assert len(hits) == 1 and a == S.POSITIONS[(hits[0]["row"], hits[0]["col"])]
            elif q in ("What word is written in the image?", "What does the text say?"):
                assert a == scenes[paths[0]]["word"]
            elif q == "Which image has more objects?":
                n1, n2 = (len(scenes[p]["objects"]) for p in paths)
                assert n1 != n2 and a == ("the first" if n1 > n2 else "the second")
            elif m := re.fullmatch(r"What is (\d) plus (\d)\?", q):
                assert a == str(int(m[1]) + int(m[2]))
            else:
                continue
            checked += 1
    assert checked >= 30


def test_caption_template():
    scene = S.Scene(
        objects=[S.Obj("square", "blue", "small", 1, 1), S.Obj("circle", "red", "big", 0, 0)], word="CAT"
    )
    assert S.caption(scene) == (
        "a big red circle at the top left and a small blue square in the center. "
        "the word CAT is written at the bottom."
    )
    assert S.caption(S.Scene()) == "an empty picture."


def test_described_replaces_placeholders_by_captions():
    one = S.Scene(objects=[S.Obj("circle", "red", "big", 0, 0)])
    two = S.Scene(word="UP")
    assert S.described("<|image|>\nWhat colour is the circle?", [one]) == (
        "Image: a big red circle at the top left.\nWhat colour is the circle?")
    assert S.described("<|image|>\n<|image|>\nWhich image has more objects?", [one, two]) == (
        "Image 1: a big red circle at the top left.\n"
        "Image 2: an empty picture. the word UP is written at the bottom.\nWhich image has more objects?")
    assert S.described("What is 3 plus 4?", []) == "What is 3 plus 4?"
    # a later turn's image is the next scene, numbered as such
    assert S.described("<|image|>\nAnd this one?", [one, two], start=1) == (
        "Image 2: an empty picture. the word UP is written at the bottom.\nAnd this one?")
    with pytest.raises(ValueError, match="2 image placeholders but 1 scenes"):
        S.described("<|image|><|image|>", [one])
    # over a conversation, each turn's images take the next scenes
    assert S.described_turns(["<|image|>\nThis one?", "red", "<|image|>\nAnd this one?"], [one, two]) == [
        "Image 1: a big red circle at the top left.\nThis one?", "red",
        "Image 2: an empty picture. the word UP is written at the bottom.\nAnd this one?"]


def test_described_eval_conversations_hold_the_captions_and_no_image():
    from owlkit.zoo.synth_eval import conversation

    samples = S.make_eval_set(11, 3, image_size=64)
    for sample in samples:
        plain, shown = conversation(sample, described=True), conversation(sample)
        assert len(plain) == len(shown) and [m["role"] for m in plain] == [m["role"] for m in shown]
        assert all(isinstance(m["content"], str) and "<|image|>" not in m["content"] for m in plain)
        text = "\n".join(m["content"] for m in plain)
        for scene in sample.scenes:
            assert S.caption(scene) in text
        images = sum(p["type"] == "image" for m in shown for p in m["content"])
        assert images == len(sample.images)


def test_questions_only_when_unambiguous():
    import random

    two_circles = S.Scene(objects=[S.Obj("circle", "red", "big", 0, 0), S.Obj("circle", "blue", "big", 0, 1)])
    assert S.answer_question("What colour is the circle?", [two_circles]) is None
    for seed in range(50):
        qa = S.generate("colour", random.Random(seed), [two_circles])
        assert qa is None or qa[0][0] != "What colour is the circle?"
    assert S.generate("read", random.Random(0), [two_circles]) is None
    assert S.generate("relation", random.Random(0), [S.Scene()]) is None


def test_text_tasks():
    cases = {
        "What is 3 plus 4?": "7",
        "What is 9 minus 4?": "5",
        "Spell the word cat.": "c a t",
        "Is a triangle a shape or a colour?": "shape",
        "Is red a colour or a shape?": "colour",
        "What colour do you get when you mix yellow and red?": "orange",
        "How many sides does a triangle have?": "3",
        "What is the opposite of big?": "small",
        "What number comes after 4?": "5",
    }
    for q, a in cases.items():
        assert S.answer_question(q) == a, q


def test_exact_match():
    assert S.exact_match("Seven.", "7")
    assert S.exact_match("The first", "the first")
    assert S.exact_match("first image", "the first") is False
    assert S.exact_match("C-A-T", "c a t")
    assert S.exact_match("a p p l e", "a p p l e")
    assert not S.exact_match("p p l e", "a p p l e")
    assert S.exact_match("Red!", "red")
    assert S.exact_match("a shape", "shape")
    assert S.exact_match("centre", "center")
    assert not S.exact_match("blue", "red")
    assert S.exact_match("cat", "CAT")


# ---------------------------------------------------------------------------------- formats


def test_caption_jsonl_and_scenes(world):
    scenes = S.load_scenes(world)
    rows = [json.loads(line) for line in (world / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 40 == len(scenes)
    assert rows[0]["image"] == "images/000001.png"
    for row in rows:
        assert set(row) == {"image", "caption"}
        assert (world / row["image"]).is_file()
        assert row["caption"] == S.caption(scenes[row["image"]])
    with Image.open(world / rows[0]["image"]) as img:
        assert img.size == (SIZE, SIZE) and img.mode == "RGB"


def test_webdataset_shards(world):
    shards = sorted((world / "shards").glob("*.tar"))
    assert [p.name for p in shards] == ["00000.tar", "00001.tar", "00002.tar"]
    keys = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            names = tar.getnames()
            assert len(names) % 3 == 0
            for i in range(0, len(names), 3):
                key = names[i].split(".")[0]
                assert names[i : i + 3] == [f"{key}.png", f"{key}.txt", f"{key}.json"]
                caption = tar.extractfile(f"{key}.txt").read().decode()
                meta = json.loads(tar.extractfile(f"{key}.json").read())
                assert meta["key"] == key and meta["caption"] == caption
                assert caption == S.caption(S.Scene.from_dict(meta["scene"]))
                img = Image.open(io.BytesIO(tar.extractfile(f"{key}.png").read()))
                assert img.size == (meta["width"], meta["height"]) == (SIZE, SIZE)
                keys.append(key)
    assert keys == [f"{i:06d}" for i in range(1, 41)]


def test_llava_json(world):
    samples = json.loads((world / "instruct.json").read_text())
    assert isinstance(samples, list) and len(samples) == 120
    assert len({s["id"] for s in samples}) == len(samples)
    for s in samples:
        images = _images(s)
        assert len(images) == S.images_for(s["task"])
        if s["task"] == "text":
            assert "image" not in s
        elif s["task"] == "compare":
            assert isinstance(s["image"], list)
        for p in images:
            assert (world / p).is_file()
        conv = s["conversations"]
        assert len(conv) >= 2 and len(conv) % 2 == 0
        assert [c["from"] for c in conv] == ["human", "gpt"] * (len(conv) // 2)
        assert conv[0]["value"].count(IMAGE_PLACEHOLDER) == len(images)
        assert conv[0]["value"].startswith(IMAGE_PLACEHOLDER * bool(images))
        assert sum(c["value"].count(IMAGE_PLACEHOLDER) for c in conv) == len(images)
        if s["task"] == "multiturn":
            assert 2 <= len(conv) // 2 <= 3
        else:
            assert len(conv) == 2
        if s["task"] != "caption":
            for c in conv[1::2]:  # short answers; a spelled word counts as one
                words = c["value"].split()
                assert len(words) <= 4 or all(len(w) == 1 for w in words), c["value"]


def test_format_choice(tmp_path):
    S.make_world(tmp_path / "j", 1, 3, 64, fmt="jsonl", n_instruct=5)
    S.make_world(tmp_path / "w", 1, 3, 64, fmt="wds", n_instruct=0, shard_image_ext="jpg")
    assert (tmp_path / "j" / "captions.jsonl").exists() and not (tmp_path / "j" / "shards").exists()
    assert not (tmp_path / "w" / "captions.jsonl").exists()
    with tarfile.open(tmp_path / "w" / "shards" / "00000.tar") as tar:
        assert tar.getnames()[0] == "000001.jpg"
    assert json.loads((tmp_path / "w" / "instruct.json").read_text()) == []


def test_task_weights(tmp_path):
    manifest = S.make_world(tmp_path / "t", 2, 10, 64, task_weights={"count": 3, "text": 1}, n_instruct=8)
    assert manifest["task_counts"] == {"count": 6, "text": 2}


# ---------------------------------------------------------------------------------- pixels


@pytest.mark.parametrize("image_size", [224, 64])
def test_objects_drawn_in_their_cells(image_size):
    cells = sorted(S.POSITIONS)
    objects = [
        S.Obj(S.SHAPES[i % len(S.SHAPES)], sorted(S.COLOURS)[i % len(S.COLOURS)], S.SIZES[i % 2], r, c)
        for i, (r, c) in enumerate(cells[:8])
    ]
    scene = S.Scene(objects=objects, word="HOUSE", noise=12.0, noise_seed=3)
    arr = np.asarray(S.render(scene, image_size))
    assert arr.shape == (image_size, image_size, 3)
    for o in objects:
        x, y = S.cell_center(o.row, o.col, image_size)
        assert tuple(arr[y, x]) == S.COLOURS[o.colour], o
    # The empty cell shows (noisy) background, not an object colour.
    x, y = S.cell_center(2, 2, image_size)
    assert np.abs(arr[y, x].astype(int) - np.array(S.BACKGROUND)).max() < 70
    assert arr[y, x].astype(int).std() < 1  # grey noise: channels move together


def test_scene_from_jsonl_renders_like_its_image(world):
    for path, scene in list(S.load_scenes(world).items())[:5]:
        with Image.open(world / path) as img:
            assert np.array_equal(np.asarray(img), np.asarray(S.render(scene, SIZE)))
        arr = np.asarray(S.render(scene, SIZE))
        for o in scene.objects:
            x, y = S.cell_center(o.row, o.col, SIZE)
            assert tuple(arr[y, x]) == S.COLOURS[o.colour]


def test_word_is_rendered():
    with_word = np.asarray(S.render(S.Scene(word="CAT"), 224)).astype(int)
    without = np.asarray(S.render(S.Scene(), 224)).astype(int)
    x0, y0, x1, y1 = S.text_box(224)
    dark = (with_word[y0:y1, x0:x1].sum(-1) < 200).sum()
    assert dark > 200  # text strokes
    assert (without[y0:y1, x0:x1] != S.BACKGROUND).sum() == 0
    assert (with_word[:y0] != S.BACKGROUND).sum() == 0  # the word stays in its band
    # Longer words still fit inside the band at small sizes.
    small = np.asarray(S.render(S.Scene(word="GARDEN"), 64)).astype(int)
    x0, y0, x1, y1 = S.text_box(64)
    assert (small[y0:y1].sum(-1) < 400).sum() > 10
    assert (small[:y0] != S.BACKGROUND).sum() == 0
    assert (small[:, :1] != S.BACKGROUND).sum() == 0 and (small[:, -1:] != S.BACKGROUND).sum() == 0


def test_colours_and_vocabulary_distinct():
    values = list(S.COLOURS.values())
    assert len(set(values)) == 6 and S.BACKGROUND not in values
    assert min(np.abs(np.array(a) - np.array(b)).sum() for i, a in enumerate(values) for b in values[i + 1 :]) > 80
    assert len(S.SHAPES) >= 4
    assert all(w.isupper() and 2 <= len(w) <= 6 for w in S.WORDS)
    assert not {w.lower() for w in S.WORDS} & (set(S.COLOURS) | set(S.SHAPES) | {"yes", "no"})


# ---------------------------------------------------------------------------------- errors & CLI


def test_bad_input_raises_owl_errors(tmp_path):
    with pytest.raises(ConfigError):
        S.make_world(tmp_path / "a", 0, 0)
    with pytest.raises(ConfigError):
        S.make_world(tmp_path / "a", 0, 2, task_weights={"dance": 1})
    with pytest.raises(ConfigError):
        S.make_world(tmp_path / "a", 0, 2, fmt="csv")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(OwlError):
        S.make_world(tmp_path / "full", 0, 2)
    S.make_world(tmp_path / "full", 0, 2, 64, overwrite=True)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"  # --overwrite replaces only world files
    with pytest.raises(ConfigError):
        S.make_eval_set(0, 0)
    with pytest.raises(ConfigError):
        S.make_eval_set(0, 1, tasks=["read"], word_prob=0)


def test_cli_writes_a_world(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["synth", str(out), "--seed", "3", "--n", "6", "--image-size", "64", "--format", "both",
               "--tasks", "colour,count=2", "text", "--shard-size", "4"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "colour" in text and "count" in text and "instruct.json" in text
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["00000.tar", "00001.tar"]
    manifest = json.loads((out / "world.json").read_text())
    assert manifest["task_counts"] == {"colour": 2, "count": 3, "text": 1}


def test_cli_errors_return_2(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["synth", str(out), "--n", "0"]) == 2
    assert main(["synth", str(out), "--n", "2", "--image-size", "64", "--tasks", "nope"]) == 2
    assert main(["synth", str(out), "--n", "2", "--image-size", "64"]) == 0
    assert main(["synth", str(out), "--n", "2", "--image-size", "64"]) == 2  # not empty
    err = capsys.readouterr().err
    assert "owl synth: error:" in err and "--overwrite" in err
    assert all(line.startswith("owl synth: error:") for line in err.strip().splitlines())
    assert main(["synth", str(out), "--n", "2", "--image-size", "64", "--overwrite"]) == 0
