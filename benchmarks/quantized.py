"""Weight-only int8 / int4 against float: batch-1 decoding speed, and the 7B shapes' memory.

Part 1, the ``small`` preset (random weights), in one process: a 32-token text prompt is
prefilled, then ``--tokens`` tokens are decoded one at a time with the cache; the median time
of a token for float32, bfloat16, int8 and int4 (the rest of an int8 / int4 model in float32 and
in bfloat16: the faster is reported), with the ratios to float32 measured in the same run. Every
model is arranged as ``Owl.load`` arranges it (a float32 decoder's matrices placed, its
one-position steps run as a flat loop: quantized layers too); float32 is also measured in the
checkpoint's row-major layout through the modules, the baseline before placement.
Targets: int8 at least 1.5x, int4 at least 2.0x float32.

Part 2 (``--full``), the ``owl2-llama2-7b`` shapes, each in a fresh process: the model built
directly in bfloat16 or quantized, layer by layer (random weights; never a float32 copy of the
whole), then prefill of one 448 px image and 32 tokens, decoding, and the peak resident memory.
Each decode is reported as a share of its memory bound (bytes of weights a token reads over the
copy bandwidth measured in the same process). Targets: int4 decode at least 60% of its bound,
int4 peak RSS at most 6 GB.

    python benchmarks/quantized.py [--tokens 16] [--full] [--full-tokens 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def build(preset: str, dtype: torch.dtype, quantize: str | None, group_size: int = 128, seed: int = 0):
    """A random model of ``preset`` made tensor by tensor (meta first), quantized layer by layer.

    Random values are drawn in ``dtype`` (bfloat16 for the matrices that are quantized) and scaled
    in place: a float32 draw and its scaled copy of the 7B shapes' LM head or embedding (32,000 x
    4,096) would hold 1 GB for a moment and set the peak RSS above what loading a folder needs.
    """
    from owlkit import quantization as Q
    from owlkit.config import OwlConfig
    from owlkit.models.owl import OwlForCausalLM

    torch.manual_seed(seed)
    config = OwlConfig.from_preset(preset)
    with torch.device("meta"):
        model = OwlForCausalLM(config)
    if quantize:
        Q.replace_linears(model, Q.parse_quantize(quantize), group_size)
    for module in model.modules():
        if isinstance(module, Q.QuantizedLinear):
            weight = torch.randn(module.out_features, module.in_features, dtype=torch.bfloat16).mul_(0.02)
            module.set_weight(weight, "cpu", prepare=True)
            del weight
            continue
        for name, p in list(module._parameters.items()):
            if p is not None and p.device.type == "meta":
                value = torch.ones(p.shape, dtype=dtype) if "norm" in name or p.dim() == 1 and "bias" not in name \
                    else torch.randn(p.shape, dtype=dtype).mul_(0.02)
                module._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    model.language_model.rotary_emb = LlamaRotaryEmbedding(config.text_config)
    return model.eval()


def decode_times(model, prompt: int, tokens: int) -> list[float]:
    from machine import decode_seconds

    ids = torch.randint(3, model.config.text_config.vocab_size, (1, prompt))
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
    return decode_seconds(model, out, ids.shape[1], tokens)


def small(tokens: int) -> dict:
    from owlkit import quantization as Q
    from owlkit.models.cpu_decoding import arrange_for_decoding

    variants = {"float32": (torch.float32, None), "float32 (row-major)": (torch.float32, None),
                "bfloat16": (torch.bfloat16, None)}
    for q in ("int8", "int4"):
        variants[f"{q} (rest float32)"] = (torch.float32, q)
        variants[f"{q} (rest bfloat16)"] = (torch.bfloat16, q)
    models = {name: build("small", dtype, q) for name, (dtype, q) in variants.items()}
    for name, model in models.items():  # as Owl.load arranges them (a float32 decoder: placed, steps planned)
        if name != "float32 (row-major)":
            arrange_for_decoding(model)
    for bits in (8, 4):
        Q.compute_path(bits)
    medians = {name: [] for name in models}
    for _ in range(3):  # rounds take turns, so a slow minute of the machine falls on all
        for name, model in models.items():
            medians[name].append(statistics.median(decode_times(model, 32, tokens)))
    ms = {name: round(1000 * min(v), 2) for name, v in medians.items()}
    base, row_major = ms["float32"], ms["float32 (row-major)"]
    best = {q: min((n for n in ms if n.startswith(q)), key=ms.get) for q in ("int8", "int4")}
    return {
        "ms_per_token": ms,
        "step_plan": {name: m.language_model.step_plan is not None for name, m in models.items()},
        "kernel_path": {"int8": Q.compute_path(8), "int4": Q.compute_path(4)},
        "speedup_vs_float32": {q: {"variant": best[q], "x": round(base / ms[best[q]], 2)} for q in best}
        | {"bfloat16": {"variant": "bfloat16", "x": round(base / ms["bfloat16"], 2)}},
        "speedup_vs_float32_row_major": {q: round(row_major / ms[best[q]], 2) for q in best},
    }


PROBE = r"""
import gc, json, sys, time
sys.path.insert(0, {here!r})
import torch
from machine import copy_bandwidth, decode_seconds, decode_weight_bytes, proc_status_bytes as status
from quantized import build
from owlkit import quantization as Q

