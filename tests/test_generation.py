"""The decoding engine against transformers' ``generate`` (``OwlForCausalLM.generate``) on a tiny model.

Greedy ids must be the same token for token: one row at a time (what ``Owl.chat`` runs), a
continuous batch whose rows come and go (``Owl.generate_batch``), and a lockstep batch
(``owl eval``'s official protocol); with the repetition penalty over the prompt's text and the
new ids, with ``min_new_tokens``, and with stop strings (the reply is the full answer cut before
the first stop string).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from helpers import make_model_folder
from owlkit.generation import Engine, Job
from owlkit.generation.stops import cut_at_stop, reply_stops, strip_special
from owlkit.inference import Owl


@pytest.fixture(scope="module")
def owl(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generation") / "model"
    make_model_folder(folder, "test-owl2", seed=5)
    return Owl.load(folder)


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)


CONVERSATIONS = [
    [{"role": "user", "content": [{"type": "image", "image": _image(0)}, {"type": "text", "text": "what is it"}]}],
    [{"role": "user", "content": "hello there, how are the shapes arranged in the picture"}],
    [{"role": "user", "content": [{"type": "image", "image": _image(1)}, {"type": "image", "image": _image(2)},
                                  {"type": "text", "text": "compare"}]}],
]


class _PromptPenalty(LogitsProcessor):
    """Reference: transformers' repetition penalty with each row's prompt text ids in front."""

    def __init__(self, penalty: float, input_ids, attention_mask, vocab_size: int):
        self.inner = RepetitionPenaltyLogitsProcessor(penalty)
        text = attention_mask.bool() & (input_ids >= 0) & (input_ids < vocab_size)
        fill = input_ids.gather(1, text.long().argmax(1, keepdim=True))
        self.prompt = torch.where(text, input_ids, fill)

    def __call__(self, input_ids, scores):
        return self.inner(torch.cat([self.prompt, input_ids], dim=1), scores)


def _reference(owl, conversations, max_new: int, penalty: float | None = None, min_new: int = 0) -> list[list[int]]:
    """New ids (up to EOS) of ``generate`` on one left-padded batch."""
    batch = owl.processor(conversations)
    tok = owl.processor.tokenizer
    kw = {"max_new_tokens": max_new, "do_sample": False, "pad_token_id": tok.pad_token_id or 0,
          "eos_token_id": tok.eos_token_id, "min_new_tokens": min_new}
    if penalty:
        kw["logits_processor"] = LogitsProcessorList([_PromptPenalty(
            penalty, batch["input_ids"], batch["attention_mask"], owl.model.config.text_config.vocab_size)])
    with torch.inference_mode():
        out = owl.model.generate(**batch, **kw)[:, batch["input_ids"].shape[1]:].tolist()
    return [row[:row.index(tok.eos_token_id)] if tok.eos_token_id in row else row for row in out]


def _jobs(owl, conversations, max_new: int, **settings) -> list[Job]:
    return [Job.from_encoded(owl.processor, *owl.processor.encode(c, reserve=1), max_new_tokens=max_new,
                             dtype=owl.model.dtype, **settings) for c in conversations]


@pytest.mark.parametrize("penalty", [None, 1.3])
def test_engine_rows_equal_generate_one_by_one(owl, penalty):
    expected = [_reference(owl, [c], 9, penalty)[0] for c in CONVERSATIONS]
    alone = []
    for conv in CONVERSATIONS:
        job, = _jobs(owl, [conv], 9, repetition_penalty=penalty)
        Engine(owl.model, owl.processor, max_batch=1).run([job])
        alone.append(job.token_ids)
    assert alone == expected
    jobs = _jobs(owl, CONVERSATIONS, 9, repetition_penalty=penalty)
    jobs[1].max_new_tokens = 3  # leaves early: the others go on without its row
    Engine(owl.model, owl.processor, max_batch=2).run(jobs)
    assert [j.token_ids for j in jobs] == [expected[0], expected[1][:3], expected[2]]


def test_lockstep_batch_equals_generate_on_the_same_batch(owl):
    expected = _reference(owl, CONVERSATIONS, 7, min_new=2)
    jobs = _jobs(owl, CONVERSATIONS, 7)
    for job in jobs:
        job.min_new_tokens = 2
    Engine(owl.model, owl.processor, max_batch=len(jobs), lockstep=True).run(jobs)
    assert [j.token_ids for j in jobs] == expected


def test_stop_strings_cut_the_full_answer(owl):
    decode = owl.processor.decode
    specials = owl.special_strings()
    full = _reference(owl, CONVERSATIONS[1:2], 12)[0]
    text = decode(full, skip_special_tokens=False)
    stop = text.strip()[3:5]
    stops = reply_stops(owl.processor.template, [stop])
    expected = strip_special(cut_at_stop(text, stops)[0], specials).strip()
    job, = _jobs(owl, CONVERSATIONS[1:2], 12, stops=stops)
    pieces = []
    job.on_event = lambda kind, value: pieces.append(value) if kind == "delta" else None
    Engine(owl.model, owl.processor, max_batch=1).run([job])
    assert job.text == expected and job.finish_reason == "stop"
    assert "".join(pieces).strip() == expected  # streamed pieces, the stop string's beginning held back
    assert owl.chat(CONVERSATIONS[1], max_new_tokens=12, stop=[stop]) == expected


def test_closing_a_stream_cancels_its_row(owl):
    job, = _jobs(owl, CONVERSATIONS[1:2], 50)
    engine = Engine(owl.model, owl.processor, max_batch=1)
    steps = engine.iterate([job])
    next(steps)
    steps.close()
    assert job.finish_reason == "cancelled" and engine.stats()["cancelled"] == 1


def test_the_loaded_bundled_model_saves_and_round_trips(tmp_path):
    """Owl.load keeps the row-major layout: the model it gives can be saved, and loads back equal."""
    from owlkit import load_model
    from owlkit.inference import bundled_model_path

    if not (bundled_model_path() / "config.json").exists():
        pytest.skip("no bundled model in this installation")
    owl = Owl.load()
    owl.model.save_pretrained(tmp_path / "copy")
    theirs = load_model(tmp_path / "copy").state_dict()
    for name, tensor in owl.model.state_dict().items():
        assert torch.equal(tensor, theirs[name]), name
