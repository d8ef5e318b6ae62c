"""benchmarks/generate.py: batched generation against one-by-one, and its measured ceiling."""

from helpers import load_benchmark


def test_generate_benchmark_reports_the_ceiling():
    """benchmarks/generate.py on a small model: the three ways agree, and the ceiling is computed."""
    bench = load_benchmark("generate")
    result = bench.main(["--preset", "owl-tiny", "--questions", "4", "--batch-size", "2", "--max-new-tokens", "3",
                         "--rounds", "1", "--threads", "1"])
    row = result["rounds"][0]
    assert result["identical_answers"] == 4 and result["target"] == 4.0
    assert row["ceiling"] > 0 and result["ceiling"] == row["ceiling"] and result["speedup"] == row["speedup"]
    assert set(row["prefill_ms_per_answer"]) == {"batch2", "batch1"}
    assert all(v > 0 for v in row["prefill_ms_per_answer"].values())
