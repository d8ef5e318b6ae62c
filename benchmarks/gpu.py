"""The 7B shapes on a GPU: prefill and decoding in bfloat16 with SDPA, against the HBM bound (JSON).

    python benchmarks/gpu.py [--preset owl2-llama2-7b] [--batches 1 32] [--tokens 32] [--quantize int8 int4]

Where a GPU is lent (CI never has one; no test needs this). The ``owl2-llama2-7b``-shaped model
(random weights, built directly on the GPU in bfloat16) runs, per batch size: the prefill of one
448 px image and 32 text tokens per row, then ``--tokens`` greedy decoding steps with the cache.
Each decoding step is compared with its memory bound: bytes a step must read (the decoder's
text-branch weights and the LM head, plus the key/value cache of every row) over the device's
copy bandwidth measured in the same process. ``--quantize`` repeats batch 1 with owlkit's
weight-only int8 / int4 layers (on a GPU they dequantize before the product; the figures say
what that costs). ``--device cpu --preset test-owl2`` checks the script itself on a machine
without a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import decode_weight_bytes  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, megabytes: int = 1024) -> float:
    """Bytes per second of a large on-device copy (read + write counted), best of 5."""
    n = megabytes * 2**20 // 2
    src = torch.ones(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for i in range(6):
        synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        if i:
            best = min(best, time.perf_counter() - start)
    return 2 * n * 2 / best


def build(preset: str, device: torch.device, quantize: str | None):
    """A random bfloat16 model of ``preset`` made on ``device`` (never a float32 copy of the whole)."""
    from owlkit import quantization as Q
    from owlkit.config import OwlConfig
    from owlkit.models.owl import OwlForCausalLM

    torch.manual_seed(0)
    config = OwlConfig.from_preset(preset)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = OwlForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    if quantize:
        Q.replace_linears(model, Q.parse_quantize(quantize), 128)
    return model.eval()


def cache_bytes(cache) -> int:
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def run(model, batch: int, tokens: int, device: torch.device, bandwidth: float) -> dict:
    cfg = model.config
    size = cfg.vision_config.image_size
    ids = torch.randint(3, cfg.text_config.vocab_size, (batch, 33), device=device)
    ids[:, 0], ids[:, 1] = 1, cfg.placeholder_id  # BOS, one image per row
    pixels = torch.randn(batch, 3, size, size, dtype=torch.bfloat16, device=device)
    with torch.inference_mode():
        model(input_ids=ids, pixel_values=pixels, use_cache=True)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        out = model(input_ids=ids, pixel_values=pixels, use_cache=True)
        synchronize(device)
        prefill = time.perf_counter() - start
        length = out.logits.shape[1]
        cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        times = []
        for i in range(tokens):
            synchronize(device)
            start = time.perf_counter()
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True,
                        attention_mask=torch.ones(batch, length + i + 1, dtype=torch.long, device=device))
            synchronize(device)
            times.append(time.perf_counter() - start)
            cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    step = statistics.median(times[1:] or times)
    per_step = decode_weight_bytes(model) + cache_bytes(cache)
    bound = bandwidth / per_step
    return {"batch": batch, "prompt_positions": length, "prefill_s": round(prefill, 4),
            "decode_step_s": round(step, 5), "tokens_per_s": round(batch / step, 1),
            "bytes_per_step_gb": round(per_step / 1e9, 2), "bound_steps_per_s": round(bound, 1),
            "of_bound": float(f"{1 / step / bound:.3g}")}  # significant digits: a tiny check model's is ~1e-4


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="owl2-llama2-7b")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--quantize", nargs="*", default=["int8", "int4"])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here; run it where a GPU is lent "
              "(or check the script with --device cpu --preset test-owl2)", file=sys.stderr)
        raise SystemExit(2)
    result: dict = {"preset": args.preset, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__}
    bandwidth = copy_bandwidth(device)
    result["copy_bandwidth_gb_s"] = round(bandwidth / 1e9, 1)
    model = build(args.preset, device, None)
    result["attention"] = getattr(model.config.text_config, "_attn_implementation", None) or "sdpa"
    result["bf16"] = [run(model, b, args.tokens, device, bandwidth) for b in args.batches]
    print(json.dumps(result["bf16"]), file=sys.stderr, flush=True)
    del model
    for kind in args.quantize:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            model = build(args.preset, device, kind)
            result[kind] = [run(model, 1, args.tokens, device, bandwidth)]
        except Exception as exc:  # a kernel the device lacks is a finding, not a crash
            result[kind] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        model = None
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
