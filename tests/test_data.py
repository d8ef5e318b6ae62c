"""Data readers, mixtures, ``owl data check`` and the training collator."""

from __future__ import annotations

import json
import math
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from owlkit.cli import main
from owlkit.config import IGNORE_INDEX
from owlkit.data.augment import augment_image, crop_params, random_hflip
from owlkit.data.collator import OwlCollator
from owlkit.data.datasets import MixtureDataset, RecordDataset, build_dataset, load_source
from owlkit.data.records import (
    Problem,
    Record,
    TarMember,
    detect_type,
    expand_shards,
    index_shard,
    iter_entries,
    record_problems,
)
from owlkit.errors import ConfigError, InputError
from owlkit.processing.images import OwlImageProcessor
from owlkit.processing.labels import build_training_example
from owlkit.processing.templates import V1_SYSTEM, render
from owlkit.processing.tokenizer import OwlTokenizer
from owlkit.zoo.world import make_world

pytest.importorskip("sentencepiece")

N = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    make_world(out, seed=3, n=N, image_size=56, shard_size=3)
    return out


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    from helpers_tokenizer import train_tiny_tokenizer

    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(tok_dir) -> OwlTokenizer:
    return OwlTokenizer.from_pretrained(tok_dir)


def _records(path, kind=None, **kw):
    entries = list(iter_entries(path, kind, **kw))
    problems = [e for e in entries if isinstance(e, Problem)]
    assert not problems, problems
    return entries


def _write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _png(path: Path, colour=(200, 30, 30), size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _texts(message) -> list[str]:
    return [p["text"] for p in message["content"] if p["type"] == "text"]


def _images(message) -> list:
    return [p["image"] for p in message["content"] if p["type"] == "image"]


# -- readers ----------------------------------------------------------------------------------


def test_llava_json_from_world(world):
    records = _records(world / "instruct.json")
    samples = json.loads((world / "instruct.json").read_text())
    assert len(records) == len(samples) == N
    lines = (world / "instruct.json").read_text().splitlines()
    for record, sample in zip(records, samples):
        assert record.id == sample["id"] and record.task == sample["task"]
        assert lines[record.line - 1].strip() == "{"  # the line where the element starts
        expected = sample.get("image", [])
        expected = [expected] if isinstance(expected, str) else expected
        assert record.images == [str(world / p) for p in expected]
        assert [m["role"] for m in record.messages] == ["user", "assistant"] * (len(sample["conversations"]) // 2)
        assert _images(record.messages[0]) == record.images  # placeholders bound in order
        # placeholders removed, the newline after them stripped
        question = sample["conversations"][0]["value"].split("\n")[-1]
        assert _texts(record.messages[0]) == [question]
        assert _texts(record.messages[1]) == [sample["conversations"][1]["value"]]
        assert record_problems(record) == []
    assert {len(r.images) for r in records} <= {0, 1, 2}


def test_llava_placeholder_rules(tmp_path):
    rows = [
        # images but no placeholder: put at the start of the first human turn (LLaVA)
        {"id": "a", "image": ["x.png", "y.png"], "conversations": [
            {"from": "human", "value": "Compare them."}, {"from": "gpt", "value": "Same."}]},
        # v1 placeholder after the text, user/assistant/system roles
        {"id": "b", "image": "/abs/z.jpg", "conversations": [
            {"from": "system", "value": "Be brief."}, {"from": "user", "value": "What is this?\n<image>"},
            {"from": "assistant", "value": "A cat."}]},
        # one placeholder per turn, bound in order
        {"id": "c", "image": ["p.png", "q.png"], "conversations": [
            {"from": "human", "value": "<|image|>\nFirst?"}, {"from": "gpt", "value": "one"},
            {"from": "human", "value": "<image>\nSecond?"}, {"from": "gpt", "value": "two"}]},
        # mismatch: 2 placeholders, 1 image
        {"id": "d", "image": "p.png", "conversations": [
            {"from": "human", "value": "<image><image>Q"}, {"from": "gpt", "value": "A"}]},
        # placeholder without image
        {"id": "e", "conversations": [{"from": "human", "value": "<image>Q"}, {"from": "gpt", "value": "A"}]},
        "{not json",
        # OpenAI-style messages
        {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]},
                      {"role": "assistant", "content": "Yo"}], "image": "m.png"},
        {"id": "f", "conversations": [{"from": "robot", "value": "x"}]},
        # an image in a gpt turn; OpenAI-style parts carrying their own paths
        {"id": "g", "image": "p.png", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "<image>"}]},
        {"id": "h", "messages": [{"role": "user", "content": [{"type": "image", "image": "in.png"}, {"type": "text", "text": "Hi"}]},
                                 {"role": "assistant", "content": [{"type": "text", "text": "Yo"}]}]},
    ]
    path = _write_jsonl(tmp_path / "sub" / "data.jsonl", rows)
    entries = list(iter_entries(path, "llava"))
    a, b, c, d, e, bad_json, m, f, g, h = entries
    root = str(tmp_path / "sub")
    assert a.images == [f"{root}/x.png", f"{root}/y.png"]
    assert a.messages[0]["content"] == [
        {"type": "image", "image": f"{root}/x.png"}, {"type": "image", "image": f"{root}/y.png"},
        {"type": "text", "text": "Compare them."}]
    assert b.images == ["/abs/z.jpg"] and [m_["role"] for m_ in b.messages] == ["system", "user", "assistant"]
    assert b.messages[1]["content"] == [{"type": "text", "text": "What is this?"}, {"type": "image", "image": "/abs/z.jpg"}]
    assert _images(c.messages[0]) == [f"{root}/p.png"] and _images(c.messages[2]) == [f"{root}/q.png"]
    assert isinstance(d, Problem) and d.line == 4 and "2 image placeholder(s) but 1 image(s)" in str(d)
    assert str(d).startswith(f"{path}:4: ")
    assert isinstance(e, Problem) and e.line == 5 and e.kind == "placeholder"
    assert isinstance(bad_json, Problem) and bad_json.line == 6 and bad_json.kind == "json"
    assert isinstance(m, Record) and m.id == "data.jsonl:7" and _images(m.messages[0]) == [f"{root}/m.png"]
    assert isinstance(f, Problem) and "unknown role 'robot'" in f.message
    assert isinstance(g, Problem) and "turn 2 (gpt) holds an image" in g.message
    assert h.images == [f"{root}/in.png"] and _images(h.messages[0]) == h.images
    # image_root overrides the file's folder; rendering puts images first
    (rec,) = [r for r in iter_entries(path, "llava", image_root="/data") if isinstance(r, Record) and r.id == "b"]
    assert rec.images == ["/abs/z.jpg"]
    (rec,) = [r for r in iter_entries(path, "llava", image_root="/data") if isinstance(r, Record) and r.id == "a"]
    assert rec.images == ["/data/x.png", "/data/y.png"]
    assert render(rec.messages, "mplug_owl2", add_generation_prompt=False).prompt == (
        "USER: <|image|><|image|>Compare them. ASSISTANT: Same.</s>")


