"""Templates, tokenizer and labels on a tiny LLaMA-style SentencePiece model trained here."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from owlkit.config import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from owlkit.errors import CheckpointError, InputError
from owlkit.processing.labels import build_training_example
from owlkit.processing.templates import (
    MPLUG_OWL2_SYSTEM,
    V1_SYSTEM,
    VICUNA_V1_SYSTEM,
    default_template,
    get_template,
    render,
)
from owlkit.processing.tokenizer import OwlTokenizer, encode_prompt, load_tokenizer, placeholder_id

spm = pytest.importorskip("sentencepiece")

WORDS = (
    "the quick brown fox jumps over lazy dog image picture describe what is in this photo a an "
    "assistant user human answer question red green blue cat sits on mat hello world owl model"
).split()


def _corpus() -> list[str]:
    rnd = random.Random(0)
    lines = []
    for i in range(500):
        words = [rnd.choice(WORDS) for _ in range(rnd.randint(3, 12))]
        lines.append(" ".join(words) + rnd.choice([".", "?", "!", ":", ""]) + (" 2024" if i % 7 == 0 else ""))
    lines += [V1_SYSTEM, VICUNA_V1_SYSTEM, "USER: hello ASSISTANT: hi", "Human: what\nAI: yes"] * 20
    return lines


def _train(folder: Path, **extra) -> Path:
    """A LLaMA-like SentencePiece BPE model: unk 0, bos 1, eos 2, byte fallback, no normalisation."""
    from owlkit.processing.tokenizer_training import train_sentencepiece

    train_sentencepiece(_corpus(), folder, 420, image_token=False, **extra)
    return folder / "tokenizer.model"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_tokenizer")
    _train(folder)
    (folder / "tokenizer_config.json").write_text(
        json.dumps({
            "add_bos_token": True,
            "add_eos_token": False,
            "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False, "rstrip": False},
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "tokenizer_class": "LlamaTokenizer",
        })
    )
    return folder


@pytest.fixture(scope="session")
def tok(tiny_dir) -> OwlTokenizer:
    return OwlTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def sp(tiny_dir):
    return spm.SentencePieceProcessor(model_file=str(tiny_dir / "tokenizer.model"))


# -- templates (byte-exact) --------------------------------------------------------------------


def _user(*parts):
    return {"role": "user", "content": list(parts)}


def _text(t):
    return {"type": "text", "text": t}



def test_a_trained_tokenizer_does_not_depend_on_its_folder(tmp_path):
    """The same text gives the same tokenizer.model bytes in any folder, and the file names none
    (SentencePiece would store its model_prefix path; a rebuilt bundled model must be bit-identical)."""
    a = _train(tmp_path / "a")
    b = _train(tmp_path / "deeper" / "b")
    assert a.read_bytes() == b.read_bytes()
    assert b"deeper" not in b.read_bytes() and str(tmp_path).encode() not in a.read_bytes()
    assert sorted(p.name for p in a.parent.iterdir()) == ["tokenizer.model"]

def test_v1_template_exact():
    messages = [
        _user({"type": "image", "image": "a.jpg"}, _text("What is this?")),
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "And now?"},
    ]
    prompt, images = render(messages, "mplug_owl")
    assert prompt == (
        "The following is a conversation between a curious human and AI assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions.\n"
        "Human: <image>\nHuman: What is this?\nAI: A cat.\nHuman: And now?\nAI: "
    )
    assert images == ["a.jpg"]
    # several images: each its own line, in order; a system message replaces the system line
    prompt, images = render(
        [{"role": "system", "content": "SYS"}, _user(_text("Compare"), {"type": "image"}, {"type": "image", "image": 7})],
        "mplug_owl",
    )
    assert prompt == "SYS\nHuman: <image>\nHuman: <image>\nHuman: Compare\nAI: "
    assert images == [None, 7]
    # complete conversation for training, no generation prompt
    prompt, _ = render(messages[:2], "mplug_owl", add_generation_prompt=False)
    assert prompt.endswith("Human: What is this?\nAI: A cat.")


def test_v2_template_exact():
    first = _user({"type": "image_url", "image_url": {"url": "file:///x.png"}}, _text("Describe it."))
    prompt, images = render([first])
    assert prompt == "USER: <|image|>Describe it. ASSISTANT:"
    assert images == ["file:///x.png"]
    conversation = [first, {"role": "assistant", "content": "A dog."}, {"role": "user", "content": "Color?"}]
    prompt, _ = render(conversation, "mplug_owl2")
    assert prompt == "USER: <|image|>Describe it. ASSISTANT: A dog.</s>USER: Color? ASSISTANT:"
    prompt, _ = render(conversation, "vicuna_v1")
    assert prompt == VICUNA_V1_SYSTEM + " USER: <|image|>Describe it. ASSISTANT: A dog.</s>USER: Color? ASSISTANT:"
    assert get_template("mplug_owl2").system == MPLUG_OWL2_SYSTEM  # defined, never emitted
    prompt, _ = render(conversation[:2], add_generation_prompt=False)
    assert prompt == "USER: <|image|>Describe it. ASSISTANT: A dog.</s>"
    # images of a later turn go to the front of that turn; text after an image is stripped
    later = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        _user(_text("  What about this one?  "), {"type": "image", "image": b"png"}, {"type": "image_url", "image_url": "u"}),
    ]
    prompt, images = render(later)
    assert prompt == "USER: Hi ASSISTANT: Hello</s>USER: <|image|><|image|>What about this one? ASSISTANT:"
    assert images == [b"png", "u"]
    # a system message with mplug_owl2 is emitted like vicuna_v1's
    prompt, _ = render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"}])
    assert prompt == "Be brief. USER: Q ASSISTANT:"
    # the official training layout: image then newline
    prompt, _ = render([first], image_separator="\n")
    assert prompt == "USER: <|image|>\nDescribe it. ASSISTANT:"


def test_render_message_forms():
    # official-style strings with literal placeholders, LLaVA-style records, merged same-role turns
    prompt, images = render([{"role": "user", "content": "<|image|>\nWhat is it?"}])
    assert prompt == "USER: <|image|>What is it? ASSISTANT:" and images == [None]
    prompt, images = render([{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Yo"}], "mplug_owl")
    assert prompt == V1_SYSTEM + "\nHuman: <image>\nHuman: Hi\nAI: Yo"  # ends with a reply: no prompt added
    assert images == [None]
    prompt, _ = render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert prompt == "USER: a\nb ASSISTANT:"
    # a pending (empty) assistant message is the generation prompt
    prompt, _ = render([{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}], add_generation_prompt=False)
    assert prompt == "USER: q ASSISTANT:"
    prompt, _ = render([{"role": "user", "content": "q"}], "mplug_owl", add_generation_prompt=False)
    assert prompt == V1_SYSTEM + "\nHuman: q"
    assert default_template(1) == "mplug_owl" and default_template("v2") == "mplug_owl2"


def test_render_errors():
    with pytest.raises(InputError, match="start with a user"):
        render([{"role": "assistant", "content": "hi"}])
    with pytest.raises(InputError, match="unknown role"):
        render([{"role": "robot", "content": "hi"}])
    with pytest.raises(InputError, match="unsupported content type"):
        render([_user({"type": "audio"})])
    with pytest.raises(InputError, match="before every"):
        render([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}])
    with pytest.raises(InputError, match="no user message"):
        render([])
    with pytest.raises(InputError, match="unknown conversation template"):
        render([{"role": "user", "content": "a"}], "chatml")
    with pytest.raises(InputError, match="empty in the middle"):
        render([{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}, {"role": "user", "content": "b"}])
    with pytest.raises(InputError, match="list"):
        render("USER: hi")


# -- tokenizer -----------------------------------------------------------------------------------

TEXTS = ["hello world", "The quick brown fox.", "  two  spaces ", "line\nbreak", "digits 2024 and é ü 日本", "?!"]


def test_encode_matches_sentencepiece_and_round_trips(tok, sp):
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.add_bos_token) == (1, 2, 0, True)
    assert tok.backend == "sentencepiece" and len(tok) == sp.get_piece_size()
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == sp.encode(text)
        assert tok.decode(ids) == text
        assert tok.encode(text, add_special_tokens=True) == [1] + ids
        assert tok(text)["input_ids"] == [1] + ids


def test_special_tokens_in_text(tok, sp):
    # each piece between special tokens gets its own dummy prefix (slow LLaMA, legacy)
    assert tok.encode("a cat</s>USER: hi") == sp.encode("a cat") + [2] + sp.encode("USER: hi")
    assert tok.encode("<s>x") == [1] + sp.encode("x")
    assert tok.encode("</s></s>") == [2, 2]
    ids = tok.encode("a cat</s>USER: hi")
    assert tok.decode(ids) == "a cat</s>USER: hi"
    assert tok.decode(ids, skip_special_tokens=True) == "a cat USER: hi"  # pieces decoded together
    assert tok.decode([1, -200] + sp.encode("hi"), skip_special_tokens=True) == "hi"


def test_add_bos_token_false_and_added_tokens(tmp_path, tiny_dir, sp):
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes((tiny_dir / "tokenizer.model").read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False, "pad_token": "<unk>"}))
    (folder / "added_tokens.json").write_text(json.dumps({"<|image|>": 420}))
    tok2 = load_tokenizer(folder)
    assert tok2.add_bos_token is False and tok2.pad_token_id == 0
    assert tok2.encode("hi", add_special_tokens=True) == sp.encode("hi")
    assert tok2.image_token_id == 420 == placeholder_id(tok2) and len(tok2) == 421
    assert tok2.encode("a<|image|>b") == sp.encode("a") + [420] + sp.encode("b")
    assert "<|image|>" in tok2.decode(tok2.encode("a<|image|>b"))
    # v2 without add_bos_token: no BOS at all (as the official code); v1 always starts with BOS
    assert encode_prompt("USER: hi", 2, tok2) == sp.encode("USER: hi")
    assert encode_prompt("Human: hi", 1, tok2)[0] == 1


def test_image_token_as_user_defined_symbol(tmp_path):
    model = _train(tmp_path / "uds", user_defined_symbols=["<|image|>"])
    tok3 = OwlTokenizer.from_sentencepiece(model)
    image_id = tok3.image_token_id
    assert image_id is not None and image_id > 2 and placeholder_id(tok3) == image_id
    assert encode_prompt("USER: <|image|>hi", 2, tok3, image_token_id=image_id).count(image_id) == 1


def test_default_placeholder_id(tok):
    assert tok.image_token_id is None and placeholder_id(tok) == IMAGE_TOKEN_INDEX == -200


def test_v2_tokenizer_image_token(tok, sp):
    prompt = "USER: <|image|>Describe it. ASSISTANT:"
    ids = encode_prompt(prompt, 2, tok)
    assert ids == [1] + sp.encode("USER: ") + [-200] + sp.encode("Describe it. ASSISTANT:")
    # the official function, for comparison: every chunk with BOS, BOS kept once
    chunks = [[1] + sp.encode(c) if c else [] for c in prompt.split("<|image|>")]
    official = [chunks[0][0]] + chunks[0][1:] + [-200] + chunks[1][1:]
    assert ids == official
    # two images, adjacent, and a custom placeholder id
    ids = encode_prompt("USER: <|image|><|image|>x</s>USER: <|image|>y ASSISTANT:", 2, tok, image_token_id=5)
    assert ids == [1] + sp.encode("USER: ") + [5, 5] + sp.encode("x") + [2] + sp.encode("USER: ") + [5] + sp.encode(
        "y ASSISTANT:"
    )
    # quirk 20 fixed: a prompt starting with the image keeps its BOS in front
    assert encode_prompt("<|image|>Describe", 2, tok) == [1, -200] + sp.encode("Describe")  # official: [-200, 1, ...]
    assert encode_prompt("", 2, tok) == [1]


def test_v1_tokenize_prompt(tok, sp):
    prompt = render([_user({"type": "image"}, {"type": "image"}, _text("Compare."))], "mplug_owl").prompt
    ids = encode_prompt(prompt, 1, tok)
    head, _, rest = prompt.partition("<image>")
    middle, _, tail = rest.partition("<image>")
    assert ids == [1] + sp.encode(head) + [-200] + sp.encode(middle) + [-200] + sp.encode(tail)
    assert ids.count(-200) == 2  # one id per image, not 65 x -1
    assert encode_prompt("plain text", 1, tok) == [1] + sp.encode("plain text")
    assert encode_prompt("<image><image>", "v1", tok, image_token_id=-1) == [1, -1, -1]


def test_tokenizer_loading_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no tokenizer.model or tokenizer.json"):
        OwlTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="SentencePiece"):
        OwlTokenizer.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        OwlTokenizer.from_pretrained(tmp_path, backend="tokenizers")


def test_tokenizer_json_backend(tmp_path, tiny_dir, sp):
    """A tokenizer.json made from the same model by transformers' converter encodes the same."""
    transformers = pytest.importorskip("transformers")
    converted = transformers.LlamaTokenizer.from_pretrained(str(tiny_dir), legacy=True)
    out = tmp_path / "fast"
    converted.save_pretrained(str(out))
    assert (out / "tokenizer.json").is_file() and not (out / "tokenizer.model").exists()
    fast = OwlTokenizer.from_pretrained(out)
    assert fast.backend == "tokenizers" and (fast.bos_token_id, fast.eos_token_id) == (1, 2)
    for text in TEXTS[:2] + TEXTS[3:]:
        assert fast.encode(text) == sp.encode(text), text
        assert fast.decode(fast.encode(text)) == text
    assert fast.encode("a cat</s>USER: hi") == sp.encode("a cat") + [2] + sp.encode("USER: hi")
    prompt = "USER: <|image|>Describe it. ASSISTANT: A dog.</s>USER: Color? ASSISTANT:"
    slow = OwlTokenizer.from_pretrained(tiny_dir)
    assert encode_prompt(prompt, 2, fast) == encode_prompt(prompt, 2, slow)
    # with both files the SentencePiece model is used
    (out / "tokenizer.model").write_bytes((tiny_dir / "tokenizer.model").read_bytes())
    assert OwlTokenizer.from_pretrained(out).backend == "sentencepiece"
    assert OwlTokenizer.from_pretrained(out, backend="tokenizers").backend == "tokenizers"


