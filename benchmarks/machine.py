"""This machine's limits, measured in the same process as the benchmark that reports ratios."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch


def best_time(fn, repeat: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def copy_bandwidth(megabytes: int = 512) -> float:
    """Bytes per second moved by a large tensor copy (read + write counted)."""
    n = megabytes * 2**20 // 4
    src = torch.ones(n)
    dst = torch.empty(n)
    t = best_time(lambda: dst.copy_(src), repeat=5)
    return 2 * n * 4 / t


def matmul_rate(n: int = 1024, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a square matmul (2 n^3 FLOPs) in ``dtype`` (fp32 by default)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    t = best_time(lambda: a @ b, repeat=10, warmup=2)
    return 2 * n**3 / t


def proc_status_bytes(key: str) -> int:
    """A ``/proc/self/status`` figure in bytes (``VmRSS``, ``VmHWM``; Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def reset_peak_rss() -> None:
    """Start ``VmHWM`` (the peak resident set) afresh from here."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def decode_seconds(model, out, length: int, tokens: int, between=None) -> list[float]:
    """Seconds of each of ``tokens`` greedy decoding steps after a prefill's output ``out``
    over ``length`` positions, one token at a time with the cache (batch 1). ``between``, if
    given, is called after each step (outside the timing)."""
    cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    times = []
    with torch.inference_mode():
        for i in range(tokens):
            start = time.perf_counter()
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True,
                        attention_mask=torch.ones(1, length + i + 1, dtype=torch.long))
            times.append(time.perf_counter() - start)
            cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            if between is not None:
                between()
    return times


def decode_against_bandwidth(model, out, length: int, tokens: int, weight_bytes: int, megabytes: int = 256) -> dict:
    """Batch-1 decoding steps (:func:`decode_seconds`), each followed by a timed copy of
    ``megabytes``: on a machine whose memory bandwidth drifts from one second to the next (a
    shared host), each step is set against the bandwidth measured next to it. Returns the
    median step's tokens/s, the median copy bandwidth, and the median over steps of (the step's
    bound, ``weight_bytes`` over the bandwidth next to it) / (the step's time)."""
    n = megabytes * 2**20 // 4
    src, dst, bandwidths = torch.ones(n), torch.empty(n), []

    def copy():
        start = time.perf_counter()
        dst.copy_(src)
        bandwidths.append(2 * n * 4 / (time.perf_counter() - start))

    copy()
    bandwidths.clear()
    times = decode_seconds(model, out, length, tokens, between=copy)
    ratios = sorted(weight_bytes / bw / t for bw, t in zip(bandwidths, times))
    return {"tokens_per_s": 1 / sorted(times)[tokens // 2], "bandwidth": sorted(bandwidths)[tokens // 2],
            "of_bound": ratios[tokens // 2]}


def decode_weight_bytes(model) -> int:
    """Bytes of weights one text decoding step reads: the decoder's text branches (a step of
    text tokens skips the modality-adaptive module's visual branches), its final norm and the
    LM head, counted once even when it is tied to the input embedding, of which a step reads one
    row only (left out). Quantized layers count what they hold (``QuantizedLinear.nbytes``)."""
    from owlkit.quantization import QuantizedLinear

    def held(module) -> int:  # its own weights; buffers (rotary tables) are not weights
        if isinstance(module, QuantizedLinear):
            return module.nbytes()
        return sum(t.numel() * t.element_size() for t in module.parameters(recurse=False))

    total = 0
    for name, module in model.named_modules():
        inside = name.startswith("language_model.") and "embed_tokens" not in name and ".visual" not in name
        if inside:  # each module's own tensors once (recurse=False): nothing is counted twice
            total += held(module)
    return total + held(model.lm_head)


def arguments(args) -> dict:
    """A benchmark's parsed arguments as JSON values (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def emit(result: dict, output=None) -> dict:
    """Print ``result`` as JSON and, with ``output`` (a path), write it there too."""
    text = json.dumps(result, indent=2)
    print(text)
    if output:
        Path(output).write_text(text + "\n")
    return result
