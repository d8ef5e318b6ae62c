"""benchmarks/describe_then_answer.py: answers through a model's own caption."""

import pytest

from helpers import load_benchmark
from owlkit.zoo.world import Obj, Scene, answer_question, caption


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("describe_then_answer")


def test_a_caption_parses_back_into_its_scene(bench):
    scene = Scene(objects=[Obj("square", "red", "big", 0, 0), Obj("star", "blue", "small", 1, 1),
                           Obj("circle", "orange", "small", 2, 2)], word="CAKE")
    parsed = bench.scene_from_caption(caption(scene))
    assert parsed.objects == scene.objects and parsed.word == "CAKE"
    assert answer_question("What colour is the star?", [parsed]) == "blue"
    assert bench.scene_from_caption("an empty picture.").objects == []
    # a cell named twice keeps its first object; garbled phrases are skipped
    twice = bench.scene_from_caption("a big red square at the top, a small blue star at the top and a big green blob.")
    assert twice.objects == [Obj("square", "red", "big", 0, 1)]


def test_the_own_caption_question_is_the_described_form(bench):
    """The model's caption stands where --described puts the true one; the picture is gone and
    the short-answer prompt stays."""
    from owlkit.zoo.synth_eval import conversation
    from owlkit.zoo.world import make_eval_set

    sample = make_eval_set(3, 1, image_size=56, tasks=["colour"])[0]
    prompt = "Answer briefly."
    described = conversation(sample, True, prompt)
    own = bench.own_caption_conversation(sample, " a big red square at the top. ", prompt)
    assert len(own) == len(described) == 1 and isinstance(own[0]["content"], str)
    assert own[0]["content"] == "Image: a big red square at the top.\n" + described[0]["content"].split("\n", 1)[1]
    assert own[0]["content"].endswith(prompt) and "<|image|>" not in own[0]["content"]


def test_benchmark_reports_both_routes(bench, tmp_path):
    out = tmp_path / "d.json"
    result = bench.main(["--model", "owl-tiny", "--n-per-task", "2", "--tasks", "colour", "read",
                         "--batch-size", "4", "--output", str(out)])
    assert set(result["tasks"]) == {"colour", "read"} and out.exists()
    for r in result["tasks"].values():
        assert r["n"] == 2 and all(0 <= r[k] <= 1 for k in ("through_caption", "from_own_caption", "direct"))
    with pytest.raises(SystemExit):
        bench.main(["--tasks", "compare"])
