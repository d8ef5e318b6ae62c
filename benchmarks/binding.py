"""How fast does a decoder of owl-tiny's shape learn to bind attributes to objects?

owl-tiny answers "What colour is the square?" at guessing level as soon as a scene holds two
objects, from the pictures and from perfect captions alike (``owl eval synth --described``).
This probe isolates that skill: a freshly initialised decoder (owl-tiny's, or a plain
``transformers`` LLaMA of the same size with its own initialisation) trains on a stream of
described-scene questions, every one about a new scene (nothing can be memorised), with the loss
on the answer only, and is scored on held-out questions split by the number of objects. A decoder that binds scores ~100%
with two objects; one that only learned which colours a scene holds scores ~50-60% there.

    python benchmarks/binding.py [--steps 600] [--tasks colour] [--max-objects 2] [--lr 1e-3]
        [--questions-per-sample 1] [--question-first] [--arch owl|llama] [--output binding.json]
        [--layers N] [--heads N] [--kv-heads N] [--hidden N] [--intermediate N]   # other shapes

Prints (and writes) JSON: the settings, the training time, and per evaluation the running loss
and the held-out exact-match accuracy, overall and by object count.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import arguments  # noqa: E402

MODEL = Path(__file__).resolve().parents[1] / "owlkit" / "assets" / "owl-tiny"  # its tokenizer and template


class QuestionStream:
    """Described-scene questions, each about a new scene, as owl-tiny's processor tokenises them
    for training (its chat template; labels on the assistant turns only)."""

    def __init__(self, tasks: list[str], max_objects: int | None, question_first: bool, seed: int):
        from owlkit.processing.processor import OwlProcessor

        self.processor = OwlProcessor.from_pretrained(MODEL)
        self.tasks, self.max_objects, self.question_first = tasks, max_objects, question_first
        self.rng = random.Random(seed)

    def _scene_and_question(self):
        from owlkit.zoo.world import generate, random_scene

        for _ in range(10_000):
            scene = random_scene(self.rng)
            if self.max_objects is not None and len(scene.objects) > self.max_objects:
                continue
            turns = generate(self.rng.choice(self.tasks), self.rng, [scene])
            if turns:
                return scene, turns[0]
        raise ValueError(f"no scene with at most {self.max_objects} objects allows {', '.join(self.tasks)} "
                         "questions; raise --max-objects")

    def sample(self, n_questions: int = 1) -> tuple[list[dict], int]:
        """(messages, number of objects): ``n_questions`` question/answer turns about one scene."""
        from owlkit.config import IMAGE_PLACEHOLDER
        from owlkit.zoo.world import described, generate

        scene, (question, answer) = self._scene_and_question()
        first = described(f"{IMAGE_PLACEHOLDER}\n{question}", [scene])  # "Image: <caption>\n<question>"
        if self.question_first:
            image, question = first.split("\n", 1)
            first = f"{question}\n{image}"
        messages = [{"role": "user", "content": first}, {"role": "assistant", "content": answer}]
        for _ in range(n_questions - 1):
            turns = generate(self.rng.choice(self.tasks), self.rng, [scene])
            if turns:
                messages += [{"role": "user", "content": turns[0][0]}, {"role": "assistant", "content": turns[0][1]}]
        return messages, len(scene.objects)

    def batch(self, size: int, n_questions: int = 1):
        rows = [self.sample(n_questions) for _ in range(size)]
        inputs = self.processor([messages for messages, _ in rows], return_labels=True)
        return inputs["input_ids"], inputs["attention_mask"], inputs["labels"], [n for _, n in rows]


def make_decoder(arch: str, seed: int, shape: dict | None = None) -> torch.nn.Module:
    """owl-tiny's decoder, freshly initialised; ``shape`` overrides text-config sizes
    (``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``, ``hidden_size``,
    ``intermediate_size``) to probe other decoder shapes."""
    from owlkit.config import OwlConfig

    torch.manual_seed(seed)
    config = OwlConfig.from_pretrained(MODEL)
    text = config.text_config
    if any(value <= 0 for value in (shape or {}).values()):
        raise ValueError("--layers, --heads, --kv-heads, --hidden and --intermediate must be positive")
    for key, value in (shape or {}).items():
        setattr(text, key, value)
    if text.hidden_size % text.num_attention_heads or text.num_attention_heads % text.num_key_value_heads:
        raise ValueError(f"--hidden {text.hidden_size}, --heads {text.num_attention_heads}, --kv-heads "
                         f"{text.num_key_value_heads}: the heads must divide the hidden size and the key/value "
                         "heads the heads")
    text.head_dim = text.hidden_size // text.num_attention_heads  # stored in the config: follow the shape
    if arch == "owl":
        from owlkit.models.owl import OwlForCausalLM
        from owlkit.zoo.tiny import fan_in_init

        model = OwlForCausalLM(config)
        fan_in_init(model)  # owl-tiny's initialisation (docs/owl-tiny.md)
    else:  # transformers' own LLaMA and initialisation: rules owlkit's decoder code in or out
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=text.vocab_size, hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
            num_hidden_layers=text.num_hidden_layers, num_attention_heads=text.num_attention_heads,
            num_key_value_heads=text.num_key_value_heads, max_position_embeddings=text.max_position_embeddings))
    return model


@torch.no_grad()
def accuracy(model: torch.nn.Module, batches) -> dict:
    """Exact match of the greedy answer tokens (teacher-forced), overall and by object count."""
    model.eval()
    by_count: dict[int, list[bool]] = {}
    for input_ids, mask, labels, counts in batches:
        logits = model(input_ids=input_ids, attention_mask=mask).logits
        target = labels[:, 1:]
        right = ((logits[:, :-1].argmax(-1) == target) | (target == -100)).all(1)
        for ok, n in zip(right.tolist(), counts):
            by_count.setdefault(n, []).append(ok)
    model.train()
    every = [ok for oks in by_count.values() for ok in oks]
    return {"all": round(sum(every) / len(every), 4),
            "by_objects": {str(n): round(sum(oks) / len(oks), 4) for n, oks in sorted(by_count.items())}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=("owl", "llama"), default="owl")
    parser.add_argument("--tasks", default="colour", help="comma-separated synth tasks with one image")
    parser.add_argument("--max-objects", type=int, default=2)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--questions-per-sample", type=int, default=1)
    parser.add_argument("--question-first", action="store_true", help="the question before the description")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--eval-questions", type=int, default=300)
    parser.add_argument("--layers", type=int, help="decoder layers (default: owl-tiny's)")
    parser.add_argument("--heads", type=int, help="attention heads (default: owl-tiny's)")
    parser.add_argument("--kv-heads", type=int, help="key/value heads (default: owl-tiny's)")
    parser.add_argument("--hidden", type=int, help="hidden size (default: owl-tiny's)")
    parser.add_argument("--intermediate", type=int, help="MLP size (default: owl-tiny's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    from owlkit.zoo.world import TASKS, images_for
    from owlkit.training.optim import build_optimizer, build_scheduler

    tasks = args.tasks.split(",")
    bad = [t for t in tasks if t not in TASKS or images_for(t) != 1]
    if bad:
        one_image = [t for t in TASKS if images_for(t) == 1]
        parser.error(f"--tasks {','.join(bad)}: not a one-image synth task; choose from {', '.join(one_image)}")
    torch.set_num_threads(args.threads)

    train = QuestionStream(tasks, args.max_objects, args.question_first, seed=args.seed)
    held_out = QuestionStream(tasks, args.max_objects, args.question_first, seed=args.seed + 10_000)
    try:
        eval_batches = [held_out.batch(min(100, args.eval_questions - k))
                        for k in range(0, args.eval_questions, 100)]
    except ValueError as error:  # the held-out draw is the first: training would meet the same
        parser.error(str(error))
    names = {"layers": "num_hidden_layers", "heads": "num_attention_heads", "kv_heads": "num_key_value_heads",
             "hidden": "hidden_size", "intermediate": "intermediate_size"}
    shape = {key: getattr(args, flag) for flag, key in names.items() if getattr(args, flag) is not None}
    try:
        model = make_decoder(args.arch, args.seed, shape)
    except ValueError as error:  # a size that is not positive, or heads that do not fit the width
        parser.error(str(error))
    settings = {"lr": args.lr, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.01,
                "warmup_steps": max(1, min(50, args.steps // 10)), "min_lr_ratio": 0.1}  # the owl-tiny recipes'
    optim = build_optimizer([{"params": list(model.parameters())}], settings)
    schedule = build_scheduler(optim, settings, args.steps)
    curve, running, start = [], None, time.perf_counter()
    for step in range(1, args.steps + 1):
        input_ids, mask, labels, _ = train.batch(args.batch_size, args.questions_per_sample)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        schedule.step()
        optim.zero_grad()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if step % args.eval_every == 0 or step == args.steps:
            point = {"step": step, "loss": round(running, 4), "held_out": accuracy(model, eval_batches)}
            curve.append(point)
            print(json.dumps(point), flush=True)
    result = {"settings": arguments(args),
              "train_seconds": round(time.perf_counter() - start, 1), "curve": curve}
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"final": curve[-1], "train_seconds": result["train_seconds"]}))
    return result


if __name__ == "__main__":
    main()
