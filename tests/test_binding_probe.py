"""benchmarks/binding.py: the probe of how fast a decoder of owl-tiny's shape learns binding."""

import json

import pytest

from helpers import load_benchmark


@pytest.fixture(scope="module")
def probe():
    return load_benchmark("binding")


def test_stream_supervises_only_the_answers(probe):
    stream = probe.QuestionStream(["colour"], max_objects=2, question_first=False, seed=3)
    messages, n_objects = stream.sample(n_questions=3)
    assert 1 <= n_objects <= 2 and [m["role"] for m in messages] == ["user", "assistant"] * 3
    assert messages[0]["content"].startswith("Image: a ") and "What colour is the " in messages[0]["content"]
    assert messages[1]["content"] in messages[0]["content"]  # the answer is a colour of the caption
    input_ids, mask, labels, counts = stream.batch(4, n_questions=3)
    assert input_ids.shape == labels.shape == mask.shape and len(counts) == 4
    tok = stream.processor.tokenizer
    for row, lab in zip(input_ids.tolist(), labels.tolist()):
        supervised = tok.decode([t for t, l in zip(row, lab) if l != -100])
        assert supervised.count("</s>") == 3  # three answers, each closed by the turn separator
        assert "USER" not in supervised and "Image" not in supervised and "?" not in supervised
    first = probe.QuestionStream(["shape"], max_objects=1, question_first=True, seed=3)
    assert first.sample()[0][0]["content"].startswith("What shape is the ")


def test_probe_trains_and_reports_json(probe, tmp_path):
    out = tmp_path / "binding.json"
    result = probe.main(["--steps", "2", "--batch-size", "4", "--eval-every", "1", "--eval-questions", "12",
                         "--threads", "1", "--output", str(out)])
    saved = json.loads(out.read_text())
    assert saved["curve"] == result["curve"] and [p["step"] for p in saved["curve"]] == [1, 2]
    held_out = saved["curve"][-1]["held_out"]
    assert 0.0 <= held_out["all"] <= 1.0 and set(held_out["by_objects"]) <= {"1", "2"}
    assert saved["settings"]["arch"] == "owl" and saved["curve"][0]["loss"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "colour,compare"], "--tasks compare: not a one-image synth task"),
    (["--tasks", "hue"], "--tasks hue: not a one-image synth task"),
    (["--max-objects", "0"], "no scene with at most 0 objects allows colour questions; raise --max-objects"),
])
def test_probe_refuses_bad_settings_in_one_line(probe, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        probe.main(argv + ["--steps", "1", "--threads", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_probe_question_first_and_plain_llama(probe):
    result = probe.main(["--arch", "llama", "--question-first", "--tasks", "shape,position", "--steps", "1",
                         "--batch-size", "2", "--eval-questions", "4", "--threads", "1"])
    assert result["settings"]["arch"] == "llama" and result["settings"]["question_first"]
    assert type(probe.make_decoder("llama", 0)).__name__ == "LlamaForCausalLM"


def test_probe_other_decoder_shapes(probe):
    model = probe.make_decoder("owl", 0, {"num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 8})
    text = model.config.text_config
    assert len(model.language_model.layers) == 2 and text.head_dim == 32
    attention = model.language_model.layers[0].self_attn
    assert attention.q_proj.out_features == text.hidden_size and attention.num_kv_heads == 8
    result = probe.main(["--layers", "1", "--heads", "2", "--kv-heads", "1", "--hidden", "64", "--intermediate", "96",
                         "--steps", "1", "--batch-size", "2", "--eval-questions", "4", "--threads", "1"])
    assert result["settings"]["hidden"] == 64 and result["curve"][0]["loss"] > 0


@pytest.mark.parametrize("argv", [["--hidden", "250"], ["--heads", "3"], ["--layers", "0"]])
def test_probe_refuses_impossible_shapes(probe, capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        probe.main(argv + ["--steps", "1", "--threads", "1"])
    assert exit_info.value.code == 2 and "Traceback" not in capsys.readouterr().err

