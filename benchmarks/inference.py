"""Inference speed of the ``small`` preset against this machine's own limits.

Prefill (one image + 32 text tokens) is compared with the fp32 matmul rate; batch-1 greedy
decoding with the time to read the decoder's weights once per token at the measured copy
bandwidth; batch-8 decoding with batch 1. Prints JSON.

    python benchmarks/inference.py [--threads 2] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import best_time, copy_bandwidth, decode_weight_bytes, matmul_rate  # noqa: E402


def prefill_flops(cfg, text_tokens: int) -> float:
    """Matmul FLOPs of one image + ``text_tokens`` through vision, abstractor and decoder (last logit row)."""
    v, a, t = cfg.vision_config, cfg.abstractor_config, cfg.text_config
    n = v.num_positions
    vision = v.num_hidden_layers * (2 * n * (4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size) + 4 * n * n * v.hidden_size)
    q, kv = a.num_queries, a.num_queries + n
    d = a.hidden_size
    abstractor = a.num_hidden_layers * (
        2 * q * d * d * 2 + 2 * kv * d * d * 2 + 4 * q * kv * d + 2 * q * 3 * d * a.intermediate_size
    ) + 2 * q * d * t.hidden_size
    length = text_tokens + cfg.tokens_per_image
    h = t.hidden_size
    kv_width = t.num_key_value_heads * (h // t.num_attention_heads)
    decoder = t.num_hidden_layers * (
        2 * length * (2 * h * h + 2 * h * kv_width + 3 * h * t.intermediate_size) + 4 * length * length * h
    ) + 2 * h * t.vocab_size
    return vision + abstractor + decoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--row-major", action="store_true", help="keep PyTorch's default weight layout (baseline)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from owlkit.config import OwlConfig
    from owlkit.models.owl import OwlForCausalLM

    bandwidth = copy_bandwidth()
    flops_rate = matmul_rate()
    cfg = OwlConfig.from_preset(args.preset)
    model = OwlForCausalLM(cfg).eval()
    weight_bytes = decode_weight_bytes(model)
    layout = "row-major (default)"
    if not args.row_major:
        from owlkit.models.cpu_decoding import optimize_for_cpu_decoding

        layout = optimize_for_cpu_decoding(model)
    size = cfg.vision_config.image_size
    text = 32
    ids = torch.randint(3, cfg.text_config.vocab_size, (1, text + 1))
    ids[0, 0] = 1
    ids[0, 5] = -200
    image = torch.randn(1, 3, size, size)

    with torch.inference_mode():
        t_prefill = best_time(lambda: model(input_ids=ids, pixel_values=image, logits_to_keep=1), repeat=5)
    flops = prefill_flops(cfg, text)

    gen = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False)

    def decode_rate(batch: int) -> float:
        b_ids = ids.repeat(batch, 1)
        b_img = image.repeat(batch, 1, 1, 1)
        with torch.inference_mode():
            model.generate(input_ids=b_ids, pixel_values=b_img, max_new_tokens=2, do_sample=False)  # warm-up
            t_pre = best_time(lambda: model.generate(input_ids=b_ids, pixel_values=b_img, max_new_tokens=1, do_sample=False), repeat=3)
            start = time.perf_counter()
            model.generate(input_ids=b_ids, pixel_values=b_img, **gen)
            total = time.perf_counter() - start
        return (total - t_pre) / (args.tokens - 1)  # seconds per decoding step

    step1 = decode_rate(1)
    step8 = decode_rate(8)
    bound_step = weight_bytes / bandwidth
    result = {
        "preset": args.preset,
        "decoding_layout": layout,
        "threads": args.threads,
        "machine": {"copy_bandwidth_GBps": bandwidth / 1e9, "matmul_fp32_GFLOPs": flops_rate / 1e9},
        "prefill": {
            "seconds": t_prefill, "GFLOP": flops / 1e9, "GFLOPs": flops / t_prefill / 1e9,
            "ratio_to_matmul_rate": flops / t_prefill / flops_rate, "target": 0.5,
        },
        "decode_batch1": {
            "ms_per_token": step1 * 1e3, "weight_MB_per_token": weight_bytes / 1e6,
            "bound_ms_per_token": bound_step * 1e3, "ratio_to_bandwidth_bound": bound_step / step1, "target": 0.7,
        },
        "decode_batch8": {
            "ms_per_step": step8 * 1e3, "tokens_per_s": 8 / step8,
            "throughput_vs_batch1": (8 / step8) / (1 / step1), "target": 6.0,
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