def test_json_array_line_numbers_and_bad_json(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n  {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},\n'
                    '\n  {"conversations": [{"from": "gpt", "value": "a"}]},\n  {"oops": ]\n]\n')
    first, second, broken = iter_entries(path, "llava")
    assert isinstance(first, Record) and first.line == 2
    assert isinstance(second, Problem) and second.line == 4 and second.kind == "turns"
    assert isinstance(broken, Problem) and broken.line == 5 and "rest of the file" in broken.message
    path.write_text("[]")
    assert list(iter_entries(path, "llava")) == []


def test_owl_jsonl_round_trip(tmp_path):
    text = (V1_SYSTEM + "\nHuman: <image>\nHuman: <image>\nHuman: What differs?\nAI: The colour.\n"
            "Human: Which is red?\nAI: The first one.")
    rows = [
        {"text": text, "image": ["a.jpg", "b.jpg"], "task_type": "llava_sft"},
        {"text": "Custom system.\nHuman: Hi\nAI: Hello!\n", "image": None, "task_type": "sharegpt_chat_sft"},
        {"text": V1_SYSTEM + "\nHuman: <image>\nHuman: q\nAI: a", "image": [], "task_type": "llava_sft"},
        {"text": "no turns here"},
    ]
    path = _write_jsonl(tmp_path / "owl.jsonl", rows)
    first, second, mismatch, no_turns = iter_entries(path)  # type guessed: owl_jsonl
    assert detect_type(path) == "owl_jsonl"
    assert first.task == "llava_sft" and first.images == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    assert [m["role"] for m in first.messages] == ["user", "assistant", "user", "assistant"]
    # rendering with the v1 template gives back the original text exactly
    assert render(first.messages, "mplug_owl", add_generation_prompt=False).prompt == text
    assert second.messages[0] == {"role": "system", "content": [{"type": "text", "text": "Custom system."}]}
    assert render(second.messages, "mplug_owl", add_generation_prompt=False).prompt == "Custom system.\nHuman: Hi\nAI: Hello!"
    assert isinstance(mismatch, Problem) and mismatch.kind == "placeholder" and mismatch.line == 3
    assert isinstance(no_turns, Problem) and "no 'Human: '" in no_turns.message