quantize = None if sys.argv[1] == "none" else sys.argv[1]
tokens = int(sys.argv[2])
base = status("VmRSS")
start = time.perf_counter()
model = build("owl2-llama2-7b", torch.bfloat16, quantize)
build_s = time.perf_counter() - start
cfg = model.config
per_token = decode_weight_bytes(model)
size_px = cfg.vision_config.image_size
ids = torch.randint(3, cfg.text_config.vocab_size, (1, 33))
ids[0, 0], ids[0, 1] = 1, -200
pixels = torch.randn(1, 3, size_px, size_px, dtype=torch.bfloat16)
with torch.inference_mode():
    start = time.perf_counter()
    out = model(input_ids=ids, pixel_values=pixels, use_cache=True)
    prefill_s = time.perf_counter() - start
times = decode_seconds(model, out, out.logits.shape[1], tokens)
peak = status("VmHWM")
del model, out
gc.collect()
bandwidth = copy_bandwidth(1024)
decode = sorted(times)[len(times) // 2]
print(json.dumps({{
    "build_s": round(build_s, 1), "peak_rss_gb": round(peak / 2**30, 2), "prefill_s": round(prefill_s, 2),
    "decode_s_per_token": round(decode, 3), "tokens_per_s": round(1 / decode, 2),
    "bytes_per_token_gb": round(per_token / 2**30, 2), "bandwidth_gb_s": round(bandwidth / 2**30, 1),
    "decode_of_bound": round(per_token / bandwidth / decode, 3),
    "kernel_path": Q.compute_path(8 if quantize == "int8" else 4) if quantize else None,
}}))
"""


def full(tokens: int, variants: list[str]) -> dict:
    out = {}
    for quantize in variants:
        done = subprocess.run([sys.executable, "-c", PROBE.format(here=str(HERE)), quantize, str(tokens)],
                              capture_output=True, text=True)
        name = "bfloat16" if quantize == "none" else quantize
        out[name] = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else \
            {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
        print(json.dumps({name: out[name]}), file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--full", action="store_true", help="also the owl2-llama2-7b shapes (minutes, ~16 GB of RAM)")
    parser.add_argument("--full-tokens", type=int, default=4)
    parser.add_argument("--full-variants", default="none,int8,int4", help="of the 7B shapes: none (bfloat16), int8, int4")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"threads": torch.get_num_threads(), "small": small(args.tokens)}
    if args.full:
        result["owl2-llama2-7b"] = full(args.full_tokens, args.full_variants.split(","))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
