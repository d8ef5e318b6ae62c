"""Training sequences: ``input_ids`` and ``labels`` with only the assistant's replies supervised.

Labels are aligned with ``input_ids`` (the model shifts them), ``-100`` where nothing is
learned: BOS, system text, user turns, role names and separators, image placeholders.

mPLUG-Owl2 (``train.py::preprocess_v1``, templates ``mplug_owl2`` and ``vicuna_v1``): the whole
rendered conversation is tokenized at once (``tokenizer_image_token``); it is split into rounds
on ``</s>``; in each round everything up to and including ``"ASSISTANT:"`` is masked, and the
reply with its ``</s>`` (EOS id) is supervised. The official code counts the instruction as
``len(tokens("USER: ... ASSISTANT: ")) - 2`` (BOS and the lone ``"▁"`` of the trailing space);
we count ``tokens("USER: ... ASSISTANT:")``, which is the same number for LLaMA's tokenizer
and stays right for tokenizers that merge the trailing space. A mismatch between the rounds and
the whole sequence masks the whole sample with a warning, as the official code does (it cannot
happen with :class:`~owlkit.processing.tokenizer.OwlTokenizer`, which splits at ``</s>``).

mPLUG-Owl (``xgpt3_dataset.py::_extract_text_token_from_conversation``, template
``mplug_owl``): BOS, then the rendered text split on ``<image>``, ``"AI: "`` and
``"\\nHuman: "`` with the delimiters kept as chunks, each chunk tokenized on its own; a chunk
right after ``"AI: "`` is a reply: its tokens plus EOS are supervised (EOS after every reply,
also mid-conversation); images are placeholders (``-100``).

An LLM's own chat template (template style ``jinja``, e.g. ChatML): every assistant reply is
found as the text the template adds between the conversation rendered up to the reply's
generation prompt and the conversation rendered with the reply (so whatever the template
writes after a reply, e.g. ``<|im_end|>\n``, is supervised with it); the pieces are tokenized
in order, the first with the tokenizer's BOS, images as placeholders.

Departures: one placeholder id per image (the official v1 data has 65 ids ``-1``); defaults
render with the inference template (``mplug_owl2``, images directly followed by the text) so
that training and prompting agree — the official v2 fine-tuning scripts use ``vicuna_v1``
(system prompt) and put ``"\\n"`` after the images: pass ``template="vicuna_v1",
image_separator="\\n"`` to reproduce them. ``max_length`` counts every image as
``tokens_per_image`` positions (what the decoder sees) and drops an image that does not fit
together with everything after it (as v1 does); the official v2 collator cuts ids at
``model_max_length`` counting an image as one id. Unknown-token ids (0) are counted like any
token (the official v2 length check ignores them and then masks the sample).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

from owlkit.config import IGNORE_INDEX, IMAGE_TOKEN_INDEX, V1_IMAGE_PLACEHOLDER
from owlkit.errors import InputError
from owlkit.processing.images import generation_number
from owlkit.processing.templates import (
    Template,
    default_template,
    get_template,
    parse_messages,
    render,
    render_jinja,
)
from owlkit.processing.tokenizer import OwlTokenizer, encode_prompt


@dataclass
class TrainingExample:
    """One training sequence. ``images`` are the message's image objects, in placeholder order."""

    input_ids: list[int]
    labels: list[int]
    images: list = field(default_factory=list)
    prompt: str = ""

    @property
    def num_supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def build_training_example(
    messages: Sequence[Any],
    generation: int | str,
    tokenizer: OwlTokenizer,
    *,
    template: str | Template | None = None,
    image_token_id: int = IMAGE_TOKEN_INDEX,
    max_length: int | None = None,
    tokens_per_image: int = 65,
    image_separator: str = "",
) -> TrainingExample:
    """Render ``messages`` (ending with an assistant reply) and build ids and labels.

    ``template`` defaults to the generation's inference template. ``image_separator`` is put
    between a message's images and its text (v2 templates only; the official training data
    has ``"\\n"``). See the module doc for the masking rules and departures.
    """
    gen = generation_number(generation)
    tpl = get_template(template or default_template(gen))
    if tpl.generation != gen:
        raise InputError(f"template {tpl.name!r} belongs to mPLUG-Owl{'' if tpl.generation == 1 else '2'}, not generation {gen}")
    system, turns = parse_messages(messages)
    if turns[-1].role != "assistant" or turns[-1].pending:
        raise InputError("the conversation must end with the assistant's reply to be used for training")
    rendered = render(messages, tpl, add_generation_prompt=False, image_separator=image_separator)
    if tpl.style == "jinja":
        input_ids, labels = _labels_jinja(rendered.prompt, tpl, system, turns, tokenizer, image_token_id, image_separator)
    elif gen == 2:
        input_ids, labels = _labels_v2(rendered.prompt, tpl, tokenizer, image_token_id)
    else:
        input_ids, labels = _labels_v1(rendered.prompt, tokenizer, image_token_id)
    images = list(rendered.images)
    if max_length is not None:
        input_ids, labels, images = _truncate(input_ids, labels, images, image_token_id, max_length, tokens_per_image)
    return TrainingExample(input_ids, labels, images, rendered.prompt)


