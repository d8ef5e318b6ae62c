"""owl-small against its targets: the world's tasks, the language check, decoding speed (JSON).

    python benchmarks/small.py [--seed 4242] [--n-per-task 200] [--skip-eval]

* ``world``: ``owl eval synth --model owl-small --seed S --n-per-task N`` accuracies per task,
  next to the targets (a seed the build never used: the build evaluates on seed 2000);
* ``language``: the general questions answered and the held-out perplexity of owl-small and of
  SmolLM2-135M-Instruct alone (the assembled base before any training: without an image its
  decoder computes exactly SmolLM2's logits);
* ``speed``: batch-1 greedy decoding (after a prompt with one image) in tokens/s, as
  ``Owl.load`` gives the model and in the checkpoint's row-major layout (``row_major``, and the
  ratio of the two, as ratios to their bounds), against the memory-bandwidth bound = copy bandwidth / bytes of weights
  read per token (the decoder's text branches, its norm and the LM head, which SmolLM2 ties to
  the embedding: ``machine.decode_weight_bytes``), and the ratio of the two. The bandwidth is
  measured after every step (``machine.decode_against_bandwidth``: on a shared host it drifts by
  a third within a minute) and the ratio is the median of each step's against its neighbour.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import decode_against_bandwidth, decode_seconds, decode_weight_bytes  # noqa: E402

from owlkit import Owl  # noqa: E402
from owlkit.zoo.language_check import language_summary as language  # noqa: E402
from owlkit.zoo.small import TARGETS  # noqa: E402
from owlkit.zoo.small_model import TINY_ASSETS, assemble_base  # noqa: E402
from owlkit.zoo.synth_eval import evaluate_synth  # noqa: E402



def decode_speed(owl, tokens: int = 64) -> dict:
    """Batch-1 greedy decoding steps after a one-image prompt (the model's own steps, with its cache)."""
    from PIL import Image

    image = Image.open(TINY_ASSETS.parent / "examples" / "colour.png")
    conv = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Describe the image."}]}]
    batch = owl.processor(conv)
    model = owl.model
    with torch.inference_mode():
        out = model(**batch, use_cache=True)
    length = out.attention_mask.shape[1]
    decode_seconds(model, out, length, 4)  # warm-up
    per_token = decode_weight_bytes(model)
    measured = decode_against_bandwidth(model, out, length, tokens, per_token)
    bandwidth = measured["bandwidth"]
    return {"tokens_per_s": round(measured["tokens_per_s"], 2), "bytes_per_token": per_token,
            "bandwidth_gb_s": round(bandwidth / 1e9, 2), "bound_tokens_per_s": round(bandwidth / per_token, 2),
            "of_bound": round(measured["of_bound"], 3), "dtype": str(model.dtype)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--n-per-task", type=int, default=200)
    parser.add_argument("--skip-eval", action="store_true", help="only the language check and the speed")
    args = parser.parse_args()
    result: dict = {"model": "owl-small"}
    owl = Owl.load("owl-small", dtype="float32")
    result["speed"] = decode_speed(owl)
    # the same model in the checkpoint's row-major layout, in the same process (Owl.load's
    # decoding_layout: wide matrices column-major is the default)
    row_major = decode_speed(Owl.load("owl-small", dtype="float32", decoding_layout="row-major"))
    result["speed"]["row_major"] = row_major
    # as ratios of their bounds: each against the bandwidth measured beside it (the same bytes a token)
    result["speed"]["speedup_over_row_major"] = round(result["speed"]["of_bound"] / row_major["of_bound"], 3)
    print(json.dumps(result["speed"]), file=sys.stderr, flush=True)
    if not args.skip_eval:
        world = evaluate_synth(owl, args.seed, args.n_per_task, batch_size=32)
        result["world"] = {task: {"accuracy": round(row["accuracy"], 4), "target": TARGETS.get(task)}
                           for task, row in world["tasks"].items()}
    result["language"] = {"owl-small": language(owl)}
    del owl
    with tempfile.TemporaryDirectory() as tmp:
        base = Owl.load(assemble_base(Path(tmp) / "base"), dtype="float32")
        result["language"]["SmolLM2-135M-Instruct"] = language(base)
    small, smol = result["language"]["owl-small"], result["language"]["SmolLM2-135M-Instruct"]
    result["language"]["kept"] = {
        "general": small["general_correct"] >= smol["general_correct"] - 2,
        "perplexity_ratio": round(small["perplexity"] / smol["perplexity"], 4),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
