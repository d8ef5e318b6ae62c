"""benchmarks/binding.py: the probe of how fast a decoder of owl-tiny's shape learns binding."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "binding.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("binding_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stream_supervises_only_the_answers(probe):
    stream = probe.QuestionStream(["colour"], max_objects=2, question_first=False, seed=3)
    ids, labels, n_objects = stream.sample(n_questions=3)
    assert 1 <= n_objects <= 2 and len(ids) == len(labels)
    answers = [tok for tok in labels if tok != -100]
    assert answers.count(2) == 3  # three answers, each closed by </s>
    text = stream.sp.decode(ids)
    assert text.startswith("USER: Image: a ") and text.count("ASSISTANT:") == 3
    colours = stream.sp.decode([tok for tok in answers if tok != 2]).split()
    assert all(c in text.split("ASSISTANT:")[0] for c in colours[:1])  # the first answer is in the caption
    first = probe.QuestionStream(["shape"], max_objects=1, question_first=True, seed=3)
    assert first.sp.decode(first.sample()[0]).startswith("USER: What shape is the ")


def test_probe_trains_and_reports_json(probe, tmp_path):
    out = tmp_path / "binding.json"
    result = probe.main(["--steps", "2", "--batch-size", "4", "--eval-every", "1", "--eval-questions", "12",
                         "--threads", "1", "--output", str(out)])
    saved = json.loads(out.read_text())
    assert saved["curve"] == result["curve"] and [p["step"] for p in saved["curve"]] == [1, 2]
    held_out = saved["curve"][-1]["held_out"]
    assert 0.0 <= held_out["all"] <= 1.0 and set(held_out["by_objects"]) <= {"1", "2"}
    assert saved["settings"]["arch"] == "owl" and saved["curve"][0]["loss"] > 0
