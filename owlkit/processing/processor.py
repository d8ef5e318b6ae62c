"""``OwlProcessor``: OpenAI-style conversations -> model inputs, for one model folder.

It ties the pieces of this package to a model's configuration: the template and image mode of
its generation, its tokenizer, its placeholder id and the number of decoder positions an image
takes (``tokens_per_image``), which decides whether a prompt fits the context.

Batches for generation are left-padded (each row's tokens end at the last column), batches for
training (``return_labels=True``) right-padded, as the official pipelines do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from owlkit.config import IGNORE_INDEX
from owlkit.errors import InputError
from owlkit.processing.images import OwlImageProcessor, load_image
from owlkit.processing.labels import build_training_example
from owlkit.processing.templates import CHAT_TEMPLATE, Template, chat_template, default_template, get_template, render
from owlkit.processing.tokenizer import OwlTokenizer, encode_prompt, placeholder_id

class OwlProcessor:
    def __init__(
        self,
        tokenizer: OwlTokenizer,
        image_processor: OwlImageProcessor,
        owl_version: int = 2,
        tokens_per_image: int = 65,
        max_length: int | None = None,
        template: str | None = None,
        image_token_id: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.owl_version = owl_version
        self.tokens_per_image = tokens_per_image
        self.max_length = max_length
        self.template = template or default_template(owl_version)
        # A model folder's config decides (from_pretrained); alone, the tokenizer's <|image|>.
        self.image_token_id = placeholder_id(tokenizer) if image_token_id is None else int(image_token_id)

    @classmethod
    def from_pretrained(cls, folder: str | Path, config=None, template: str | None = None) -> "OwlProcessor":
        """Tokenizer, image processor and sizes of a model folder (``config`` saves re-reading it)."""
        folder = Path(folder)
        if config is None:
            from owlkit.checkpoints import config_from_official, detect_format  # cycle: checkpoints imports processing

            raw = json.loads((folder / "config.json").read_text())
            if detect_format(folder) == "owlkit":
                from owlkit.config import OwlConfig  # transformers: processing imports none

                config = OwlConfig(**{k: v for k, v in raw.items() if k != "model_type"})
            else:
                config = config_from_official(raw)
        tokenizer = OwlTokenizer.from_pretrained(folder)
        template = folder_template(folder, template or getattr(config, "conversation_template", None), tokenizer)
        images = OwlImageProcessor.from_pretrained(
            folder, generation=config.owl_version, image_size=config.vision_config.image_size,
            mode=config.image_aspect_ratio,
        )
        return cls(tokenizer, images, config.owl_version, config.tokens_per_image,
                   config.text_config.max_position_embeddings, template, image_token_id=config.placeholder_id)

    @property
    def stop_strings(self) -> list[str]:
        """Text that ends an assistant turn of this processor's template, besides EOS."""
        return list(get_template(self.template).stops)

    # -- one conversation --------------------------------------------------------------------
    def positions(self, ids: Sequence[int]) -> int:
        """Decoder positions of ``ids`` once every placeholder is expanded."""
        n_images = sum(1 for i in ids if i == self.image_token_id)
        return len(ids) + n_images * (self.tokens_per_image - 1)

    def encode(self, messages, images: Sequence[Any] | None = None, add_generation_prompt: bool = True,
               reserve: int = 0, truncate: bool = False) -> tuple[list[int], list[Any]]:
        """One conversation -> (ids with one placeholder per image, image objects in order).

        ``images`` fills placeholders whose message part carries no image object. When the
        prompt plus ``reserve`` new tokens exceeds the context, ``truncate`` drops the oldest
        turns (whole turns: an image is never cut); otherwise it is an error.
        """
        messages = list(messages)
        while True:
            rendered = render(messages, self.template, add_generation_prompt=add_generation_prompt)
            objects = self._fill_images(rendered.images, images)
            ids = encode_prompt(rendered.prompt, self.owl_version, self.tokenizer, self.image_token_id)
            if self.max_length is None or self.positions(ids) + reserve <= self.max_length:
                return ids, objects
            shorter = _drop_oldest_turn(messages) if truncate else None
            if shorter is None:
                raise InputError(
                    f"the prompt needs {self.positions(ids)} positions (+{reserve} to generate) but the model's "
                    f"context is {self.max_length}; shorten the conversation"
                    + ("" if truncate else " or allow truncation (--truncate drops the oldest turns)")
                )
            if images is not None:  # keep the images of the turns that remain
                dropped = len(render(messages, self.template).images) - len(render(shorter, self.template).images)
                images = list(images)[dropped:]
            messages = shorter

    @staticmethod
    def _fill_images(found: list, given: Sequence[Any] | None) -> list:
        given = list(given or [])
        missing = sum(1 for x in found if x is None)
        if missing != len(given) and (given or missing):
            raise InputError(
                f"the messages have {missing} image placeholder(s) without an image but {len(given)} image(s) "
                "were given; give one image per placeholder"
            )
        it = iter(given)
        return [next(it) if x is None else x for x in found]

    # -- batches -----------------------------------------------------------------------------
    def __call__(
        self,
        conversations,
        images: Sequence[Sequence[Any]] | None = None,
        add_generation_prompt: bool = True,
        return_labels: bool = False,
        reserve: int = 0,
        truncate: bool = False,
        return_tensors: str = "pt",
    ) -> dict:
        """One conversation or a list of them -> ``input_ids``, ``attention_mask``, ``pixel_values``
        (None without images) and, with ``return_labels``, ``labels`` (assistant turns only)."""
        import torch  # processing imports torch only when tensors are asked for

        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
            images = None if images is None else [images]
        rows, labels, objects = [], [], []
        for k, conv in enumerate(conversations):
            given = None if images is None else images[k]
            if return_labels:
                ex = build_training_example(
                    conv, self.owl_version, self.tokenizer, template=self.template,
                    image_token_id=self.image_token_id, max_length=self.max_length,
                    tokens_per_image=self.tokens_per_image,
                )
                rows.append(ex.input_ids)
                labels.append(ex.labels)
                objects.extend(self._fill_images(list(ex.images), given))
            else:
                ids, objs = self.encode(conv, given, add_generation_prompt, reserve, truncate)
                rows.append(ids)
                objects.extend(objs)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        label_t = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long) if return_labels else None
        for i, r in enumerate(rows):
            span = slice(0, len(r)) if return_labels else slice(width - len(r), width)
            input_ids[i, span] = torch.tensor(r, dtype=torch.long)
            attention_mask[i, span] = 1
            if return_labels:
                label_t[i, span] = torch.tensor(labels[i], dtype=torch.long)
        pixel_values = self.image_processor([load_image(o) if not hasattr(o, "size") else o for o in objects]) if objects else None
        out = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
        if return_labels:
            out["labels"] = label_t
        return out

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


