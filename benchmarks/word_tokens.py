"""Can the visual side write a picture's caption as the LLM's own words, in one pass?

owl-small's stage 1 teaches the abstractor through the frozen LLM, autoregressively; its
held-out captions are word for word right about a third of the time, and its answers to the
binding questions (colour, shape, position of one object among several) sit near chance
(docs/owl-small.md). SmolLM2 binds attributes when the scene is *written*. This benchmark asks
whether an abstractor can make its output tokens *be* the caption's words: query i is scored,
by cross-entropy, against the i-th token of the picture's caption over the LLM's embedding rows
(tied to its output in SmolLM2), with no decoder in the loop. Such tokens would read to the LLM
as the written caption, whose lookups it already makes.

A new abstractor (the model's own shape, ``--queries`` queries) on the model's frozen encoder
learns the world's captions; then the held-out world's one-image questions (`owl eval synth`'s
set) are answered through the tokens' argmax words: the caption parsed back into a scene and
answered by the world's own answerer (as ``benchmarks/describe_then_answer.py`` does with a
generated caption): what an LLM that reads the tokens as that caption could answer at best.
Training cost: no LLM forward, a few minutes on 2 cores. (owl-small is now built this way: the
``words`` projector and objective of the model and the training loop, docs/owl-small.md; this
script keeps the measurement that led there, on precomputed features.)

With ``--tune-steps N`` the model then reads those tokens (each query's softmax over the
scored rows, mixing the rows: continuous, as a projector would give them) in place of its
abstractor's, its LLM is tuned in full for N steps on the training world's questions of the
same tasks, and its *direct* answers are scored as `owl eval synth` scores them. For the base
LLM give ``--model runs/owl-small/init`` (owl-small's build writes it: SmolLM2, the visual
branches copies of the text ones).

    python benchmarks/word_tokens.py [--model owl-small] [--world runs/owl-small/world]
        [--steps 4000] [--queries 64] [--seed 2000] [--n-per-task 100]
        [--tune-steps 0] [--tune-lr 5e-5] [--tune-batch-size 8] [--output words.json]

Prints (and writes) JSON: held-out token accuracy and exact-caption rate during training, the
tasks' accuracies through the one-pass caption, a few captions and, when tuned, the direct
answers' accuracies.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from describe_then_answer import held_out_arguments, scene_from_caption  # noqa: E402
from machine import arguments, emit  # noqa: E402

from owlkit import Owl  # noqa: E402
from owlkit.config import IMAGE_PLACEHOLDER  # noqa: E402
from owlkit.models.abstractor import VisualAbstractor  # noqa: E402
from owlkit.processing.images import load_image  # noqa: E402
from owlkit.training.setup import cpu_has_native_bf16  # noqa: E402
from owlkit.zoo.synth_eval import conversation, with_short_answer_prompt  # noqa: E402
from owlkit.zoo.tiny import ensure_world  # noqa: E402
from owlkit.zoo.world import answer_question, caption, exact_match, make_eval_set  # noqa: E402

#: the build's world (owlkit.zoo.small.build): 6,000 pictures, 24,000 instructions, seed 0
WORLD_SEED, WORLD_INSTRUCTIONS = 0, 24000


def caption_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each caption's token ids, ended by the tokenizer's end-of-sequence token."""
    return [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]


def targets(ids: list[list[int]], length: int, end: int, index: dict[int, int]) -> torch.Tensor:
    """[captions, length] positions in the scored vocabulary, padded with the end token."""
    if max(map(len, ids)) > length:
        raise SystemExit(f"a caption has {max(map(len, ids))} tokens; give --queries at least that many")
    out = torch.full((len(ids), length), index[end], dtype=torch.long)
    for row, seq in enumerate(ids):
        out[row, :len(seq)] = torch.tensor([index[t] for t in seq])
    return out


def words(tokenizer, positions: list[int], vocab: list[int]) -> str:
    """The text of one row of predicted positions, up to the first end token."""
    ids = [vocab[p] for p in positions]
    end = tokenizer.eos_token_id
    return tokenizer.decode(ids[:ids.index(end)] if end in ids else ids)