# -- labels ----------------------------------------------------------------------------------------

CONVERSATION = [
    _user({"type": "image", "image": "img.png"}, _text("What is in the picture?")),
    {"role": "assistant", "content": "A red cat."},
    {"role": "user", "content": "Is it on a mat?"},
    {"role": "assistant", "content": "Yes, the cat sits on a mat."},
]


def _official_v2_labels(prompt: str, tok: OwlTokenizer, sp) -> list[int]:
    """mPLUG-Owl2 ``preprocess_v1`` on ``prompt`` (tokenizer_image_token, ``- 2`` arithmetic)."""

    def tokenizer_image_token(text):
        chunks = [[1] + tok.encode(c) if c else [] for c in text.split("<|image|>")]
        ids, offset = [], 0
        if chunks and chunks[0] and chunks[0][0] == 1:
            offset = 1
            ids.append(chunks[0][0])
        separated = []
        for k, chunk in enumerate(chunks):  # insert_separator(chunks, [-200] * (offset + 1))
            if k:
                separated.append([-200] * (offset + 1))
            separated.append(chunk)
        for x in separated:
            ids.extend(x[offset:])
        return ids

    target = tokenizer_image_token(prompt)
    total = len(target)
    cur = 1
    target[:cur] = [IGNORE_INDEX]
    sep = " ASSISTANT: "
    for rou in prompt.split("</s>"):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = len(tokenizer_image_token(rou))
        instruction_len = len(tokenizer_image_token(parts[0])) - 2
        target[cur : cur + instruction_len] = [IGNORE_INDEX] * instruction_len
        cur += round_len
    target[cur:] = [IGNORE_INDEX] * len(target[cur:])
    assert cur == total
    return target


