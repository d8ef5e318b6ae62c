"""benchmarks/train.py on a tiny model: one run, or fp32 and bf16 autocast compared in one process."""

from helpers import load_benchmark


def test_the_training_benchmark_compares_precisions_in_one_process(capsys):
    bench = load_benchmark("train")
    both = bench.main(["--preset", "test-owl2", "--steps", "2", "--warmup", "0", "--batch", "2", "--text-tokens", "8",
                       "--threads", "1", "--precision", "fp32", "bf16"])
    fp32, bf16 = both["runs"]
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16") and fp32["speedup_vs_fp32"] == 1.0
    assert bf16["speedup_vs_fp32"] == round(bf16["samples_per_s"] / fp32["samples_per_s"], 3)
    for run in both["runs"]:
        assert run["samples_per_s"] > 0 and run["matmul_flops"] > 0 and 0 < run["mfu"] < 1
        assert len(run["losses"]) == 2 and len(run["step_s_each"]) == 2
    assert bf16["losses"] != fp32["losses"] and abs(bf16["losses"][0] - fp32["losses"][0]) < 0.05  # autocast, same data
    one = bench.main(["--preset", "test-owl2", "--steps", "1", "--warmup", "0", "--batch", "2", "--text-tokens", "8",
                      "--threads", "1"])
    assert one["precision"] == "fp32" and "runs" not in one and one["counted_flops_per_sample"] > 0
    assert '"speedup_vs_fp32"' in capsys.readouterr().out
