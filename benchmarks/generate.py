"""Batched generation against one-by-one: answers per second of ``Owl.generate_batch``.

The ``small`` preset (random weights, fp32) answers the same 16 one-image questions at batch 8
and one at a time with ``Owl.chat``, in the same run; prints JSON with the speed-up (target: at
least 4x). For transparency it also times ``generate_batch`` at batch size 1: that isolates what
batching itself gives from what the batching engine's leaner decoding loop gives.

On a shared machine one timing can be off by a third. So the three ways take turns on each
group of ``--batch-size`` questions (a slowdown of the machine falls on all three), the rounds
are repeated (``--rounds``, default 3) and the median speed-up is reported with the extremes,
each round with the machine's matmul rate measured just before it.

Each round also reports a ``ceiling``: the speed-up batching could give at most on this machine,
were a decoding step of ``--batch-size`` rows to cost no more than a step of one row (the
weights streamed once for all rows; only the rows' own cache would add). It is measured, not
assumed: the time of one-by-one ``chat`` over the batched prompts' prefill (``generate_batch``
with one new token) plus the batch-1 engine's decoding time shared by the rows. Since a prompt's
prefill is compute-bound, batching cannot shorten it, and the ratio stays under this ceiling.

    python benchmarks/generate.py [--threads 2] [--questions 16] [--max-new-tokens 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def tiny_tokenizer(folder: Path):
    """A small LLaMA-style SentencePiece model (the model's extra vocabulary rows decode to nothing)."""
    from owlkit.processing.tokenizer import OwlTokenizer
    from owlkit.processing.tokenizer_training import train_sentencepiece

    rnd = random.Random(0)
    words = "what colour shape is the this image how many objects are there describe red blue".split()
    train_sentencepiece([" ".join(rnd.choice(words) for _ in range(8)) for _ in range(300)], folder, 300,
                        image_token=False)
    return OwlTokenizer.from_sentencepiece(folder / "tokenizer.model")


def matmul_gflops(n: int = 1024, repeat: int = 10) -> float:
    """This machine's fp32 matmul rate right now (shared machines vary from minute to minute)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return repeat * 2 * n**3 / (time.perf_counter() - start) / 1e9


def image_cache_effect(owl, image, questions: list[str], gen: dict, turns: int = 4) -> dict:
    """A multi-turn chat about one image (every turn sends it again): time with the image-feature
    cache off and on, in the same process; the answers must not change."""
    def chat_session(gen: dict) -> tuple[float, list[str]]:
        conv, answers = [], []
        start = time.perf_counter()
        for turn in range(turns):
            content = [{"type": "text", "text": questions[turn % len(questions)]}]
            if turn == 0:
                content.insert(0, {"type": "image", "image": image})
            conv.append({"role": "user", "content": content})
            answers.append(owl.chat(conv, **gen))
            conv.append({"role": "assistant", "content": answers[-1] or "(no answer)"})  # random weights may say nothing
        return time.perf_counter() - start, answers

    saved = getattr(owl.model, "image_feature_cache", None)
    result = {"turns": turns}
    # Whole answers, then the prompts alone (one new token): the part the cache can shorten.
    for label, options in (("answers", gen), ("prompts", dict(gen, max_new_tokens=1))):
        owl.model.image_feature_cache = None
        t_off, off = chat_session(options)
        owl.model.enable_image_feature_cache(64)
        t_on, on = chat_session(options)  # the first turn fills the cache, the others hit it
        result[label] = {"seconds_off": round(t_off, 3), "seconds_on": round(t_on, 3), "speedup": round(t_off / t_on, 3),
                         "hits": owl.model.image_feature_cache.stats()["hits"], "same_answers": on == off}
    owl.model.image_feature_cache = saved
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--rounds", type=int, default=3, help="repeat the three timings; the median is reported")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from owlkit.config import OwlConfig
    from owlkit.inference import Owl
    from owlkit.models.owl import OwlForCausalLM
    from owlkit.processing.images import OwlImageProcessor
    from owlkit.processing.processor import OwlProcessor

    cfg = OwlConfig.from_preset(args.preset)
    model = OwlForCausalLM(cfg).eval().optimize_for_cpu_decoding()
    with tempfile.TemporaryDirectory() as tmp:
        tok = tiny_tokenizer(Path(tmp))
    size = cfg.vision_config.image_size
    processor = OwlProcessor(tok, OwlImageProcessor(size, generation=2), 2, cfg.tokens_per_image,
                             cfg.text_config.max_position_embeddings)
    owl = Owl(model, processor)
    rng = np.random.default_rng(0)
    questions = ["what colour is the square", "how many objects are there", "describe this image", "what shape is it"]
    convs = []
    for i in range(args.questions):
        image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        convs.append([{"role": "user", "content": [{"type": "image", "image": image},
                                                    {"type": "text", "text": questions[i % 4]}]}])
    gen = {"max_new_tokens": args.max_new_tokens}
    owl.generate_batch(convs[:2], batch_size=2, **gen)  # warm-up

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out

    rounds = []
    for _ in range(args.rounds):
        gflops = matmul_gflops()
        # The three ways take turns on each group of ``batch_size`` questions, so that a change in
        # the shared machine's speed during the round falls on all three alike.
        t_single = t_batch = t_engine_single = t_prefill_batch = t_prefill_single = 0.0
        singles, batched, engine_singles = [], [], []
        for start in range(0, len(convs), args.batch_size):
            group = convs[start:start + args.batch_size]
            t, out = timed(lambda: owl.generate_batch(group, batch_size=args.batch_size, **gen))
            t_batch += t
            batched += out
            t, out = timed(lambda: [owl.chat(c, **gen) for c in group])
            t_single += t
            singles += out
            t, out = timed(lambda: owl.generate_batch(group, batch_size=1, **gen))
            t_engine_single += t
            engine_singles += out
            first = dict(gen, max_new_tokens=1)
            t_prefill_batch += timed(lambda: owl.generate_batch(group, batch_size=args.batch_size, **first))[0]
            t_prefill_single += timed(lambda: owl.generate_batch(group, batch_size=1, **first))[0]
        # Batched prefill plus the batch-1 engine's decoding steps, each step shared by the rows.
        ideal = t_prefill_batch + (t_engine_single - t_prefill_single) / args.batch_size
        rounds.append({
            "matmul_gflops": round(gflops, 1),
            "one_by_one_answers_per_s": round(args.questions / t_single, 3),
            f"batch{args.batch_size}_answers_per_s": round(args.questions / t_batch, 3),
            "batch1_answers_per_s": round(args.questions / t_engine_single, 3),
            "speedup": round(t_single / t_batch, 3),
            "speedup_over_batch1": round(t_engine_single / t_batch, 3),
            "ceiling": round(t_single / ideal, 3),
            "prefill_ms_per_answer": {f"batch{args.batch_size}": round(1000 * t_prefill_batch / args.questions, 1),
                                      "batch1": round(1000 * t_prefill_single / args.questions, 1)},
            "identical_answers": sum(a == b == c for a, b, c in zip(singles, batched, engine_singles)),
        })
    cache = image_cache_effect(owl, convs[0][0]["content"][0]["image"], questions, gen)
    speedups = [r["speedup"] for r in rounds]
    result = {
        "preset": args.preset,
        "threads": args.threads,
        "questions": args.questions,
        "max_new_tokens": args.max_new_tokens,
        "speedup": statistics.median(speedups),
        "speedup_min": min(speedups),
        "speedup_max": max(speedups),
        "speedup_over_batch1": statistics.median(r["speedup_over_batch1"] for r in rounds),
        "ceiling": statistics.median(r["ceiling"] for r in rounds),
        "target": 4.0,
        "identical_answers": min(r["identical_answers"] for r in rounds),
        "rounds": rounds,
        "image_cache": cache,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