def test_v2_labels_exact(tok, sp):
    example = build_training_example(CONVERSATION, 2, tok)
    prompt = example.prompt
    assert prompt == (
        "USER: <|image|>What is in the picture? ASSISTANT: A red cat.</s>"
        "USER: Is it on a mat? ASSISTANT: Yes, the cat sits on a mat.</s>"
    )
    assert example.input_ids == encode_prompt(prompt, 2, tok)
    assert example.images == ["img.png"]
    # supervised: exactly each reply (with the space before it) and its </s>
    first = len(encode_prompt("USER: <|image|>What is in the picture? ASSISTANT:", 2, tok))
    first_end = len(encode_prompt("USER: <|image|>What is in the picture? ASSISTANT: A red cat.", 2, tok)) + 1
    second = first_end + len(tok.encode("USER: Is it on a mat? ASSISTANT:"))
    second_end = len(example.input_ids)
    expected = [IGNORE_INDEX] * len(example.input_ids)
    expected[first:first_end] = example.input_ids[first:first_end]
    expected[second:second_end] = example.input_ids[second:second_end]
    assert example.labels == expected
    assert example.input_ids[first_end - 1] == 2 and example.input_ids[-1] == 2
    assert tok.decode(example.labels[first:first_end]) == "A red cat.</s>"
    assert -200 in example.input_ids and example.labels[example.input_ids.index(-200)] == IGNORE_INDEX
    # identical to the official preprocess_v1 arithmetic
    assert example.labels == _official_v2_labels(prompt, tok, sp)
    # vicuna_v1 with the training layout, as the official fine-tuning scripts
    official = build_training_example(CONVERSATION, 2, tok, template="vicuna_v1", image_separator="\n")
    assert official.prompt.startswith(VICUNA_V1_SYSTEM + " USER: <|image|>\nWhat is in the picture? ASSISTANT: A red cat.</s>")
    assert official.labels == _official_v2_labels(official.prompt, tok, sp)
    assert official.num_supervised == example.num_supervised


