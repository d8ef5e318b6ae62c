"""owlkit int4 against llama.cpp Q4_0: text-only decoding of the LLaMA-2-7B shapes, side by side.

Run only when asked (never in ``make test``): llama.cpp is the ``llama-cpp-python`` package,
built from source in an environment of its own, never a dependency of owlkit::

    python3 -m venv /tmp/llamaenv
    /tmp/llamaenv/bin/pip install llama-cpp-python gguf      # compiles llama.cpp (~15 min on 2 cores)
    python benchmarks/llama_cpp_peer.py --llama-python /tmp/llamaenv/bin/python

1. With that environment's ``gguf`` package it writes a GGUF of the LLaMA-2-7B shapes (32 layers
   x 4096, 32 heads, vocabulary 32,000) with random weights: every matrix Q4_0 (4-bit values in
   blocks of 32 with an fp16 scale: random bytes, so nothing needs quantizing), the output matrix
   Q8_0 (owlkit's int4 mode keeps its LM head in int8 too), norms F32.
2. llama.cpp (2 threads, the same as owlkit) prefills 32 tokens and decodes ``--tokens`` more,
   one at a time; the median time of a token is kept.
3. owlkit builds the ``owl2-llama2-7b`` preset in int4 (benchmarks/quantized.py, a fresh
   process) and decodes text tokens the same way (its decoder has the same shapes; the visual
   branches of the modality-adaptive module are not read for text).

Prints JSON with both times and ``owlkit_over_llama_cpp`` (llama.cpp's time over owlkit's: above
1 means owlkit decodes faster).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

WRITE_AND_RUN = r"""
import json, statistics, sys, time
from pathlib import Path
import numpy as np
import gguf

path, tokens, threads = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
D, F, L, H, V = 4096, 11008, 32, 32, 32000
rng = np.random.default_rng(0)

def q_blocks(rows, cols, kind):
    # Random quantized blocks; the scale is a small fp16 so that activations stay finite.
    if kind == gguf.GGMLQuantizationType.Q4_0:
        block = np.empty((rows * cols // 32, 18), dtype=np.uint8)
        block[:, :2] = np.frombuffer(np.float16(0.002).tobytes(), dtype=np.uint8)
        block[:, 2:] = rng.integers(0, 256, (block.shape[0], 16), dtype=np.uint8)
    else:  # Q8_0: fp16 scale + 32 int8
        block = np.empty((rows * cols // 32, 34), dtype=np.uint8)
        block[:, :2] = np.frombuffer(np.float16(0.0002).tobytes(), dtype=np.uint8)
        block[:, 2:] = rng.integers(0, 256, (block.shape[0], 32), dtype=np.uint8)
    return block.reshape(rows, -1)

if not path.exists():
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(4096); w.add_embedding_length(D); w.add_block_count(L); w.add_feed_forward_length(F)
    w.add_head_count(H); w.add_head_count_kv(H); w.add_rope_dimension_count(D // H)
    w.add_layer_norm_rms_eps(1e-5); w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    w.add_tokenizer_model("llama")
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    toks += [f"t{i}" for i in range(V - len(toks))]
    types = [2, 3, 3] + [6] * 256 + [1] * (V - 259)
    w.add_token_list(toks); w.add_token_scores([0.0] * V); w.add_token_types(types)
    w.add_bos_token_id(1); w.add_eos_token_id(2); w.add_unk_token_id(0)
    Q4, Q8 = gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q8_0
    def add(name, rows, cols, kind):
        w.add_tensor(name, q_blocks(rows, cols, kind), raw_dtype=kind)  # logical shape from the bytes
    add("token_embd.weight", V, D, Q4)
    for i in range(L):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(D, dtype=np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(D, dtype=np.float32))
        for n in ("attn_q", "attn_k", "attn_v", "attn_output"):
            add(p + n + ".weight", D, D, Q4)
        add(p + "ffn_gate.weight", F, D, Q4); add(p + "ffn_up.weight", F, D, Q4); add(p + "ffn_down.weight", D, F, Q4)
    w.add_tensor("output_norm.weight", np.ones(D, dtype=np.float32))
    add("output.weight", V, D, Q8)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

from llama_cpp import Llama
llm = Llama(model_path=str(path), n_ctx=512, n_threads=threads, n_batch=64, verbose=False)
prompt = [1] + list(range(300, 331))
llm.eval(prompt)
times = []
for i in range(tokens):
    start = time.perf_counter()
    llm.eval([400 + i])
    times.append(time.perf_counter() - start)
print(json.dumps({"decode_s_per_token": round(statistics.median(times), 4), "file_gb": round(path.stat().st_size / 2**30, 2)}))
"""


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-python", required=True, help="python of the environment with llama-cpp-python and gguf")
    parser.add_argument("--gguf", default="/tmp/llama2-7b-shapes-q4_0.gguf", help="written once, then reused")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    peer = subprocess.run([args.llama_python, "-c", WRITE_AND_RUN, args.gguf, str(args.tokens), str(args.threads)],
                          capture_output=True, text=True)
    if peer.returncode != 0:
        raise SystemExit(f"llama.cpp run failed: {peer.stderr.strip().splitlines()[-1:]}")
    llama = json.loads(peer.stdout.strip().splitlines()[-1])
    from quantized import PROBE

    ours = subprocess.run([sys.executable, "-c", PROBE.format(here=str(HERE)), "int4", str(args.tokens)],
                          capture_output=True, text=True)
    if ours.returncode != 0:
        raise SystemExit(f"owlkit run failed: {ours.stderr.strip().splitlines()[-1:]}")
    owl = json.loads(ours.stdout.strip().splitlines()[-1])
    result = {
        "threads": args.threads,
        "llama_cpp_q4_0": llama,
        "owlkit_int4": {k: owl[k] for k in ("decode_s_per_token", "decode_of_bound", "bytes_per_token_gb", "peak_rss_gb")},
        "owlkit_over_llama_cpp": round(llama["decode_s_per_token"] / owl["decode_s_per_token"], 3),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