def _labels_v2(prompt: str, tpl: Template, tokenizer: OwlTokenizer, image_token_id: int) -> tuple[list[int], list[int]]:
    if tokenizer.eos_token is None or tpl.sep2 != tokenizer.eos_token:
        raise InputError(f"the template's turn separator {tpl.sep2!r} must be the tokenizer's EOS token")
    input_ids = encode_prompt(prompt, 2, tokenizer, image_token_id)
    labels = list(input_ids)
    n_bos = 1 if (tokenizer.add_bos_token and tokenizer.bos_token_id is not None) else 0
    sep = tpl.sep + tpl.roles[1] + ": "  # " ASSISTANT: "
    cur = n_bos
    labels[:cur] = [IGNORE_INDEX] * cur
    for rou in prompt.split(tpl.sep2):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break  # official: a round without exactly one reply ends the masking
        round_len = len(encode_prompt(rou, 2, tokenizer, image_token_id)) - n_bos + 1  # + the "</s>"
        instruction = parts[0] + sep.rstrip(" ")
        instruction_len = len(encode_prompt(instruction, 2, tokenizer, image_token_id)) - n_bos
        labels[cur : cur + instruction_len] = [IGNORE_INDEX] * len(labels[cur : cur + instruction_len])
        cur += round_len
    labels[cur:] = [IGNORE_INDEX] * len(labels[cur:])
    if cur != len(input_ids):
        warnings.warn(
            f"tokenization mismatch: rounds give {cur} tokens, the sequence has {len(input_ids)}; sample masked",
            stacklevel=3,
        )
        labels = [IGNORE_INDEX] * len(input_ids)
    labels = [IGNORE_INDEX if t == image_token_id else x for t, x in zip(input_ids, labels)]
    return input_ids, labels


def _labels_jinja(prompt: str, tpl: Template, system: str | None, turns: list, tokenizer: OwlTokenizer,
                  image_token_id: int, image_separator: str) -> tuple[list[int], list[int]]:
    pieces: list[tuple[str, bool]] = []  # (text, supervised), in order; their concatenation is the prompt
    done = 0
    for i, turn in enumerate(turns):
        if turn.role != "assistant":
            continue
        before = render_jinja(tpl, system, turns[:i], add_generation_prompt=True, image_separator=image_separator)
        after = render_jinja(tpl, system, turns[: i + 1], add_generation_prompt=False, image_separator=image_separator)
        if not (prompt.startswith(after) and after.startswith(before) and len(before) >= done):
            raise InputError("the model's chat template does not render a conversation as the concatenation of its "
                             "turns, so the replies cannot be told apart for training")
        pieces += [(prompt[done:len(before)], False), (prompt[len(before):len(after)], True)]
        done = len(after)
    pieces.append((prompt[done:], False))
    input_ids: list[int] = []
    labels: list[int] = []
    for k, (text, supervised) in enumerate(pieces):
        ids = encode_prompt(text, 2, tokenizer, image_token_id)
        if k and tokenizer.add_bos_token and ids[:1] == [tokenizer.bos_token_id]:
            ids = ids[1:]  # BOS once, at the very start
        input_ids += ids
        labels += [t if supervised and t != image_token_id else IGNORE_INDEX for t in ids]
    return input_ids, labels


_V1_SPLIT = re.compile("(" + "|".join(map(re.escape, [V1_IMAGE_PLACEHOLDER, "AI: ", "\nHuman: "])) + ")")


def _labels_v1(prompt: str, tokenizer: OwlTokenizer, image_token_id: int) -> tuple[list[int], list[int]]:
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise InputError("mPLUG-Owl training needs a tokenizer with BOS and EOS tokens")
    input_ids = [tokenizer.bos_token_id]
    flags = [0]
    chunks = [c for c in _V1_SPLIT.split(prompt) if c]
    for idx, chunk in enumerate(chunks):
        if idx > 0 and chunk == V1_IMAGE_PLACEHOLDER:
            input_ids.append(image_token_id)
            flags.append(0)
            continue
        tokens = tokenizer.encode(chunk)
        if idx > 0 and chunks[idx - 1] == "AI: ":
            tokens = tokens + [tokenizer.eos_token_id]
            flags.extend([1] * len(tokens))
        else:
            flags.extend([0] * len(tokens))
        input_ids.extend(tokens)
    labels = [t if f == 1 else IGNORE_INDEX for t, f in zip(input_ids, flags)]
    return input_ids, labels


def _truncate(
    input_ids: list[int], labels: list[int], images: list, image_token_id: int, max_length: int, tokens_per_image: int
) -> tuple[list[int], list[int], list]:
    if max_length <= 0:
        raise InputError(f"max_length must be positive, got {max_length}")
    used = 0
    kept_images = 0
    end = len(input_ids)
    for i, token in enumerate(input_ids):
        cost = tokens_per_image if token == image_token_id else 1
        if used + cost > max_length:
            end = i
            break
        used += cost
        kept_images += token == image_token_id
    return input_ids[:end], labels[:end], images[:kept_images]