def new_abstractor(model, queries: int, layers: int, seed: int) -> VisualAbstractor:
    """The model's abstractor shape with ``queries`` queries and ``layers`` layers, freshly drawn."""
    config = copy.deepcopy(model.config.abstractor_config)
    config.num_queries, config.num_hidden_layers, config.projector = queries, layers, "abstractor"
    torch.manual_seed(seed)
    return VisualAbstractor(config)


def encode(owl, images: list) -> torch.Tensor:
    """The frozen encoder's output for PIL images, in chunks."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), 256):
            pixels = torch.as_tensor(owl.processor.image_processor.preprocess_numpy(images[i:i + 256]))
            out.append(owl.model.vision(pixels.to(owl.model.dtype)).float())
    return torch.cat(out)


class WordTokens(nn.Module):
    """Stands where the model's abstractor stands: each query's softmax over the scored rows,
    mixing those rows (continuous tokens, as a projector of this kind would give them)."""

    def __init__(self, scores, rows: torch.Tensor):
        super().__init__()
        self.scores, self.rows = scores, rows

    def forward(self, image_tokens: torch.Tensor, grid_hw=None) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(self.scores(image_tokens.float()), -1) @ self.rows


def tune_and_answer(owl, scores, rows_e: torch.Tensor, args, samples) -> dict:
    """The model reads the word tokens (each query's softmax over the scored rows, mixing them)
    in place of its abstractor's, and its LLM is tuned in full on the training world's questions
    of ``args.tasks`` (short-answer prompt as built); then its direct answers to ``samples``.
    Give ``--model`` a folder whose LLM is the base (owl-small's build writes it as
    ``runs/owl-small/init``: SmolLM2, the visual branches copies of the text ones)."""
    model = owl.model
    model.abstractor = WordTokens(scores, rows_e)
    # the placeholders expand to config.tokens_per_image positions, which counts a vit_eos the
    # word tokens do not have
    model.config.abstractor_config.num_queries = args.queries - 1
    owl.processor.tokens_per_image = args.queries
    prompt = model.config.short_answer_prompt
    records = [r for r in json.loads((args.world / "instruct.json").read_text()) if r.get("task") in args.tasks]
    random.Random(0).shuffle(records)
    if len(records) < args.tune_steps * args.tune_batch_size:
        raise SystemExit(f"the world holds {len(records)} such questions; fewer --tune-steps or a larger world")

    def messages(record: dict) -> list[dict]:
        question, reply = with_short_answer_prompt(record["conversations"], prompt, record["task"])
        text = question["value"].replace(IMAGE_PLACEHOLDER, "").strip()
        return [{"role": "user", "content": [{"type": "image", "image": str(args.world / record["image"])},
                                             {"type": "text", "text": text}]},
                {"role": "assistant", "content": reply["value"]}]

    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.language_model.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=args.tune_lr, weight_decay=0.0)
    model.train()
    start, losses, n = time.perf_counter(), [], args.tune_batch_size
    for step in range(args.tune_steps):
        batch = owl.processor([messages(r) for r in records[step * n:(step + 1) * n]], return_labels=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_has_native_bf16()):
            loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        replies = owl.generate_batch([conversation(s, False, prompt) for s in samples], batch_size=32,
                                     max_new_tokens=12)
    per_task: dict[str, list[bool]] = {}
    for sample, reply in zip(samples, replies):
        per_task.setdefault(sample.task, []).append(exact_match(reply, sample.answer))
    return {"seconds": round(time.perf_counter() - start, 1), "questions_seen": args.tune_steps * n,
            "loss_first_last_10": [round(sum(losses[:10]) / len(losses[:10]), 4), round(sum(losses[-10:]) / len(losses[-10:]), 4)],
            "tasks": {t: {"accuracy": round(sum(v) / len(v), 4), "n": len(v)} for t, v in per_task.items()}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="owl-small", help="its frozen encoder, word embeddings and tokenizer")
    parser.add_argument("--world", type=Path, default=Path("runs/owl-small/world"),
                        help="the training world (written there with the build's settings unless present)")
    parser.add_argument("--images", type=int, default=6000, help="pictures of the training world")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    held_out_arguments(parser)
    parser.add_argument("--report-every", type=int, default=500)
    parser.add_argument("--tune-steps", type=int, default=0,
                        help="then tune the model's LLM in full this many steps on the training world's questions "
                             "of --tasks, reading the word tokens, and score its direct answers")
    parser.add_argument("--tune-batch-size", type=int, default=8)
    parser.add_argument("--tune-lr", type=float, default=5e-5)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    owl = Owl.load(args.model, dtype="float32", decoding_layout="row-major")  # row-major: --tune-steps trains it
    model, tokenizer = owl.model, owl.processor.tokenizer
    size = model.config.vision_config.image_size
    ensure_world(args.world, WORLD_SEED, args.images, WORLD_INSTRUCTIONS)
    rows = [json.loads(line) for line in (args.world / "captions.jsonl").read_text().splitlines()]
    train_feats = encode(owl, [load_image(args.world / r["image"]) for r in rows])
    samples = make_eval_set(args.seed, args.n_per_task, image_size=size, tasks=args.tasks)
    held_feats = encode(owl, [s.images[0] for s in samples])
    train_ids = caption_ids(tokenizer, [r["caption"] for r in rows])
    held_ids = caption_ids(tokenizer, [caption(s.scenes[0]) for s in samples])
    # the scored vocabulary: the captions' words (the world's language is small; a general model
    # would score all of the LLM's rows, at 49,152 x 576 a position)
    vocab = sorted({t for seq in train_ids + held_ids for t in seq})
    index = {t: i for i, t in enumerate(vocab)}
    end = tokenizer.eos_token_id
    train_y = targets(train_ids, args.queries, end, index)
    held_y = targets(held_ids, args.queries, end, index)
    rows_e = model.get_input_embeddings().weight.detach().float()[vocab]
    abstractor = new_abstractor(model, args.queries, args.layers, seed=0)
    grid = (size // model.config.vision_config.patch_size,) * 2
    params = list(abstractor.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    warmup = max(1, args.steps // 20)  # then a cosine to zero
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * min(1.0, (s + 1 - warmup) / max(1, args.steps - warmup))))))

    def scores(feats: torch.Tensor) -> torch.Tensor:
        return abstractor(feats, grid_hw=grid)[:, :args.queries] @ rows_e.T / rows_e.shape[1] ** 0.5

    def predict(feats: torch.Tensor) -> torch.Tensor:
        abstractor.eval()
        with torch.no_grad():
            out = torch.cat([scores(f).argmax(-1) for f in feats.split(128)])
        abstractor.train()
        return out

    curve, generator, start = [], torch.Generator().manual_seed(0), time.perf_counter()
    for step in range(1, args.steps + 1):
        pick = torch.randint(0, len(train_feats), (args.batch_size,), generator=generator)
        loss = F.cross_entropy(scores(train_feats[pick]).flatten(0, 1), train_y[pick].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % args.report_every == 0 or step == args.steps:
            pred = predict(held_feats)
            curve.append({"step": step, "loss": round(loss.item(), 4),
                          "held_token_accuracy": round((pred == held_y).float().mean().item(), 4),
                          "held_exact_captions": round((pred == held_y).all(-1).float().mean().item(), 4),
                          "seconds": round(time.perf_counter() - start, 1)})
            print(json.dumps(curve[-1]), file=sys.stderr, flush=True)
    texts = [words(tokenizer, row, vocab) for row in predict(held_feats).tolist()]
    per_task: dict[str, list[bool]] = {}
    for sample, text in zip(samples, texts):
        got = answer_question(sample.question, [scene_from_caption(text)])
        per_task.setdefault(sample.task, []).append(got is not None and exact_match(got, sample.answer))
    abstractor.eval().requires_grad_(False)  # trained: from here on it only writes the word tokens
    direct = tune_and_answer(owl, scores, rows_e, args, samples) if args.tune_steps else None
    result = {"settings": arguments(args), "training_pictures": len(rows), "scored_vocabulary": len(vocab),
              "curve": curve, "tuned_direct_answers": direct,
              "through_one_pass_caption": {t: {"accuracy": round(sum(v) / len(v), 4), "n": len(v)}
                                           for t, v in per_task.items()},
              "captions": [{"true": caption(s.scenes[0]), "one_pass": t} for s, t in zip(samples[:3], texts[:3])]}
    return emit(result, args.output)


if __name__ == "__main__":
    main()