def test_captions_and_prompt(world):
    records = _records(world / "captions.jsonl")
    assert detect_type(world / "captions.jsonl") == "captions"
    rows = [json.loads(x) for x in (world / "captions.jsonl").read_text().splitlines()]
    assert len(records) == N
    for record, row in zip(records, rows):
        assert record.task == "caption" and record.images == [str(world / row["image"])]
        assert record.messages == [
            {"role": "user", "content": [{"type": "image", "image": str(world / row["image"])}]},
            {"role": "assistant", "content": [{"type": "text", "text": row["caption"]}]},
        ]
    (first, *_) = _records(world / "captions.jsonl", "captions", prompt="Describe the image.")
    assert first.messages[0]["content"][-1] == {"type": "text", "text": "Describe the image."}
    prompt = render(first.messages, "mplug_owl2", add_generation_prompt=False).prompt
    assert prompt == f"USER: <|image|>Describe the image. ASSISTANT: {rows[0]['caption']}</s>"


def test_webdataset_shards(world):
    shards = expand_shards(world / "shards")
    assert [Path(s).name for s in shards] == ["00000.tar", "00001.tar", "00002.tar"]
    assert expand_shards(str(world / "shards" / "{00000..00001}.tar")) == shards[:2]
    assert expand_shards(str(world / "shards" / "*.tar")) == shards
    assert detect_type(world / "shards") == "wds"
    records = _records(world / "shards", "wds")
    captions = [json.loads(x) for x in (world / "captions.jsonl").read_text().splitlines()]
    assert [r.messages[1]["content"][0]["text"] for r in records] == [c["caption"] for c in captions]
    assert [(Path(r.source).name, r.line) for r in records[:4]] == [("00000.tar", 1), ("00000.tar", 2), ("00000.tar", 3), ("00001.tar", 1)]
    image = records[0].images[0]
    assert isinstance(image, TarMember) and image.name == "000001.png"
    assert image.read_bytes() == (world / "images" / "000001.png").read_bytes()
    assert str(image).endswith("00000.tar#000001.png")
    # the dataset reads lazily and gives the same records
    dataset = load_source({"type": "wds", "path": str(world / "shards")})
    assert len(dataset) == N and dataset[5].messages == records[5].messages


def test_text_only_sources(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
        {"instruction": "Translate.", "input": "chat", "output": "cat"},
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"},
                      {"role": "assistant", "content": "a"}]},
        {"image": "x.png", "conversations": [{"from": "human", "value": "<image>Hi"}, {"from": "gpt", "value": "Yo"}]},
    ]
    path = _write_jsonl(tmp_path / "text.jsonl", rows)
    a, b, c, d, bad = iter_entries(path, "text")
    assert a.images == [] and a.task == "text"
    assert b.messages[0]["content"] == [{"type": "text", "text": "Add 2 and 3."}]
    assert c.messages[0]["content"] == [{"type": "text", "text": "Translate.\n\nchat"}]
    assert [m["role"] for m in d.messages] == ["system", "user", "assistant"]
    assert isinstance(bad, Problem) and "source type is 'text'" in bad.message
    assert detect_type(_write_jsonl(tmp_path / "alpaca.jsonl", rows[1:2])) == "text"


def test_record_problems():
    def rec(*turns):
        return Record("x", [{"role": r, "content": [{"type": "text", "text": t}]} for r, t in turns])

    assert record_problems(rec(("system", "s"), ("user", "q"), ("assistant", "a"))) == []
    assert record_problems(rec(("assistant", "a"), ("user", "q"))) == [
        "turn 1 (gpt): turns must start with a human turn",
        "the conversation ends with a human turn (no reply to learn)",
    ]
    assert record_problems(rec(("user", "q"), ("user", "q2"), ("assistant", "a"))) == [
        "turn 2 (human): turns must alternate human/gpt"]
    assert record_problems(rec(("user", "q"), ("assistant", "  "))) == ["turn 2 (gpt) is empty"]
    assert record_problems(rec(("user", "q"), ("assistant", "a"), ("system", "s"), ("user", "q"), ("assistant", "a"))) == [
        "turn 3: a system turn after the conversation started"]
    image_only = Record("y", [{"role": "user", "content": [{"type": "image", "image": "a"}]},
                              {"role": "assistant", "content": [{"type": "text", "text": "cap"}]}])
    assert record_problems(image_only) == []


# -- mixtures -----------------------------------------------------------------------------------


