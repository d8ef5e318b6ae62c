"""Training throughput and model FLOP utilisation (MFU) on this machine.

    python benchmarks/train.py                      # small preset, stage 2, batch 8, 2 threads, fp32
    python benchmarks/train.py --threads 1 --steps 6 --profile
    python benchmarks/train.py --precision fp32 bf16  # both, and bf16's speed as a ratio to fp32's

Runs the real training loop (``owlkit.training.train``: data, loss, backward, clipping, AdamW)
on random data (one image + ``--text-tokens`` text tokens per sample, half of them supervised)
and prints JSON:

* ``samples_per_s``: median over the measured steps (after ``--warmup`` steps);
* ``model_flops_per_sample``: the FLOPs the model needs per sample, counted per matrix as
  ``2 x params x tokens`` forward, ``+ 2 x params x tokens`` for weight gradients where the
  matrix trains, ``+ 2 x params x tokens`` for input gradients where a trainable part lies
  upstream (so the frozen vision encoder of stage 2 counts forward only, and the rest ``6 P T``),
  plus attention (``4 T^2 d`` forward per layer, halved for causal, x3 with backward). Each
  matrix counts the tokens it sees: vision ``1 + grid^2`` per image, abstractor queries ``Q``
  (keys/values ``Q + 1 + grid^2``), decoder ``65 + text``, the LM head only the supervised
  positions (the loss needs logits nowhere else). Embedding look-ups are free;
* ``counted_flops_per_sample``: the same, measured with ``torch.utils.flop_counter`` on one step;
* ``matmul_flops``: the matmul rate in the run's precision (fp32, or bf16 for bf16 autocast)
  measured in the same process (``machine.matmul_rate``);
* ``mfu`` = samples/s x model FLOPs per sample / matmul rate.

With several ``--precision`` values each gets its own run (same data, same seed) under
``runs``, and ``speedup_vs_fp32`` gives each run's samples/s over the fp32 run's. bf16 is
autocast with fp32 weights (``train.precision: bf16``); a CPU without avx512_bf16 or AMX
emulates it, far slower (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from machine import matmul_rate  # noqa: E402


def model_flops(config, text_tokens: int, supervised: int, stage: str) -> dict[str, float]:
    """Analytic FLOPs per sample (one image), split by part."""
    v, a, t = config.vision_config, config.abstractor_config, config.text_config
    vision_train = stage in ("owl2_stage1", "owl1_stage1")
    grid = v.image_size // v.patch_size
    nv = 1 + grid * grid
    q = a.num_queries
    tpi = config.tokens_per_image
    seq = 1 + tpi + text_tokens  # BOS + image + text
    text_positions = seq - tpi

    def mult(trainable: bool, upstream: bool) -> int:
        return 2 + (2 if trainable else 0) + (2 if upstream else 0)

    out: dict[str, float] = {}
    # vision: patch embedding (a matmul over patches) + layers
    dv, iv = v.hidden_size, v.intermediate_size
    per_layer = 4 * dv * dv + 2 * dv * iv  # qkv (3 d^2) + dense (d^2) + fc1 + fc2
    m = mult(vision_train, False)
    out["vision"] = m * (v.num_channels * v.patch_size**2 * dv * grid * grid + v.num_hidden_layers * per_layer * nv)
    out["vision_attention"] = v.num_hidden_layers * 4 * nv * nv * dv * (3 if vision_train else 1)
    # abstractor (trains in every stage): queries path and key/value path
    da, ia = a.hidden_size, a.intermediate_size
    q_path = 2 * da * da + 3 * da * ia  # query + out_proj + w1, w3, w2
    kv = 2 * a.encoder_hidden_size * da
    up = vision_train
    out["abstractor"] = a.num_hidden_layers * (
        6 * q_path * q
        + (2 + 2) * kv * (q + nv) + 2 * kv * (q + (nv if up else 0))  # input grads only where needed
    ) + 6 * da * t.hidden_size * q  # visual_fc
    out["abstractor_attention"] = a.num_hidden_layers * 4 * q * (q + nv) * da * 3
    # decoder: shared q/o/mlp on every position; k/v one branch per position
    d, inter = t.hidden_size, t.intermediate_size
    kvd = t.num_key_value_heads * (getattr(t, "head_dim", None) or d // t.num_attention_heads)
    dec_train = stage in ("owl2_stage2",)  # LoRA / stage 1: base weights frozen
    shared = 2 * d * d + 3 * d * inter
    kvp = 2 * d * kvd
    if stage == "owl2_stage1":  # only the visual branches train
        dec = t.num_hidden_layers * (
            mult(False, True) * shared * seq + mult(False, True) * kvp * text_positions + mult(True, True) * kvp * tpi
        )
    else:
        dec = t.num_hidden_layers * mult(dec_train, True) * (shared + kvp) * seq
    out["decoder"] = dec
    out["decoder_attention"] = t.num_hidden_layers * 4 * seq * seq * d / 2 * 3
    out["lm_head"] = mult(dec_train, True) * d * t.vocab_size * supervised
    out["total"] = sum(out.values())
    return out


def counted_flops(recipe: dict, batch: dict) -> float:
    """FLOPs of one forward + backward measured by torch's FLOP counter (per sample)."""
    from torch.utils.flop_counter import FlopCounterMode

    from owlkit.training.loss import LossModule
    from owlkit.training.params import apply_stage
    from owlkit.training.recipe import load_recipe
    from owlkit.training.setup import build_model

    r = load_recipe(recipe)
    model = build_model(r, 0)
    apply_stage(model, r["stage"])
    module = LossModule(model.train())
    counter = FlopCounterMode(display=False)
    with counter:
        module(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["pixel_values"]).backward()
    return counter.get_total_flops() / batch["input_ids"].shape[0]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--stage", default="owl2_stage2")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="measured steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also print the top operators of one step")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"],
                        help="train.precision of the runs (several: one run each, compared)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    from owlkit.config import OwlConfig
    from owlkit.training.sources import RandomDataset, tensor_collate

    config = OwlConfig.from_preset(args.preset)
    data = RandomDataset(args.batch, config.text_config.vocab_size, config.vision_config.image_size,
                         text_tokens=args.text_tokens, fixed_length=True, seed=1)
    batch = tensor_collate([data[i] for i in range(args.batch)])
    supervised = int((batch["labels"][:, 1:] != -100).sum()) / args.batch
    flops = model_flops(config, args.text_tokens, supervised, args.stage)
    runs = [run_precision(args, precision, flops) for precision in args.precision]
    report = {
        "preset": args.preset, "stage": args.stage, "batch": args.batch, "threads": args.threads,
        "text_tokens": args.text_tokens, "supervised_tokens_per_sample": supervised,
        "model_flops_per_sample": round(flops["total"]),
        "flops_breakdown": {k: round(v / flops["total"], 4) for k, v in flops.items() if k != "total"},
        "runs": runs,
    }
    fp32 = next((r for r in runs if r["precision"] == "fp32"), None)
    if fp32 is not None:
        for r in runs:
            r["speedup_vs_fp32"] = round(r["samples_per_s"] / fp32["samples_per_s"], 3)
    if len(runs) == 1:  # one run: its figures at the top level, as before
        report.update(runs.pop())
        del report["runs"]
    recipe = _recipe(args, args.precision[0], "unused")
    report["counted_flops_per_sample"] = round(counted_flops(recipe, batch))
    if args.profile:
        _profile(recipe, batch)
    print(json.dumps(report, indent=2))
    return report


