"""``owl demo [--model PATH] [IMAGE ...]``: the main job in one command.

With the default bundled model (owl-small when installed, else owl-tiny): asks it questions
about the bundled example scenes and prints each question with its answer, asks general
questions without an image (``--text-question``), then asks about any IMAGE given (e.g. an
OwlEval photo). Without a bundled model (a source checkout before ``make tiny``): builds a small random mPLUG-Owl2 with
a throw-away tokenizer and runs the same path, so the plumbing is shown end to end.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

from owlkit.commands._generation import add_load_arguments, load_options
from owlkit.errors import OwlError
from owlkit.zoo.bundled import default_name


def add_arguments(parser) -> None:
    parser.add_argument("images", nargs="*", help="extra images to ask about")
    parser.add_argument("--model", default=None, help="model folder, or a bundled model: owl-small, owl-tiny (default: owl-small when installed, else owl-tiny)")
    add_load_arguments(parser)
    parser.add_argument("--question", default="Describe the image.", help="question for the extra images")
    parser.add_argument("--text-question", action="append", default=None, metavar="QUESTION",
                        help="a question asked without an image (repeatable; default: a capital city and a simple fact)")
    parser.add_argument("--max-new-tokens", type=int, default=48)


TEXT_QUESTIONS = ("What is the capital of France?", "What do plants need to grow?")


def _examples_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "assets" / "examples"


def _random_model_folder(folder: Path) -> None:
    """A small random mPLUG-Owl2 with a tokenizer trained on a few sentences (no download)."""
    import torch

    from owlkit.config import OwlConfig  # transformers: import only when the command runs
    from owlkit.models.owl import OwlForCausalLM  # torch: import only when the command runs
    from owlkit.processing.tokenizer_training import train_sentencepiece  # numpy + PIL: import only when the command runs

    rnd = random.Random(0)
    words = "what is in this image describe the colour shape of object red blue green circle square".split()
    image_token_id = train_sentencepiece([" ".join(rnd.choice(words) for _ in range(8)) for _ in range(300)], folder, 300)
    config = OwlConfig.from_preset("test-owl2")
    config.text_config.vocab_size = 300
    config.image_token_id = image_token_id
    torch.manual_seed(0)
    from transformers.utils import logging

    logging.disable_progress_bar()
    OwlForCausalLM(config).save_pretrained(folder)


def run(args) -> int:
    from owlkit.inference import Owl, bundled_model_path  # torch: import only when the command runs

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model
        if path is None and not (bundled_model_path() / "config.json").exists():
            print("No bundled model in this checkout yet (`make tiny` trains it): using a small RANDOM "
                  "mPLUG-Owl2, so the answers are noise; the pipeline is the real one.")
            path = Path(tmp) / "random-owl2"
            path.mkdir()
            _random_model_folder(path)
        start = time.perf_counter()
        owl = Owl.load(path, **load_options(args))
        cfg = owl.model.config
        print(f"model: {path or default_name()} (mPLUG-Owl{'2' if cfg.owl_version == 2 else ''}, "
              f"{owl.num_parameters / 1e6:.1f}M parameters, "
              f"{cfg.vision_config.image_size}px images), loaded in {time.perf_counter() - start:.1f}s")
        jobs = []
        examples = _examples_dir() / "questions.json"
        if examples.exists():
            for item in json.loads(examples.read_text()):
                jobs.append((_examples_dir() / item["image"], item["question"], item.get("answer")))
        if cfg.short_answer_prompt:  # the example scenes' questions want the world's short answers: ask as trained
            from owlkit.zoo.synth_eval import short_question  # numpy + PIL: import only when the command runs

            jobs = [(img, short_question(q, cfg.short_answer_prompt), expected) for img, q, expected in jobs]
        for image in args.images:
            jobs.append((Path(image), args.question, None))
        if not jobs:
            raise OwlError("no example images bundled and none given; pass an image path")
        texts = list(TEXT_QUESTIONS if args.text_question is None else args.text_question)
        convs = [[{"role": "user", "content": [{"type": "image", "image": str(img)}, {"type": "text", "text": q}]}]
                 for img, q, _ in jobs] + [[{"role": "user", "content": q}] for q in texts]
        start = time.perf_counter()
        answers = owl.generate_batch(convs, batch_size=8, max_new_tokens=args.max_new_tokens)
        took = time.perf_counter() - start
        right = 0
        for (image, question, expected), answer in zip(jobs, answers):
            print(f"\n[{image.name}] {question}\n  -> {answer}")
            if expected is not None:
                from owlkit.zoo.world import exact_match  # numpy + PIL: import only when the command runs

                ok = exact_match(answer, expected)
                right += ok
                print(f"     (expected: {expected}{'' if ok else '  <- wrong'})")
        for question, answer in zip(texts, answers[len(jobs):]):
            print(f"\n[no image] {question}\n  -> {answer}")
        n_expected = sum(1 for _, _, e in jobs if e is not None)
        summary = f"\n{len(convs)} answers in {took:.1f}s"
        if n_expected:
            summary += f"; {right}/{n_expected} example answers correct"
        print(summary)
    return 0
