"""``owl info MODEL``: what a model folder holds, and the memory it needs per dtype.

Nothing of the weights is read (the headers only), so it answers at once even for a 7B model.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from owlkit.zoo.bundled import resolve_model


def add_arguments(parser) -> None:
    parser.add_argument("model", help="model folder, or a bundled model: owl-small, owl-tiny")


def run(args) -> int:
    import torch

    from owlkit.checkpoints import FORMATS, detect_format, read_config  # torch: import only when the command runs
    from owlkit.memory import COMFORTABLE, available_bytes, gb, needed_bytes  # torch: import only when the command runs
    from owlkit.models.owl import OwlForCausalLM  # torch: import only when the command runs
    from owlkit.quantization import CONFIG_KEY, QuantizedLinear, group_size_for, replace_linears  # torch: import only when the command runs
    from owlkit.weight_files import weight_index  # torch: import only when the command runs

    folder = resolve_model(args.model)
    kind = detect_format(folder)
    cfg = read_config(folder, kind)
    index = weight_index(folder)
    quantized = getattr(cfg, CONFIG_KEY, None)
    with torch.device("meta"):
        model = OwlForCausalLM(cfg)
    float_params = sum(p.numel() for p in model.parameters())
    if quantized:
        replace_linears(model, quantized["bits"], quantized["group_size"], set(quantized.get("kept", [])))
        float_params = sum(p.numel() for p in model.parameters())
    fixed = sum(b.numel() * b.element_size() for m in model.modules() if isinstance(m, QuantizedLinear)
                for b in m.buffers())
    with torch.device("meta"):
        model = OwlForCausalLM(cfg)
    counts = Counter()
    for name, p in model.named_parameters():
        counts[name.split(".")[0]] += p.numel()
    total = sum(counts.values())
    stored = Counter(str(i.dtype).removeprefix("torch.") for i in index.values())
    print(f"format: {FORMATS[kind]}  (mPLUG-Owl{'2' if cfg.owl_version == 2 else ''} architecture)")
    v, a, t = cfg.vision_config, cfg.abstractor_config, cfg.text_config
    print(f"vision: {v.num_hidden_layers} layers x {v.hidden_size}, {v.image_size}px / patch {v.patch_size}")
    if a.projector == "linear":
        print(f"projector: linear, one position per patch ({cfg.tokens_per_image} an image)")
    else:
        words = "" if a.projector != "words" else (
            f", read as words ({len(a.word_ids) if a.word_ids is not None else 'all'} of the vocabulary), no vit_eos")
        print(f"abstractor: {a.num_hidden_layers} layers x {a.hidden_size}, {a.num_queries} queries, "
              f"positions {a.pos_embed}{words}")
    print(f"decoder: {t.num_hidden_layers} layers x {t.hidden_size}, heads {t.num_attention_heads}/{t.num_key_value_heads} (q/kv), "
          f"vocab {t.vocab_size}, modality-adaptive {cfg.modality_adaptive}")
    for name, n in counts.items():
        print(f"  {name:<15} {n:>14,d} parameters")
    print(f"  {'total':<15} {total:>14,d} parameters")
    if quantized:
        print(f"quantized: int{quantized['bits']}" + (f" in groups of {quantized['group_size']}" if quantized["bits"] == 4 else
                                                      " per output channel")
              + f" (decoder linears and LM head; {len(quantized.get('kept', []))} layer(s) kept unquantized"
              + (f"; {len(quantized['in_int8'])} in int8, their widths not a multiple of the group size"
                 if quantized.get("in_int8") else "")
              + (f"; {len(quantized['low_rank'])} with a low-rank update in float" if quantized.get("low_rank") else "")
              + ")")
    files = sorted({i.file for i in index.values()})
    print(f"weights: {len(files)} file(s), {gb(sum(f.stat().st_size for f in files))}, stored as "
          + ", ".join(f"{d} ({n} tensors)" for d, n in stored.most_common()))
    available = available_bytes("cpu")
    print(f"memory to run it (this machine has {gb(available) if available is not None else 'an unknown amount'} available):")
    for dtype in (torch.float32, torch.bfloat16):
        need = needed_bytes(float_params, dtype, fixed)
        verdict = "" if available is None else (
            "  fits comfortably (the CPU default)" if dtype == torch.float32 and need <= COMFORTABLE * available
            else "  fits" if need <= available else "  does not fit")
        print(f"  {str(dtype).removeprefix('torch.'):<9} {gb(need):>9}{verdict}")
    if not quantized:
        for bits in (8, 4):
            with torch.device("meta"):
                shell = OwlForCausalLM(cfg)
            replace_linears(shell, bits, group_size_for(cfg, None, str(folder / "config.json")))
            rest = sum(p.numel() for p in shell.parameters())
            q = sum(b.numel() * b.element_size() for m in shell.modules() if isinstance(m, QuantizedLinear) for b in m.buffers())
            need = needed_bytes(rest, torch.bfloat16, q)
            verdict = "" if available is None else ("  fits" if need <= available else "  does not fit")
            print(f"  int{bits} (--quantize int{bits}, rest in bfloat16) {gb(need):>9}{verdict}")
    return 0