def test_mixture_weights_and_determinism(world):
    sources = [
        {"type": "llava", "path": str(world / "instruct.json"), "weight": 2, "name": "instruct"},
        {"type": "captions", "path": str(world / "captions.jsonl"), "weight": 0.5, "name": "captions"},
        {"type": "wds", "path": str(world / "shards"), "weight": 0},
    ]
    ds = build_dataset(sources, seed=7)
    assert isinstance(ds, MixtureDataset) and ds.counts == [2 * N, N // 2, 0] and len(ds) == 2 * N + N // 2
    picks = Counter(ds.source_of(i) for i in range(len(ds)))
    assert all(picks[(0, j)] == 2 for j in range(N))  # weight 2: every record exactly twice
    half = [j for (s, j) in picks if s == 1]
    assert len(half) == N // 2 == len(set(half))  # weight 0.5: a random half, no repeats
    assert "captions: 8 records x weight 0.5 -> 4 samples per epoch" in ds.summary()

    def order(d):
        return [(r.source, r.line) for r in (d[i] for i in range(len(d)))]

    assert order(ds) == order(build_dataset(sources, seed=7))
    assert order(ds) != order(build_dataset(sources, seed=8))
    first = order(ds)
    ds.set_epoch(1)
    assert len(ds) == len(first) and order(ds) != first and sorted(order(ds)) != sorted(first)  # new half, new order
    ds.set_epoch(0)
    assert order(ds) == first
    plain = build_dataset(sources[:1], seed=7, shuffle=False)
    assert [r.id for r in (plain[i] for i in range(N))] == [f"{i + 1:06d}" for i in range(N)]
    # rounding: round(weight * N)
    assert MixtureDataset([RecordDataset([None] * 5)], [0.5], 0).counts == [3]
    assert MixtureDataset([RecordDataset([None] * 5)], [1.3], 0).counts == [7]


def test_a_source_can_keep_some_tasks_only(world):
    """``tasks``: the same mixed file twice, once whole and once with one task at a weight of
    its own, raises that task's share; a list matching nothing, a bad value and shards are
    one-line errors."""
    path = str(world / "instruct.json")
    rows = json.loads((world / "instruct.json").read_text())
    wanted = rows[0]["task"]
    n_wanted = sum(r["task"] == wanted for r in rows)
    ds = build_dataset([{"type": "llava", "path": path},
                        {"type": "llava", "path": path, "tasks": [wanted], "weight": 2, "name": "boost"}], seed=0)
    assert ds.counts == [len(rows), 2 * n_wanted]
    boosted = [ds[i] for i in range(len(ds)) if ds.source_of(i)[0] == 1]
    assert boosted and all(r.task == wanted for r in boosted)
    assert len(build_dataset([{"type": "llava", "path": path, "tasks": wanted}], seed=0)) == n_wanted
    with pytest.raises(ConfigError, match=r"no row has a task in spelling; its tasks are: .*" + wanted):
        build_dataset([{"type": "llava", "path": path, "tasks": ["spelling"]}], seed=0)
    with pytest.raises(ConfigError, match="'tasks' must be a list of task names"):
        build_dataset([{"type": "llava", "path": path, "tasks": [3]}], seed=0)
    with pytest.raises(ConfigError, match="webdataset shards do not have"):
        build_dataset([{"type": "wds", "path": str(world / "shards"), "tasks": ["caption"]}], seed=0)


def test_build_dataset_errors(tmp_path, world, caplog):
    rows = [
        {"image": "images/a.png", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"conversations": [{"from": "gpt", "value": "a"}]},
    ]
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(InputError, match=rf"d\.jsonl:2: .*start with a human turn.*owl data check"):
        build_dataset([{"type": "llava", "path": str(path)}], seed=0)
    ds = build_dataset([{"type": "llava", "path": str(path), "on_error": "skip"}], seed=0)
    assert len(ds) == 1 and "skipped 1 malformed row" in caplog.text
    with pytest.raises(ConfigError, match="unknown data source key"):
        build_dataset([{"path": str(path), "wieght": 2}], seed=0)
    with pytest.raises(ConfigError, match=">= 0"):
        build_dataset([{"type": "llava", "path": str(path), "weight": -1, "on_error": "skip"}], seed=0)
    with pytest.raises(ConfigError, match="unknown data source type"):
        build_dataset([{"type": "parquet", "path": str(path)}], seed=0)
    with pytest.raises(InputError, match="no such file"):
        build_dataset([{"type": "llava", "path": str(tmp_path / "missing.json")}], seed=0)
    with pytest.raises(ConfigError, match="empty"):
        build_dataset([{"path": str(world / "captions.jsonl"), "weight": 0}], seed=0)


# -- owl data check ----------------------------------------------------------------------------------


def test_data_check_clean_world(world, capsys):
    code = main(["data", "check", str(world / "instruct.json"), str(world / "captions.jsonl"), str(world / "shards")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.strip() == f"checked {3 * N} rows in 3 files: no problems"


def test_data_check_reports_problems(tmp_path, world, tok_dir, capsys):
    shutil.copytree(world / "images", tmp_path / "images")
    (tmp_path / "images" / "000002.png").unlink()
    rows = [
        {"id": "ok", "image": "images/000001.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A thing."}]},
        {"id": "missing", "image": "images/000002.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A thing."}]},
        {"id": "count", "image": "images/000001.png", "conversations": [
            {"from": "human", "value": "<image><image>What?"}, {"from": "gpt", "value": "A thing."}]},
        {"id": "order", "conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "hello"}]},
        {"id": "empty", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": ""}]},
        "[broken",
    ]
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    code = main(["data", "check", str(path)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert lines[0] == f"{path}:2: image file not found: {tmp_path / 'images' / '000002.png'}"
    assert lines[1].startswith(f"{path}:3: 2 image placeholder(s) but 1 image(s)")
    assert lines[2] == f"{path}:4: turn 1 (gpt): turns must start with a human turn"
    assert lines[3] == f"{path}:4: the conversation ends with a human turn (no reply to learn)"
    assert lines[4] == f"{path}:5: turn 2 (gpt) is empty"
    assert lines[5].startswith(f"{path}:6: invalid JSON")
    assert lines[-1].startswith("checked 6 rows in 1 file: 6 problem(s) in 5 row(s) (")
    # --limit, --type, a missing image root
    code = main(["data", "check", str(path), "--type", "llava", "--limit", "2", "--image-root", str(tmp_path / "none")])
    out = capsys.readouterr().out.splitlines()
    assert code == 1 and len(out) == 4 and out[2].startswith("... 5 more problem(s)")
    # --decode-images finds files that exist but are no images
    (tmp_path / "images" / "000003.png").write_bytes(b"garbage")
    one = _write_jsonl(tmp_path / "one.jsonl", [{"image": "images/000003.png", "caption": "x"}])
    assert main(["data", "check", str(one)]) == 0
    capsys.readouterr()
    assert main(["data", "check", str(one), "--decode-images"]) == 1
    assert "one.jsonl:1: unreadable image" in capsys.readouterr().out
    # over-long samples with a tokenizer
    code = main(["data", "check", str(world / "instruct.json"), "--tokenizer", str(tok_dir), "--max-length", "20",
                 "--tokens-per-image", "5"])
    out = capsys.readouterr().out
    assert code == 1 and "over --max-length 20" in out and "over max length" in out.splitlines()[-1]
    assert main(["data", "check", str(world / "instruct.json"), "--tokenizer", str(tok_dir), "--max-length", "2000"]) == 0
    capsys.readouterr()
    # usage errors exit 2 with one line
    assert main(["data", "check", str(path), "--max-length", "20"]) == 2
    assert main(["data", "check", str(tmp_path / "nope.jsonl"), "--type", "llava"]) == 2
    assert "no such file" in capsys.readouterr().err


# -- shards: corruption ------------------------------------------------------------------------------


def test_corrupt_shards(tmp_path, world, tok, capsys):
    good = world / "shards" / "00000.tar"
    data = good.read_bytes()
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(data[: len(data) // 2])
    samples, problem = index_shard(str(truncated))
    assert problem is not None and "corrupt webdataset shard" in str(problem) and str(truncated) in str(problem)
    garbage = tmp_path / "garbage.tar"
    end = index_shard(str(good))[0][1].members["json"]  # cut after sample 2, then junk
    garbage.write_bytes(data[: end[0] + 512 * math.ceil(end[1] / 512)] + b"\x07junk" * 400)
    samples, problem = index_shard(str(garbage))
    assert [s.key for s in samples] == ["000001", "000002"] and "unreadable data" in problem.message
    not_tar = tmp_path / "text.tar"
    not_tar.write_text("hello")
    assert "corrupt webdataset shard" in index_shard(str(not_tar))[1].message
    assert index_shard(str(good))[1] is None

    with pytest.raises(InputError, match=r"garbage\.tar: corrupt webdataset shard"):
        build_dataset([{"type": "wds", "path": str(garbage)}], seed=0)
    ds = build_dataset([{"type": "wds", "path": [str(garbage), str(good)], "on_error": "skip"}], seed=0)
    assert len(ds) == 2 + 3
    assert main(["data", "check", str(truncated), str(good)]) == 1
    out = capsys.readouterr().out
    assert f"{truncated}: corrupt webdataset shard" in out

    # a shard damaged after indexing: the collator names the shard
    copy = tmp_path / "copy.tar"
    copy.write_bytes(data)
    record = load_source({"type": "wds", "path": str(copy)})[2]
    copy.write_bytes(data[:1024])
    collator = OwlCollator(tok, OwlImageProcessor(56), 2, 256, on_bad_image="stop", tokens_per_image=5)
    with pytest.raises(InputError, match=r"copy\.tar:3 \(id 000003\): bad image \(.*copy\.tar: corrupt webdataset shard"):
        collator([record])



# -- collator -------------------------------------------------------------------------------------


def _record(tmp_path, *turns, images=(), rid="r", line=1):
    messages = []
    for i, (role, text) in enumerate(turns):
        content = [{"type": "image", "image": p} for p in (images if i == 0 else ())]
        messages.append({"role": role, "content": content + [{"type": "text", "text": text}]})
    return Record(rid, messages, list(images), str(tmp_path / "data.jsonl"), line, None)


def test_collator_labels_exact(tmp_path, tok):
    img = str(_png(tmp_path / "a.png"))
    rec = _record(tmp_path, ("user", "What is in the picture?"), ("assistant", "A red cat."),
                  ("user", "Is it on a mat?"), ("assistant", "Yes, the cat sits on a mat."), images=[img])
    for version, template in ((2, None), (2, "vicuna_v1"), (1, None)):
        collator = OwlCollator(tok, OwlImageProcessor(56, generation=version), version, 512, template=template,
                               tokens_per_image=5)
        batch = collator([rec])
        ex = build_training_example(rec.messages, version, tok, template=template)
        assert batch["input_ids"][0].tolist() == ex.input_ids and batch["labels"][0].tolist() == ex.labels
        ids, labels = ex.input_ids, ex.labels
        assert ids[0] == tok.bos_token_id and labels[0] == IGNORE_INDEX and ids.count(-200) == 1
        assert labels[ids.index(-200)] == IGNORE_INDEX
        assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(ids, labels))
        # supervised: exactly the two replies, each followed by EOS
        runs, cur = [], []
        for t, lab in zip(ids, labels):
            if lab == IGNORE_INDEX:
                if cur:
                    runs.append(cur)
                cur = []
            else:
                cur.append(t)
        runs.append(cur) if cur else None
        assert [tok.decode(r) for r in runs] == ["A red cat.</s>", "Yes, the cat sits on a mat.</s>"], version
        assert batch["pixel_values"].shape == (1, 3, 56, 56)
        assert torch.equal(batch["pixel_values"][0], OwlImageProcessor(56, generation=version)([img])[0])
    # the prompt part of v2 is masked up to and including "ASSISTANT:"
    ex = build_training_example(rec.messages, 2, tok)
    first = next(i for i, lab in enumerate(ex.labels) if lab != IGNORE_INDEX)
    assert tok.decode(ex.input_ids[1:first]).endswith("ASSISTANT:")


def test_a_distilled_source_marks_its_rows_in_the_batch(world, tok):
    """``distill: true`` marks the source's records; the collator gives the batch a ``distill``
    row flag (absent when no row distils); shards carry it too; a non-boolean is an error."""
    path = str(world / "instruct.json")
    ds = build_dataset([{"type": "llava", "path": path, "name": "plain"},
                        {"type": "llava", "path": path, "distill": True, "name": "distilled"}], seed=0)
    records = [ds[i] for i in range(len(ds))]
    assert [r.distill for r in records] == [ds.source_of(i)[0] == 1 for i in range(len(ds))]
    collator = OwlCollator(tok, OwlImageProcessor(56, generation=2), 2, 512, tokens_per_image=5)
    batch = collator(records[:6])
    assert batch["distill"].tolist() == [r.distill for r in records[:6]]
    plain = [r for r in records if not r.distill][:3]
    assert "distill" not in collator(plain)
    shards = build_dataset([{"type": "wds", "path": str(world / "shards"), "distill": True}], seed=0)
    assert shards[0].distill
    with pytest.raises(ConfigError, match="'distill' must be true or false"):
        build_dataset([{"type": "llava", "path": path, "distill": 1}], seed=0)


def test_collator_padding_and_images(tmp_path, tok):
    a, b, c = (str(_png(tmp_path / f"{n}.png", colour)) for n, colour in (("a", (255, 0, 0)), ("b", (0, 255, 0)), ("c", (0, 0, 255))))
    recs = [
        _record(tmp_path, ("user", "Compare."), ("assistant", "They differ in colour."), images=[a, b], rid="two"),
        _record(tmp_path, ("user", "What is 3 plus 4?"), ("assistant", "7"), rid="text"),
        _record(tmp_path, ("user", "Colour?"), ("assistant", "blue"), images=[c], rid="one"),
    ]
    proc = OwlImageProcessor(56, generation=2)
    collator = OwlCollator(tok, proc, 2, 512, tokens_per_image=5)
    batch = collator(recs)
    exs = [build_training_example(r.messages, 2, tok) for r in recs]
    length = max(len(e.input_ids) for e in exs)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, length)
    for row, ex in enumerate(exs):
        n = len(ex.input_ids)
        assert batch["input_ids"][row, :n].tolist() == ex.input_ids
        assert batch["input_ids"][row, n:].tolist() == [tok.unk_token_id] * (length - n)  # pad = <unk> (0)
        assert batch["labels"][row, n:].tolist() == [IGNORE_INDEX] * (length - n)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (length - n)
    assert batch["num_images"].tolist() == [2, 0, 1] and batch["num_skipped"] == 0
    assert torch.equal(batch["pixel_values"], proc([a, b, c]))  # all images, in order, no dummy
    assert collator([recs[1]])["pixel_values"] is None
    # pad_to_multiple_of, explicit pad id, placeholder id of the tokenizer
    default = batch["input_ids"]
    image_id = next(i for i in range(len(tok) - 1, 2, -1) if not bool((default == i).any()))
    batch = OwlCollator(tok, proc, 2, 512, tokens_per_image=5, pad_to_multiple_of=16, pad_token_id=2,
                        image_token_id=image_id)(recs)
    assert batch["input_ids"].shape[1] % 16 == 0 and batch["input_ids"][1, -1] == 2
    assert torch.equal(batch["input_ids"][:, :length] == image_id, default == -200)


def test_collator_truncation_never_cuts_an_image(tmp_path, tok):
    a, b = str(_png(tmp_path / "a.png")), str(_png(tmp_path / "b.png"))
    rec = Record("t", [
        {"role": "user", "content": [{"type": "image", "image": a}, {"type": "text", "text": "First?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {"role": "user", "content": [{"type": "image", "image": b}, {"type": "text", "text": "Second?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "blue"}]},
    ], [a, b], "mem", 1)
    tpi = 5
    full = build_training_example(rec.messages, 2, tok)
    second = [i for i, t in enumerate(full.input_ids) if t == -200][1]
    positions_before = second + (tpi - 1)  # expanded positions before the second image
    proc = OwlImageProcessor(56)
    for max_length in range(positions_before, positions_before + tpi + 2):
        batch = OwlCollator(tok, proc, 2, max_length, tokens_per_image=tpi)([rec])
        ids = batch["input_ids"][0].tolist()
        n_img = ids.count(-200)
        assert len(ids) + n_img * (tpi - 1) <= max_length  # images counted whole
        if max_length < positions_before + tpi:  # the second image does not fit: dropped with what follows
            assert ids == full.input_ids[:second] and n_img == 1
        else:
            assert ids == full.input_ids[: max_length - 2 * (tpi - 1)] and n_img == 2
        assert batch["pixel_values"].shape[0] == n_img == batch["num_images"].item()
    # a sample whose replies are cut away entirely is dropped, and counted
    batch = OwlCollator(tok, proc, 2, 12, tokens_per_image=tpi)([rec])
    assert batch["num_unsupervised"] == 1 and batch["input_ids"].shape == (0, 0) and batch["pixel_values"] is None


def test_augmentation(tmp_path, tok):
    img = str(_png(tmp_path / "grad.png", size=(64, 48)))
    arr = np.zeros((48, 64, 3), dtype=np.uint8)
    arr[..., 0] = np.arange(64, dtype=np.uint8)[None, :] * 4  # a left-to-right ramp
    arr[..., 1] = np.arange(48, dtype=np.uint8)[:, None] * 5
    Image.fromarray(arr).save(img)
    rec = _record(tmp_path, ("user", "Describe."), ("assistant", "a ramp"), images=[img])
    proc = OwlImageProcessor(56)

    def pixels(**kw):
        collator = OwlCollator(tok, proc, 2, 512, tokens_per_image=5, **kw)
        return [collator([rec])["pixel_values"][0] for _ in range(4)]

    plain = pixels()
    assert all(torch.equal(p, plain[0]) for p in plain)  # off: deterministic preprocessing
    aug = pixels(augment=True, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(aug, pixels(augment=True, seed=1)))  # seeded
    assert not all(torch.equal(x, y) for x, y in zip(aug, pixels(augment=True, seed=2)))
    assert len({p.numpy().tobytes() for p in aug}) == 4 and all(not torch.equal(p, plain[0]) for p in aug)
    assert aug[0].shape == (3, 56, 56)
    collator = OwlCollator(tok, proc, 2, 512, tokens_per_image=5, augment=True, seed=1)
    collator.reseed(7)
    first = collator([rec])["pixel_values"][0]
    collator([rec])  # the stream moves on...
    collator.reseed(7)  # ...and a reseed (as the trainer does per batch) replays it exactly
    assert torch.equal(collator([rec])["pixel_values"][0], first)
    # crop statistics: area fraction in [0.5, 1], aspect in [3/4, 4/3]; flips half the time
    rng = random.Random(0)
    for _ in range(200):
        top, left, h, w = crop_params(64, 48, rng)
        assert 0 <= top <= 48 - h and 0 <= left <= 64 - w
        assert 0.5 - 0.05 <= (h * w) / (64 * 48) <= 1.0 and 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    base = Image.fromarray(arr)
    flips = sum(random_hflip(base, rng).tobytes() != base.tobytes() for _ in range(400))
    assert 160 < flips < 240
    out = augment_image(base, 56, random.Random(5))
    assert out.size == (56, 56) and out.mode == "RGB"


def test_bad_images(tmp_path, tok):
    good = str(_png(tmp_path / "good.png"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    recs = [
        _record(tmp_path, ("user", "A?"), ("assistant", "a"), images=[good], rid="ok", line=1),
        _record(tmp_path, ("user", "B?"), ("assistant", "b"), images=[str(tmp_path / "missing.png")], rid="gone", line=2),
        _record(tmp_path, ("user", "C?"), ("assistant", "c"), images=[str(broken)], rid="bad", line=3),
        _record(tmp_path, ("user", "D?"), ("assistant", "d"), rid="text", line=4),
    ]
    proc = OwlImageProcessor(56)
    collator = OwlCollator(tok, proc, 2, 512, tokens_per_image=5)
    batch = collator(recs)
    assert batch["num_skipped"] == 2 and batch["input_ids"].shape[0] == 2 and batch["num_images"].tolist() == [1, 0]
    assert collator.total_skipped == 2
    stop = OwlCollator(tok, proc, 2, 512, on_bad_image="stop", tokens_per_image=5)
    with pytest.raises(InputError, match=r"data\.jsonl:2 \(id gone\): bad image \(.*missing\.png: no such file\)"):
        stop(recs)
    with pytest.raises(InputError, match=r"data\.jsonl:3 \(id bad\): bad image \(.*broken\.png"):
        stop([recs[0], recs[2]])
    with pytest.raises(InputError, match="on_bad_image"):
        OwlCollator(tok, proc, 2, 512, on_bad_image="ignore")


def test_dataloader_and_tiny_model_loss(world, tok):
    from helpers import tiny_model
    from torch.utils.data import DataLoader

    model = tiny_model("test-owl2", text_config__vocab_size=len(tok))
    config = model.config
    ds = build_dataset([
        {"type": "llava", "path": str(world / "instruct.json")},
        {"type": "wds", "path": str(world / "shards"), "weight": 0.5},
    ], seed=0)
    proc = OwlImageProcessor(config.vision_config.image_size, generation=2)
    collator = OwlCollator(tok, proc, config.owl_version, 128, augment=True, tokens_per_image=config.tokens_per_image)
    loader = DataLoader(ds, batch_size=4, collate_fn=collator)
    batch = next(iter(loader))
    assert batch["input_ids"].shape[0] == 4 and batch["pixel_values"] is not None
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                pixel_values=batch["pixel_values"])
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    # mPLUG-Owl (v1) with its template
    model1 = tiny_model("test-owl1", text_config__vocab_size=len(tok))
    collator1 = OwlCollator(tok, OwlImageProcessor(56, generation=1), 1, 256, tokens_per_image=model1.config.tokens_per_image)
    batch = collator1([ds[i] for i in range(4)])
    out = model1(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values")})
    assert torch.isfinite(out.loss)


def test_length_hints_describe_the_epochs_items_without_reading_images(world):
    from owlkit.data.datasets import CHARS_PER_TOKEN, _text_chars

    sources = [
        {"type": "llava", "path": str(world / "instruct.json")},
        {"type": "captions", "path": str(world / "captions.jsonl"), "weight": 0.5},
        {"type": "wds", "path": str(world / "shards"), "prompt": "Describe."},
    ]
    ds = build_dataset(sources, seed=7)
    hints = ds.length_hints(1, tokens_per_image=17)
    assert ds.epoch == 0 and len(hints) == len(ds)  # the current epoch is untouched
    ds.set_epoch(1)
    for i in range(len(ds)):
        record = ds[i]
        exact = _text_chars(record) // CHARS_PER_TOKEN + 17 * len(record.images)
        if ds.source_of(i)[0] < 2:
            assert hints[i] == exact
        else:  # shards: the caption's size in bytes from the tar index
            assert abs(int(hints[i]) - exact) <= 1


@pytest.mark.parametrize("layout", ["jsonl", "array"])
def test_a_non_utf8_byte_is_reported_on_its_line_and_can_be_skipped(tmp_path, layout, caplog):
    rows = [{"id": str(i), "conversations": [{"from": "human", "value": f"question {i}"},
                                            {"from": "gpt", "value": "caf\u00e9"}]} for i in range(3)]
    if layout == "jsonl":
        text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"
    else:
        text = "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n]\n"
    raw = text.encode("utf-8")
    second = raw.index(b'"question 1"')
    line = raw[:second].count(b"\n") + 1
    raw = raw.replace("caf\u00e9".encode(), b"caf\xe9", 2)[: len(raw)]  # latin-1 in rows 0 and 1
    raw = raw.replace(b"caf\xe9", "caf\u00e9".encode(), 1)  # row 0 back to UTF-8: only row 1 is bad
    path = tmp_path / f"d.{'jsonl' if layout == 'jsonl' else 'json'}"
    path.write_bytes(raw)
    with pytest.raises(InputError, match=rf"d\.jsonl?:{line}: not UTF-8 text \(byte 0xe9 at column \d+\)"):
        build_dataset([{"type": "llava", "path": str(path)}], seed=0)
    ds = build_dataset([{"type": "llava", "path": str(path), "on_error": "skip"}], seed=0)
    assert len(ds) == 2 and "skipped 1 malformed row" in caplog.text
    assert build_dataset([{"path": str(path), "on_error": "skip"}], seed=0).names  # type still detected


def test_a_turn_without_value_is_named_as_such(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "text": "a"}]}]
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(InputError, match=r"d\.jsonl:1: turn 2 \(gpt\) has no 'value' field"):
        build_dataset([{"type": "llava", "path": str(path)}], seed=0)
