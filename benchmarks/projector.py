"""The abstractor against a linear projector of every patch: decoder positions and prefill time per image (JSON).

    python benchmarks/projector.py [--images 1 4] [--repeat 9]

Both models are owl-small's assembled base (SmolLM2-135M-Instruct + owl-tiny's encoder), one
with owl-small's abstractor (16 queries + ``vit_eos``), one with a linear layer on each of the
encoder's 64 patches (``projector: linear``; docs/paper-claims.md). Prefill time does not depend
on trained values, so the untrained bases measure it. For each image count: the prompt length,
the median prefill time (vision encoder, projector and the decoder's pass over the prompt,
batch 1, runs alternating between the two models in this process) and the ratio linear /
abstractor; plus the decoder positions per image.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from owlkit import Owl
from owlkit.zoo.small_model import TINY_ASSETS, assemble_base


def conversation(images: int) -> list[dict]:
    image = Image.open(TINY_ASSETS.parent / "examples" / "colour.png").convert("RGB")
    content = [{"type": "image", "image": image} for _ in range(images)]
    return [{"role": "user", "content": content + [{"type": "text", "text": "What colour is the square?"}]}]


def prefill_seconds(owl, batch) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        owl.model(**batch, use_cache=True)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args(argv)
    result: dict = {"threads": torch.get_num_threads(), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        models = {name: Owl.load(assemble_base(Path(tmp) / name, projector=name), dtype="float32")
                  for name in ("abstractor", "linear")}
        result["tokens_per_image"] = {name: owl.model.config.tokens_per_image for name, owl in models.items()}
        for images in args.images:
            batches = {name: owl.processor(conversation(images)) for name, owl in models.items()}
            times: dict[str, list[float]] = {name: [] for name in models}
            for name, owl in models.items():  # warm-up
                prefill_seconds(owl, batches[name])
            for _ in range(args.repeat):
                for name, owl in models.items():
                    times[name].append(prefill_seconds(owl, batches[name]))
            median = {name: statistics.median(t) for name, t in times.items()}
            result["rows"].append({
                "images": images,
                "prompt_positions": {name: int(b["input_ids"].shape[1]) - images + images * result["tokens_per_image"][name]
                                     for name, b in batches.items()},
                "prefill_ms": {name: round(1000 * m, 2) for name, m in median.items()},
                "linear_over_abstractor": round(median["linear"] / median["abstractor"], 3),
            })
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