def folder_template(folder: str | Path, name: str | Template | None, tokenizer: OwlTokenizer) -> str | Template | None:
    """The conversation template a model folder names: an official one by name, or the tokenizer's own.

    ``chat_template`` reads the LLM's Jinja template from ``chat_template.jinja`` or
    ``tokenizer_config.json`` of the folder; any other name must be an official template.
    """
    if name is None or isinstance(name, Template):
        return name
    if name != CHAT_TEMPLATE:
        return get_template(name).name
    folder = Path(folder)
    jinja = (folder / "chat_template.jinja").read_text() if (folder / "chat_template.jinja").is_file() else None
    if jinja is None and (folder / "tokenizer_config.json").is_file():
        jinja = json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template")
    if not isinstance(jinja, str) or not jinja:
        raise InputError(f"{folder} names the tokenizer's chat template but its tokenizer has none "
                         "(no chat_template.jinja, no chat_template in tokenizer_config.json)")
    specials = {k: getattr(tokenizer, k) for k in ("bos_token", "eos_token") if getattr(tokenizer, k, None)}
    return chat_template(jinja, specials)


def _drop_oldest_turn(messages: list) -> list | None:
    """The conversation without its oldest user turn (and the reply to it), or None."""
    system = [m for m in messages if isinstance(m, dict) and m.get("role") == "system"]
    rest = [m for m in messages if not (isinstance(m, dict) and m.get("role") == "system")]
    users = [i for i, m in enumerate(rest) if m.get("role", m.get("from")) in ("user", "human")]
    if len(users) < 2:
        return None
    return system + rest[users[1]:]