def _recipe(args, precision: str, output_dir: str) -> dict:
    recipe = {
        "model": {"preset": args.preset},
        "stage": args.stage,
        "data": {"sources": [{"type": "random", "num_samples": 4096, "text_tokens": args.text_tokens,
                              "fixed_length": True, "images_per_sample": 1}], "max_length": 4096},
        "optim": {"lr": 1e-5, "warmup_steps": 1, "weight_decay": 0.05},
        "train": {"steps": args.warmup + args.steps, "micro_batch_size": args.batch, "grad_accum": 1,
                  "threads": args.threads, "precision": precision, "device": "cpu"},
        "checkpoint": {"every": 0, "keep": 1},
        "log": {"progress": False, "every": 10**6},
        "output_dir": output_dir,
    }
    if args.stage == "owl1_stage2":
        recipe["lora"] = {"r": 8}
    return recipe


def run_precision(args, precision: str, flops: dict) -> dict:
    """One training run in ``precision``: samples/s (median step) and MFU against the matmul rate
    of that precision, measured before and after the run (the better of the two)."""
    import contextlib
    import io

    from owlkit.training import train

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    rate = matmul_rate(dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.redirect_stdout(io.StringIO()):
            result = train(_recipe(args, precision, os.path.join(tmp, "run")))
    rate = max(rate, matmul_rate(dtype=dtype))
    rows = result.history[args.warmup:]
    step_s = statistics.median(args.batch / r["samples_per_s"] for r in rows)
    sps = args.batch / step_s
    return {
        "precision": precision,
        "samples_per_s": round(sps, 3), "step_s": round(step_s, 4),
        "step_s_each": [round(args.batch / r["samples_per_s"], 3) for r in rows],
        "achieved_flops": round(sps * flops["total"]),
        "matmul_flops": round(rate),
        "mfu": round(sps * flops["total"] / rate, 4),
        "losses": [round(r["loss"], 4) for r in result.history],
    }


def _profile(recipe: dict, batch: dict) -> None:
    from torch.profiler import ProfilerActivity, profile

    from owlkit.training.loss import LossModule
    from owlkit.training.params import apply_stage
    from owlkit.training.recipe import load_recipe
    from owlkit.training.setup import build_model

    r = load_recipe(recipe)
    model = build_model(r, 0)
    apply_stage(model, r["stage"])
    module = LossModule(model.train())
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    for i in range(2):
        with profile(activities=[ProfilerActivity.CPU]) if i else contextlib_null() as prof:
            module(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["pixel_values"]).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)


def contextlib_null():
    import contextlib

    return contextlib.nullcontext()


if __name__ == "__main__":
    main()
