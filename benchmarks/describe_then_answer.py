"""Does a model's own caption hold the answers its direct replies miss?

For each held-out world question (`owl eval synth`'s set), the model describes the picture
("Describe the image."); the caption is parsed back into a scene (every "a {size} {colour}
{shape} {at|in|on} the {place}" phrase, and the written word) and the world's own answerer
(``owlkit.zoo.world.answer_question``) answers the question from that scene. The accuracy is
what describe-then-answer would score if the reading of the caption were perfect: an upper
bound for answering through the model's own words, set beside its direct answers. And the
model itself answers from its caption (``from_own_caption``): the question asked without the
picture, after "Image: <its caption>", as ``owl eval synth --described`` asks it with the true
caption (and as ``owl small build --described-weight`` trains).

    python benchmarks/describe_then_answer.py [--model owl-small] [--seed 2000] [--n-per-task 100]
        [--tasks colour shape count position relation] [--batch-size 32] [--output describe.json]

Prints (and writes) JSON: per task the accuracy through the caption and directly, and a few
captions.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import arguments, emit  # noqa: E402

from owlkit import Owl  # noqa: E402
from owlkit.zoo.synth_eval import conversation, with_short_answer_prompt  # noqa: E402
from owlkit.zoo.world import COLOURS, POSITIONS, SHAPES, SIZES, Obj, Scene, answer_question, exact_match, make_eval_set  # noqa: E402
from owlkit.zoo.world import with_captions  # noqa: E402

_CELLS = {name: cell for cell, name in POSITIONS.items()}
_OBJECT = re.compile(rf"an? ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) (?:at|in|on) the "
                     rf"({'|'.join(sorted(_CELLS, key=len, reverse=True))})\b")
_WORD = re.compile(r"the word (\S+?)\.? is written")
ONE_IMAGE_TASKS = ("colour", "shape", "count", "position", "relation", "read")


def held_out_arguments(parser: argparse.ArgumentParser) -> None:
    """``--seed``, ``--n-per-task`` and ``--tasks``: which of the held-out world's one-image questions."""
    parser.add_argument("--seed", type=int, default=2000, help="the held-out world")
    parser.add_argument("--n-per-task", type=int, default=100)
    parser.add_argument("--tasks", nargs="+", choices=ONE_IMAGE_TASKS,
                        default=["colour", "shape", "count", "position", "relation"])


def scene_from_caption(text: str) -> Scene:
    """The scene a caption names: each object phrase once per grid cell (the first wins), the word."""
    objects, cells = [], set()
    for size, colour, shape, place in _OBJECT.findall(text):
        if _CELLS[place] not in cells:
            cells.add(_CELLS[place])
            objects.append(Obj(shape, colour, size, *_CELLS[place]))
    word = _WORD.search(text)
    return Scene(objects=objects, word=word.group(1) if word else None)


def own_caption_conversation(sample, caption_text: str, prompt: str | None) -> list[dict]:
    """The sample's question without its picture, after "Image: <caption_text>" (the form of
    ``owl eval synth --described``, with the model's caption in place of the true one)."""
    turns = with_short_answer_prompt(sample.conversations[:-1], prompt, sample.task)
    return [{"role": "user", "content": with_captions(turns[0]["value"], [caption_text.strip()])}]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="owl-small")
    held_out_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    owl = Owl.load(args.model, dtype="float32")
    size = owl.model.config.vision_config.image_size
    samples = make_eval_set(args.seed, args.n_per_task, image_size=size, tasks=args.tasks)
    conversations = [[{"role": "user", "content": [{"type": "image", "image": s.images[0]},
                                                   {"type": "text", "text": "Describe the image."}]}] for s in samples]
    captions = owl.generate_batch(conversations, batch_size=args.batch_size, max_new_tokens=96)
    # the same questions asked directly, as owl eval synth asks them (with the model's short-answer prompt)
    prompt = owl.model.config.short_answer_prompt
    replies = owl.generate_batch([conversation(s, False, prompt) for s in samples], batch_size=args.batch_size,
                                 max_new_tokens=48)
    # the model reads its own caption: the question without the picture, after "Image: <caption>"
    own = [own_caption_conversation(s, text, prompt) for s, text in zip(samples, captions)]
    from_own = owl.generate_batch(own, batch_size=args.batch_size, max_new_tokens=48)
    scores: dict[str, dict[str, list[bool]]] = {}
    for sample, text, reply, own_reply in zip(samples, captions, replies, from_own):
        got = answer_question(sample.question, [scene_from_caption(text)])
        task = scores.setdefault(sample.task, {"through_caption": [], "from_own_caption": [], "direct": []})
        task["through_caption"].append(got is not None and exact_match(got, sample.answer))
        task["from_own_caption"].append(exact_match(own_reply, sample.answer))
        task["direct"].append(exact_match(reply, sample.answer))
    result = {"settings": arguments(args),
              "tasks": {t: {k: round(sum(v) / len(v), 4) for k, v in r.items()} | {"n": len(r["direct"])}
                        for t, r in scores.items()},
              "captions": captions[:3]}
    return emit(result, args.output)


if __name__ == "__main__":
    main()
