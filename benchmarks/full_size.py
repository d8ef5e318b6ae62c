"""The released 7B checkpoints on this machine: load time, peak memory, prefill and decoding.

Writes, once, an official-format mPLUG-Owl2 folder of the ``owl2-llama2-7b`` shapes (8.2 B
parameters, random fp16 weights): two ``pytorch_model-0000N-of-00002.bin`` shards and their
index as the release ships, and the same weights as two safetensors shards. Then, for each
layout and each dtype, a fresh process loads it with ``owlkit.load_model`` and reports (JSON):

* ``load_s``; ``peak_rss_ratio``: the load's peak resident memory over the model's in-memory
  size (target: at most 1.15, plus one shard's largest tensor);
* ``prefill_s``: one image at the preset's size (448 px) and 32 text tokens;
* ``decode_s_per_token`` and ``decode_of_bound``: the memory-bandwidth bound of a token (bytes
  of weights a decoding step reads: the decoder's text branch and the LM head, over the copy
  bandwidth measured in the same process) divided by the measured time;
* a dtype that does not fit is not loaded: its entry holds owlkit's one-line refusal.

    python benchmarks/full_size.py [--dir /tmp/owl2-7b] [--preset owl2-llama2-7b] [--decode-tokens 4]

The folder takes 2 x 16 GB of disk for the 7B shapes; it is reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

PROBE = r"""
import gc, json, sys, time
sys.path.insert(0, {here!r})
import torch
import owlkit.models.owl, transformers.models.llama.modeling_llama, safetensors.torch  # before the baseline
from machine import copy_bandwidth, decode_seconds, decode_weight_bytes, proc_status_bytes as status, reset_peak_rss
from owlkit.checkpoints import load_model
from owlkit.errors import OwlError

folder, dtype, decode_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
quantize = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] != "none" else None
torch.manual_seed(0)
gc.collect()
base = status("VmRSS")
reset_peak_rss()
start = time.perf_counter()
try:
    model = load_model(folder, dtype=dtype, quantize=quantize)
except OwlError as exc:
    print(json.dumps({{"refused": str(exc)}}))
    sys.exit(0)
load_s = time.perf_counter() - start
peak = status("VmHWM")
from owlkit.quantization import QuantizedLinear
size = sum(p.numel() * p.element_size() for p in model.parameters())
size += sum(m.nbytes() for m in model.modules() if isinstance(m, QuantizedLinear))
cfg = model.config
per_token = decode_weight_bytes(model)
size_px = cfg.vision_config.image_size
ids = torch.randint(3, cfg.text_config.vocab_size, (1, 33))
ids[0, 0], ids[0, 1] = 1, -200  # BOS, one image
pixels = torch.randn(1, 3, size_px, size_px, dtype=model.dtype)
with torch.inference_mode():
    start = time.perf_counter()
    out = model(input_ids=ids, pixel_values=pixels, use_cache=True)
    prefill_s = time.perf_counter() - start
times = decode_seconds(model, out, out.logits.shape[1], decode_tokens)
del model, out
gc.collect()
bandwidth = copy_bandwidth(1024)
decode = sorted(times)[len(times) // 2]
print(json.dumps({{
    "load_s": round(load_s, 2), "model_gb": round(size / 2**30, 2), "peak_rss_gb": round((peak - base) / 2**30, 2),
    "peak_rss_ratio": round((peak - base) / size, 3), "prefill_s": round(prefill_s, 2),
    "decode_s_per_token": round(decode, 3), "bytes_per_token_gb": round(per_token / 2**30, 2),
    "bandwidth_gb_s": round(bandwidth / 2**30, 1), "decode_bound_s": round(per_token / bandwidth, 3),
    "decode_of_bound": round(per_token / bandwidth / decode, 3),
}}))
"""


def write_checkpoint(folder: Path, preset: str) -> dict:
    """Random fp16 weights in the official layout, as .bin shards and as safetensors shards."""
    from safetensors.torch import save_file

    from owlkit.checkpoints import config_to_official, official_buffers, official_names
    from owlkit.config import OwlConfig
    from owlkit.models.owl import OwlForCausalLM

    done = folder / "written.json"
    if done.exists():
        return json.loads(done.read_text())
    config = OwlConfig.from_preset(preset)
    with torch.device("meta"):
        model = OwlForCausalLM(config)
    shapes = {name: p.shape for name, p in model.state_dict().items()}
    table = official_names(config)
    total = sum(s.numel() for s in shapes.values())
    halves, acc, cut = [[], []], 0, total / 2
    for ours, official in table.items():
        halves[0 if acc < cut else 1].append((ours, official))
        acc += shapes[ours].numel()
    generator = torch.Generator().manual_seed(0)
    bin_dir, st_dir = folder / "bin", folder / "safetensors"
    for d in (bin_dir, st_dir):
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(config_to_official(config), indent=2) + "\n")
    bin_map, st_map = {}, {}
    for i, part in enumerate(halves):
        shard = {}
        for ours, official in part:
            shape = shapes[ours]
            if ours.endswith(("norm.weight", "norm1.weight", "norm2.weight", "normk.weight", "ffn_ln.weight")) or \
                    ("layernorm" in ours and ours.endswith("weight")):
                shard[official] = torch.ones(shape, dtype=torch.float16)
            else:
                shard[official] = (torch.randn(shape, generator=generator) * 0.02).to(torch.float16)
        if i == 1:
            shard.update({k: v.to(torch.float16) for k, v in official_buffers(config).items()})
        bin_name, st_name = f"pytorch_model-0000{i + 1}-of-00002.bin", f"model-0000{i + 1}-of-00002.safetensors"
        torch.save(shard, bin_dir / bin_name)
        save_file(shard, str(st_dir / st_name), metadata={"format": "pt"})
        bin_map.update(dict.fromkeys(shard, bin_name))
        st_map.update(dict.fromkeys(shard, st_name))
        del shard
    size = total * 2
    (bin_dir / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": size}, "weight_map": bin_map}))
    (st_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": size}, "weight_map": st_map}))
    info = {"preset": preset, "parameters": total, "fp16_gb": round(size / 2**30, 2)}
    done.write_text(json.dumps(info))
    return info


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/tmp/owlkit-full-size", help="where the checkpoint is written (reused)")
    parser.add_argument("--preset", default="owl2-llama2-7b")
    parser.add_argument("--layouts", default="bin,safetensors")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--decode-tokens", type=int, default=4)
    parser.add_argument("--quantize", default="none", help="none, int8 or int4: quantized while loading")
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    start = time.perf_counter()
    info = write_checkpoint(folder, args.preset)
    result = {"checkpoint": info, "write_s": round(time.perf_counter() - start, 1), "runs": {}}
    for layout in args.layouts.split(","):
        for dtype in args.dtypes.split(","):
            done = subprocess.run([sys.executable, "-c", PROBE.format(here=str(HERE)), str(folder / layout), dtype,
                                   str(args.decode_tokens), args.quantize], capture_output=True, text=True)
            if done.returncode != 0:
                entry = {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
            else:
                entry = json.loads(done.stdout.strip().splitlines()[-1])
            name = f"{layout}/{dtype}" + (f"+{args.quantize}" if args.quantize != "none" else "")
            result["runs"][name] = entry
            print(json.dumps({name: entry}), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
