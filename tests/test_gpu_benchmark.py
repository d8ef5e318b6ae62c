"""benchmarks/gpu.py, checked the way its docstring says without a GPU (CI never has one)."""

import pytest
import torch

from helpers import load_benchmark


def _bench():
    return load_benchmark("gpu")


def test_the_gpu_benchmark_runs_its_check_on_a_cpu(capsys):
    result = _bench().main(["--device", "cpu", "--preset", "test-owl2", "--tokens", "3", "--batches", "1", "2",
                            "--quantize", "int8"])
    assert [row["batch"] for row in result["bf16"]] == [1, 2] and result["device"] == "cpu"
    for row in result["bf16"] + result["int8"]:
        assert row["prefill_s"] > 0 and row["tokens_per_s"] > 0 and 0 < row["of_bound"]
    assert result["bf16"][1]["prompt_positions"] == result["bf16"][0]["prompt_positions"]  # one image a row
    assert '"int8"' in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_in_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        _bench().main([])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


@pytest.mark.parametrize("tie", [False, True])
def test_decode_weight_bytes_counts_what_a_text_step_reads(tie):
    """The bound's bytes: the decoder's text branches, its norm and the LM head once (tied or
    not); neither the embedding table nor the modality-adaptive module's visual branches."""
    from helpers import tiny_model

    model = tiny_model("test-owl2", text_config__tie_word_embeddings=tie)
    if tie:
        model.lm_head.weight = model.language_model.embed_tokens.weight
    machine = load_benchmark("machine")
    layers = sum(p.numel() for n, p in model.language_model.layers.named_parameters() if ".visual." not in n)
    visual = sum(p.numel() for n, p in model.language_model.layers.named_parameters() if ".visual." in n)
    assert visual > 0
    expected = layers + model.language_model.norm.weight.numel() + model.lm_head.weight.numel()
    assert machine.decode_weight_bytes(model) == 4 * expected


def test_decode_against_bandwidth_sets_each_step_against_the_copy_beside_it():
    """The CPU benchmarks' bound (benchmarks/machine.py): one copy timed after every decoding
    step, the medians and the median ratio of step bound to step time."""
    from helpers import tiny_model

    model = tiny_model("test-owl2")
    machine = load_benchmark("machine")
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
    copies = []
    times = machine.decode_seconds(model, out, 4, 3, between=lambda: copies.append(1))
    assert len(times) == 3 and len(copies) == 3 and all(t > 0 for t in times)
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
    result = machine.decode_against_bandwidth(model, out, 4, 5, machine.decode_weight_bytes(model), megabytes=8)
    assert set(result) == {"tokens_per_s", "bandwidth", "of_bound"}
    assert result["tokens_per_s"] > 0 and result["bandwidth"] > 1e8 and 0 < result["of_bound"]