def test_v1_labels_exact(tok, sp):
    example = build_training_example(CONVERSATION, 1, tok)
    assert example.prompt == (
        V1_SYSTEM + "\nHuman: <image>\nHuman: What is in the picture?\nAI: A red cat.\n"
        "Human: Is it on a mat?\nAI: Yes, the cat sits on a mat."
    )
    enc = sp.encode
    chunks = [
        (enc(V1_SYSTEM), 0),
        (enc("\nHuman: "), 0),
        ([-200], 0),
        (enc("\nHuman: "), 0),
        (enc("What is in the picture?\n"), 0),
        (enc("AI: "), 0),
        (enc("A red cat.") + [2], 1),
        (enc("\nHuman: "), 0),
        (enc("Is it on a mat?\n"), 0),
        (enc("AI: "), 0),
        (enc("Yes, the cat sits on a mat.") + [2], 1),
    ]
    ids = [1] + [t for c, _ in chunks for t in c]
    labels = [IGNORE_INDEX] + [t if flag else IGNORE_INDEX for c, flag in chunks for t in c]
    assert example.input_ids == ids
    assert example.labels == labels
    assert example.images == ["img.png"]


def test_labels_truncation_and_errors(tok):
    full = build_training_example(CONVERSATION, 2, tok)
    image_at = full.input_ids.index(-200)
    # an image that does not fit is dropped with everything after it
    cut = build_training_example(CONVERSATION, 2, tok, max_length=image_at + 64, tokens_per_image=65)
    assert cut.input_ids == full.input_ids[:image_at] and cut.images == []
    keep = build_training_example(CONVERSATION, 2, tok, max_length=image_at + 65 + 3, tokens_per_image=65)
    assert keep.input_ids == full.input_ids[: image_at + 4] and keep.images == ["img.png"]
    assert keep.labels == full.labels[: image_at + 4]
    with pytest.raises(InputError, match="end with the assistant"):
        build_training_example(CONVERSATION[:3], 2, tok)
    with pytest.raises(InputError, match="end with the assistant"):
        build_training_example(CONVERSATION[:3] + [{"role": "assistant", "content": ""}], 1, tok)
    with pytest.raises(InputError, match="belongs to"):
        build_training_example(CONVERSATION, 1, tok, template="mplug_owl2")
    with pytest.raises(InputError, match="max_length"):
        build_training_example(CONVERSATION, 2, tok, max_length=0)


def test_text_only_and_custom_placeholder(tok):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    for gen in (1, 2):
        example = build_training_example(messages, gen, tok, image_token_id=7)
        supervised = [x for x in example.labels if x != IGNORE_INDEX]
        assert supervised[-1] == 2 and tok.decode(supervised, skip_special_tokens=True) == "hello"
        assert 7 not in example.input_ids
    example = build_training_example(CONVERSATION, 2, tok, image_token_id=7)
    assert example.input_ids.count(7) == 1 and example.labels[example.input_ids.index(7)] == IGNORE_INDEX
    assert re.search(r"<\|image\|>", example.prompt)


def test_images_only_in_user_messages():
    with pytest.raises(InputError, match="assistant message cannot hold images"):
        render([{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "a"}]}])
